"""The payment layer's business rules. SQL lives in ``_repository``; nothing here commits.

A payment follows its provider PaymentIntent. Its status only moves along the intent's
state machine (docs/payments.md draws it), so a stale snapshot (an old webhook, a replayed
API response) can never move it back; the reconciliation is the one writer that may
overwrite it with what the provider says now.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.events import EventPublisher, contracts
from shared.money import normalize_currency
from shared.payments import _repository as repo
from shared.payments._errors import (
    CaptureAmountInvalid,
    CaptureMethodUnsupported,
    PaymentAmountAboveMaximum,
    PaymentAmountInvalid,
    PaymentMethodUnavailable,
    PaymentNotCancelable,
    PaymentNotCapturable,
    PaymentNotConfirmable,
    PaymentNotFound,
    PaymentNotRefundable,
    PaymentProviderRejected,
    PaymentProviderUnavailable,
    PaymentSetupNotFound,
    PaymentSetupNotUsable,
    PaymentSimulationUnavailable,
    RefundAmountInvalid,
    RefundExceedsRefundable,
)
from shared.payments._hooks import ChangeKind, PaymentChange, PaymentHooks
from shared.payments._messages import customer_message
from shared.payments._provider import (
    CaptureMethod,
    Method,
    PaymentProvider,
    PaymentRequest,
    ProviderError,
    ProviderNotFound,
    ProviderPayment,
    ProviderRefund,
    ProviderSetup,
    ProviderUnavailable,
    dispute_from_object,
    payment_from_intent,
    refund_from_object,
    setup_from_intent,
)
from shared.payments._repository import PaymentRow, RefundRow, SetupRow, StatusChangeRow
from shared.payments._simulated import SimulatedProvider
from shared.payments.tables import PaymentTables

__all__ = [
    "Discrepancy",
    "PaymentContext",
    "PaymentView",
    "apply_webhook_event",
    "cancel_payment",
    "capture_payment",
    "charge_off_session",
    "complete_simulated_action",
    "confirm_payment",
    "create_payment",
    "create_setup",
    "get_payment_view",
    "get_setup",
    "idempotency_key",
    "new_payment_id",
    "new_setup_id",
    "reconcile",
    "refund_payment",
]

_log = structlog.get_logger("qunbuy.payments")
T = TypeVar("T")
# Fixed namespace of the platform's deterministic ids (uuid5).
_NAMESPACE = uuid.UUID("6f1c3f0e-58a4-4f7e-9a51-2b7f0c9f4a11")
TERMINAL = frozenset({"succeeded", "canceled"})
# Recorded, the provider not asked yet (or its answer not recorded): a retry resumes it.
CREATING = "creating"
CONFIRMABLE = ("requires_payment_method", "requires_confirmation")
CANCELABLE = (
    "requires_payment_method",
    "requires_confirmation",
    "requires_action",
    "requires_capture",
)
_CLOSED_DISPUTES = frozenset({"won", "lost", "warning_closed"})
Source = Literal["api", "webhook", "reconcile"]


@dataclass(frozen=True)
class PaymentContext:
    """What the payment functions need from the service they run in.

    ``sessionmaker`` opens the short transactions of the money path: no transaction (and no
    pooled connection, and no row lock) is held while the provider is called.
    """

    service: str
    tables: PaymentTables
    provider: PaymentProvider
    publisher: EventPublisher
    max_amount: int
    sessionmaker: async_sessionmaker[AsyncSession]
    hooks: PaymentHooks = field(default_factory=PaymentHooks)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as session, session.begin():
            yield session


@dataclass(frozen=True)
class PaymentView:
    payment: PaymentRow
    refunds: list[RefundRow]
    history: list[StatusChangeRow]


@dataclass(frozen=True)
class Discrepancy:
    """A payment whose state in our database differs from the provider's."""

    kind: Literal["mismatch", "missing_locally", "missing_at_provider"]
    provider_payment_id: str
    payment_id: uuid.UUID | None
    ours: Mapping[str, Any]
    theirs: Mapping[str, Any]
    repaired: bool = False
    fields: tuple[str, ...] = field(default=())


# --- ids and keys -----------------------------------------------------------------------


def _derived_id(*parts: str) -> uuid.UUID:
    # JSON keeps the parts apart: ("a|b", "c") and ("a", "b|c") must not meet.
    return uuid.uuid5(_NAMESPACE, json.dumps(parts))


def new_payment_id(service: str, *parts: str) -> uuid.UUID:
    """A payment id derived from what it pays and the caller's request key, so that a
    retried request or job lands on the same payment (and the same provider keys)."""
    return _derived_id(service, "payment", *parts)


def new_setup_id(service: str, customer_id: str, request_key: str) -> uuid.UUID:
    return _derived_id(service, "setup", customer_id, request_key)


def _refund_id(payment_id: uuid.UUID, request_key: str) -> uuid.UUID:
    return _derived_id("refund", str(payment_id), request_key)


