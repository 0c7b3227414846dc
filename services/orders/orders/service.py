"""The rules of orders: placing one (the atomic reservation), following its payments,
expiry, the balance, refunds and fulfilment.

Money and state: an order's state changes in the transaction that records its payment's
change (the payment hook, whatever brought the news); refunds are decided under the order's
lock (the amount promised is reserved then, so concurrent decisions cannot promise more than
was paid) and carried out by a detached job, outside any transaction, with a provider
idempotency key per decision. Lock order, everywhere: payment, campaign, order.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.orders.eligibility import service as eligibility
from services.orders.gifts import service as gifts
from services.orders.groups import service as groups
from services.orders.models import HOLDING_UNITS, PAID, PENDING
from services.orders.orders import repository as repo
from services.orders.orders.plain import plain_request, plain_terms
from services.orders.orders.repository import OrderRow, RefundDecisionRow
from services.orders.orders.schemas import OrderCreate, OrderFilters, PayIn
from services.orders.pickup import service as pickup
from services.orders.presales import repository as campaigns
from services.orders.presales.pricing import first_payment, unit_price_for_order
from services.orders.presales.repository import CampaignRow
from services.orders.presales.service import CampaignNotFound, sold_out
from shared.auth import Principal
from shared.errors import Conflict, DomainError, NotFound
from shared.events import EventPublisher
from shared.events.contracts import (
    OrderCancelled,
    OrderCompleted,
    OrderEvent,
    OrderPaid,
    OrderRefunded,
)
from shared.pagination import scope_to_merchant
from shared.payments import (
    PaymentChange,
    PaymentContext,
    PaymentRow,
    PaymentsNotConfigured,
    create_payment,
    domain_reference,
    get_payment,
    new_payment_id,
    parse_domain_reference,
    payment_intent,
    record_payment,
    refund_payment,
    start_payment,
)
from shared.scheduler import Job, schedule
from shared.tables import PlatformTables

_log = structlog.get_logger("qunbuy.orders")

REFUND_JOB = "order.refund"
COMPLETE_JOB = "order.complete"
REFERENCE_PREFIX = "order:"
FIRST, BALANCE = "first", "balance"


class OrderNotFound(NotFound):
    code = "order_not_found"
    title = "No such order"


class PresaleNotOpen(Conflict):
    code = "presale_not_open"
    title = "This campaign does not take orders now"


class PresalePaused(Conflict):
    code = "presale_paused"
    title = "This campaign is paused: no new orders for now"


class PresaleClosed(Conflict):
    code = "presale_closed"
    title = "This campaign has closed"


class PresaleSoldOut(Conflict):
    code = "presale_sold_out"
    title = "Not enough units left"


class VariantUnknown(DomainError):
    status = 422
    code = "presale_variant_unknown"
    title = "This campaign has no such SKU"


class CustomerLimitExceeded(Conflict):
    code = "presale_customer_limit"
    title = "This would take you over the per-customer limit"


class OrderInFlight(Conflict):
    code = "order_in_flight"
    title = "This order is being placed by another request; retry shortly"


class _OrderExists(OrderInFlight):
    """The order of this buyer and key exists already (a concurrent request, or one whose
    answer failed after the order committed)."""


class OrderStateConflict(Conflict):
    code = "order_state_conflict"
    title = "The order is not in a state that allows this"


class BalanceWindowClosed(Conflict):
    code = "order_balance_window_closed"
    title = "The balance was due earlier; the order is cancelled"


class RefundAmountTooHigh(DomainError):
    status = 422
    code = "order_refund_exceeds_paid"
    title = "A refund cannot exceed what was paid and not refunded yet"


class RefundDecisionNotFound(NotFound):
    code = "order_refund_not_found"
    title = "No such refund request"


def now_utc() -> datetime:
    return datetime.now(UTC)


def sold_out_refusal(campaign_id: uuid.UUID, quantity: int) -> PresaleSoldOut | None:
    """The refusal of an order for more units than this process found left a moment ago
    (``sold_out``), without the database; None when it knows nothing that refuses it."""
    left = sold_out.left(campaign_id)
    if left is None or quantity <= left:
        return None
    return PresaleSoldOut(f"{left} units left", available=left, requested=quantity)


def payment_reference(order_id: uuid.UUID, stage: str) -> str:
    return domain_reference(REFERENCE_PREFIX, order_id, stage)


def parse_reference(reference: str) -> tuple[uuid.UUID, str] | None:
    return parse_domain_reference(REFERENCE_PREFIX, (FIRST, BALANCE), reference)


@dataclass
class Orders:
    """The orders domain's collaborators: made with the app, payments attached at start-up."""

    service: str
    platform: PlatformTables
    publisher: EventPublisher
    order_ttl: timedelta
    sessionmaker: async_sessionmaker[AsyncSession] | None = None
    payments: PaymentContext | None = field(default=None, repr=False)

    def ctx(self) -> PaymentContext:
        if self.payments is None:
            raise PaymentsNotConfigured()
        return self.payments

    def db(self) -> async_sessionmaker[AsyncSession]:
        assert self.sessionmaker is not None, "Orders.sessionmaker is set at start-up"
        return self.sessionmaker

    def payment_id(self, order_id: uuid.UUID, stage: str) -> uuid.UUID:
        return new_payment_id(self.service, "order", str(order_id), stage)

    # --- events ---------------------------------------------------------------------------

    async def publish(
        self, session: AsyncSession, contract: type[OrderEvent], order: OrderRow, **extra: Any
    ) -> None:
        await self.publisher.publish(
            session,
            contract(
                order_id=order.id,
                campaign_id=order.campaign_id,
                merchant_id=order.merchant_id,
                customer_id=order.customer_id,
                sku=order.sku,
                quantity=order.quantity,
                currency=order.currency,
                referral_code=order.referral_code,
                paid_total=order.paid_total,
                refunded_total=order.refunded_amount,
                pickup_point_id=order.pickup_point_id,
                pickup_leader_id=order.pickup_leader_id,
                **extra,
            ),
        )

    # --- placing an order -----------------------------------------------------------------

    async def place(
        self,
        principal: Principal,
        campaign_id: uuid.UUID,
        body: OrderCreate,
        key: str,
        *,
        fresh_key: bool = False,
        group: groups.GroupIntent | None = None,
    ) -> tuple[OrderRow, PaymentRow]:
        """Reserves the units and starts the first payment (deposit or full price).

        The order id comes from the buyer and the Idempotency-Key, so a retry (or a crash
        between the steps) finds the order and resumes its payment instead of ordering
        twice. The reservation commits before the provider is asked anything. With a
        ``fresh_key`` (claimed by this request) an order of this key exists only when an
        earlier request's answer failed after it committed: nothing is looked up first, a
        campaign this process just found sold out is refused without the database, an order
        that needs nothing but the list price is placed in one statement (``plain.py``),
        and the insert that finds the order resumes it."""
        ctx = self.ctx()
        order_id = uuid.uuid5(uuid.NAMESPACE_URL, f"qunbuy:order:{principal.sub}:{key}")
        placed = None
        if fresh_key:
            refusal = sold_out_refusal(campaign_id, body.quantity)
            if refusal is not None:
                raise refusal
            if group is None and plain_request(body):
                placed = await self._place_plain(ctx, principal, campaign_id, order_id, body)
        if placed is None:
            try:
                placed = await self._place_in_full(
                    ctx, principal, campaign_id, order_id, body, fresh_key=fresh_key, group=group
                )
            except _OrderExists:
                if not fresh_key:
                    raise
                # A key is fresh again when its request's answer failed (a 5xx releases it),
                # though its order may have committed: this retry resumes that order.
                placed = await self._place_in_full(
                    ctx, principal, campaign_id, order_id, body, fresh_key=False, group=group
                )
        order, payment = placed
        payment = await start_payment(ctx, payment, payment_method=body.payment_method)
        if payment.status != "succeeded":
            return order, payment  # the payment hook changed nothing: the order is as reserved
        async with self.db()() as session:
            paid = await repo.get_order(session, order.id)
        assert paid is not None
        return paid, payment

    async def _place_plain(
        self,
        ctx: PaymentContext,
        principal: Principal,
        campaign_id: uuid.UUID,
        order_id: uuid.UUID,
        body: OrderCreate,
    ) -> tuple[OrderRow, PaymentRow] | None:
        """The order and its payment's intent in one statement, priced on the terms this
        process last saw; None when that wrote nothing (the full path then runs and tells
        why, or places the order on the terms as they are)."""
        if not plain_terms.knows(campaign_id):
            async with ctx.single() as conn:
                seen = await campaigns.get_campaign(conn, campaign_id)
            if seen is None:
                return None
            plain_terms.learn(seen)
        terms = plain_terms.get(campaign_id)
        if terms is None:
            return None
        now = now_utc()
        order = _order_values(
            order_id,
            campaign_id,
            principal.sub,
            body,
            terms,
            list_price=terms.tiers[0].unit_price,
            early_bird_price=None,
            member_price=None,
            expires_at=now + self.order_ttl,
            delivery_address=pickup.address_of(body),
        )
        try:
            payment = payment_intent(
                ctx,
                payment_id=self.payment_id(order_id, FIRST),
                reference=payment_reference(order_id, FIRST),
                merchant_id=terms.merchant_id,
                customer_id=principal.sub,
                amount=order["first_amount"],
                currency=terms.currency,
                method=body.method,
            )
        except DomainError:
            return None  # refused by the full path too, after the campaign's own checks
        async with ctx.single() as conn:
            return await repo.place_plain(
                conn,
                ctx.tables,
                reservation=campaigns.reservation_params(campaign_id, body.sku, body.quantity, now),
                terms=terms,
                order=order,
                payment=payment,
            )

    async def _place_in_full(
        self,
        ctx: PaymentContext,
        principal: Principal,
        campaign_id: uuid.UUID,
        order_id: uuid.UUID,
        body: OrderCreate,
        *,
        fresh_key: bool,
        group: groups.GroupIntent | None,
    ) -> tuple[OrderRow, PaymentRow]:
        """Every check under the campaign's lock, in one transaction."""
        async with self.db()() as session, session.begin():
            order = None if fresh_key else await repo.get_order(session, order_id)
            if order is None:
                order = await self._reserve(session, principal, campaign_id, order_id, body, group)
            if order.campaign_id != campaign_id:
                raise OrderInFlight("this Idempotency-Key placed an order on another campaign")
            # The payment's intent is recorded with the reservation: one transaction fewer,
            # and an order never exists without the payment that completes it.
            payment = await record_payment(
                session,
                ctx,
                payment_id=self.payment_id(order.id, FIRST),
                reference=payment_reference(order.id, FIRST),
                merchant_id=order.merchant_id,
                customer_id=order.customer_id,
                amount=order.first_amount,
                currency=order.currency,
                method=body.method,
                payment_method=body.payment_method,
            )
        return order, payment

    async def _reserve(
        self,
        session: AsyncSession,
        principal: Principal,
        campaign_id: uuid.UUID,
        order_id: uuid.UUID,
        body: OrderCreate,
        group: groups.GroupIntent | None,
    ) -> OrderRow:
        now = now_utc()
        reservation = await campaigns.reserve_units(
            session, campaign_id, body.sku, body.quantity, now
        )
        campaign = reservation.campaign
        if campaign is None:
            await self._refuse(session, campaign_id, body.quantity, now)
        assert campaign is not None
        # From here the campaign's row is locked until commit: the checks below are exact.
        plain_terms.learn(campaign)
        member_price = await eligibility.admit_order(
            session,
            campaign,
            principal.sub,
            order_id,
            quantity=body.quantity,
            purchase_code=body.purchase_code,
            now=now,
        )
        if campaign.per_customer_limit is not None:
            held = await campaigns.customer_units(session, campaign_id, principal.sub)
            if held + body.quantity > campaign.per_customer_limit:
                raise CustomerLimitExceeded(
                    f"you hold {held} of at most {campaign.per_customer_limit} units",
                    limit=campaign.per_customer_limit,
                    held=held,
                )
        if not reservation.variant_taken:
            if not await campaigns.variant_exists(session, campaign_id, body.sku):
                raise VariantUnknown(field="sku")
            raise PresaleSoldOut(f"not enough units of {body.sku} left", sku=body.sku)
        destination = await pickup.destination(session, campaign.merchant_id, body)
        place = None
        if group is not None:  # a group's price replaces the list price (early-bird too)
            place = await groups.take_place(
                session, self.platform, principal, campaign, order_id, body.sku, group
            )
        early = place is None and _early_bird_applies(campaign, body.quantity, now)
        list_price = campaign.early_bird_price if early else campaign.tiers[0].unit_price
        list_price = place.unit_price if place else list_price
        assert list_price is not None
        order = await repo.insert_order(
            session,
            _order_values(
                order_id,
                campaign_id,
                principal.sub,
                body,
                campaigns.PricingTerms.of(campaign),
                list_price=list_price,
                early_bird_price=campaign.early_bird_price if early else None,
                member_price=member_price,
                expires_at=now + self.order_ttl,
                **(place.order_columns() if place else {}),
                **destination,
            ),
        )
        if order is None:
            raise _OrderExists()
        if body.gift is not None:
            await gifts.attach(session, self.platform, order, body.gift)
        return order

    async def _refuse(
        self, session: AsyncSession, campaign_id: uuid.UUID, quantity: int, now: datetime
    ) -> None:
        """Why the reservation took nothing: always raises."""
        campaign = await campaigns.get_campaign(session, campaign_id)
        if campaign is None:
            plain_terms.forget(campaign_id)
            raise CampaignNotFound()
        plain_terms.learn(campaign)
        if campaign.status == "draft":
            raise CampaignNotFound()
        if campaign.status in ("succeeded", "failed", "fulfilled", "cancelled") or (
            campaign.closes_at <= now
        ):
            raise PresaleClosed()
        if campaign.status != "open" or campaign.opens_at > now:
            raise PresaleNotOpen(opens_at=campaign.opens_at.isoformat())
        if campaign.paused:
            raise PresalePaused()
        left = max(0, (campaign.capacity or 0) - campaign.reserved_quantity)
        sold_out.remember(campaign_id, left)
        raise PresaleSoldOut(f"{left} units left", available=left, requested=quantity)

    # --- the balance ----------------------------------------------------------------------

    async def pay_balance(
        self, principal: Principal, order_id: uuid.UUID, body: PayIn
    ) -> tuple[OrderRow, PaymentRow]:
        ctx = self.ctx()
        async with self.db()() as session:
            order = await self.own_order(session, principal, order_id)
        if order.status != "balance_due":
            if order.cancel_reason == "balance_unpaid":
                raise BalanceWindowClosed()
            raise OrderStateConflict(f"no balance is due on a {order.status} order")
        assert order.balance_amount is not None
        assert order.balance_due_by is not None
        if order.balance_due_by <= now_utc():
            raise BalanceWindowClosed()
        payment = await create_payment(
            ctx,
            payment_id=self.payment_id(order.id, BALANCE),
            reference=payment_reference(order.id, BALANCE),
            merchant_id=order.merchant_id,
            customer_id=order.customer_id,
            amount=order.balance_amount,
            currency=order.currency,
            method=body.method,
            payment_method=body.payment_method,
        )
        async with self.db()() as session:
            fresh = await repo.get_order(session, order.id)
        assert fresh is not None
        return fresh, payment

    # --- reading --------------------------------------------------------------------------

    async def own_order(
        self, session: AsyncSession, principal: Principal, order_id: uuid.UUID
    ) -> OrderRow:
        """The buyer's own order (admins see all); anyone else gets the 404 of no order."""
        order = await repo.get_order(session, order_id)
        if order is None or not (principal.is_admin or order.customer_id == principal.sub):
            raise OrderNotFound()
        return order

    async def visible_order(
        self, session: AsyncSession, principal: Principal, order_id: uuid.UUID
    ) -> OrderRow:
        """The order for its buyer, staff of its merchant and admins."""
        order = await repo.get_order(session, order_id)
        if order is None or not (
            order.customer_id == principal.sub or principal.acts_for(order.merchant_id)
        ):
            raise OrderNotFound()
        return order

    async def staff_order(
        self, session: AsyncSession, principal: Principal, order_id: uuid.UUID, *, lock: bool
    ) -> OrderRow:
        order = await repo.get_order(session, order_id)
        if order is None or not principal.acts_for(order.merchant_id):
            raise OrderNotFound()
        if lock:
            await campaigns.get_campaign(session, order.campaign_id, lock=True)
            locked = await repo.get_order(session, order_id, lock=True)
            assert locked is not None
            return locked
        return order

    async def payment_of(
        self, session: AsyncSession, order: OrderRow, stage: str
    ) -> PaymentRow | None:
        """The order's payment of ``stage`` (first or balance), if it was started, read in
        the caller's session (a request never holds one pooled connection while it takes
        another: with a full pool, that waits on itself)."""
        if self.payments is None:
            return None
        return await get_payment(session, self.payments, self.payment_id(order.id, stage))

    # --- following payments (the payment hook) --------------------------------------------

    async def on_payment(self, session: AsyncSession, change: PaymentChange) -> None:
        """Runs in the transaction that records a change of an ``order:`` payment."""
        parsed = parse_reference(change.payment.reference)
        if parsed is None:
            _log.warning("order_payment_reference_unknown", reference=change.payment.reference)
            return
        order_id, stage = parsed
        found = await repo.get_order(session, order_id)
        if found is None:
            _log.warning("order_payment_without_order", order_id=str(order_id))
            return
        await campaigns.get_campaign(session, found.campaign_id, lock=True)
        order = await repo.get_order(session, order_id, lock=True)
        assert order is not None
        if change.kind == "succeeded":
            await self._paid(session, order, stage, change.payment)
        elif change.kind == "refunded":
            await self._refunded(session, order, int(change.details["refund_amount"]))
        elif change.kind == "refund_failed":
            amount = int(change.details["refund_amount"])
            _log.error("order_refund_bounced", order_id=str(order.id), amount=amount)
            await repo.update_order(
                session, order.id, {"refunded_amount": max(0, order.refunded_amount - amount)}
            )

    async def _paid(
        self, session: AsyncSession, order: OrderRow, stage: str, payment: PaymentRow
    ) -> None:
        amount = payment.amount_captured or payment.amount
        now = now_utc()
        if stage == FIRST and order.status == "pending_payment":
            full = order.deposit_type == "full"
            order = await repo.update_order(
                session,
                order.id,
                {
                    "status": "paid" if full else "deposit_paid",
                    "first_paid": amount,
                    "paid_at": now,
                },
            )
            await campaigns.commit_units(session, order.campaign_id, order.sku, order.quantity)
            if order.group_id is not None:
                await groups.member_paid(session, self.platform, order.id)
            await self.publish(
                session,
                OrderPaid,
                order,
                stage="full" if full else "deposit",
                amount=amount,
                fully_paid=full,
            )
        elif stage == BALANCE and order.status == "balance_due":
            order = await repo.update_order(
                session, order.id, {"status": "paid", "balance_paid": amount, "paid_at": now}
            )
            await self.publish(
                session, OrderPaid, order, stage="balance", amount=amount, fully_paid=True
            )
        elif order.status == "cancelled" and (
            (stage == FIRST and order.first_paid == 0)
            or (stage == BALANCE and order.balance_paid == 0)
        ):
            # Paid after the order ended (expired, campaign closed, window over): it goes back.
            column = "first_paid" if stage == FIRST else "balance_paid"
            order = await repo.update_order(session, order.id, {column: amount})
            await self.decide_refund(
                session,
                order,
                amount=amount,
                reason="paid after the order ended",
                kind="late_payment",
                by="system",
            )
        # Anything else is news we have already acted on (a redelivery).

    async def _refunded(self, session: AsyncSession, order: OrderRow, amount: int) -> None:
        refunded = order.refunded_amount + amount
        values: dict[str, Any] = {"refunded_amount": refunded}
        if refunded > order.refund_promised:
            # Refunded at the provider without a decision of ours (its dashboard, a dispute):
            # the promise catches up, so the order never promises it again.
            extra = refunded - order.refund_promised
            from_balance = min(extra, order.balance_paid - order.balance_refund_promised)
            values["balance_refund_promised"] = order.balance_refund_promised + from_balance
            values["first_refund_promised"] = order.first_refund_promised + extra - from_balance
        order = await repo.update_order(session, order.id, values)
        await self.publish(session, OrderRefunded, order, amount=amount)

    # --- refunds --------------------------------------------------------------------------

    async def decide_refund(
        self,
        session: AsyncSession,
        order: OrderRow,
        *,
        amount: int,
        reason: str,
        kind: str,
        by: str,
        request: RefundDecisionRow | None = None,
    ) -> RefundDecisionRow:
        """Promises ``amount`` back (the caller holds the order's lock) and schedules the
        refund: from the balance payment first, then from the first payment."""
        if amount < 1 or amount > order.refundable:
            raise RefundAmountTooHigh(refundable=order.refundable)
        from_balance = min(amount, order.balance_paid - order.balance_refund_promised)
        from_first = amount - from_balance
        await repo.update_order(
            session,
            order.id,
            {
                "balance_refund_promised": order.balance_refund_promised + from_balance,
                "first_refund_promised": order.first_refund_promised + from_first,
            },
        )
        values = {
            "status": "approved",
            "from_first": from_first,
            "from_balance": from_balance,
            "decided_by": by,
            "decided_at": now_utc(),
        }
        if request is None:
            decision = await repo.insert_refund_decision(
                session,
                {
                    "id": uuid.uuid4(),
                    "order_id": order.id,
                    "amount": amount,
                    "reason": reason,
                    "kind": kind,
                    "requested_by": by,
                    **values,
                },
            )
        else:
            decision = await repo.update_refund_decision(session, request.id, values)
        await schedule(
            session, self.platform, kind=REFUND_JOB, key=str(decision.id), run_at=now_utc()
        )
        return decision

    async def refund_everything(
        self, session: AsyncSession, order: OrderRow, *, reason: str, kind: str
    ) -> None:
        if order.refundable > 0:
            await self.decide_refund(
                session, order, amount=order.refundable, reason=reason, kind=kind, by="system"
            )

    async def request_refund(
        self,
        session: AsyncSession,
        principal: Principal,
        order_id: uuid.UUID,
        amount: int | None,
        reason: str,
    ) -> RefundDecisionRow:
        """The buyer asks; nothing is promised until staff approve."""
        order = await self.own_order(session, principal, order_id)
        if order.status not in PAID or order.refundable < 1:
            raise OrderStateConflict("there is nothing paid to refund on this order")
        wanted = order.refundable if amount is None else amount
        if wanted > order.refundable:
            raise RefundAmountTooHigh(refundable=order.refundable)
        return await repo.insert_refund_decision(
            session,
            {
                "id": uuid.uuid4(),
                "order_id": order.id,
                "amount": wanted,
                "reason": reason,
                "kind": "customer_request",
                "status": "requested",
                "requested_by": principal.sub,
            },
        )

    async def staff_refund(
        self,
        session: AsyncSession,
        principal: Principal,
        order_id: uuid.UUID,
        amount: int | None,
        reason: str,
    ) -> RefundDecisionRow:
        order = await self.staff_order(session, principal, order_id, lock=True)
        decision = await self.decide_refund(
            session,
            order,
            amount=order.refundable if amount is None else amount,
            reason=reason,
            kind="staff",
            by=principal.sub,
        )
        await self._end_if_fully_refunded(session, order.id)
        return decision

    async def decide_request(
        self,
        session: AsyncSession,
        principal: Principal,
        order_id: uuid.UUID,
        refund_id: uuid.UUID,
        *,
        approve: bool,
        note: str | None,
    ) -> RefundDecisionRow:
        order = await self.staff_order(session, principal, order_id, lock=True)
        request = await repo.get_refund_decision(session, refund_id, lock=True)
        if request is None or request.order_id != order.id:
            raise RefundDecisionNotFound()
        if request.status != "requested":
            raise OrderStateConflict(f"this request was {request.status} already")
        if not approve:
            return await repo.update_refund_decision(
                session,
                request.id,
                {
                    "status": "rejected",
                    "decided_by": principal.sub,
                    "decided_at": now_utc(),
                    "decision_note": note,
                },
            )
        decision = await self.decide_refund(
            session,
            order,
            amount=request.amount,
            reason=request.reason,
            kind=request.kind,
            by=principal.sub,
            request=request,
        )
        if note is not None:
            decision = await repo.update_refund_decision(
                session, decision.id, {"decision_note": note}
            )
        await self._end_if_fully_refunded(session, order.id)
        return decision

    async def _end_if_fully_refunded(self, session: AsyncSession, order_id: uuid.UUID) -> None:
        """Everything paid is promised back: the order ends (a completed one stays completed)."""
        order = await repo.get_order(session, order_id)
        assert order is not None
        if order.refundable == 0 and order.status in PAID and order.status != "completed":
            await self.cancel_order(session, order, reason="refunded")

    async def run_refund(self, job: Job) -> None:
        """The detached refund job: asks the provider for each part of one decision."""
        ctx = self.ctx()
        decision_id = uuid.UUID(job.key)
        async with self.db()() as session:
            decision = await repo.get_refund_decision(session, decision_id)
        if decision is None or decision.status == "done":
            return
        for stage, amount in ((BALANCE, decision.from_balance), (FIRST, decision.from_first)):
            if amount > 0:
                await refund_payment(
                    ctx,
                    self.payment_id(decision.order_id, stage),
                    amount=amount,
                    reason=decision.kind,
                    request_key=f"order-refund:{decision.id}",
                    requested_by=decision.decided_by or "system",
                )
        async with self.db()() as session, session.begin():
            await repo.update_refund_decision(session, decision.id, {"status": "done"})

    # --- expiry ---------------------------------------------------------------------------

    async def expire_due(self, limit: int = 200) -> int:
        """Unpaid orders past their expiry give their units back; returns how many ended.

        A sweep (the worker runs it, see ``expiry_sweep``) rather than a scheduled job per
        order: placing an order then writes nothing more while it holds the campaign's lock,
        and one query finds every order due. Each order ends in its own short transaction
        under the campaign's and the order's locks; run twice, or on two workers, nothing
        ends twice."""
        async with self.db()() as session:
            due = await repo.expired_order_ids(session, limit)
        for order_id, campaign_id in due:
            async with self.db()() as session, session.begin():
                await campaigns.get_campaign(session, campaign_id, lock=True)
                order = await repo.get_order(session, order_id, lock=True)
                if order is not None and order.status == "pending_payment":
                    await self.cancel_order(session, order, reason="expired")
        return len(due)

    async def next_expiry_in(self) -> float | None:
        async with self.db()() as session:
            return await repo.seconds_to_next_expiry(session)

    async def cancel_order(
        self, session: AsyncSession, order: OrderRow, *, reason: str
    ) -> OrderRow:
        """Ends an order (caller holds campaign and order locks): its units go back while the
        campaign still counts them, and the event tells the rest. Refunds are the caller's."""
        committed = order.status in PAID
        if order.group_id is not None:
            await groups.member_left(session, order.id)
        if order.status == PENDING:
            await eligibility.give_back_code(session, order.id)
        if order.status in HOLDING_UNITS:
            campaign = await campaigns.get_campaign(session, order.campaign_id)
            if campaign is not None and campaign.status in ("draft", "published", "open"):
                await campaigns.release_units(
                    session, order.campaign_id, order.sku, order.quantity, committed=committed
                )
                sold_out.forget(order.campaign_id)
        order = await repo.update_order(
            session,
            order.id,
            {"status": "cancelled", "cancel_reason": reason, "cancelled_at": now_utc()},
        )
        await self.publish(
            session, OrderCancelled, order, reason=reason, forfeited_amount=order.forfeited_amount
        )
        return order

    # --- fulfilment -----------------------------------------------------------------------

    async def ship(
        self,
        session: AsyncSession,
        principal: Principal,
        order_id: uuid.UUID,
        carrier: str,
        tracking: str,
    ) -> OrderRow:
        order = await self.staff_order(session, principal, order_id, lock=True)
        if order.status != "paid":
            raise OrderStateConflict(f"only a paid order ships (this one is {order.status})")
        campaign = await campaigns.get_campaign(session, order.campaign_id)
        if campaign is None or campaign.status not in ("succeeded", "fulfilled"):
            raise OrderStateConflict("orders ship once their campaign has succeeded")
        await gifts.ensure_shippable(session, order)
        return await repo.update_order(
            session,
            order.id,
            {
                "status": "shipped",
                "carrier": carrier,
                "tracking_number": tracking,
                "shipped_at": now_utc(),
            },
        )

    async def deliver(
        self, session: AsyncSession, principal: Principal, order_id: uuid.UUID
    ) -> OrderRow:
        order = await self.staff_order(session, principal, order_id, lock=True)
        if order.status != "shipped":
            raise OrderStateConflict(
                f"only a shipped order is delivered (this one is {order.status})"
            )
        return await self.delivered(session, order)

    async def delivered(self, session: AsyncSession, order: OrderRow) -> OrderRow:
        """A shipped order reached its buyer (the caller holds the campaign's and the order's
        locks): it completes after the campaign's return window."""
        campaign = await campaigns.get_campaign(session, order.campaign_id)
        assert campaign is not None
        now = now_utc()
        order = await repo.update_order(
            session, order.id, {"status": "delivered", "delivered_at": now}
        )
        await schedule(
            session,
            self.platform,
            kind=COMPLETE_JOB,
            key=str(order.id),
            run_at=now + timedelta(days=campaign.return_window_days),
        )
        return order

    async def complete(self, session: AsyncSession, job: Job) -> None:
        """The return window has passed: the order is complete (commissions can settle)."""
        order_id = uuid.UUID(job.key)
        found = await repo.get_order(session, order_id)
        if found is None:
            return
        await campaigns.get_campaign(session, found.campaign_id, lock=True)
        order = await repo.get_order(session, order_id, lock=True)
        if order is None or order.status != "delivered":
            return
        order = await repo.update_order(
            session, order.id, {"status": "completed", "completed_at": now_utc()}
        )
        await self.publish(session, OrderCompleted, order)


