"""Reconciliation: our payments against the provider's, listed and (with repair) fixed."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from shared.payments import _repository as repo
from shared.payments._errors import (
    PaymentProviderRejected,
)
from shared.payments._provider import (
    ProviderNotFound,
)
from shared.payments._state import (
    Discrepancy,
    PaymentContext,
    _apply_payment,
    _locked,
    _log,
    _provider_call,
    _record_created,
    _record_intent,
    _uuid_or_none,
    intent_values,
)

# --- reconciliation ---------------------------------------------------------------------


def _state(status: str, captured: int | None, refunded: int | None) -> dict[str, Any]:
    return {"status": status, "amount_captured": captured, "amount_refunded": refunded}


async def reconcile(
    session: AsyncSession,
    ctx: PaymentContext,
    *,
    since: datetime,
    until: datetime,
    repair: bool = False,
) -> list[Discrepancy]:
    """Payments created in [since, until) whose state differs from the provider's, and
    provider payments of this service we have no record of (seen in webhook events we could
    not match). With ``repair``, ours are overwritten with the provider's (status, captured
    amount, refunds) and the missing ones are recorded."""
    t = ctx.tables
    found: list[Discrepancy] = []
    rows = await repo.list_payments_created_between(session, t, ctx.provider.name, since, until)
    for listed in rows:
        # Repairing: lock first, then ask the provider. A webhook that lands meanwhile waits
        # for us, so the snapshot we apply is never older than what the row already holds.
        row = await _locked(session, ctx, listed.id) if repair else listed
        assert row.provider_payment_id is not None
        ours = _state(row.status, row.amount_captured, row.amount_refunded)
        try:
            pp = await _provider_call(ctx.provider.retrieve_payment(row.provider_payment_id))
        except PaymentProviderRejected as exc:
            if not isinstance(exc.__cause__, ProviderNotFound):
                raise
            found.append(
                Discrepancy("missing_at_provider", row.provider_payment_id, row.id, ours, {})
            )
            continue
        theirs = _state(pp.status, pp.amount_captured, pp.amount_refunded)
        differing = tuple(k for k in ours if theirs[k] is not None and ours[k] != theirs[k])
        if not differing:
            continue
        repaired = False
        if repair:
            await _apply_payment(session, ctx, row, pp, source="reconcile", authoritative=True)
            repaired = True
        found.append(
            Discrepancy(
                "mismatch", row.provider_payment_id, row.id, ours, theirs, repaired, differing
            )
        )
    seen: set[str] = set()
    for event in await repo.list_unmatched_events(session, t, ctx.provider.name, since, until):
        obj = event.payload.get("data", {}).get("object", {})
        intent_id = obj.get("id") if obj.get("object") == "payment_intent" else None
        metadata = obj.get("metadata") or {}
        if not intent_id or intent_id in seen or metadata.get("qunbuy_service") != ctx.service:
            continue
        seen.add(intent_id)
        if await repo.get_payment_by_provider_id(session, t, ctx.provider.name, intent_id):
            continue
        pp = await _provider_call(ctx.provider.retrieve_payment(intent_id))
        payment_id = _uuid_or_none(metadata.get("qunbuy_payment_id"))
        repaired = False
        if repair and payment_id is not None:
            await _record_intent(
                session,
                ctx,
                intent_values(
                    ctx,
                    payment_id=payment_id,
                    reference=str(metadata.get("reference", "")),
                    merchant_id=str(metadata.get("merchant_id", "")),
                    customer_id=str(metadata.get("customer_id", "")),
                    amount=pp.amount,
                    currency=pp.currency,
                    method=_method_of(obj),
                    capture_method=pp.capture_method,
                ),
            )
            await _record_created(session, ctx, payment_id, pp)
            repaired = True
        found.append(
            Discrepancy(
                "missing_locally",
                intent_id,
                payment_id,
                {},
                _state(pp.status, pp.amount_captured, pp.amount_refunded),
                repaired,
            )
        )
    if found:
        _log.warning("payments_reconciled", discrepancies=len(found), repaired=repair)
    return found


def _method_of(intent: Mapping[str, Any]) -> str:
    types = intent.get("payment_method_types")
    if isinstance(types, list) and types and types[0] in ("card", "wechat_pay", "alipay"):
        return str(types[0])
    return "card"
