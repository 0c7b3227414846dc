"""Where the platform's databases are, and the processes that make it up."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qunbuy.pg import EmbeddedPostgres, database_url
from shared.migrations import DATABASES

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = ROOT / ".qunbuy"
PORTS = {"gateway": 8000, "orders": 8001, "crowdfund": 8002, "referrals": 8003}
APPS = {
    "gateway": "gateway.app:create_app",
    "orders": "services.orders.app:create_app",
    "crowdfund": "services.crowdfund.app:create_app",
    "referrals": "services.referrals.app:create_app",
}
# uvicorn's options after host and port, the same wherever the process runs: the deploy
# manifests and the Dockerfile's CMD (tests/deploy checks them), `qunbuy up`, and
# bench/gateway_proxy.py. Every process logs a request only when it is a 5xx or slow
# (docs/architecture.md): uvicorn's access log wrote a plain-text line for every one, which
# was neither JSON nor cheap. uvloop and httptools are named so that a missing one fails the
# start instead of silently serving on the slower pure-Python pair; the protocol is
# httptools' with the writes of one loop step sent together (shared/server.py).
HTTP_PROTOCOL = "shared.server:CoalescingHttpToolsProtocol"
_SERVE = ("--loop", "uvloop", "--http", HTTP_PROTOCOL, "--no-access-log")
SERVER_OPTIONS: dict[str, tuple[str, ...]] = dict.fromkeys(PORTS, _SERVE)
# Who receives whose events (the relay of each publisher POSTs to these).
SUBSCRIBERS = {"orders": ["referrals"], "crowdfund": ["referrals"], "referrals": []}


class PlatformError(Exception):
    """A failure the operator can fix; its message is the one line they see."""


@dataclass
class Databases:
    urls: dict[str, str]
    server_url: str | None
    embedded: EmbeddedPostgres | None

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()


def configured_urls(services: Sequence[str] = DATABASES) -> dict[str, str] | None:
    """Per-service URLs from the environment, or None to use the embedded server.

    ``QUNBUY_DATABASE_URL`` names a server: its databases qunbuy_orders, qunbuy_crowdfund,
    qunbuy_referrals and qunbuy_gateway (identity) are used (and created).
    ``ORDERS_DATABASE_URL`` and friends (``GATEWAY_DATABASE_URL``) name one database
    directly and win over it. Only ``services`` need a URL (a migration
    Job for one service is given that service's credentials and no others).
    """
    server = os.environ.get("QUNBUY_DATABASE_URL")
    urls: dict[str, str] = {}
    for service in services:
        own = os.environ.get(f"{service.upper()}_DATABASE_URL")
        if own:
            urls[service] = own
        elif server:
            urls[service] = database_url(server, f"qunbuy_{service}")
    if not urls:
        return None
    missing = [s for s in services if s not in urls]
    if missing:
        raise PlatformError(
            f"database URLs are set for some services but not for {', '.join(missing)}: "
            "set QUNBUY_DATABASE_URL or every <SERVICE>_DATABASE_URL"
        )
    return urls


def open_databases(data_dir: Path, services: Sequence[str] = DATABASES) -> Databases:
    urls = configured_urls(services)
    if urls is not None:
        server = os.environ.get("QUNBUY_DATABASE_URL")
        return Databases(urls=urls, server_url=server, embedded=None)
    if os.environ.get("QUNBUY_MODE") == "production":
        raise PlatformError(
            "no database URL is configured (QUNBUY_DATABASE_URL or <SERVICE>_DATABASE_URL); "
            "the embedded PostgreSQL is for development only"
        )
    embedded = EmbeddedPostgres(data_dir / "postgres")
    try:
        server_url = embedded.start()
    except Exception as exc:
        raise PlatformError(
            f"the embedded PostgreSQL did not start ({type(exc).__name__}); "
            f"see {data_dir / 'postgres' / 'log'}"
        ) from exc
    urls = {s: database_url(server_url, f"qunbuy_{s}") for s in services}
    return Databases(urls=urls, server_url=server_url, embedded=embedded)
