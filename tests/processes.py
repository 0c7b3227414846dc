"""Real service processes for the tests that need real HTTP between them."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from qunbuy.platform import APPS, SERVER_OPTIONS

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Process:
    name: str
    port: int
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        handle = self.log.open("ab")
        self.popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                APPS[self.name],
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *SERVER_OPTIONS[self.name],
                "--no-access-log",
            ],
            env={**os.environ, **self.env},
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        handle.close()

    def wait_healthy(self, timeout: float = 120.0) -> None:
        """Waits for /healthz. A process that exits fails at once; one that is still starting
        is given a generous deadline, since a loaded two-core machine starts four of them at
        once (the suite runs on such machines)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (OSError, http.client.HTTPException):
                pass  # not up yet (a port nobody listens on can even answer our own request)
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become healthy: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
