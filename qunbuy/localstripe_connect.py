"""localstripe with the part of Stripe Connect that payouts use: a stand-in for tests.

    python -m qunbuy.localstripe_connect --port 8420 [--from-scratch]

localstripe (the stateful fake Stripe server the tests run the real ``stripe`` SDK against)
has no Connect: no ``/v1/accounts``, no ``/v1/transfers``. No local Stripe Connect exists,
so this module starts localstripe's own aiohttp application (``localstripe.server.app``,
with its middlewares: authentication, errors, its webhook delivery) and adds the few routes
the payout path calls, keeping localstripe's behaviour for everything else:

- ``POST /v1/accounts``, ``GET /v1/accounts/{id}``: an account is created, and any
  well-formed ``acct_`` id is accepted as an existing account;
- ``POST /v1/transfers`` (the ``Idempotency-Key`` is honoured as Stripe does: the same key
  and parameters replay the first answer with ``Idempotent-Replayed: true``, other
  parameters are an ``idempotency_error``), ``GET /v1/transfers/{id}``, ``GET /v1/transfers``
  (``destination``, ``transfer_group``, ``limit``);
- ``POST /v1/transfers/{id}/reversals``: all or part of a transfer back; ``transfer.reversed``
  is sent to localstripe's registered webhooks.

Two destinations behave badly on purpose (shared.payments, the same as the simulated
provider): :data:`FAILING_PAYOUT_ACCOUNT` refuses transfers (400,
``insufficient_capabilities_for_transfer``, as Stripe answers for an account that cannot take
transfers), and :data:`REVERSING_PAYOUT_ACCOUNT` takes them and reverses them a moment later.

It is a test stand-in (docs/payments.md, "Payouts"): state lives in memory, and only the
fields our code and Stripe's documented Transfer object share are modelled.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from localstripe import server as localstripe
from localstripe.webhooks import schedule_webhook

from shared.payments import (
    FAILING_PAYOUT_ACCOUNT,
    FAILING_PAYOUT_CODE,
    REVERSING_PAYOUT_ACCOUNT,
)

__all__ = ["install", "main"]

API_VERSION = "2025-03-31.basil"
REVERSE_AFTER_SECONDS = 0.5
_ACCOUNT_ID = re.compile(r"^acct_[A-Za-z0-9]{6,64}$")


class _State:
    def __init__(self) -> None:
        self.accounts: dict[str, dict[str, Any]] = {}
        self.transfers: dict[str, dict[str, Any]] = {}
        # Idempotency key -> (request hash, status, body), as Stripe keeps them.
        self.requests: dict[str, tuple[str, int, dict[str, Any]]] = {}


_state = _State()


class _Event:
    """An event in the shape localstripe's webhook sender takes (``_export``, ``created``)."""

    def __init__(self, event_type: str, obj: dict[str, Any]) -> None:
        self.id = f"evt_{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.type = event_type
        self._object = json.loads(json.dumps(obj))

    def _export(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "event",
            "api_version": API_VERSION,
            "created": self.created,
            "livemode": False,
            "pending_webhooks": 1,
            "type": self.type,
            "data": {"object": self._object},
        }


def _json(body: dict[str, Any], status: int = 200, **headers: str) -> web.Response:
    return web.json_response(body, status=status, headers=headers or None)


def _error(
    status: int, message: str, *, code: str | None = None, kind: str = "invalid_request_error"
) -> dict[str, Any]:
    error: dict[str, Any] = {"type": kind, "message": message}
    if code is not None:
        error["code"] = code
    return {"error": error}


def _account(account_id: str) -> dict[str, Any]:
    found = _state.accounts.get(account_id)
    if found is None:
        able = account_id != FAILING_PAYOUT_ACCOUNT
        found = {
            "id": account_id,
            "object": "account",
            "type": "express",
            "charges_enabled": able,
            "payouts_enabled": able,
            "capabilities": {"transfers": "active" if able else "inactive"},
            "created": int(time.time()),
            "metadata": {},
        }
        _state.accounts[account_id] = found
    return found


Answer = tuple[int, dict[str, Any]]


