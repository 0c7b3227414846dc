from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.processes import Process


@pytest.fixture
def lone_gateway(
    private_key_file: Path, db_urls: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., Process]]:
    """Starts extra gateways with chosen upstreams; stops them after the test."""
    started: list[Process] = []

    def start(**env: str) -> Process:
        process = Process(
            "gateway",
            free_port(),
            tmp_path / f"gateway-{len(started)}.log",
            env={
                "QUNBUY_MODE": "production",
                "JWT_PRIVATE_KEY_FILE": str(private_key_file),
                "DATABASE_URL": db_urls["gateway"],
                "LOG_LEVEL": "WARNING",
                # Storms of requests by one test user: the limits have tests of their own.
                "RATE_LIMITS_ENABLED": "false",
                **env,
            },
        )
        process.start()
        started.append(process)
        process.wait_healthy()
        return process

    yield start
    for process in started:
        process.stop()
