"""Provider webhooks: verify the Stripe signature, store the event once, apply it.

Stripe signs ``t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`` in the
``Stripe-Signature`` header; the simulated provider signs its events the same way with its
own secret. Verification is the SDK's (``stripe.WebhookSignature.verify_header``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import stripe
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from shared.payments import _repository as repo
from shared.payments._errors import WebhookPayloadInvalid, WebhookSignatureInvalid
from shared.payments._service import PaymentContext, apply_webhook_event

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


@dataclass(frozen=True)
class WebhookResult:
    event_id: str
    event_type: str
    status: Literal["applied", "duplicate", "ignored", "unknown_object", "stale"]


def verify_signature(
    body: bytes, header: str | None, secret: str, *, tolerance: int = TOLERANCE_SECONDS
) -> None:
    if not secret or not secret.strip():
        # An empty secret verifies against an empty key, which anyone can forge.
        raise WebhookSignatureInvalid("no webhook secret is configured: every event is refused")
    if not header:
        raise WebhookSignatureInvalid(f"the {SIGNATURE_HEADER} header is missing")
    try:
        payload = body.decode("utf-8")
        stripe.WebhookSignature.verify_header(payload, header, secret, tolerance)
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as exc:
        raise WebhookSignatureInvalid(str(exc).split("\n", 1)[0]) from exc


def _parse(body: bytes) -> dict[str, Any]:
    try:
        event = json.loads(body)
    except ValueError as exc:
        raise WebhookPayloadInvalid("the body is not JSON") from exc
    if not isinstance(event, dict) or event.get("object") != "event":
        raise WebhookPayloadInvalid("the body is not an event object")
    data = event.get("data")
    if (
        not isinstance(event.get("id"), str)
        or not isinstance(event.get("type"), str)
        or not isinstance(event.get("created"), int)
        or not isinstance(data, dict)
        or not isinstance(data.get("object"), dict)
    ):
        raise WebhookPayloadInvalid("an event needs id, type, created and data.object")
    return event


async def handle_webhook(
    session: AsyncSession, ctx: PaymentContext, body: bytes, signature: str | None
) -> WebhookResult:
    verify_signature(body, signature, ctx.provider.webhook_secret)
    event = _parse(body)
    obj = event["data"]["object"]
    inserted = await repo.insert_inbox(
        session,
        ctx.tables,
        provider=ctx.provider.name,
        event_id=event["id"],
        event_type=event["type"],
        object_id=obj.get("id") if isinstance(obj.get("id"), str) else None,
        event_created_at=datetime.fromtimestamp(event["created"], UTC),
        payload=event,
    )
    if not inserted:
        return WebhookResult(event["id"], event["type"], "duplicate")
    outcome = await apply_webhook_event(session, ctx, event)
    await repo.set_inbox_outcome(session, ctx.tables, ctx.provider.name, event["id"], outcome)
    if outcome != "applied":
        _log.info("webhook_not_applied", event_id=event["id"], type=event["type"], outcome=outcome)
    return WebhookResult(event["id"], event["type"], outcome)
