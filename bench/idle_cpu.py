"""Idle cost of one service process: CPU seconds spent over a quiet interval.

    .venv/bin/python bench/idle_cpu.py [--seconds 30] [--service orders] [--root PATH]

Starts the service (worker loop on, its default poll settings) on a fresh database of the
machine's PostgreSQL (127.0.0.1:5432), waits until it is healthy and has settled, then
reads its CPU time before and after ``--seconds`` of doing nothing. ``--root`` runs another
checkout of the project (to compare with an earlier version in the same run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qunbuy.pg import drop_databases, ensure_databases  # noqa: E402
from shared.migrations import upgrade  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
APPS = {
    "orders": "services.orders.app:create_app",
    "crowdfund": "services.crowdfund.app:create_app",
    "referrals": "services.referrals.app:create_app",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--service", default="orders", choices=sorted(APPS))
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args()
    name = f"qb_idle_{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_databases(SERVER, [name]))
    url = SERVER.rsplit("/", 1)[0] + f"/{name}"
    proc = None
    try:
        upgrade(args.service, url)
        port = free_port()
        env = {
            **os.environ,
            "QUNBUY_MODE": "embedded",
            "DATABASE_URL": url,
            "LOG_LEVEL": "WARNING",
            "EVENT_SUBSCRIBERS": "referrals=http://127.0.0.1:9",
        }
        python = args.root / ".venv" / "bin" / "python"
        proc = subprocess.Popen(
            [str(python), "-m", "uvicorn", APPS[args.service], "--factory", "--port", str(port)],
            cwd=args.root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        time.sleep(3)  # start-up work done
        watched = psutil.Process(proc.pid)
        before = watched.cpu_times()
        time.sleep(args.seconds)
        after = watched.cpu_times()
        used = (after.user - before.user) + (after.system - before.system)
        print(
            f"{args.service} ({args.root}): {used:.3f} s CPU in {args.seconds:.0f} s idle "
            f"= {100 * used / args.seconds:.2f}% of a core"
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        asyncio.run(drop_databases(SERVER, [name]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
