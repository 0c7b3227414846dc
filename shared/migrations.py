"""Alembic, driven from code: each database keeps its own history in its owner's migrations/
folder (services/<name>/migrations, and gateway/migrations for the gateway's identity store)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from shared.db import to_async_url

__all__ = ["DATABASES", "SERVICES", "alembic_config", "check", "run_env", "upgrade"]

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("orders", "crowdfund", "referrals")
# Every database of the platform: one per service, and the gateway's (identity).
DATABASES = (*SERVICES, "gateway")


def alembic_config(service: str, database_url: str) -> Config:
    if service not in DATABASES:
        raise ValueError(f"unknown service {service!r}")
    folder = ROOT / "gateway" if service == "gateway" else ROOT / "services" / service
    config = Config()
    config.set_main_option("script_location", str(folder / "migrations"))
    # Kept out of the ini options: a URL may contain '%', which configparser would interpret.
    config.attributes["database_url"] = database_url
    return config


def upgrade(service: str, database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(service, database_url), revision)


def check(service: str, database_url: str) -> None:
    """Raises if the models and the migrated database differ (a migration is missing)."""
    command.check(alembic_config(service, database_url))


def run_env(context: Any, metadata: MetaData) -> None:
    """The body of every service's env.py (online mode only: migrations need a database).

    ``context`` is ``alembic.context``, a module that proxies the running EnvironmentContext.
    """
    url = context.config.attributes["database_url"]

    def migrate(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            compare_type=True,
            compare_server_default=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def run() -> None:
        engine = create_async_engine(to_async_url(url), poolclass=pool.NullPool)
        try:
            async with engine.connect() as connection:
                await connection.run_sync(migrate)
        finally:
            await engine.dispose()

    asyncio.run(run())