def idempotency_key(service: str, kind: str, object_id: uuid.UUID | str, action: str) -> str:
    """The provider idempotency key of one action on one of our objects."""
    return f"qunbuy:{service}:{kind}:{object_id}:{action}"


# --- helpers ----------------------------------------------------------------------------


async def _provider_call(call: Awaitable[T]) -> T:
    try:
        return await call
    except ProviderUnavailable as exc:
        raise PaymentProviderUnavailable(exc.message) from exc
    except ProviderError as exc:
        raise PaymentProviderRejected(exc.message, provider_code=exc.code) from exc


def _check_amount(ctx: PaymentContext, amount: int, currency: str) -> str:
    code = normalize_currency(currency)
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise PaymentAmountInvalid("amount must be a positive integer of minor units")
    if amount > ctx.max_amount:
        raise PaymentAmountAboveMaximum(
            f"{amount} is above the maximum of {ctx.max_amount} minor units",
            maximum=ctx.max_amount,
        )
    return code


def _metadata(ctx: PaymentContext, payment_id: uuid.UUID, **extra: str) -> dict[str, str]:
    return {"qunbuy_service": ctx.service, "qunbuy_payment_id": str(payment_id), **extra}


async def _check_method_owner(
    session: AsyncSession, ctx: PaymentContext, customer_id: str, payment_method: str
) -> None:
    """A saved payment method pays only for the customer who saved it. One-off methods (test
    tokens, a method the client just created) are the provider's to accept or refuse; the
    simulated provider's saved methods exist only through our setups."""
    owners = await repo.setup_owners_of_method(
        session, ctx.tables, ctx.provider.name, payment_method
    )
    if owners and customer_id not in owners:
        raise PaymentMethodUnavailable()
    if not owners and payment_method.startswith("pm_sim_"):
        raise PaymentMethodUnavailable()


async def _locked(session: AsyncSession, ctx: PaymentContext, payment_id: uuid.UUID) -> PaymentRow:
    row = await repo.get_payment(session, ctx.tables, payment_id, for_update=True)
    if row is None:
        raise PaymentNotFound()
    return row


def _transition_allowed(current: str, new: str, *, failed: bool) -> bool:
    """Whether a snapshot in ``new`` may follow ``current`` (PaymentIntent state machine)."""
    if current == new or current in TERMINAL:
        return False
    if new == "requires_payment_method":
        # Only a failed attempt hands the intent back to the customer.
        return failed
    if new == "requires_confirmation":
        return current == "requires_payment_method"
    if new == "requires_action":
        return current in CONFIRMABLE
    if new == "processing":
        return current in (*CONFIRMABLE, "requires_action")
    if new == "requires_capture":
        return current in (*CONFIRMABLE, "requires_action", "processing")
    return new in TERMINAL


def _payment_event(row: PaymentRow, **extra: Any) -> dict[str, Any]:
    return {
        "payment_id": str(row.id),
        "reference": row.reference,
        "merchant_id": row.merchant_id,
        "customer_id": row.customer_id,
        "provider": row.provider,
        "provider_payment_id": row.provider_payment_id,
        "currency": row.currency,
        "amount": row.amount,
        "amount_captured": row.amount_captured,
        "amount_refunded": row.amount_refunded,
        **extra,
    }


_CONTRACTS: dict[ChangeKind, type[contracts.PaymentEvent]] = {
    "succeeded": contracts.PaymentSucceeded,
    "canceled": contracts.PaymentCanceled,
    "failed": contracts.PaymentFailed,
    "refunded": contracts.PaymentRefunded,
    "refund_failed": contracts.PaymentRefundFailed,
    "disputed": contracts.PaymentDisputed,
    "dispute_closed": contracts.PaymentDisputeClosed,
}


async def _announce(
    session: AsyncSession,
    ctx: PaymentContext,
    row: PaymentRow,
    kind: ChangeKind,
    **details: Any,
) -> None:
    """A payment changed: its event leaves with this transaction, and the owning domain's
    hook runs in it."""
    await ctx.publisher.publish(session, _CONTRACTS[kind](**_payment_event(row, **details)))
    await ctx.hooks.run(session, PaymentChange(kind=kind, payment=row, details=details))


