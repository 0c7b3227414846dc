"""Errors become RFC 9457 problem+json with a stable code, the request id and no internals."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
import structlog
from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel

import shared.errors
from shared.errors import (
    PROBLEM_JSON,
    Conflict,
    DomainError,
    NotFound,
    Unauthorized,
    install_error_handlers,
    responses,
)
from shared.money import Money, UnknownCurrency
from shared.observability import RequestContextMiddleware, configure_logging

HEX32 = re.compile(r"^[0-9a-f]{32}$")
SECRET = "s3cr3t-connection-string-password"


class PresaleSoldOut(Conflict):
    code = "presale_sold_out"
    title = "This pre-sale is sold out"


class PledgeBelowReward(DomainError):
    status = 422
    code = "pledge_amount_below_reward"
    title = "The pledge is below the reward's minimum"


class OrderIn(BaseModel):
    quantity: int
    price: Money


def build_app() -> FastAPI:
    """A tiny app wired the way shared.app and the gateway wire theirs."""
    app = FastAPI(title="errors under test")
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, service="errors-test")

    @app.post(
        "/presales/{presale_id}/orders",
        responses=responses(PresaleSoldOut, Conflict, NotFound, PledgeBelowReward, UnknownCurrency),
    )
    async def order(presale_id: int, body: OrderIn) -> dict[str, int]:
        if presale_id == 404:
            raise NotFound(f"presale {presale_id} does not exist")
        if body.quantity > 10:
            raise PresaleSoldOut("only 10 left", remaining=10)
        if body.price.amount < 100:
            raise PledgeBelowReward()
        return {"quantity": body.quantity}

    @app.get("/search")
    async def search(limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, int]:
        return {"limit": limit}

    @app.get("/private")
    async def private() -> None:
        raise Unauthorized("sign in first")

    @app.get("/teapot")
    async def teapot() -> None:
        raise HTTPException(status_code=418, detail="short and stout")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(f"could not connect with {SECRET}")

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # raise_app_exceptions=False: Starlette re-raises an unhandled error after sending the
    # 500; a real server swallows it the same way.
    transport = httpx.ASGITransport(app=build_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def assert_problem(response: httpx.Response, status: int, code: str, path: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == "about:blank"
    assert isinstance(body["title"], str)
    assert body["title"]
    assert body["instance"] == path
    # The id in the body is the one in the header, so a caller can quote either.
    assert HEX32.match(body["request_id"]), body
    assert response.headers["x-request-id"] == body["request_id"]
    return body


async def test_domain_error_becomes_problem_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/presales/7/orders", json={"quantity": 11, "price": {"amount": 500, "currency": "CNY"}}
    )
    body = assert_problem(response, 409, "presale_sold_out", "/presales/7/orders")
    assert body["title"] == "This pre-sale is sold out"
    assert body["detail"] == "only 10 left"
    assert body["remaining"] == 10  # extra fields of the error are part of the problem


async def test_domain_error_without_detail(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/presales/7/orders", json={"quantity": 1, "price": {"amount": 50, "currency": "CNY"}}
    )
    body = assert_problem(response, 422, "pledge_amount_below_reward", "/presales/7/orders")
    assert body["title"] == "The pledge is below the reward's minimum"
    assert "detail" not in body


async def test_not_found_domain_error(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/presales/404/orders", json={"quantity": 1, "price": {"amount": 500, "currency": "CNY"}}
    )
    body = assert_problem(response, 404, "not_found", "/presales/404/orders")
    assert body["detail"] == "presale 404 does not exist"


async def test_unauthorized_asks_for_a_bearer_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/private")
    assert_problem(response, 401, "unauthorized", "/private")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_given_request_id_is_echoed_in_the_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/private", headers={"X-Request-ID": "gw-abc.123"})
    assert response.status_code == 401
    assert response.json()["request_id"] == "gw-abc.123"
    assert response.headers["x-request-id"] == "gw-abc.123"


async def test_validation_error_lists_field_paths(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/presales/7/orders",
        json={"quantity": "many", "price": {"amount": 1.5, "currency": "CNY"}},
    )
    body = assert_problem(response, 422, "validation_error", "/presales/7/orders")
    paths = sorted(e["path"] for e in body["errors"])
    assert paths == ["body.price.amount", "body.quantity"]
    for error in body["errors"]:
        assert error["message"]
        assert error["type"]
    assert "body.quantity" in body["detail"]


async def test_validation_error_for_missing_fields_and_bad_path(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/presales/seven/orders", json={"price": {"amount": 100}})
    body = assert_problem(response, 422, "validation_error", "/presales/seven/orders")
    by_path = {e["path"]: e["type"] for e in body["errors"]}
    assert by_path == {
        "path.presale_id": "int_parsing",
        "body.quantity": "missing",
        "body.price.currency": "missing",
    }


async def test_validation_error_for_query_and_malformed_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/search", params={"limit": "0"})
    body = assert_problem(response, 422, "validation_error", "/search")
    assert [e["path"] for e in body["errors"]] == ["query.limit"]

    response = await client.post(
        "/presales/7/orders", content=b'{"quantity": ', headers={"content-type": "application/json"}
    )
    body = assert_problem(response, 422, "validation_error", "/presales/7/orders")
    assert body["errors"][0]["type"] == "json_invalid"


async def test_unknown_currency_in_a_body_is_its_own_code(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/presales/7/orders", json={"quantity": 1, "price": {"amount": 500, "currency": "XYZ"}}
    )
    assert_problem(response, 422, "unknown_currency", "/presales/7/orders")


async def test_unknown_path_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/no/such/thing")
    body = assert_problem(response, 404, "not_found", "/no/such/thing")
    assert body["title"] == "Not found"
    assert "detail" not in body  # Starlette's "Not Found" says nothing the title does not


async def test_wrong_method_is_a_405_problem(client: httpx.AsyncClient) -> None:
    response = await client.delete("/search")
    body = assert_problem(response, 405, "method_not_allowed", "/search")
    assert body["title"] == "Method not allowed"
    assert response.headers["allow"] == "GET"


async def test_other_http_exceptions_keep_their_status_and_detail(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/teapot")
    body = assert_problem(response, 418, "http_error", "/teapot")
    assert body["detail"] == "short and stout"


async def test_unexpected_error_is_a_500_without_internals(client: httpx.AsyncClient) -> None:
    response = await client.get("/boom")
    body = assert_problem(response, 500, "internal_error", "/boom")
    assert body["title"] == "Internal server error"
    assert set(body) == {"type", "title", "status", "code", "detail", "instance", "request_id"}
    for leak in (SECRET, "RuntimeError", "Traceback", ".py"):
        assert leak not in response.text


async def test_unexpected_error_is_logged_with_the_request_id(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The id in the 500 response finds the log line that holds the traceback."""
    configure_logging("errors-test", "INFO")
    # A fresh logger proxy: the module's own may be cached on a stream of an earlier test.
    monkeypatch.setattr(shared.errors, "_log", structlog.get_logger("qunbuy.errors"))
    try:
        transport = httpx.ASGITransport(app=build_app(), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.get("/boom", headers={"X-Request-ID": "find-me-42"})
        assert response.status_code == 500
        assert response.json()["request_id"] == "find-me-42"
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    finally:
        with capsys.disabled():
            configure_logging("tests", "WARNING")  # later tests log to a stream that stays open
    errors = [line for line in lines if line.get("event") == "unhandled_error"]
    assert len(errors) == 1, lines
    assert errors[0]["request_id"] == "find-me-42"
    assert errors[0]["level"] == "error"
    assert SECRET in errors[0]["exception"]  # the log has what the response must not


def test_responses_declare_errors_in_openapi() -> None:
    document = build_app().openapi()
    operation = document["paths"]["/presales/{presale_id}/orders"]["post"]
    declared = operation["responses"]
    assert set(declared) == {"200", "404", "409", "422"}
    assert declared["409"]["description"] == "`presale_sold_out`, `conflict`"
    assert declared["404"]["description"] == "`not_found`"
    assert declared["422"]["description"] == "`pledge_amount_below_reward`, `unknown_currency`"
    for status in ("404", "409", "422"):
        content = declared[status]["content"]
        assert content[PROBLEM_JSON]["schema"] == {"$ref": "#/components/schemas/Problem"}
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"title", "status", "code"}
    assert {"type", "detail", "instance", "request_id", "errors"} <= set(problem["properties"])
    # Endpoints that declare nothing get nothing extra.
    assert "409" not in document["paths"]["/search"]["get"]["responses"]


def test_responses_groups_by_status() -> None:
    out = responses(NotFound, PresaleSoldOut, NotFound)
    assert set(out) == {404, 409}
    assert out[404]["description"] == "`not_found`"  # declared twice, listed once
    assert out[404]["x-problem-codes"] == ["not_found"]
    assert out[409]["description"] == "`presale_sold_out`"
    assert responses() == {}