def visible_orders(principal: Principal, filters: OrderFilters) -> Select[Any]:
    """The orders ``principal`` may list: customers their own, staff their merchant's (and a
    customer's, by filter), admins all; narrowed by ``filters``."""
    cols = repo.order_columns()
    stmt = repo.orders_query()
    if principal.is_admin or principal.has("staff"):
        stmt = scope_to_merchant(stmt, principal, cols.merchant_id)
        if filters.customer_id is not None:
            stmt = stmt.where(cols.customer_id == filters.customer_id)
    else:
        stmt = stmt.where(cols.customer_id == principal.sub)
    if filters.status is not None:
        stmt = stmt.where(cols.status == filters.status)
    if filters.campaign_id is not None:
        stmt = stmt.where(cols.campaign_id == filters.campaign_id)
    if filters.created_from is not None:
        stmt = stmt.where(cols.created_at >= filters.created_from)
    if filters.created_to is not None:
        stmt = stmt.where(cols.created_at < filters.created_to)
    return stmt


def _order_values(
    order_id: uuid.UUID,
    campaign_id: uuid.UUID,
    customer_id: str,
    body: OrderCreate,
    terms: campaigns.PricingTerms,
    *,
    list_price: int,
    early_bird_price: int | None,
    member_price: int | None,
    expires_at: datetime,
    **columns: Any,
) -> dict[str, Any]:
    """A new order's row, waiting for its first payment: the same for both paths."""
    quantity = body.quantity
    return {
        "id": order_id,
        "campaign_id": campaign_id,
        "merchant_id": terms.merchant_id,
        "customer_id": customer_id,
        "sku": body.sku,
        "quantity": quantity,
        "currency": terms.currency,
        "deposit_type": terms.deposit_type,
        "early_bird_price": early_bird_price,
        "first_amount": first_payment(
            terms.deposit_type,
            quantity=quantity,
            unit_deposit=terms.unit_deposit,
            list_unit_price=unit_price_for_order(list_price, member_price),
        ),
        "deposit_credit": quantity * terms.unit_deposit_credit,
        "status": PENDING,
        "referral_code": body.referral_code,
        "member_unit_price": member_price,
        "expires_at": expires_at,
        **columns,
    }


def _early_bird_applies(campaign: CampaignRow, quantity: int, now: datetime) -> bool:
    """Early-bird holds until its time or its units run out, whichever comes first; an order
    is early-bird when all its units fit in what was left of the early-bird units."""
    if campaign.early_bird_price is None:
        return False
    if campaign.early_bird_until is not None and now >= campaign.early_bird_until:
        return False
    before = campaign.reserved_quantity - quantity
    return campaign.early_bird_units is None or before + quantity <= campaign.early_bird_units
