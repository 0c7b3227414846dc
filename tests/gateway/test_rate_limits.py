"""Rate limits at the gateway: by caller and route class, in memory or in Redis shared by
several gateway processes; 429 problem+json with Retry-After."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.ratelimit import LoopMemoryStorage, RateLimiter, parse_limit
from tests.conftest import TokenFactory, running
from tests.helpers import free_port
from tests.processes import Process

REDIS = ("127.0.0.1", 6379)


def redis_url() -> str:
    try:
        socket.create_connection(REDIS, timeout=0.5).close()
    except OSError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    return f"redis://{REDIS[0]}:{REDIS[1]}/0"


def refused(response: httpx.Response) -> bool:
    if response.status_code != 429:
        return False
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "rate_limited"
    assert 0 < int(response.headers["retry-after"]) <= 60
    assert response.headers["x-served-by"] == "gateway"
    return True


async def test_reads_are_limited_per_user_and_per_address(
    gateway_settings: Callable[..., GatewaySettings], auth: TokenFactory
) -> None:
    settings = gateway_settings(RATE_LIMITS_ENABLED="true", RATE_LIMIT_READ="3/minute")
    alice, bob = auth("customer"), auth("customer")
    async with running(create_app(settings)) as gw:
        answers = [await gw.get("/v1/me", headers=alice) for _ in range(4)]
        assert [refused(a) for a in answers] == [False, False, False, True]
        # Proxied resources count in the same class, before anything is sent upstream.
        assert refused(await gw.get("/v1/orders/anything", headers=alice))
        # Another user has their own count; so has a caller without a token (its address).
        assert not refused(await gw.get("/v1/me", headers=bob))
        anonymous = [await gw.get("/v1/presales/x/public") for _ in range(4)]
        assert [refused(a) for a in anonymous] == [False, False, False, True]
        # Outside /v1 nothing is limited.
        assert (await gw.get("/healthz")).status_code == 200


async def test_sign_ins_and_writes_have_their_own_limits(
    gateway_settings: Callable[..., GatewaySettings], auth: TokenFactory
) -> None:
    settings = gateway_settings(
        RATE_LIMITS_ENABLED="true", RATE_LIMIT_LOGIN="2/minute", RATE_LIMIT_WRITE="1/minute"
    )
    async with running(create_app(settings)) as gw:
        logins = [await gw.post("/v1/auth/refresh", json={"refresh_token": "x"}) for _ in range(3)]
        assert [a.status_code for a in logins[:2]] == [401, 401]
        assert refused(logins[2])
        user = auth("customer")
        writes = [await gw.post("/v1/orders/x/refunds", headers=user) for _ in range(2)]
        assert not refused(writes[0])
        assert refused(writes[1])
        # Reads are not writes.
        assert not refused(await gw.get("/v1/me", headers=user))


async def test_a_forged_token_is_counted_by_address(
    gateway_settings: Callable[..., GatewaySettings],
) -> None:
    settings = gateway_settings(RATE_LIMITS_ENABLED="true", RATE_LIMIT_READ="2/minute")
    async with running(create_app(settings)) as gw:
        forged = [
            await gw.get("/v1/me", headers={"Authorization": f"Bearer forged-{n}"})
            for n in range(3)
        ]
    # Each made-up token does not buy a fresh allowance: all three share the address's.
    assert refused(forged[2])


async def test_limits_in_redis(
    gateway_settings: Callable[..., GatewaySettings], auth: TokenFactory
) -> None:
    settings = gateway_settings(
        RATE_LIMITS_ENABLED="true", RATE_LIMIT_READ="3/minute", REDIS_URL=redis_url()
    )
    user = auth("customer")
    async with running(create_app(settings)) as gw:
        answers = await asyncio.gather(*(gw.get("/v1/me", headers=user) for _ in range(6)))
    assert sum(refused(a) for a in answers) == 3


async def test_an_unreachable_redis_lets_requests_through(
    gateway_settings: Callable[..., GatewaySettings], auth: TokenFactory
) -> None:
    settings = gateway_settings(
        RATE_LIMITS_ENABLED="true",
        RATE_LIMIT_READ="1/minute",
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    async with running(create_app(settings)) as gw:
        answers = [await gw.get("/v1/me", headers=auth("customer")) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]


@pytest.fixture
def two_gateways(
    db_urls: dict[str, str], private_key_file: Path, tmp_path: Path
) -> Iterator[list[Process]]:
    url = redis_url()
    gateways = [
        Process(
            "gateway",
            free_port(),
            tmp_path / f"gateway-{n}.log",
            env={
                "QUNBUY_MODE": "production",
                "JWT_PRIVATE_KEY_FILE": str(private_key_file),
                "DATABASE_URL": db_urls["gateway"],
                "REDIS_URL": url,
                "RATE_LIMIT_READ": "10/minute",
                "LOG_LEVEL": "WARNING",
            },
        )
        for n in range(2)
    ]
    try:
        for gateway in gateways:
            gateway.start()
        for gateway in gateways:
            gateway.wait_healthy()
        yield gateways
    finally:
        for gateway in gateways:
            gateway.stop()


async def test_two_gateway_processes_share_the_counts_in_redis(
    two_gateways: list[Process], auth: TokenFactory
) -> None:
    user = auth("customer", sub=f"shared_{uuid.uuid4().hex}")
    async with httpx.AsyncClient(timeout=10) as client:
        answers = await asyncio.gather(
            *(client.get(f"{two_gateways[n % 2].url}/v1/me", headers=user) for n in range(16))
        )
    by_gateway = [[refused(a) for a in answers[n::2]] for n in range(2)]
    assert sum(not r for r in by_gateway[0] + by_gateway[1]) == 10  # one limit, not two
    assert all(any(not r for r in served) for served in by_gateway)  # both served some


async def test_in_memory_counters_end_with_their_window_and_start_no_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The in-memory store (LoopMemoryStorage): a window's count ends with the window, the
    counters of callers who never come back are swept, and counting starts no thread (the
    library's memory storage starts a timer thread every 10 ms under load)."""
    limiter = RateLimiter(None)
    item = parse_limit("2/second")
    await asyncio.sleep(0.05)  # the storages' first timers, from their constructors, have run
    started: list[threading.Thread] = []
    real_start = threading.Thread.start

    def counted_start(thread: threading.Thread) -> None:
        started.append(thread)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", counted_start)
    for caller in range(200):
        assert [await limiter.hit(item, "read", f"user:{caller}") for _ in range(3)] == [
            None,
            None,
            1,
        ]
        await asyncio.sleep(0.0001)
    assert started == []
    storage = limiter.memory_storage
    assert storage is not None
    assert len(storage.storage) == 200
    await asyncio.sleep(1.05)  # every window ended
    assert storage.sweep() == 200
    assert len(storage.storage) == len(storage.expirations) == 0
    assert [await limiter.hit(item, "read", "user:0") for _ in range(3)] == [None, None, 1]
    assert len(storage.storage) == 1  # a new window, a new count
    assert started == []


async def test_in_memory_counters_are_swept_by_the_hits_themselves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing but hits sweeps the counters of callers who never come back: with the sweep
    due, a hit of another caller drops them."""
    monkeypatch.setattr(LoopMemoryStorage, "SWEEP_SECONDS", 0.5)
    limiter = RateLimiter(None)
    item = parse_limit("5/second")
    for caller in range(100):
        assert await limiter.hit(item, "read", f"user:{caller}") is None
    storage = limiter.memory_storage
    assert storage is not None
    assert len(storage.storage) == 100
    await asyncio.sleep(1.05)  # their windows ended, and a sweep is due
    assert await limiter.hit(item, "read", "user:new") is None
    assert len(storage.storage) == len(storage.expirations) == 1
