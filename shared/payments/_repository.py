"""Every SQL statement of the payment layer (and of the simulated provider's storage)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    CTE,
    ClauseElement,
    FromClause,
    Row,
    String,
    and_,
    bindparam,
    delete,
    func,
    select,
    update,
)
from sqlalchemy import null as sa_null
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from shared.payments.tables import PaymentTables
from shared.wakeup import CHANNEL

# Refund statuses that hold money back from what remains refundable.
# A refund recorded before the provider is asked: it holds its amount like a pending one.
RESERVED = "reserved"
RESERVING_REFUND_STATUSES = (RESERVED, "pending", "requires_action", "succeeded")
# Refund statuses counted in ``amount_refunded`` (as Stripe's charge.amount_refunded does).
REFUNDED_STATUSES = ("pending", "succeeded")


@dataclass(frozen=True, slots=True)
class PaymentRow:
    id: uuid.UUID
    provider: str
    provider_payment_id: str | None
    provider_charge_id: str | None
    reference: str
    merchant_id: str
    customer_id: str
    method: str
    capture_method: str
    off_session: bool
    amount: int
    currency: str
    amount_captured: int
    amount_refunded: int
    status: str
    failure_code: str | None
    failure_message: str | None
    next_action: dict[str, Any] | None
    client_secret: str | None
    payment_method_id: str | None
    dispute_id: str | None
    dispute_status: str | None
    dispute_amount: int | None
    provider_event_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RefundRow:
    id: uuid.UUID
    payment_id: uuid.UUID
    provider_refund_id: str | None
    amount: int
    currency: str
    status: str
    reason: str | None
    failure_reason: str | None
    requested_by: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class StatusChangeRow:
    id: int
    payment_id: uuid.UUID
    from_status: str | None
    to_status: str
    source: str
    event_id: str | None
    failure_code: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SetupRow:
    id: uuid.UUID
    provider: str
    provider_setup_id: str
    customer_id: str
    provider_customer_id: str
    status: str
    payment_method_id: str | None
    failure_code: str | None
    failure_message: str | None
    next_action: dict[str, Any] | None
    client_secret: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class InboxRow:
    provider: str
    event_id: str
    event_type: str
    object_id: str | None
    outcome: str
    event_created_at: datetime
    received_at: datetime
    payload: dict[str, Any]


def _payment(row: Row[Any]) -> PaymentRow:
    return PaymentRow(**row._mapping)


# --- payments ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusChange:
    """The history row a payment's update writes in the same statement: to the status the
    update leaves, from ``from_status``; ``with_failure`` copies the row's failure code."""

    from_status: str | None
    source: str
    event_id: str | None = None
    with_failure: bool = False


# Statements of the hot paths, built once per shape (which columns are written, which history
# row goes with them) with every value bound: building a statement costs more CPU than
# running it. Parameters are not named like columns: in an UPDATE, SQLAlchemy would take
# such a parameter for a new value of that column.
_BUILT: dict[tuple[Any, ...], Any] = {}


