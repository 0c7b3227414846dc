"""Provider webhooks: verify the Stripe signature, store the event once, apply it.

Stripe signs ``t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`` in the
``Stripe-Signature`` header; the simulated provider signs its events the same way with its
own secret. Verification is the SDK's (``stripe.WebhookSignature.verify_header``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

import structlog

from shared.payments import _repository as repo
from shared.payments._errors import (
    PaymentProviderUnavailable,
    WebhookPayloadInvalid,
    WebhookSignatureInvalid,
)
from shared.payments._provider import ProviderPayment
from shared.payments._state import PaymentContext, _provider_call
from shared.payments._webhook_handlers import NeedsSnapshot, apply_webhook_event
from shared.text import unstorable_reason

__all__ = [
    "SIGNATURE_HEADER",
    "TOLERANCE_SECONDS",
    "WebhookResult",
    "handle_webhook",
    "verify_signature",
]

SIGNATURE_HEADER = "Stripe-Signature"
TOLERANCE_SECONDS = 300
_log = structlog.get_logger("qunbuy.payments.webhooks")


Outcome = Literal["applied", "duplicate", "ignored", "unknown_object", "stale", "invalid"]


@dataclass(frozen=True)
class WebhookResult:
    event_id: str
    event_type: str
    status: Outcome


def verify_signature(
    body: bytes, header: str | None, secret: str, *, tolerance: int = TOLERANCE_SECONDS
) -> None:
    if not secret or not secret.strip():
        # An empty secret verifies against an empty key, which anyone can forge.
        raise WebhookSignatureInvalid("no webhook secret is configured: every event is refused")
    if not header:
        raise WebhookSignatureInvalid(f"the {SIGNATURE_HEADER} header is missing")
    import stripe  # the SDK's verification; imported on first use (a large import)

    try:
        payload = body.decode("utf-8")
        stripe.WebhookSignature.verify_header(payload, header, secret, tolerance)
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as exc:
        raise WebhookSignatureInvalid(str(exc).split("\n", 1)[0]) from exc


# A Stripe event nests a few levels; anything deeper is not an event (and JSON nested without
# bound exhausts the parser's stack).
_MAX_DEPTH = 32
# datetime's range ends in the year 9999.
_MAX_CREATED = 253_402_300_799


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _too_deep(value: Any) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > _MAX_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def _unstorable(value: Any) -> bool:
    """Text anywhere in the event that the inbox's JSONB column cannot hold."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item or any("\ud800" <= ch <= "\udfff" for ch in item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _id_like(value: Any, *, limit: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit and unstorable_reason(value) is None


def _parse(body: bytes) -> dict[str, Any]:
    """The event, checked to have the shape and sizes the inbox stores; anything else is
    refused (400) before the database sees it."""
    try:
        event = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise WebhookPayloadInvalid("the body is not JSON") from exc
    if not isinstance(event, dict) or event.get("object") != "event":
        raise WebhookPayloadInvalid("the body is not an event object")
    if _too_deep(event) or _unstorable(event):
        raise WebhookPayloadInvalid("the event is nested too deeply or holds unstorable text")
    data = event.get("data")
    created = event.get("created")
    if (
        not _id_like(event.get("id"), limit=255)
        or not _id_like(event.get("type"), limit=100)
        or not isinstance(created, int)
        or isinstance(created, bool)
        or not 0 <= created <= _MAX_CREATED
        or not isinstance(data, dict)
        or not isinstance(data.get("object"), dict)
    ):
        raise WebhookPayloadInvalid(
            "an event needs an id (at most 255 characters), a type, a valid created time and "
            "data.object"
        )
    return event


async def handle_webhook(ctx: PaymentContext, body: bytes, signature: str | None) -> WebhookResult:
    """Verifies, records once and applies a provider event, each attempt in a short
    transaction of its own. An event that needs the provider's current view of a payment
    rolls its attempt back, the view is read with no transaction open, and the event is
    applied again with it: no connection or row lock is held while the provider answers."""
    verify_signature(body, signature, ctx.provider.webhook_secret)
    event = _parse(body)
    snapshot: ProviderPayment | None = None
    for _ in range(3):
        try:
            return await _record_and_apply(ctx, event, snapshot)
        except NeedsSnapshot as need:
            snapshot = await _provider_call(ctx.provider.retrieve_payment(need.provider_payment_id))
    # The payment kept changing under us: the provider resends the event later.
    raise PaymentProviderUnavailable("the payment changed while the event was applied")


async def _record_and_apply(
    ctx: PaymentContext, event: dict[str, Any], snapshot: ProviderPayment | None
) -> WebhookResult:
    obj = event["data"]["object"]
    object_id = obj.get("id")
    async with ctx.transaction() as session:
        inserted = await repo.insert_inbox(
            session,
            ctx.tables,
            provider=ctx.provider.name,
            event_id=event["id"],
            event_type=event["type"],
            object_id=object_id if _id_like(object_id, limit=255) else None,
            event_created_at=datetime.fromtimestamp(event["created"], UTC),
            payload=event,
        )
        if not inserted:
            return WebhookResult(event["id"], event["type"], "duplicate")
        try:
            async with session.begin_nested():
                outcome: str = await apply_webhook_event(session, ctx, event, snapshot=snapshot)
        except (KeyError, TypeError, ValueError, OverflowError):
            # A signed event whose object is not the shape its type promises: kept in the
            # inbox for whoever investigates, and acknowledged so the provider stops resending.
            _log.warning("webhook_invalid_object", event_id=event["id"], type=event["type"])
            outcome = "invalid"
        await repo.set_inbox_outcome(session, ctx.tables, ctx.provider.name, event["id"], outcome)
    if outcome != "applied":
        _log.info("webhook_not_applied", event_id=event["id"], type=event["type"], outcome=outcome)
    return WebhookResult(event["id"], event["type"], cast(Outcome, outcome))
