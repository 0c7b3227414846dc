"""The payment layer's business rules. SQL lives in ``_repository``; transactions are opened
only by :meth:`PaymentContext.transaction`, short ones around each provider call, and a step
that is a single statement may run alone on :meth:`PaymentContext.single`.

A payment follows its provider PaymentIntent. Its status only moves along the intent's
state machine (docs/payments.md draws it), so a stale snapshot (an old webhook, a replayed
API response) can never move it back; the reconciliation is the one writer that may
overwrite it with what the provider says now.

This module: the context, ids and provider keys, and the state machine that every
news source (API answers, webhooks, reconciliation) applies through."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from shared.events import EventPublisher, contracts
from shared.money import normalize_currency
from shared.payments import _repository as repo
from shared.payments._errors import (
    PaymentAmountAboveMaximum,
    PaymentAmountInvalid,
    PaymentMethodUnavailable,
    PaymentNotFound,
    PaymentProviderRejected,
    PaymentProviderUnavailable,
)
from shared.payments._hooks import ChangeKind, PaymentChange, PaymentHooks
from shared.payments._messages import customer_message
from shared.payments._provider import (
    PaymentProvider,
    ProviderError,
    ProviderPayment,
    ProviderRefund,
    ProviderUnavailable,
)
from shared.payments._repository import PaymentRow, RefundRow, StatusChangeRow
from shared.payments.tables import PaymentTables

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
    ``autocommit`` is the same pool with each statement committing on its own, for the steps
    that are a single statement (no BEGIN and COMMIT round trips around it).
    """

    service: str
    tables: PaymentTables
    provider: PaymentProvider
    publisher: EventPublisher
    max_amount: int
    sessionmaker: async_sessionmaker[AsyncSession]
    autocommit: AsyncEngine
    hooks: PaymentHooks = field(default_factory=PaymentHooks)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as session, session.begin():
            yield session

    @contextlib.asynccontextmanager
    async def single(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection whose statements each commit on their own."""
        async with self.autocommit.connect() as conn:
            yield conn


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


@dataclass(frozen=True, slots=True)
class _SnapshotUpdate:
    """What bringing a payment up to a provider snapshot writes."""

    changed: bool  # the status moves
    values: dict[str, Any]
    new_failure: bool

    @property
    def writes_nothing(self) -> bool:
        return not (self.changed or self.values or self.new_failure)


def _snapshot_update(
    row: PaymentRow,
    pp: ProviderPayment,
    *,
    authoritative: bool = False,
    event_at: datetime | None = None,
) -> _SnapshotUpdate | None:
    """What :func:`_apply_payment` writes for ``pp`` (its refunds aside); None when the
    snapshot is old news."""
    failed = pp.status == "requires_payment_method" and pp.failure_code is not None
    if authoritative:
        changed = pp.status != row.status
    elif row.provider_charge_id is not None and pp.charge_id is None:
        # The snapshot predates the first charge we know of: it is old news.
        return None
    else:
        changed = _transition_allowed(row.status, pp.status, failed=failed)
    values, new_failure = _snapshot_values(row, pp, changed=changed, authoritative=authoritative)
    if event_at is not None and (row.provider_event_at is None or event_at > row.provider_event_at):
        values["provider_event_at"] = event_at
    return _SnapshotUpdate(changed, values, new_failure)


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
    update = _snapshot_update(row, pp, authoritative=authoritative, event_at=event_at)
    if update is None:
        return row
    changed, values, new_failure = update.changed, update.values, update.new_failure
    change = (
        repo.StatusChange(row.status, source, event_id, with_failure=new_failure)
        if changed or new_failure
        else None
    )
    if values:
        row = await repo.update_payment(session, ctx.tables, row.id, values, change=change)
    elif change is not None:
        await repo.insert_status_change(
            session,
            ctx.tables,
            payment_id=row.id,
            from_status=row.status,
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


def intent_values(
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
) -> dict[str, Any]:
    """The row of a payment as we mean it, before the provider hears of it (``creating``)."""
    return {
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
    }


async def _record_intent(
    session: AsyncSession, ctx: PaymentContext, values: dict[str, Any]
) -> PaymentRow:
    """The payment as we mean it (:func:`intent_values`), inserted; or, when a concurrent run
    of the same request got there first, the row it inserted."""
    inserted = await repo.insert_payment(session, ctx.tables, values, source="api")
    if inserted is not None:
        return inserted
    existing = await repo.get_payment(session, ctx.tables, values["id"])
    assert existing is not None
    return existing


_TIE_STATUS = "requires_payment_method"


def _tie_values(pp: ProviderPayment) -> dict[str, Any]:
    return {
        "provider_payment_id": pp.id,
        "capture_method": pp.capture_method,
        "status": _TIE_STATUS,
        "client_secret": pp.client_secret,
    }


async def _record_created(
    session: AsyncSession, ctx: PaymentContext, payment_id: uuid.UUID, pp: ProviderPayment
) -> PaymentRow:
    """Ties the recorded intent to the provider's object and applies its first snapshot."""
    # The usual case is one statement: the update locks the row as a SELECT ... FOR UPDATE
    # would, and finds it untied; otherwise (already tied) the row is read under its lock.
    row = await repo.attach_provider_payment(
        session, ctx.tables, payment_id, _tie_values(pp), repo.StatusChange(CREATING, "api")
    )
    if row is None:
        row = await _locked(session, ctx, payment_id)
    return await _apply_payment(session, ctx, row, pp, source="api")


def _tying_is_all(pp: ProviderPayment) -> bool:
    """Whether tying the intent (:func:`_tie_values`) already puts it in the state ``pp``
    describes: a new payment waiting for its method (a WeChat Pay or Alipay payment the
    customer completes in the app, a card not given yet): not failed, not charged, nothing
    for the customer to do yet, no method and no refund to record."""
    return (
        pp.status == _TIE_STATUS
        and pp.failure_code is None
        and pp.charge_id is None
        and not pp.next_action
        and not pp.payment_method
        and not pp.refunds
    )


async def _record_created_answer(
    ctx: PaymentContext, payment_id: uuid.UUID, pp: ProviderPayment
) -> PaymentRow:
    """Records the provider's answer to the creation: in the usual case one statement that
    commits on its own, else the tie and the snapshot together in one transaction."""
    if _tying_is_all(pp):
        # What it commits is the whole snapshot, so nobody (a reader, a retry after a crash)
        # can see a state the payment is not in. Tied already (a retry or a webhook got
        # there first), or should the snapshot still write something, the transaction
        # below applies it under the row's lock.
        async with ctx.single() as conn:
            row = await repo.attach_provider_payment(
                conn, ctx.tables, payment_id, _tie_values(pp), repo.StatusChange(CREATING, "api")
            )
        if row is not None:
            update = _snapshot_update(row, pp)
            if update is None or update.writes_nothing:
                return row
    async with ctx.transaction() as session:
        return await _record_created(session, ctx, payment_id, pp)


async def create_at_provider(
    ctx: PaymentContext, payment_id: uuid.UUID, call: Awaitable[ProviderPayment]
) -> PaymentRow:
    """Step two and three of a recorded intent: the provider creates the payment (no
    connection held meanwhile), then its answer is recorded. A definite refusal removes the
    intent: the provider made nothing, and neither do we (a retry may run afresh)."""
    try:
        pp = await _provider_call(call)
    except PaymentProviderRejected:
        async with ctx.transaction() as session:
            await repo.delete_unsent_payment(session, ctx.tables, payment_id)
        raise
    return await _record_created_answer(ctx, payment_id, pp)