def _built(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    stmt = _BUILT.get(key)
    if stmt is None:
        stmt = _BUILT[key] = build()
    return stmt


def _plain(values: Mapping[str, Any]) -> bool:
    """Whether every value is data (a statement with SQL expressions is built each time)."""
    return not any(isinstance(v, ClauseElement) for v in values.values())


def _bound(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: bindparam(f"v_{k}") for k in values}


def _params(values: Mapping[str, Any], change: StatusChange | None = None) -> dict[str, Any]:
    params = {f"v_{k}": v for k, v in values.items()}
    if change is not None:
        params.update(h_from=change.from_status, h_source=change.source, h_event=change.event_id)
    return params


def _history_of(t: PaymentTables, changed: Any, *, with_failure: bool) -> tuple[CTE, CTE]:
    """``changed`` (an INSERT or UPDATE of a payment) as a CTE returning the payment, and the
    CTE of its history row. The history's from status, source and event id are bound
    (``h_from``, ``h_source``, ``h_event``)."""
    p, h = t.payment, t.payment_status_change
    written = changed.returning(p).cte("written")
    history = insert(h).from_select(
        ["payment_id", "from_status", "to_status", "source", "event_id", "failure_code"],
        select(
            written.c.id,
            bindparam("h_from", type_=String()),
            written.c.status,
            bindparam("h_source", type_=String()),
            bindparam("h_event", type_=String()),
            written.c.failure_code if with_failure else sa_null(),
        ),
    )
    return written, history.cte("history")


def _with_history(t: PaymentTables, changed: Any, *, with_failure: bool) -> Any:
    """``changed`` and its history row as one statement that returns the payment: one round
    trip instead of two."""
    written, history = _history_of(t, changed, with_failure=with_failure)
    return select(written).add_cte(history)


def insert_intent_after(
    t: PaymentTables, columns: Sequence[str], after: FromClause
) -> tuple[CTE, CTE]:
    """For a domain's own statement: a payment's intent (its ``columns`` bound as
    ``v_<column>``, values from :func:`intent_params`) inserted once for each row of
    ``after`` (not at all when ``after`` is empty), and its first history row. Returns the
    CTEs of both; the caller selects from the first (it is the payment as written, as
    :func:`payment_of` reads it) and adds the second. No ON CONFLICT: a payment of this id
    existing already fails the whole statement, so that nothing of it is written."""
    p = t.payment
    row = select(*[bindparam(f"v_{k}", type_=p.c[k].type) for k in columns]).select_from(after)
    return _history_of(t, insert(p).from_select(list(columns), row), with_failure=False)


def intent_params(values: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of :func:`insert_intent_after`'s statement for these values."""
    return _params(values, StatusChange(None, "api"))


def payment_of(values: Mapping[str, Any]) -> PaymentRow:
    return PaymentRow(**values)


async def insert_payment(
    session: AsyncSession, t: PaymentTables, values: Mapping[str, Any], *, source: str
) -> PaymentRow | None:
    """Inserts the payment and its first history row; None when a payment with this id
    already exists."""
    p = t.payment
    change = StatusChange(None, source)

    def build() -> Any:
        stmt = insert(p).values(**_bound(values)).on_conflict_do_nothing(index_elements=[p.c.id])
        return _with_history(t, stmt, with_failure=False)

    if _plain(values):
        stmt = _built(("insert", t, tuple(values)), build)
        row = (await session.execute(stmt, _params(values, change))).first()
    else:
        stmt = insert(p).values(**values).on_conflict_do_nothing(index_elements=[p.c.id])
        stmt = _with_history(t, stmt, with_failure=False)
        row = (await session.execute(stmt, _params({}, change))).first()
    return _payment(row) if row is not None else None


async def delete_unsent_payment(
    session: AsyncSession, t: PaymentTables, payment_id: uuid.UUID
) -> None:
    """Drops a payment the provider refused to create (its history row with it)."""
    p, h = t.payment, t.payment_status_change
    unsent = select(p.c.id).where(p.c.id == payment_id, p.c.provider_payment_id.is_(None))
    await session.execute(delete(h).where(h.c.payment_id.in_(unsent.scalar_subquery())))
    await session.execute(delete(p).where(p.c.id == payment_id, p.c.provider_payment_id.is_(None)))


async def get_payment(
    session: AsyncSession, t: PaymentTables, payment_id: uuid.UUID, *, for_update: bool = False
) -> PaymentRow | None:
    stmt = select(t.payment).where(t.payment.c.id == payment_id)
    if for_update:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    return _payment(row) if row is not None else None


async def get_payment_by_provider_id(
    session: AsyncSession,
    t: PaymentTables,
    provider: str,
    provider_payment_id: str,
    *,
    for_update: bool = False,
) -> PaymentRow | None:
    p = t.payment
    stmt = select(p).where(p.c.provider == provider, p.c.provider_payment_id == provider_payment_id)
    if for_update:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    return _payment(row) if row is not None else None


async def get_payment_by_charge_id(
    session: AsyncSession, t: PaymentTables, provider: str, charge_id: str, *, for_update: bool
) -> PaymentRow | None:
    p = t.payment
    stmt = select(p).where(p.c.provider == provider, p.c.provider_charge_id == charge_id)
    if for_update:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    return _payment(row) if row is not None else None


def _payment_update(
    t: PaymentTables,
    values: Mapping[str, Any],
    change: StatusChange | None,
    *,
    unsent_only: bool,
) -> tuple[Any, dict[str, Any]]:
    """The UPDATE of one payment (``w_id``), RETURNING it, with its history row when there is
    a ``change``; and its parameters but the id."""
    p = t.payment
    plain = _plain(values)

    def build() -> Any:
        where = [p.c.id == bindparam("w_id")]
        if unsent_only:
            where.append(p.c.provider_payment_id.is_(None))
        stmt = (
            update(p)
            .where(*where)
            .values(**(_bound(values) if plain else values), updated_at=func.now())
        )
        if change is None:
            return stmt.returning(p)
        return _with_history(t, stmt, with_failure=change.with_failure)

    shape = (change is None, change is not None and change.with_failure, unsent_only)
    stmt = _built(("update", t, tuple(values), *shape), build) if plain else build()
    return stmt, _params(values if plain else {}, change)


async def update_payment(
    session: AsyncSession,
    t: PaymentTables,
    payment_id: uuid.UUID,
    values: Mapping[str, Any],
    *,
    change: StatusChange | None = None,
) -> PaymentRow:
    """Updates the payment and, with a ``change``, writes its history row with it."""
    stmt, params = _payment_update(t, values, change, unsent_only=False)
    return _payment((await session.execute(stmt, {**params, "w_id": payment_id})).one())


async def attach_provider_payment(
    db: AsyncSession | AsyncConnection,
    t: PaymentTables,
    payment_id: uuid.UUID,
    values: Mapping[str, Any],
    change: StatusChange,
) -> PaymentRow | None:
    """Ties a payment not yet sent to its provider object (with its history row); None when
    it is tied already (a retry or a webhook got there first). On a connection without a
    transaction it commits on its own."""
    stmt, params = _payment_update(t, values, change, unsent_only=True)
    row = (await db.execute(stmt, {**params, "w_id": payment_id})).first()
    return _payment(row) if row is not None else None


async def list_payments_created_between(
    session: AsyncSession, t: PaymentTables, provider: str, since: datetime, until: datetime
) -> list[PaymentRow]:
    p = t.payment
    rows = await session.execute(
        select(p)
        .where(
            p.c.provider == provider,
            p.c.created_at >= since,
            p.c.created_at < until,
            p.c.provider_payment_id.is_not(None),
        )
        .order_by(p.c.created_at, p.c.id)
    )
    return [_payment(r) for r in rows]


async def insert_status_change(
    session: AsyncSession,
    t: PaymentTables,
    *,
    payment_id: uuid.UUID,
    from_status: str | None,
    to_status: str,
    source: str,
    event_id: str | None = None,
    failure_code: str | None = None,
) -> None:
    await session.execute(
        insert(t.payment_status_change).values(
            payment_id=payment_id,
            from_status=from_status,
            to_status=to_status,
            source=source,
            event_id=event_id,
            failure_code=failure_code,
        )
    )


async def list_status_changes(
    session: AsyncSession, t: PaymentTables, payment_id: uuid.UUID
) -> list[StatusChangeRow]:
    c = t.payment_status_change
    rows = await session.execute(select(c).where(c.c.payment_id == payment_id).order_by(c.c.id))
    return [StatusChangeRow(**r._mapping) for r in rows]


# --- refunds ----------------------------------------------------------------------------


async def get_refund(
    session: AsyncSession, t: PaymentTables, refund_id: uuid.UUID
) -> RefundRow | None:
    row = (await session.execute(select(t.refund).where(t.refund.c.id == refund_id))).first()
    return RefundRow(**row._mapping) if row is not None else None


async def get_refund_by_provider_id(
    session: AsyncSession, t: PaymentTables, provider_refund_id: str
) -> RefundRow | None:
    r = t.refund
    row = (
        await session.execute(select(r).where(r.c.provider_refund_id == provider_refund_id))
    ).first()
    return RefundRow(**row._mapping) if row is not None else None


async def insert_refund(
    session: AsyncSession, t: PaymentTables, values: Mapping[str, Any]
) -> RefundRow:
    result = await session.execute(insert(t.refund).values(**values).returning(t.refund))
    return RefundRow(**result.one()._mapping)


async def delete_reserved_refund(
    session: AsyncSession, t: PaymentTables, refund_id: uuid.UUID
) -> None:
    """Drops a reservation the provider refused (it made no refund)."""
    r = t.refund
    await session.execute(
        delete(r).where(
            r.c.id == refund_id, r.c.status == RESERVED, r.c.provider_refund_id.is_(None)
        )
    )


async def update_refund(
    session: AsyncSession, t: PaymentTables, refund_id: uuid.UUID, values: Mapping[str, Any]
) -> RefundRow:
    r = t.refund
    result = await session.execute(
        update(r).where(r.c.id == refund_id).values(**values, updated_at=func.now()).returning(r)
    )
    return RefundRow(**result.one()._mapping)


async def list_refunds(
    session: AsyncSession, t: PaymentTables, payment_id: uuid.UUID
) -> list[RefundRow]:
    r = t.refund
    rows = await session.execute(
        select(r).where(r.c.payment_id == payment_id).order_by(r.c.created_at, r.c.id)
    )
    return [RefundRow(**row._mapping) for row in rows]


async def sum_refunds(
    session: AsyncSession, t: PaymentTables, payment_id: uuid.UUID, statuses: Sequence[str]
) -> int:
    r = t.refund
    total = await session.scalar(
        select(func.coalesce(func.sum(r.c.amount), 0)).where(
            r.c.payment_id == payment_id, r.c.status.in_(statuses)
        )
    )
    return int(total or 0)


# --- customers and saved payment methods -----------------------------------------------


async def get_provider_customer(
    session: AsyncSession, t: PaymentTables, provider: str, user_id: str
) -> str | None:
    c = t.payment_customer
    value = await session.scalar(
        select(c.c.provider_customer_id).where(c.c.provider == provider, c.c.user_id == user_id)
    )
    return str(value) if value is not None else None


async def insert_provider_customer(
    session: AsyncSession, t: PaymentTables, provider: str, user_id: str, customer_id: str
) -> str:
    """Records the user's provider customer; returns the one recorded first."""
    c = t.payment_customer
    await session.execute(
        insert(c)
        .values(provider=provider, user_id=user_id, provider_customer_id=customer_id)
        .on_conflict_do_nothing()
    )
    recorded = await get_provider_customer(session, t, provider, user_id)
    assert recorded is not None
    return recorded


async def insert_setup(
    session: AsyncSession, t: PaymentTables, values: Mapping[str, Any]
) -> SetupRow | None:
    s = t.payment_setup
    result = await session.execute(
        insert(s).values(**values).on_conflict_do_nothing(index_elements=[s.c.id]).returning(s)
    )
    row = result.first()
    return SetupRow(**row._mapping) if row is not None else None


async def get_setup(
    session: AsyncSession, t: PaymentTables, setup_id: uuid.UUID, *, for_update: bool = False
) -> SetupRow | None:
    stmt = select(t.payment_setup).where(t.payment_setup.c.id == setup_id)
    if for_update:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    return SetupRow(**row._mapping) if row is not None else None


async def setup_owners_of_method(
    session: AsyncSession, t: PaymentTables, provider: str, payment_method_id: str
) -> set[str]:
    """The users who saved ``payment_method_id`` (normally one; none for a one-off method)."""
    s = t.payment_setup
    rows = await session.execute(
        select(s.c.customer_id)
        .where(s.c.provider == provider, s.c.payment_method_id == payment_method_id)
        .distinct()
    )
    return set(rows.scalars())


async def get_setup_by_provider_id(
    session: AsyncSession, t: PaymentTables, provider: str, provider_setup_id: str
) -> SetupRow | None:
    s = t.payment_setup
    row = (
        await session.execute(
            select(s)
            .where(s.c.provider == provider, s.c.provider_setup_id == provider_setup_id)
            .with_for_update()
        )
    ).first()
    return SetupRow(**row._mapping) if row is not None else None


async def update_setup(
    session: AsyncSession, t: PaymentTables, setup_id: uuid.UUID, values: Mapping[str, Any]
) -> SetupRow:
    s = t.payment_setup
    result = await session.execute(
        update(s).where(s.c.id == setup_id).values(**values, updated_at=func.now()).returning(s)
    )
    return SetupRow(**result.one()._mapping)


# --- webhook inbox ----------------------------------------------------------------------


async def insert_inbox(
    session: AsyncSession,
    t: PaymentTables,
    *,
    provider: str,
    event_id: str,
    event_type: str,
    object_id: str | None,
    event_created_at: datetime,
    payload: Mapping[str, Any],
) -> bool:
    """Records the event; False when it was received before (a redelivery)."""
    i = t.payment_webhook_inbox
    result = await session.execute(
        insert(i)
        .values(
            provider=provider,
            event_id=event_id,
            event_type=event_type,
            object_id=object_id,
            outcome="received",
            event_created_at=event_created_at,
            payload=dict(payload),
        )
        .on_conflict_do_nothing()
        .returning(i.c.event_id)
    )
    return result.first() is not None


async def set_inbox_outcome(
    session: AsyncSession, t: PaymentTables, provider: str, event_id: str, outcome: str
) -> None:
    i = t.payment_webhook_inbox
    await session.execute(
        update(i).where(i.c.provider == provider, i.c.event_id == event_id).values(outcome=outcome)
    )


async def list_unmatched_events(
    session: AsyncSession, t: PaymentTables, provider: str, since: datetime, until: datetime
) -> list[InboxRow]:
    i = t.payment_webhook_inbox
    rows = await session.execute(
        select(i)
        .where(
            i.c.provider == provider,
            i.c.outcome == "unknown_object",
            i.c.event_created_at >= since,
            i.c.event_created_at < until,
        )
        .order_by(i.c.event_created_at)
    )
    return [InboxRow(**r._mapping) for r in rows]


# --- the simulated provider's storage ---------------------------------------------------


async def sim_get(
    session: AsyncSession, t: PaymentTables, object_id: str, *, for_update: bool = False
) -> dict[str, Any] | None:
    o = t.simulated_object
    stmt = select(o.c.data).where(o.c.id == object_id)
    if for_update:
        stmt = stmt.with_for_update()
    data = await session.scalar(stmt)
    return dict(data) if data is not None else None


async def sim_put(
    session: AsyncSession,
    t: PaymentTables,
    data: Mapping[str, Any],
    *,
    parent_id: str | None = None,
    settle_at: datetime | None = None,
) -> None:
    o = t.simulated_object

    def build() -> Any:
        stmt = insert(o).values(
            id=bindparam("v_id"),
            type=bindparam("v_type"),
            parent_id=bindparam("v_parent_id"),
            data=bindparam("v_data"),
            settle_at=bindparam("v_settle_at"),
        )
        return stmt.on_conflict_do_update(
            index_elements=[o.c.id],
            set_={
                "data": stmt.excluded.data,
                "settle_at": stmt.excluded.settle_at,
                "updated_at": func.now(),
            },
        )

    await session.execute(
        _built(("sim_put", t), build),
        {
            "v_id": data["id"],
            "v_type": data["object"],
            "v_parent_id": parent_id,
            "v_data": dict(data),
            "v_settle_at": settle_at,
        },
    )


async def sim_create_with_request(
    db: AsyncConnection,
    t: PaymentTables,
    data: Mapping[str, Any],
    *,
    key: str,
    request_hash: str,
) -> bool:
    """Records a new object (``data``, answered as it is) with the idempotency key of the
    request that made it, in one statement: the object is written only when the key is new.
    False when the key is taken (a concurrent request with it waits on the key's row until the
    first one's transaction ends, as with :func:`sim_record_request`)."""
    o = t.simulated_object

    def build() -> Any:
        recorded = _request_insert(t, response="v_data").cte("recorded")
        new = select(
            bindparam("v_id", type_=o.c.id.type),
            bindparam("v_type", type_=o.c.type.type),
            bindparam("v_data", type_=o.c.data.type),
        ).select_from(recorded)
        return insert(o).from_select(["id", "type", "data"], new).returning(o.c.id)

    created = await db.execute(
        _built(("sim_create", t), build),
        {
            "v_key": key,
            "v_hash": request_hash,
            "v_id": data["id"],
            "v_type": data["object"],
            "v_data": dict(data),
        },
    )
    return created.first() is not None


async def sim_children(
    session: AsyncSession, t: PaymentTables, parent_id: str, object_type: str
) -> list[dict[str, Any]]:
    o = t.simulated_object
    rows = await session.scalars(
        select(o.c.data)
        .where(o.c.parent_id == parent_id, o.c.type == object_type)
        .order_by(o.c.created_at, o.c.id)
    )
    return [dict(r) for r in rows]


async def sim_find(
    session: AsyncSession, t: PaymentTables, object_type: str, field: str, value: str
) -> list[dict[str, Any]]:
    """The simulated provider's objects of a type whose top-level ``field`` is ``value``,
    oldest first."""
    o = t.simulated_object
    rows = await session.scalars(
        select(o.c.data)
        .where(o.c.type == object_type, o.c.data[field].as_string() == value)
        .order_by(o.c.created_at, o.c.id)
    )
    return [dict(r) for r in rows]


async def sim_claim_due(
    session: AsyncSession, t: PaymentTables, now: datetime, limit: int = 50
) -> list[dict[str, Any]]:
    o = t.simulated_object
    rows = await session.scalars(
        select(o.c.data)
        .where(and_(o.c.settle_at.is_not(None), o.c.settle_at <= now))
        .order_by(o.c.settle_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [dict(r) for r in rows]


async def sim_next_due(session: AsyncSession, t: PaymentTables) -> float | None:
    """Seconds until the simulated provider next has something to do (settle or deliver)."""
    o, e = t.simulated_object, t.simulated_event
    due = await session.scalar(
        select(
            func.extract(
                "epoch",
                func.least(
                    select(func.min(o.c.settle_at))
                    .where(o.c.settle_at.is_not(None))
                    .scalar_subquery(),
                    select(func.min(e.c.next_attempt_at))
                    .where(e.c.delivered_at.is_(None))
                    .scalar_subquery(),
                )
                - func.now(),
            )
        )
    )
    return None if due is None else max(0.0, float(due))


async def sim_insert_event(
    session: AsyncSession, t: PaymentTables, *, event_id: str, event_type: str, body: str
) -> None:
    """Stores the event and wakes the workers when the transaction commits (one statement)."""

    def build() -> Any:
        stored = (
            insert(t.simulated_event)
            .values(id=bindparam("v_id"), type=bindparam("v_type"), body=bindparam("v_body"))
            .returning(t.simulated_event.c.seq)
            .cte("stored")
        )
        return select(func.pg_notify(CHANNEL, "")).select_from(stored)

    await session.execute(
        _built(("sim_event", t), build), {"v_id": event_id, "v_type": event_type, "v_body": body}
    )


async def sim_claim_events(
    session: AsyncSession, t: PaymentTables, limit: int = 50
) -> list[tuple[int, str, int]]:
    """Due undelivered events as (seq, body, attempts), locked for this transaction."""
    e = t.simulated_event
    rows = await session.execute(
        select(e.c.seq, e.c.body, e.c.attempts)
        .where(e.c.delivered_at.is_(None), e.c.next_attempt_at <= func.now())
        .order_by(e.c.seq)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [(int(r.seq), str(r.body), int(r.attempts)) for r in rows]


async def sim_settle_event(
    session: AsyncSession,
    t: PaymentTables,
    seq: int,
    *,
    error: str | None,
    retry_in_seconds: float = 0.0,
) -> None:
    e = t.simulated_event
    values: dict[str, Any]
    if error is None:
        values = {"delivered_at": func.now(), "attempts": e.c.attempts + 1, "last_error": None}
    else:
        values = {
            "attempts": e.c.attempts + 1,
            "last_error": error[:2000],
            "next_attempt_at": func.now() + timedelta(seconds=retry_in_seconds),
        }
    await session.execute(update(e).where(e.c.seq == seq).values(**values))


def _request_insert(t: PaymentTables, *, response: str) -> Any:
    """A request's idempotency key with its answer (bound as ``response``), or nothing when
    the key is taken."""
    r = t.simulated_request
    return (
        insert(r)
        .values(
            idempotency_key=bindparam("v_key"),
            request_hash=bindparam("v_hash"),
            response=bindparam(response),
        )
        .on_conflict_do_nothing()
        .returning(r.c.idempotency_key)
    )


async def sim_record_request(
    session: AsyncSession,
    t: PaymentTables,
    key: str,
    request_hash: str,
    response: Mapping[str, Any],
) -> bool:
    """Records an idempotency key with its answer; False when the key is taken (a concurrent
    request with it waits on the row until the first one's transaction ends)."""

    def build() -> Any:
        return _request_insert(t, response="v_response")

    recorded = await session.execute(
        _built(("sim_request", t), build),
        {"v_key": key, "v_hash": request_hash, "v_response": dict(response)},
    )
    return recorded.first() is not None


async def sim_stored_request(
    session: AsyncSession, t: PaymentTables, key: str
) -> tuple[str, dict[str, Any]] | None:
    """(request hash, answer) stored for an idempotency key, if any."""
    r = t.simulated_request
    row = (
        await session.execute(
            select(r.c.request_hash, r.c.response).where(r.c.idempotency_key == key)
        )
    ).first()
    return None if row is None else (str(row.request_hash), dict(row.response))