def _snapshot_values(
    row: PaymentRow, pp: ProviderPayment, *, changed: bool, authoritative: bool
) -> tuple[dict[str, Any], bool]:
    """The columns to update for snapshot ``pp``, and whether it records a new failure."""
    values: dict[str, Any] = {"status": pp.status} if changed else {}
    new_failure = False
    if changed or pp.status == row.status:  # the snapshot describes the current state
        if pp.status == "requires_payment_method" and pp.failure_code is not None:
            if (pp.failure_code, pp.charge_id) != (row.failure_code, row.provider_charge_id):
                new_failure = True
                values["failure_code"] = pp.failure_code
                values["failure_message"] = customer_message(pp.failure_code)
        elif changed and row.failure_code is not None:
            values["failure_code"] = None
            values["failure_message"] = None
        if (pp.next_action or None) != row.next_action:
            values["next_action"] = dict(pp.next_action) if pp.next_action else None
        if pp.payment_method and pp.payment_method != row.payment_method_id:
            values["payment_method_id"] = pp.payment_method
    final_status = pp.status if changed else row.status
    if (
        final_status == "succeeded"
        and pp.amount_captured is not None
        and pp.amount_captured != row.amount_captured
        and (changed or authoritative)
    ):
        values["amount_captured"] = pp.amount_captured
    if pp.charge_id and pp.charge_id != row.provider_charge_id:
        values["provider_charge_id"] = pp.charge_id
    if pp.client_secret and pp.client_secret != row.client_secret:
        values["client_secret"] = pp.client_secret
    return values, new_failure


async def _apply_payment(
    session: AsyncSession,
    ctx: PaymentContext,
    row: PaymentRow,
    pp: ProviderPayment,
    *,
    source: Source,
    event_id: str | None = None,
    event_at: datetime | None = None,
    authoritative: bool = False,
) -> PaymentRow:
    """Brings a (locked or new) payment up to the provider's snapshot ``pp``."""
    failed = pp.status == "requires_payment_method" and pp.failure_code is not None
    if authoritative:
        changed = pp.status != row.status
    elif row.provider_charge_id is not None and pp.charge_id is None:
        # The snapshot predates the first charge we know of: it is old news.
        return row
    else:
        changed = _transition_allowed(row.status, pp.status, failed=failed)
    values, new_failure = _snapshot_values(row, pp, changed=changed, authoritative=authoritative)
    if event_at is not None and (row.provider_event_at is None or event_at > row.provider_event_at):
        values["provider_event_at"] = event_at
    previous = row
    if values:
        row = await repo.update_payment(session, ctx.tables, row.id, values)
    if changed or new_failure:
        await repo.insert_status_change(
            session,
            ctx.tables,
            payment_id=row.id,
            from_status=previous.status,
            to_status=row.status,
            source=source,
            event_id=event_id,
            failure_code=row.failure_code if new_failure else None,
        )
    if changed and row.status in ("succeeded", "canceled"):
        await _announce(session, ctx, row, "succeeded" if row.status == "succeeded" else "canceled")
    if new_failure:
        await _announce(session, ctx, row, "failed", failure_code=row.failure_code)
    if pp.refunds is not None:
        for refund in pp.refunds:
            row = await _record_refund(session, ctx, row, refund, requested_by="provider")
    return row


def _refund_transition_allowed(current: str, new: str) -> bool:
    if current == new or current in ("failed", "canceled"):
        return False
    if current == "succeeded":
        return new == "failed"  # a refund can still bounce (a closed account)
    return True


async def _record_refund(
    session: AsyncSession,
    ctx: PaymentContext,
    payment: PaymentRow,
    pr: ProviderRefund,
    *,
    requested_by: str,
    refund_id: uuid.UUID | None = None,
    reason: str | None = None,
) -> PaymentRow:
    """Records a provider refund of the (locked) ``payment``, or moves its status on."""
    t = ctx.tables
    existing = await repo.get_refund_by_provider_id(session, t, pr.id)
    if existing is None:
        refund_id = refund_id or _uuid_or_none(pr.metadata.get("qunbuy_refund_id"))
        ours = await repo.get_refund(session, t, refund_id) if refund_id is not None else None
        if ours is not None and ours.provider_refund_id is None:
            # Our reservation for this refund, whichever news (API answer or webhook) comes
            # first: the provider's refund takes its place.
            ours = await repo.update_refund(session, t, ours.id, {"provider_refund_id": pr.id})
            existing = ours
        elif ours is not None:
            refund_id = None  # the id is another refund's
    old_status: str | None
    if existing is None:
        old_status = None
        refund = await repo.insert_refund(
            session,
            t,
            {
                "id": refund_id or uuid.uuid4(),
                "payment_id": payment.id,
                "provider_refund_id": pr.id,
                "amount": pr.amount,
                "currency": payment.currency,
                "status": pr.status,
                "reason": reason,
                "failure_reason": pr.failure_reason,
                "requested_by": pr.metadata.get("qunbuy_requested_by", requested_by),
            },
        )
    elif _refund_transition_allowed(existing.status, pr.status):
        old_status = existing.status
        refund = await repo.update_refund(
            session, t, existing.id, {"status": pr.status, "failure_reason": pr.failure_reason}
        )
    else:
        return payment
    refunded = await repo.sum_refunds(session, t, payment.id, repo.REFUNDED_STATUSES)
    if refunded != payment.amount_refunded:
        payment = await repo.update_payment(session, t, payment.id, {"amount_refunded": refunded})
    counted = repo.REFUNDED_STATUSES
    if refund.status in counted and old_status not in counted:
        await _announce(
            session, ctx, payment, "refunded", refund_id=str(refund.id), refund_amount=refund.amount
        )
    elif old_status in counted and refund.status not in counted:
        await _announce(
            session,
            ctx,
            payment,
            "refund_failed",
            refund_id=str(refund.id),
            refund_amount=refund.amount,
        )
    return payment


