"""Input the database cannot store never becomes a 500, and leaves nothing half-written.

The class of fault: text PostgreSQL cannot hold (NUL, lone surrogates) and values beyond a
column's size, arriving in a body, a path, a header, a token or an event.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select

from shared.auth import TokenIssuer
from shared.db import SessionDep
from shared.errors import PROBLEM_JSON
from shared.events import sign
from shared.text import SafeStr, unstorable_reason
from tests.conftest import TEST_EVENT_SECRET, TokenFactory, running, settings_for
from tests.shared.payments.support import PaymentsApp, new_merchant, new_reference

ServiceEnv = Callable[..., dict[str, str]]


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    problem: dict[str, Any] = response.json()
    assert problem["code"] == code
    assert problem["status"] == status
    assert problem["instance"]
    assert problem["request_id"] == response.headers["x-request-id"]
    return problem


class TestPaymentBodies:
    @pytest.mark.parametrize("field", ["reference", "merchant_id", "currency", "payment_method"])
    @pytest.mark.parametrize("bad", ["a\x00b", "line\nbreak", "\x1b[31m"])
    async def test_unstorable_text_in_a_field_is_a_422_naming_it(
        self, sim_orders: PaymentsApp, auth: TokenFactory, field: str, bad: str
    ) -> None:
        merchant = new_merchant()
        body = {
            "reference": new_reference(),
            "merchant_id": merchant,
            "amount": 1000,
            "currency": "CNY",
            "payment_method": "pm_card_visa",
            field: bad,
        }
        response = await sim_orders.post("/v1/payments", body, auth("customer"))

        problem = assert_problem(response, 422, "validation_error")
        assert [e["path"] for e in problem["errors"]] == [f"body.{field}"]
        assert bad not in response.text
        assert await sim_orders.count("payment", merchant_id=merchant) == 0

    async def test_a_nul_in_the_path_of_an_idempotent_post_is_a_4xx(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        response = await sim_orders.client.post(
            "/v1/payments/%00/confirm",
            json={"payment_method": "pm_card_visa"},
            headers={**auth("customer"), "Idempotency-Key": uuid.uuid4().hex},
        )
        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"].startswith(PROBLEM_JSON)


class TestTokens:
    @pytest.mark.parametrize(
        "sub",
        ["u" * 101, "u" * 5000, "user\x00nul", "tab\tuser", ""],
        ids=["101-chars", "5000-chars", "nul", "tab", "empty"],
    )
    async def test_a_signed_token_whose_subject_does_not_fit_is_refused(
        self, sim_orders: PaymentsApp, issuer: TokenIssuer, sub: str
    ) -> None:
        token = issuer.issue(sub, ["customer"])
        response = await sim_orders.client.post(
            "/v1/payments",
            json={
                "reference": new_reference(),
                "merchant_id": new_merchant(),
                "amount": 100,
                "currency": "CNY",
            },
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex},
        )
        problem = assert_problem(response, 401, "invalid_token")
        assert sub[:20] not in (problem.get("detail") or "") or not sub

    async def test_a_staff_token_with_an_oversized_merchant_is_refused(
        self, sim_orders: PaymentsApp, issuer: TokenIssuer
    ) -> None:
        token = issuer.issue("staff_1", ["staff"], merchant_id="m" * 101)
        response = await sim_orders.client.get(
            f"/v1/payments/{uuid.uuid4()}", headers={"Authorization": f"Bearer {token}"}
        )
        assert_problem(response, 401, "invalid_token")

    async def test_the_invalid_token_detail_does_not_echo_the_library(
        self, sim_orders: PaymentsApp
    ) -> None:
        response = await sim_orders.client.get(
            f"/v1/payments/{uuid.uuid4()}", headers={"Authorization": "Bearer not.a.jwt"}
        )
        problem = assert_problem(response, 401, "invalid_token")
        assert "segments" not in problem["detail"]
        assert "not.a.jwt" not in response.text


class TestIdempotencyKeyHeaders:
    async def test_two_idempotency_keys_are_refused_before_anything_runs(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        merchant = new_merchant()
        payer = auth("customer")
        first_key = uuid.uuid4().hex
        body = {
            "reference": new_reference(),
            "merchant_id": merchant,
            "amount": 1000,
            "currency": "CNY",
            "payment_method": "pm_card_visa",
        }
        first = await sim_orders.post("/v1/payments", body, payer, key=first_key)
        assert first.status_code == 201

        other_body = {**body, "amount": 2000}
        response = await sim_orders.client.post(
            "/v1/payments",
            content=json.dumps(other_body),
            headers=[
                ("authorization", payer["Authorization"]),
                ("content-type", "application/json"),
                ("idempotency-key", first_key),
                ("idempotency-key", uuid.uuid4().hex),
            ],
        )

        assert_problem(response, 400, "idempotency_key_invalid")
        assert await sim_orders.count("payment", merchant_id=merchant) == 1

    @pytest.mark.parametrize("key", ["", "k\x00y", "ключ", "a b", "k" * 256])
    async def test_a_key_that_is_not_printable_ascii_is_refused(
        self, sim_orders: PaymentsApp, auth: TokenFactory, key: str
    ) -> None:
        response = await sim_orders.client.post(
            "/v1/payments",
            json={"reference": new_reference(), "merchant_id": new_merchant()},
            headers=[
                (b"authorization", auth("customer")["Authorization"].encode()),
                (b"idempotency-key", key.encode("utf-8")),
            ],
        )
        assert_problem(response, 400, "idempotency_key_invalid")

    async def test_idempotency_refusals_have_instance_and_request_id(
        self, sim_orders: PaymentsApp, auth: TokenFactory
    ) -> None:
        payer = auth("customer")
        key = uuid.uuid4().hex
        body = {
            "reference": new_reference(),
            "merchant_id": new_merchant(),
            "amount": 1000,
            "currency": "CNY",
        }
        assert (await sim_orders.post("/v1/payments", body, payer, key=key)).status_code == 201
        reused = await sim_orders.post("/v1/payments", {**body, "amount": 5}, payer, key=key)
        problem = assert_problem(reused, 422, "idempotency_key_reused")
        assert problem["instance"] == "/v1/payments"


class TestEvents:
    @pytest.mark.parametrize(
        "overrides",
        [{"source": "orders\x00"}, {"source": "o" * 101}, {"request_id": "r\x00"}],
        ids=["nul-source", "long-source", "nul-request-id"],
    )
    async def test_an_event_with_unstorable_envelope_text_is_a_422(
        self, referrals_client: httpx.AsyncClient, overrides: dict[str, str]
    ) -> None:
        envelope = {
            "id": str(uuid.uuid4()),
            "type": "order.paid",
            "source": "orders",
            "occurred_at": "2026-11-25T00:00:00Z",
            "version": 1,
            "payload": {},
            **overrides,
        }
        body = json.dumps(envelope).encode()
        response = await referrals_client.post(
            "/internal/events",
            content=body,
            headers={"X-Qunbuy-Signature": sign(TEST_EVENT_SECRET, body)},
        )
        problem = assert_problem(response, 422, "invalid_event")
        assert "\\x00" not in problem["detail"]
        assert "{" not in problem["detail"]


class TestTheSafetyNet:
    """Whatever still reaches the database unchecked is a 422, rolled back, not a 500."""

    @pytest.fixture
    async def raw_writer(self, service_env: ServiceEnv) -> AsyncIterator[httpx.AsyncClient]:
        from services.referrals.app import create_app
        from services.referrals.models import platform

        router = APIRouter()

        @router.post("/test/raw-write/{source}")
        async def raw_write(source: str, event_id: str, session: SessionDep) -> dict[str, str]:
            # Two writes: the first succeeds, the second fails; neither may remain.
            await session.execute(
                insert(platform.inbox).values(
                    source="ok-" + event_id, event_id=event_id, event_type="t.t"
                )
            )
            await session.execute(
                insert(platform.inbox).values(source=source, event_id=event_id, event_type="t.t")
            )
            return {"status": "written"}

        app = create_app(settings_for("referrals", service_env("referrals")))
        app.include_router(router)
        async with running(app) as client:
            client.app_for_tests = app  # type: ignore[attr-defined]
            yield client

    @pytest.mark.parametrize("source", ["nul%00here", "x" * 101], ids=["nul", "too-long"])
    async def test_a_data_exception_is_a_422_and_nothing_is_written(
        self, raw_writer: httpx.AsyncClient, source: str
    ) -> None:
        from services.referrals.models import platform

        event_id = uuid.uuid4().hex
        response = await raw_writer.post(f"/test/raw-write/{source}", params={"event_id": event_id})

        assert_problem(response, 422, "unprocessable_input")
        app = raw_writer.app_for_tests  # type: ignore[attr-defined]
        async with app.state.sessionmaker() as session:
            left = await session.scalar(
                select(func.count())
                .select_from(platform.inbox)
                .where(platform.inbox.c.event_id == event_id)
            )
        assert left == 0

    async def test_a_500_carries_the_request_id_and_the_service_name(
        self, raw_writer: httpx.AsyncClient
    ) -> None:
        # The same event id twice is a primary-key violation: a bug, not bad input.
        event_id = uuid.uuid4().hex
        response = await raw_writer.post(
            f"/test/raw-write/ok-{event_id}", params={"event_id": event_id}
        )
        problem = assert_problem(response, 500, "internal_error")
        assert response.headers["x-served-by"] == "referrals"
        assert "duplicate" not in json.dumps(problem)


class TestSafeStr:
    @settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.text())
    def test_safe_text_is_exactly_what_the_database_can_store_on_one_line(self, text: str) -> None:
        from pydantic import TypeAdapter, ValidationError

        adapter = TypeAdapter(SafeStr)
        storable = all(
            ch >= " " and not ("\x7f" <= ch <= "\x9f") and not ("\ud800" <= ch <= "\udfff")
            for ch in text
        )
        errors = []
        try:
            adapter.validate_python(text)
        except ValidationError as exc:
            errors = exc.errors()
        accepted = not errors
        if errors and text:
            assert text not in str(errors[0]["msg"])
        assert accepted == storable
        assert (unstorable_reason(text) is None) == storable