async def _idempotent(
    request: web.Request, make: Callable[[dict[str, Any]], Answer], *, scope: str
) -> web.Response:
    """Runs ``make(data) -> (status, body)`` once per Idempotency-Key (Stripe keeps errors
    too, except 5xx). aiohttp runs one handler step at a time, and ``make`` never awaits, so
    two requests with one key cannot both run it."""
    data = await localstripe.get_post_data(request) or {}
    key = request.headers.get("Idempotency-Key")
    digest = hashlib.sha256(
        json.dumps([scope, data], sort_keys=True, default=str).encode()
    ).hexdigest()
    if key is not None and key in _state.requests:
        stored_hash, status, body = _state.requests[key]
        if stored_hash != digest:
            return _json(
                _error(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters "
                    "they were first used with.",
                    kind="idempotency_error",
                ),
                400,
            )
        return _json(body, status, **{"Idempotent-Replayed": "true"})
    status, body = make(data)
    if key is not None and status < 500:
        _state.requests[key] = (digest, status, body)
    return _json(body, status)


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _new_transfer(data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    amount = _int(data.get("amount"))
    currency = data.get("currency")
    destination = data.get("destination")
    metadata = data.get("metadata") or {}
    if amount is None or amount <= 0:
        return 400, _error(400, "Invalid positive integer", code="parameter_invalid_integer")
    if not isinstance(currency, str) or len(currency) != 3:
        return 400, _error(400, "Invalid currency", code="parameter_invalid_empty")
    if not isinstance(metadata, dict):
        return 400, _error(400, "Invalid metadata", code="parameter_invalid_empty")
    if not isinstance(destination, str) or _ACCOUNT_ID.fullmatch(destination) is None:
        return 400, _error(400, f"No such destination: '{destination}'", code="resource_missing")
    account = _account(destination)
    if account["capabilities"]["transfers"] != "active":
        return 400, _error(
            400,
            "Your destination account needs to have at least one of the following "
            "capabilities enabled: transfers, crypto_transfers, legacy_payments",
            code=FAILING_PAYOUT_CODE,
        )
    transfer_id = f"tr_{secrets.token_hex(12)}"
    transfer = {
        "id": transfer_id,
        "object": "transfer",
        "amount": amount,
        "amount_reversed": 0,
        "created": int(time.time()),
        "currency": currency.lower(),
        "description": data.get("description"),
        "destination": destination,
        "livemode": False,
        "metadata": {str(k): str(v) for k, v in metadata.items()},
        "reversals": {
            "object": "list",
            "data": [],
            "has_more": False,
            "url": f"/v1/transfers/{transfer_id}/reversals",
        },
        "reversed": False,
        "transfer_group": data.get("transfer_group"),
    }
    _state.transfers[transfer_id] = transfer
    schedule_webhook(_Event("transfer.created", transfer))
    if destination == REVERSING_PAYOUT_ACCOUNT:
        asyncio.get_running_loop().call_later(
            REVERSE_AFTER_SECONDS, _reverse, transfer_id, None, {}
        )
    return 200, dict(transfer)


def _reverse(
    transfer_id: str, amount: int | None, metadata: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    transfer = _state.transfers.get(transfer_id)
    if transfer is None:
        return 404, _error(404, f"No such transfer: '{transfer_id}'", code="resource_missing")
    remaining = int(transfer["amount"]) - int(transfer["amount_reversed"])
    amount = remaining if amount is None else amount
    if not 0 < amount <= remaining:
        return 400, _error(
            400,
            f"You cannot reverse {amount}: {remaining} of this transfer is left.",
            code="amount_too_large",
        )
    reversal = {
        "id": f"trr_{secrets.token_hex(12)}",
        "object": "transfer_reversal",
        "amount": amount,
        "created": int(time.time()),
        "currency": transfer["currency"],
        "metadata": {str(k): str(v) for k, v in metadata.items()},
        "transfer": transfer_id,
    }
    transfer["amount_reversed"] = int(transfer["amount_reversed"]) + amount
    transfer["reversed"] = transfer["amount_reversed"] == transfer["amount"]
    transfer["reversals"]["data"].append(reversal)
    schedule_webhook(_Event("transfer.reversed", transfer))
    return 200, reversal


async def create_account(request: web.Request) -> web.Response:
    def make(data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        account = _account(f"acct_{secrets.token_hex(8)}")
        metadata = data.get("metadata")
        if isinstance(metadata, dict):
            account["metadata"] = {str(k): str(v) for k, v in metadata.items()}
        return 200, account

    return await _idempotent(request, make, scope="account")


async def retrieve_account(request: web.Request) -> web.Response:
    account_id = request.match_info["id"]
    if _ACCOUNT_ID.fullmatch(account_id) is None:
        return _json(_error(404, f"No such account: '{account_id}'", code="resource_missing"), 404)
    return _json(_account(account_id))


async def create_transfer(request: web.Request) -> web.Response:
    return await _idempotent(request, _new_transfer, scope="transfer")


async def retrieve_transfer(request: web.Request) -> web.Response:
    transfer = _state.transfers.get(request.match_info["id"])
    if transfer is None:
        message = f"No such transfer: '{request.match_info['id']}'"
        return _json(_error(404, message, code="resource_missing"), 404)
    return _json(transfer)


async def list_transfers(request: web.Request) -> web.Response:
    query = request.query
    found = [
        t
        for t in reversed(_state.transfers.values())
        if query.get("destination") in (None, t["destination"])
        and query.get("transfer_group") in (None, t["transfer_group"])
    ]
    limit = _int(query.get("limit")) or 10
    return _json(
        {
            "object": "list",
            "url": "/v1/transfers",
            "has_more": len(found) > limit,
            "data": found[:limit],
        }
    )


async def create_reversal(request: web.Request) -> web.Response:
    transfer_id = request.match_info["id"]

    def make(data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        amount = None if data.get("amount") is None else _int(data.get("amount"))
        if data.get("amount") is not None and amount is None:
            return 400, _error(400, "Invalid positive integer", code="parameter_invalid_integer")
        metadata = data.get("metadata") or {}
        return _reverse(transfer_id, amount, metadata if isinstance(metadata, dict) else {})

    return await _idempotent(request, make, scope=f"reversal:{transfer_id}")


def install(app: web.Application) -> None:
    """Adds the Connect routes to localstripe's application (before it starts)."""
    app.router.add_post("/v1/accounts", create_account)
    app.router.add_get("/v1/accounts/{id}", retrieve_account)
    app.router.add_post("/v1/transfers", create_transfer)
    app.router.add_get("/v1/transfers", list_transfers)
    app.router.add_get("/v1/transfers/{id}", retrieve_transfer)
    app.router.add_post("/v1/transfers/{id}/reversals", create_reversal)


def main() -> None:
    install(localstripe.app)
    localstripe.start()  # localstripe's own start: --port, --from-scratch


if __name__ == "__main__":
    main()