def _uuid_or_none(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


# --- payments ---------------------------------------------------------------------------


async def create_payment(
    ctx: PaymentContext,
    *,
    payment_id: uuid.UUID,
    reference: str,
    merchant_id: str,
    customer_id: str,
    amount: int,
    currency: str,
    method: Method = "card",
    capture_method: CaptureMethod = "automatic",
    payment_method: str | None = None,
) -> PaymentRow:
    """Creates the payment (a PaymentIntent) and, given a payment method, confirms it.

    Three short steps, none holding a connection while the provider works: record the intent
    (status ``creating``) and commit; ask the provider (its idempotency key comes from the
    payment id); record its answer. A retry with the same ``payment_id`` (a retried request,
    a crash between the steps) resumes where the first run stopped, and the provider returns
    the objects it made the first time, so nothing is paid twice.
    """
    code = _check_amount(ctx, amount, currency)
    if capture_method == "manual" and method != "card":
        raise CaptureMethodUnsupported(f"{method} payments are captured when they succeed")
    async with ctx.transaction() as session:
        row = await repo.get_payment(session, ctx.tables, payment_id)
        if row is None:
            if payment_method is not None:
                await _check_method_owner(session, ctx, customer_id, payment_method)
            row = await _record_intent(
                session,
                ctx,
                payment_id=payment_id,
                reference=reference,
                merchant_id=merchant_id,
                customer_id=customer_id,
                amount=amount,
                currency=code,
                method=method,
                capture_method=capture_method,
            )
    if row.provider_payment_id is None:
        request = PaymentRequest(
            amount=amount,
            currency=code,
            method=method,
            capture_method=capture_method,
            metadata=_metadata(
                ctx,
                payment_id,
                reference=reference,
                merchant_id=merchant_id,
                customer_id=customer_id,
            ),
            payment_method=payment_method,
        )
        key = idempotency_key(ctx.service, "payment", payment_id, "create")
        try:
            pp = await _provider_call(ctx.provider.create_payment(request, idempotency_key=key))
        except PaymentProviderRejected:
            # The provider made nothing: neither do we (a retry may run afresh).
            async with ctx.transaction() as session:
                await repo.delete_unsent_payment(session, ctx.tables, payment_id)
            raise
        async with ctx.transaction() as session:
            row = await _record_created(session, ctx, payment_id, pp)
    if payment_method is not None and row.status == "requires_confirmation":
        assert row.provider_payment_id is not None
        key = idempotency_key(ctx.service, "payment", payment_id, "confirm:initial")
        confirmed = await _provider_call(
            ctx.provider.confirm_payment(
                row.provider_payment_id, payment_method=None, idempotency_key=key
            )
        )
        async with ctx.transaction() as session:
            locked = await _locked(session, ctx, payment_id)
            row = await _apply_payment(session, ctx, locked, confirmed, source="api")
    return row


async def _record_intent(
    session: AsyncSession,
    ctx: PaymentContext,
    *,
    payment_id: uuid.UUID,
    reference: str,
    merchant_id: str,
    customer_id: str,
    amount: int,
    currency: str,
    method: str,
    capture_method: str,
    off_session: bool = False,
) -> PaymentRow:
    """The payment as we mean it, before the provider hears of it (status ``creating``)."""
    inserted = await repo.insert_payment(
        session,
        ctx.tables,
        {
            "id": payment_id,
            "provider": ctx.provider.name,
            "provider_payment_id": None,
            "reference": reference,
            "merchant_id": merchant_id,
            "customer_id": customer_id,
            "method": method,
            "capture_method": capture_method,
            "off_session": off_session,
            "amount": amount,
            "currency": currency,
            "status": CREATING,
        },
    )
    if inserted is None:
        # A concurrent run of the same request got there first.
        existing = await repo.get_payment(session, ctx.tables, payment_id)
        assert existing is not None
        return existing
    await repo.insert_status_change(
        session,
        ctx.tables,
        payment_id=payment_id,
        from_status=None,
        to_status=CREATING,
        source="api",
    )
    return inserted


async def _record_created(
    session: AsyncSession, ctx: PaymentContext, payment_id: uuid.UUID, pp: ProviderPayment
) -> PaymentRow:
    """Ties the recorded intent to the provider's object and applies its first snapshot."""
    row = await _locked(session, ctx, payment_id)
    if row.provider_payment_id is None:
        row = await repo.update_payment(
            session,
            ctx.tables,
            payment_id,
            {
                "provider_payment_id": pp.id,
                "capture_method": pp.capture_method,
                "status": "requires_payment_method",
                "client_secret": pp.client_secret,
            },
        )
        await repo.insert_status_change(
            session,
            ctx.tables,
            payment_id=payment_id,
            from_status=CREATING,
            to_status="requires_payment_method",
            source="api",
        )
    return await _apply_payment(session, ctx, row, pp, source="api")


async def _read(ctx: PaymentContext, payment_id: uuid.UUID) -> PaymentRow:
    async with ctx.transaction() as session:
        row = await repo.get_payment(session, ctx.tables, payment_id)
    if row is None:
        raise PaymentNotFound()
    return row


async def _apply_answer(
    ctx: PaymentContext, payment_id: uuid.UUID, pp: ProviderPayment
) -> PaymentRow:
    """Records what the provider answered, in a short transaction of its own. The state
    machine in :func:`_apply_payment` keeps an answer that arrives after a newer webhook
    from moving the payment back."""
    async with ctx.transaction() as session:
        row = await _locked(session, ctx, payment_id)
        return await _apply_payment(session, ctx, row, pp, source="api")


async def confirm_payment(
    ctx: PaymentContext,
    payment_id: uuid.UUID,
    *,
    payment_method: str,
    request_key: str,
) -> PaymentRow:
    """Confirms with ``payment_method`` (again, after a decline). A payment that is past
    confirmation already is returned as it is."""
    async with ctx.transaction() as session:
        row = await repo.get_payment(session, ctx.tables, payment_id)
        if row is None:
            raise PaymentNotFound()
        if row.status not in CONFIRMABLE:
            if row.status == "canceled":
                raise PaymentNotConfirmable("the payment was canceled")
            if row.status == CREATING:
                raise PaymentNotConfirmable("the payment is still being created; retry it")
            return row
        await _check_method_owner(session, ctx, row.customer_id, payment_method)
    assert row.provider_payment_id is not None
    key = idempotency_key(ctx.service, "payment", row.id, f"confirm:{request_key}")
    pp = await _provider_call(
        ctx.provider.confirm_payment(
            row.provider_payment_id, payment_method=payment_method, idempotency_key=key
        )
    )
    return await _apply_answer(ctx, row.id, pp)


async def capture_payment(
    ctx: PaymentContext, payment_id: uuid.UUID, *, amount: int | None
) -> PaymentRow:
    """Captures an authorized payment, all of it or ``amount`` (the rest is released)."""
    row = await _read(ctx, payment_id)
    if row.status != "requires_capture":
        raise PaymentNotCapturable(f"the payment is {row.status}")
    if amount is not None and (
        not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= row.amount
    ):
        raise CaptureAmountInvalid(f"the amount to capture must be between 1 and {row.amount}")
    assert row.provider_payment_id is not None
    key = idempotency_key(ctx.service, "payment", row.id, "capture")
    pp = await _provider_call(
        ctx.provider.capture_payment(row.provider_payment_id, amount=amount, idempotency_key=key)
    )
    return await _apply_answer(ctx, row.id, pp)


async def cancel_payment(ctx: PaymentContext, payment_id: uuid.UUID) -> PaymentRow:
    row = await _read(ctx, payment_id)
    if row.status == "canceled":
        return row
    if row.status not in CANCELABLE:
        raise PaymentNotCancelable(f"the payment is {row.status}; refund it instead")
    assert row.provider_payment_id is not None
    key = idempotency_key(ctx.service, "payment", row.id, "cancel")
    pp = await _provider_call(
        ctx.provider.cancel_payment(row.provider_payment_id, idempotency_key=key)
    )
    return await _apply_answer(ctx, row.id, pp)


async def refund_payment(
    ctx: PaymentContext,
    payment_id: uuid.UUID,
    *,
    amount: int | None,
    reason: str | None,
    request_key: str,
    requested_by: str,
) -> RefundRow:
    """Refunds ``amount`` (default: all that remains refundable).

    The amount is reserved first: under the payment's row lock, checked against what remains
    and recorded as a ``reserved`` refund, then committed, so concurrent refunds are checked one
    after the other without any lock held while the provider works. The refund id (and the
    provider key) come from ``request_key``: a retry after a crash finds the reservation and
    asks the provider again with the same key, which returns the same refund.
    """
    refund_id = _refund_id(payment_id, request_key)
    async with ctx.transaction() as session:
        row = await _locked(session, ctx, payment_id)
        refund = await repo.get_refund(session, ctx.tables, refund_id)
        if refund is None:
            refund = await _reserve_refund(
                session, ctx, row, refund_id, amount=amount, reason=reason, by=requested_by
            )
    if refund.provider_refund_id is not None:
        return refund
    assert row.provider_payment_id is not None
    key = idempotency_key(ctx.service, "refund", refund_id, f"create:{refund.amount}")
    try:
        pr = await _provider_call(
            ctx.provider.create_refund(
                row.provider_payment_id,
                amount=refund.amount,
                reason=reason,
                metadata=_metadata(
                    ctx, row.id, qunbuy_refund_id=str(refund_id), qunbuy_requested_by=requested_by
                ),
                idempotency_key=key,
            )
        )
    except PaymentProviderRejected:
        async with ctx.transaction() as session:
            await repo.delete_reserved_refund(session, ctx.tables, refund_id)
        raise
    async with ctx.transaction() as session:
        row = await _locked(session, ctx, payment_id)
        await _record_refund(
            session, ctx, row, pr, requested_by=requested_by, refund_id=refund_id, reason=reason
        )
        recorded = await repo.get_refund(session, ctx.tables, refund_id)
    assert recorded is not None
    return recorded


async def _reserve_refund(
    session: AsyncSession,
    ctx: PaymentContext,
    row: PaymentRow,
    refund_id: uuid.UUID,
    *,
    amount: int | None,
    reason: str | None,
    by: str,
) -> RefundRow:
    if row.status != "succeeded" or row.amount_captured == 0:
        raise PaymentNotRefundable(f"the payment is {row.status}")
    reserved = await repo.sum_refunds(session, ctx.tables, row.id, repo.RESERVING_REFUND_STATUSES)
    refundable = row.amount_captured - reserved
    if amount is not None and (
        not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0
    ):
        raise RefundAmountInvalid("the refund amount must be a positive integer")
    to_refund = refundable if amount is None else amount
    if to_refund > refundable or to_refund <= 0:
        raise RefundExceedsRefundable(
            f"{to_refund} is more than the {refundable} that remains refundable",
            refundable=refundable,
            currency=row.currency,
        )
    return await repo.insert_refund(
        session,
        ctx.tables,
        {
            "id": refund_id,
            "payment_id": row.id,
            "provider_refund_id": None,
            "amount": to_refund,
            "currency": row.currency,
            "status": repo.RESERVED,
            "reason": reason,
            "requested_by": by,
        },
    )


async def get_payment_view(ctx: PaymentContext, payment_id: uuid.UUID) -> PaymentView:
    async with ctx.transaction() as session:
        row = await repo.get_payment(session, ctx.tables, payment_id)
        if row is None:
            raise PaymentNotFound()
        return PaymentView(
            payment=row,
            refunds=await repo.list_refunds(session, ctx.tables, row.id),
            history=await repo.list_status_changes(session, ctx.tables, row.id),
        )


async def complete_simulated_action(
    ctx: PaymentContext, payment_id: uuid.UUID, *, succeed: bool
) -> PaymentRow:
    """Simulated provider only: the customer completes (or fails) the required action."""
    provider = ctx.provider
    if not isinstance(provider, SimulatedProvider):
        raise PaymentSimulationUnavailable()
    row = await _read(ctx, payment_id)
    if row.status != "requires_action":
        raise PaymentNotConfirmable(f"the payment is {row.status}, not waiting for the customer")
    assert row.provider_payment_id is not None
    pp = await _provider_call(provider.complete_action(row.provider_payment_id, succeed=succeed))
    return await _apply_answer(ctx, row.id, pp)


# --- saved payment methods and off-session charges ---------------------------------------


async def _provider_customer(ctx: PaymentContext, customer_id: str) -> str:
    t = ctx.tables
    async with ctx.transaction() as session:
        known = await repo.get_provider_customer(session, t, ctx.provider.name, customer_id)
    if known is not None:
        return known
    key = idempotency_key(ctx.service, "customer", customer_id, "create")
    created = await _provider_call(
        ctx.provider.ensure_customer(
            user_id=customer_id, metadata={"qunbuy_service": ctx.service}, idempotency_key=key
        )
    )
    async with ctx.transaction() as session:
        return await repo.insert_provider_customer(
            session, t, ctx.provider.name, customer_id, created
        )


def _setup_values(ps: ProviderSetup) -> dict[str, Any]:
    failed = ps.failure_code is not None
    return {
        "status": ps.status,
        "payment_method_id": ps.payment_method,
        "failure_code": ps.failure_code,
        "failure_message": customer_message(ps.failure_code) if failed else None,
        "next_action": dict(ps.next_action) if ps.next_action else None,
        "client_secret": ps.client_secret,
    }


async def create_setup(
    ctx: PaymentContext,
    *,
    setup_id: uuid.UUID,
    customer_id: str,
    payment_method: str | None,
) -> SetupRow:
    """Saves a card for later off-session charges (a SetupIntent), confirmed now when a
    ``payment_method`` is given, else by the client with the returned client secret."""
    async with ctx.transaction() as session:
        existing = await repo.get_setup(session, ctx.tables, setup_id)
    if existing is not None:
        return existing
    customer = await _provider_customer(ctx, customer_id)
    key = idempotency_key(ctx.service, "setup", setup_id, "create")
    ps = await _provider_call(
        ctx.provider.create_setup(
            customer=customer,
            payment_method=payment_method,
            metadata={
                "qunbuy_service": ctx.service,
                "qunbuy_setup_id": str(setup_id),
                "customer_id": customer_id,
            },
            idempotency_key=key,
        )
    )
    async with ctx.transaction() as session:
        inserted = await repo.insert_setup(
            session,
            ctx.tables,
            {
                "id": setup_id,
                "provider": ctx.provider.name,
                "provider_setup_id": ps.id,
                "customer_id": customer_id,
                "provider_customer_id": customer,
                **_setup_values(ps),
            },
        )
        if inserted is None:
            existing = await repo.get_setup(session, ctx.tables, setup_id)
            assert existing is not None
            return existing
        return inserted


async def get_setup(ctx: PaymentContext, setup_id: uuid.UUID) -> SetupRow:
    async with ctx.transaction() as session:
        row = await repo.get_setup(session, ctx.tables, setup_id)
    if row is None:
        raise PaymentSetupNotFound()
    return row


async def charge_off_session(
    ctx: PaymentContext,
    *,
    reference: str,
    merchant_id: str,
    customer_id: str,
    setup_id: uuid.UUID,
    amount: int,
    currency: str,
    attempt: int = 1,
) -> PaymentRow:
    """Charges a saved payment method with the customer absent (a pledge at the deadline).

    The payment id is derived from (``reference``, ``attempt``): running the job again for
    the same attempt resumes or returns the first payment instead of charging twice. A
    decline is a result (status ``requires_payment_method`` with a failure code), not an
    exception. No connection is held while the provider charges.
    """
    code = _check_amount(ctx, amount, currency)
    payment_id = new_payment_id(ctx.service, "off_session", reference, str(attempt))
    async with ctx.transaction() as session:
        setup = await repo.get_setup(session, ctx.tables, setup_id)
        if setup is None or setup.customer_id != customer_id:
            raise PaymentSetupNotFound()
        if setup.status != "succeeded" or not setup.payment_method_id:
            raise PaymentSetupNotUsable(f"the saved payment method is {setup.status}")
        row = await repo.get_payment(session, ctx.tables, payment_id)
        if row is None:
            row = await _record_intent(
                session,
                ctx,
                payment_id=payment_id,
                reference=reference,
                merchant_id=merchant_id,
                customer_id=customer_id,
                amount=amount,
                currency=code,
                method="card",
                capture_method="automatic",
                off_session=True,
            )
    if row.provider_payment_id is not None:
        return row
    request = PaymentRequest(
        amount=amount,
        currency=code,
        method="card",
        capture_method="automatic",
        metadata=_metadata(
            ctx, payment_id, reference=reference, merchant_id=merchant_id, customer_id=customer_id
        ),
        customer=setup.provider_customer_id,
        payment_method=setup.payment_method_id,
    )
    key = idempotency_key(ctx.service, "payment", payment_id, "charge_off_session")
    try:
        pp = await _provider_call(ctx.provider.charge_off_session(request, idempotency_key=key))
    except PaymentProviderRejected:
        async with ctx.transaction() as session:
            await repo.delete_unsent_payment(session, ctx.tables, payment_id)
        raise
    async with ctx.transaction() as session:
        return await _record_created(session, ctx, payment_id, pp)


# --- webhooks ---------------------------------------------------------------------------

WebhookOutcome = Literal["applied", "ignored", "unknown_object", "stale"]


async def apply_webhook_event(
    session: AsyncSession, ctx: PaymentContext, event: Mapping[str, Any]
) -> WebhookOutcome:
    """Applies one verified, first-seen provider event. Never raises for events that are
    late, repeated or about objects this service does not know."""
    obj = event["data"]["object"]
    object_type = obj.get("object")
    event_id = str(event["id"])
    event_at = datetime.fromtimestamp(int(event["created"]), UTC)
    if object_type == "payment_intent":
        return await _on_intent(session, ctx, obj, event_id, event_at)
    if object_type == "refund":
        return await _on_refund(session, ctx, refund_from_object(obj), event_id)
    if object_type == "charge":
        return await _on_charge(session, ctx, obj, event_id)
    if object_type == "dispute":
        return await _on_dispute(session, ctx, obj, event_id)
    if object_type == "setup_intent":
        return await _on_setup(session, ctx, setup_from_intent(obj))
    return "ignored"


async def _on_intent(
    session: AsyncSession,
    ctx: PaymentContext,
    obj: Mapping[str, Any],
    event_id: str,
    event_at: datetime,
) -> WebhookOutcome:
    row = await repo.get_payment_by_provider_id(
        session, ctx.tables, ctx.provider.name, str(obj["id"]), for_update=True
    )
    if row is None:
        return "unknown_object"
    if row.provider_event_at is not None and event_at < row.provider_event_at:
        return "stale"
    pp = payment_from_intent(obj)
    await _apply_payment(
        session, ctx, row, pp, source="webhook", event_id=event_id, event_at=event_at
    )
    return "applied"


async def _payment_for(
    session: AsyncSession, ctx: PaymentContext, intent_id: str | None, charge_id: str | None
) -> PaymentRow | None:
    if intent_id:
        row = await repo.get_payment_by_provider_id(
            session, ctx.tables, ctx.provider.name, intent_id, for_update=True
        )
        if row is not None:
            return row
    if charge_id:
        return await repo.get_payment_by_charge_id(
            session, ctx.tables, ctx.provider.name, charge_id, for_update=True
        )
    return None


async def _catch_up(
    session: AsyncSession, ctx: PaymentContext, row: PaymentRow, event_id: str
) -> PaymentRow:
    """An event says more than we know (a refund of a payment we have not seen succeed):
    read the payment from the provider instead of waiting for the events in between."""
    assert row.provider_payment_id is not None
    pp = await _provider_call(ctx.provider.retrieve_payment(row.provider_payment_id))
    return await _apply_payment(session, ctx, row, pp, source="webhook", event_id=event_id)


async def _on_refund(
    session: AsyncSession, ctx: PaymentContext, pr: ProviderRefund, event_id: str
) -> WebhookOutcome:
    row = await _payment_for(session, ctx, pr.payment_id, None)
    if row is None:
        return "unknown_object"
    if row.status != "succeeded":
        await _catch_up(session, ctx, row, event_id)
        return "applied"
    await _record_refund(session, ctx, row, pr, requested_by="provider")
    return "applied"


async def _on_charge(
    session: AsyncSession, ctx: PaymentContext, obj: Mapping[str, Any], event_id: str
) -> WebhookOutcome:
    intent_id = obj.get("payment_intent")
    row = await _payment_for(
        session, ctx, intent_id if isinstance(intent_id, str) else None, str(obj.get("id"))
    )
    if row is None:
        return "unknown_object"
    amount_refunded = obj.get("amount_refunded")
    if not isinstance(amount_refunded, int) or amount_refunded == row.amount_refunded:
        # Charge events say nothing the intent and refund events do not: nothing to do.
        return "ignored"
    # Refunds we have not seen (API versions that embed no refund list, or a missed
    # refund event): the provider's list is the truth.
    await _catch_up(session, ctx, row, event_id)
    return "applied"


async def _on_dispute(
    session: AsyncSession, ctx: PaymentContext, obj: Mapping[str, Any], event_id: str
) -> WebhookOutcome:
    dispute = dispute_from_object(obj)
    row = await _payment_for(session, ctx, dispute.payment_id, dispute.charge_id)
    if row is None:
        return "unknown_object"
    if row.status != "succeeded":
        row = await _catch_up(session, ctx, row, event_id)
    if (
        row.dispute_id == dispute.id
        and row.dispute_status in _CLOSED_DISPUTES
        and dispute.status not in _CLOSED_DISPUTES
    ):
        return "stale"
    if (row.dispute_id, row.dispute_status, row.dispute_amount) == (
        dispute.id,
        dispute.status,
        dispute.amount,
    ):
        return "applied"
    opened = row.dispute_id != dispute.id
    row = await repo.update_payment(
        session,
        ctx.tables,
        row.id,
        {
            "dispute_id": dispute.id,
            "dispute_status": dispute.status,
            "dispute_amount": dispute.amount,
        },
    )
    if opened:
        await _announce(
            session,
            ctx,
            row,
            "disputed",
            dispute_id=dispute.id,
            dispute_amount=dispute.amount,
            reason=dispute.reason,
        )
    if dispute.status in _CLOSED_DISPUTES:
        await _announce(
            session,
            ctx,
            row,
            "dispute_closed",
            dispute_id=dispute.id,
            dispute_status=dispute.status,
            dispute_amount=dispute.amount,
        )
    return "applied"


async def _on_setup(
    session: AsyncSession, ctx: PaymentContext, ps: ProviderSetup
) -> WebhookOutcome:
    row = await repo.get_setup_by_provider_id(session, ctx.tables, ctx.provider.name, ps.id)
    if row is None:
        return "unknown_object"
    if row.status in ("succeeded", "canceled"):
        return "applied" if row.status == ps.status else "stale"
    if (row.status, row.failure_code) == (ps.status, ps.failure_code):
        return "applied"
    await repo.update_setup(session, ctx.tables, row.id, _setup_values(ps))
    return "applied"


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
                payment_id=payment_id,
                reference=str(metadata.get("reference", "")),
                merchant_id=str(metadata.get("merchant_id", "")),
                customer_id=str(metadata.get("customer_id", "")),
                amount=pp.amount,
                currency=pp.currency,
                method=_method_of(obj),
                capture_method=pp.capture_method,
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
