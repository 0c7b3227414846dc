"""What every service app has: health, readiness, metrics, request ids and JSON logs."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from shared.errors import PROBLEM_JSON
from shared.observability import configure_logging
from tests.conftest import running, settings_for
from tests.helpers import free_port

HEX32 = re.compile(r"^[0-9a-f]{32}$")
ServiceEnv = Callable[..., dict[str, str]]


def build(service: str, env: dict[str, str]) -> FastAPI:
    from services.crowdfund.app import create_app as crowdfund_app
    from services.orders.app import create_app as orders_app
    from services.referrals.app import create_app as referrals_app

    factories: dict[str, Callable[[Any], FastAPI]] = {
        "orders": orders_app,
        "crowdfund": crowdfund_app,
        "referrals": referrals_app,
    }
    return factories[service](settings_for(service, env))


def counter(metrics_text: str, **labels: str) -> float:
    """The value of http_requests_total with exactly these labels (0 when not yet counted)."""
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "http_requests":
            continue
        for sample in family.samples:
            if sample.name == "http_requests_total" and sample.labels == labels:
                return sample.value
    return 0.0


async def test_healthz_and_readyz_on_a_live_database(orders_client: httpx.AsyncClient) -> None:
    health = await orders_client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    ready = await orders_client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready"}


@pytest.mark.parametrize("service", ["orders", "crowdfund", "referrals"])
async def test_readyz_is_503_when_the_database_does_not_answer(
    service_env: ServiceEnv, service: str
) -> None:
    dead_url = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    app = build(service, service_env(service, DATABASE_URL=dead_url))
    async with running(app) as client:
        started = time.monotonic()
        ready = await client.get("/readyz")
        assert time.monotonic() - started < 5
        assert ready.status_code == 503, ready.text
        assert ready.headers["content-type"] == PROBLEM_JSON
        body = ready.json()
        assert body["code"] == "database_unreachable"
        assert body["status"] == 503
        assert body["instance"] == "/readyz"
        assert body["request_id"] == ready.headers["x-request-id"]
        assert "127.0.0.1" not in ready.text  # the database's address is not for the public
        # Liveness does not depend on the database: restarting would not fix it.
        health = await client.get("/healthz")
        assert health.status_code == 200


async def test_metrics_count_requests_with_the_service_label(
    service_env: ServiceEnv,
) -> None:
    async with running(build("crowdfund", service_env("crowdfund"))) as client:
        before = (await client.get("/metrics")).text
        for _ in range(3):
            assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/no-such-page")).status_code == 404
        metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    after = metrics.text
    health = {"service": "crowdfund", "method": "GET", "route": "/healthz", "status": "200"}
    assert counter(after, **health) - counter(before, **health) == 3
    unmatched = {"service": "crowdfund", "method": "GET", "route": "unmatched", "status": "404"}
    assert counter(after, **unmatched) - counter(before, **unmatched) == 1
    # Routes are counted by template, not by raw path (bounded label values).
    assert 'route="/no-such-page"' not in after
    assert "http_request_duration_seconds_bucket" in after


async def test_request_id_passes_through(orders_client: httpx.AsyncClient) -> None:
    for given in ("abc-123", "gw:7f3a.9_x", "a" * 128):
        response = await orders_client.get("/healthz", headers={"X-Request-ID": given})
        assert response.headers["x-request-id"] == given


async def test_request_id_is_created_when_missing_or_unusable(
    orders_client: httpx.AsyncClient,
) -> None:
    seen = set()
    unusable = ["", "has space", "a" * 129, 'x"<script>', "semi;colon"]
    for headers in [{}, *({"X-Request-ID": value} for value in unusable)]:
        response = await orders_client.get("/healthz", headers=headers)
        rid = response.headers["x-request-id"]
        assert HEX32.match(rid), (headers, rid)
        seen.add(rid)
    assert len(seen) == 1 + len(unusable)


async def test_json_log_line_carries_the_request_id(
    service_env: ServiceEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    app = build("orders", service_env("orders", LOG_LEVEL="INFO"))  # configures the logging
    try:
        async with running(app) as client:
            response = await client.get("/no-such-page", headers={"X-Request-ID": "trace-me-7"})
            assert response.status_code == 404
            created = await client.get("/also-missing")
            await client.get("/healthz", headers={"X-Request-ID": "probe-1"})
        out = capsys.readouterr().out
    finally:
        with capsys.disabled():
            configure_logging("tests", "WARNING")  # later tests log to a stream that stays open
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]  # all JSON
    requests = {line["request_id"]: line for line in lines if line.get("event") == "request"}
    line = requests["trace-me-7"]
    assert line["service"] == "orders"
    assert line["path"] == "/no-such-page"
    assert line["method"] == "GET"
    assert line["status"] == 404
    assert line["level"] == "info"
    assert isinstance(line["duration_ms"], float | int)
    assert line["timestamp"].endswith("Z")
    assert created.headers["x-request-id"] in requests
    # Probes are not logged (they would drown everything else).
    assert "probe-1" not in requests


def test_standard_library_records_are_json_lines_too(capsys: pytest.CaptureFixture[str]) -> None:
    """Libraries log through ``logging`` (SQLAlchemy, alembic, uvicorn): same JSON shape."""
    configure_logging("crowdfund", "INFO")
    try:
        log = logging.getLogger("some.library")
        log.warning("pool %s is exhausted", "main")
        try:
            raise ValueError("broken pipe")
        except ValueError:
            log.exception("send failed")
        out = capsys.readouterr().out
    finally:
        with capsys.disabled():
            configure_logging("tests", "WARNING")
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(lines) == 2, out
    warning, error = lines
    assert warning["event"] == "pool main is exhausted"
    assert warning["level"] == "warning"
    assert warning["logger"] == "some.library"
    assert warning["service"] == "crowdfund"
    assert warning["timestamp"].endswith("Z")
    assert error["level"] == "error"
    assert "ValueError: broken pipe" in error["exception"]
