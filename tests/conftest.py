"""Fixtures shared by every test.

PostgreSQL: ``TEST_DATABASE_URL`` when set, else the machine's server when one answers on
127.0.0.1:5432, else the embedded server (one per test run, shared by the xdist workers).
Each xdist worker gets its own three databases, built by the services' migrations, so
tests in different workers never see each other's rows; within a worker, tests create
their own uniquely named rows and never assume an empty table.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI

from gateway.proxy import Gateway
from qunbuy.pg import (
    EmbeddedPostgres,
    database_url,
    drop_databases,
    ensure_databases,
    local_server_answers,
)
from shared.auth import Role, TokenIssuer, public_pem
from shared.migrations import DATABASES, upgrade
from tests.helpers import free_port
from tests.processes import Process

ROOT = Path(__file__).resolve().parent.parent
TEST_EVENT_SECRET = "test-event-secret"
TEST_SIMULATED_WEBHOOK_SECRET = "whsec_test_platform"


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    # QUNBUY_TEST_EMBEDDED=1 forces the embedded server, to exercise CI's fallback locally.
    if not os.environ.get("QUNBUY_TEST_EMBEDDED") and local_server_answers():
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
        return
    server = EmbeddedPostgres(ROOT / ".qunbuy" / "test-pg" / "data")
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(scope="session")
def worker_id_safe(worker_id: str) -> str:
    return f"{worker_id}_{uuid.uuid4().hex[:6]}"


@contextmanager
def migrated_databases(server_url: str, prefix: str) -> Iterator[dict[str, str]]:
    """One fresh database per service (and the gateway's), built by its migrations."""
    names = {svc: f"{prefix}_{svc}" for svc in DATABASES}
    asyncio.run(ensure_databases(server_url, list(names.values()), fresh=True))
    urls = {svc: database_url(server_url, name) for svc, name in names.items()}
    try:
        for svc, url in urls.items():
            upgrade(svc, url)
        yield urls
    finally:
        asyncio.run(drop_databases(server_url, list(names.values())))


@pytest.fixture(scope="session")
def db_urls(pg_server_url: str, worker_id_safe: str) -> Iterator[dict[str, str]]:
    """This worker's databases, for in-process apps (no relay of theirs runs on their own)."""
    with migrated_databases(pg_server_url, f"qbt_{worker_id_safe}") as urls:
        yield urls


@pytest.fixture(scope="session")
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def issuer(signing_key: ec.EllipticCurvePrivateKey) -> TokenIssuer:
    return TokenIssuer(signing_key, issuer="qunbuy-gateway", audience="qunbuy", ttl_seconds=900)


@pytest.fixture(scope="session")
def public_key_file(
    signing_key: ec.EllipticCurvePrivateKey, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("keys") / "jwt-public.pem"
    path.write_bytes(public_pem(signing_key))
    return path


TokenFactory = Callable[..., dict[str, str]]


@pytest.fixture(scope="session")
def auth(issuer: TokenIssuer) -> TokenFactory:
    """``auth("customer")`` -> an Authorization header for a fresh user with that role."""

    def make(
        *roles: Role, sub: str | None = None, merchant_id: str | None = None
    ) -> dict[str, str]:
        token = issuer.issue(
            sub or f"user_{uuid.uuid4().hex[:10]}",
            list(roles) or ["customer"],
            merchant_id=merchant_id,
        )
        return {"Authorization": f"Bearer {token}"}

    return make


@pytest.fixture(scope="session")
def service_env(db_urls: dict[str, str], public_key_file: Path) -> Callable[[str], dict[str, str]]:
    """The environment a service process (or in-process app) runs with in the tests."""

    def env(service: str, **extra: str) -> dict[str, str]:
        return {
            "QUNBUY_MODE": "production",
            "DATABASE_URL": db_urls[service],
            "JWT_PUBLIC_KEY_FILE": str(public_key_file),
            "EVENT_SECRET": TEST_EVENT_SECRET,
            "WORKER_ENABLED": "false",
            "LOG_LEVEL": "WARNING",
            # Pools keep what they open (shared/db.py): the production default of 20 in every
            # app and process of a run would hold most of a default PostgreSQL's 100.
            "DB_POOL_SIZE": "10",
            **extra,
        }

    return env


@asynccontextmanager
async def running(app: FastAPI | Gateway) -> AsyncIterator[httpx.AsyncClient]:
    """Runs ``app``'s lifespan and gives an HTTP client bound to it (ASGI, no socket)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def settings_for(service: str, env: dict[str, str]) -> Any:
    from services.crowdfund.config import CrowdfundSettings
    from services.orders.config import OrdersSettings
    from services.referrals.config import ReferralsSettings
    from shared.settings import ServiceSettings

    cls: dict[str, type[ServiceSettings]] = {
        "orders": OrdersSettings,
        "crowdfund": CrowdfundSettings,
        "referrals": ReferralsSettings,
    }
    return cls[service].model_validate(env)


@pytest.fixture
async def orders_client(
    service_env: Callable[..., dict[str, str]],
) -> AsyncIterator[httpx.AsyncClient]:
    from services.orders.app import create_app

    async with running(create_app(settings_for("orders", service_env("orders")))) as client:
        yield client


@pytest.fixture
async def crowdfund_client(
    service_env: Callable[..., dict[str, str]],
) -> AsyncIterator[httpx.AsyncClient]:
    from services.crowdfund.app import create_app

    async with running(create_app(settings_for("crowdfund", service_env("crowdfund")))) as client:
        yield client


@pytest.fixture
async def referrals_client(
    service_env: Callable[..., dict[str, str]],
) -> AsyncIterator[httpx.AsyncClient]:
    from services.referrals.app import create_app

    async with running(create_app(settings_for("referrals", service_env("referrals")))) as client:
        yield client


@dataclass
class Platform:
    processes: dict[str, Process]

    @property
    def gateway(self) -> str:
        return self.processes["gateway"].url

    def url(self, name: str) -> str:
        return self.processes[name].url


@pytest.fixture(scope="session")
def private_key_file(
    signing_key: ec.EllipticCurvePrivateKey, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("keys") / "jwt-private.pem"
    path.write_bytes(
        signing_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture(scope="session")
def platform_db_urls(pg_server_url: str, worker_id_safe: str) -> Iterator[dict[str, str]]:
    """The databases of the service processes: their relays run, so they get their own."""
    with migrated_databases(pg_server_url, f"qbp_{worker_id_safe}") as urls:
        yield urls


@pytest.fixture(scope="session")
def platform(
    service_env: Callable[..., dict[str, str]],
    platform_db_urls: dict[str, str],
    private_key_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Platform]:
    """The three services and the gateway as real uvicorn processes, once per session.

    Tests that use it are grouped on one xdist worker (``xdist_group("processes")``).
    """
    logs = tmp_path_factory.mktemp("logs")
    ports = {name: free_port() for name in ("gateway", "orders", "crowdfund", "referrals")}
    referrals_url = f"http://127.0.0.1:{ports['referrals']}"
    processes: dict[str, Process] = {}
    for name in ("orders", "crowdfund", "referrals"):
        env = service_env(
            name,
            # The worker as in production: woken by NOTIFY, with the default 10 s safety net.
            # (A 0.1 s poll cost six processes most of one core of the two.)
            WORKER_ENABLED="true",
            LOG_LEVEL="INFO",
            EVENT_SUBSCRIBERS="" if name == "referrals" else f"referrals={referrals_url}",
            DATABASE_URL=platform_db_urls[name],
            # Payments on, as on a real platform (simulated: no keys; referrals ignores it).
            PAYMENT_PROVIDER="simulated",
            SIMULATED_WEBHOOK_SECRET=TEST_SIMULATED_WEBHOOK_SECRET,
            SIMULATED_SETTLE_SECONDS="0.2",
        )
        processes[name] = Process(name, ports[name], logs / f"{name}.log", env=env)
    processes["gateway"] = Process(
        "gateway",
        ports["gateway"],
        logs / "gateway.log",
        env={
            "QUNBUY_MODE": "production",
            "JWT_PRIVATE_KEY_FILE": str(private_key_file),
            "ORDERS_URL": processes["orders"].url,
            "CROWDFUND_URL": processes["crowdfund"].url,
            "REFERRALS_URL": processes["referrals"].url,
            "DATABASE_URL": platform_db_urls["gateway"],
            "LOG_LEVEL": "INFO",
            # Storms of requests by one test user: the limits have tests of their own.
            "RATE_LIMITS_ENABLED": "false",
        },
    )
    try:
        for process in processes.values():
            process.start()
        for process in processes.values():
            process.wait_healthy()
        yield Platform(processes)
    finally:
        for process in processes.values():
            process.stop()


@pytest.fixture(scope="session")
def localstripe_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One localstripe process per test worker, started on first use."""
    from tests.shared.payments.support import localstripe_server

    with localstripe_server(tmp_path_factory.mktemp("localstripe")) as url:
        yield url


@pytest.fixture(scope="session")
async def localstripe_sdk(localstripe_url: str) -> AsyncIterator[stripe.StripeClient]:
    from tests.shared.payments.support import stripe_client

    async with stripe_client(localstripe_url) as client:
        yield client
