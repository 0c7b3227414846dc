"""What the service benchmarks share: a fresh database, processes that always stop."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator

from qunbuy.pg import database_url, drop_databases, ensure_databases
from shared.migrations import upgrade

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.asynccontextmanager
async def fresh_database(service: str) -> AsyncIterator[str]:
    """A new database of the machine's PostgreSQL, built by ``service``'s migrations, dropped
    afterwards; yields its URL."""
    name = f"qb_bench_{service}_{uuid.uuid4().hex[:8]}"
    await ensure_databases(SERVER, [name], fresh=True)
    try:
        url = database_url(SERVER, name)
        await asyncio.to_thread(upgrade, service, url)
        yield url
    finally:
        await drop_databases(SERVER, [name])


@contextlib.contextmanager
def stopped_at_exit() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list to put started processes in: all are stopped when the block ends, however."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
