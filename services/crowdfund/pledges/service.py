"""The rules of pledges: pledging (the atomic reservation of places), saving the card or
paying at once, changes and cancellations until the deadline, following payments, refunds,
and unconfirmed holds that expire.

Money and state: a pledge's state changes in the transaction that records its payment's
change (the payment hook, whatever brought the news); refunds are decided under the pledge's
lock (the amount promised is reserved then) and carried out by a detached job, outside any
transaction, with a provider idempotency key per decision. Lock order, everywhere: payment,
project, pledge. The project's lock serialises every pledge, change and cancellation of the
project, which is what makes places, per-backer limits and the total exact.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.crowdfund.models import (
    CHARGEABLE,
    CHARGING,
    COLLECTED,
    CONFIRMED,
    COUNTED,
    PAYMENT_FAILED,
    PENDING,
)
from services.crowdfund.pledges import repository as repo
from services.crowdfund.pledges.repository import ItemRow, PledgeRow
from services.crowdfund.pledges.schemas import (
    PaymentSummary,
    PledgeCreate,
    PledgeFilters,
    PledgeOut,
    PledgeTerms,
    SetupSummary,
)
from services.crowdfund.projects import repository as projects
from services.crowdfund.projects.repository import ProjectRow, RewardRow
from services.crowdfund.projects.service import (
    ProjectNotFound,
    RewardNotFound,
    unlock_stretch_goals,
)
from shared.auth import Principal
from shared.errors import Conflict, DomainError, NotFound
from shared.events import EventPublisher
from shared.events.contracts import (
    PledgeCharged,
    PledgeEvent,
    PledgePaymentFailed,
    PledgeRefunded,
)
from shared.pagination import scope_to_owner
from shared.payments import (
    PaymentChange,
    PaymentContext,
    PaymentNotFound,
    PaymentRow,
    PaymentSetupNotFound,
    PaymentsNotConfigured,
    SetupRow,
    create_setup,
    domain_reference,
    get_payment_view,
    get_setup,
    new_payment_id,
    new_setup_id,
    parse_domain_reference,
    record_payment,
    refund_payment,
    start_payment,
)
from shared.scheduler import Job, schedule
from shared.tables import PlatformTables
from shared.wakeup import notify_work

_log = structlog.get_logger("qunbuy.crowdfund")

REFUND_JOB = "pledge.refund"
REFERENCE_PREFIX = "pledge:"
PAY, CHARGE = "pay", "charge"
LAST_HOUR = timedelta(hours=1)
# The fix window after a failed charge, and the automatic retries in it (days after the
# first failure; day 0 is the failed charge itself).
FIX_WINDOW = timedelta(days=7)
RETRY_AFTER = (timedelta(days=3), timedelta(days=6))
# Cancelled or changed by their backer until the deadline.
OPEN = (PENDING, CONFIRMED, COLLECTED)


class PledgeNotFound(NotFound):
    code = "pledge_not_found"
    title = "No such pledge"


class ProjectNotLive(Conflict):
    code = "project_not_live"
    title = "This project does not take pledges now"


class ProjectSuspended(Conflict):
    code = "project_suspended"
    title = "This project is suspended: no pledges or changes for now"


class ProjectClosed(Conflict):
    code = "project_closed"
    title = "This project's deadline has passed"


class RewardSoldOut(Conflict):
    code = "reward_sold_out"
    title = "Not enough places left in this reward"


class RewardNotAvailable(Conflict):
    code = "reward_not_available"
    title = "This reward has not started yet, or has ended"


class RewardBackerLimit(Conflict):
    code = "reward_backer_limit"
    title = "This would take you over the reward's per-backer limit"


class PledgeRewardInvalid(DomainError):
    status = 422
    code = "pledge_reward_invalid"
    title = "Pledge for a tier (add-ons only on top of one), or without reward if offered"


class PledgeBelowMinimum(DomainError):
    status = 422
    code = "pledge_amount_below_reward"
    title = "The amount is below the reward's minimum plus add-ons and shipping"


class PledgeRegionInvalid(DomainError):
    status = 422
    code = "pledge_region_invalid"
    title = "Give a region this reward ships to"


class PledgeInFlight(Conflict):
    code = "pledge_in_flight"
    title = "This pledge is being made by another request; retry shortly"


class PledgeStateConflict(Conflict):
    code = "pledge_state_conflict"
    title = "The pledge is not in a state that allows this"


class PledgeLastHour(Conflict):
    code = "pledge_last_hour"
    title = "This project allows no cancelling or lowering of pledges in its last hour"


class PledgeRefundTooHigh(DomainError):
    status = 422
    code = "pledge_refund_exceeds_paid"
    title = "A refund cannot exceed what was paid and not refunded yet"


def now_utc() -> datetime:
    return datetime.now(UTC)


def payment_reference(pledge_id: uuid.UUID, stage: str) -> str:
    return domain_reference(REFERENCE_PREFIX, pledge_id, stage)


def parse_reference(reference: str) -> tuple[uuid.UUID, str] | None:
    return parse_domain_reference(REFERENCE_PREFIX, (PAY, CHARGE), reference)


def payment_fee(amount: int, bps: int) -> int:
    """The provider's fee on one charge: ``amount * bps / 10000``, rounded half up to the
    fen (WeChat Pay and Stripe round to the nearest minor unit)."""
    return (amount * bps + 5_000) // 10_000


def next_retry(first_failed_at: datetime, now: datetime) -> datetime | None:
    """The next automatic attempt of the fix window (days 3 and 6 after the first failure),
    or None when none is left."""
    later = [first_failed_at + after for after in RETRY_AFTER if first_failed_at + after > now]
    return later[0] if later else None


@dataclass
class Lines:
    """What a pledge's choice holds and costs."""

    items: list[ItemRow]
    minimum: int
    shipping_fee: int


@dataclass
class Pledges:
    """The pledge domain's collaborators: made with the app, payments attached at start-up."""

    service: str
    platform: PlatformTables
    publisher: EventPublisher
    hold_ttl: timedelta
    payment_fee_bps: int
    sessionmaker: async_sessionmaker[AsyncSession] | None = None
    payments: PaymentContext | None = field(default=None, repr=False)

    def ctx(self) -> PaymentContext:
        if self.payments is None:
            raise PaymentsNotConfigured()
        return self.payments

    def db(self) -> async_sessionmaker[AsyncSession]:
        assert self.sessionmaker is not None, "Pledges.sessionmaker is set at start-up"
        return self.sessionmaker

    def pay_id(self, pledge_id: uuid.UUID) -> uuid.UUID:
        return new_payment_id(self.service, "pledge", str(pledge_id), PAY)

    def charge_id(self, pledge_id: uuid.UUID, attempt: int) -> uuid.UUID:
        """The payment of one off-session attempt (``charge_off_session`` derives the same)."""
        reference = payment_reference(pledge_id, CHARGE)
        return new_payment_id(self.service, "off_session", reference, str(attempt))

    # --- events ---------------------------------------------------------------------------

    async def publish(
        self, session: AsyncSession, contract: type[PledgeEvent], pledge: PledgeRow, **extra: Any
    ) -> None:
        await self.publisher.publish(
            session,
            contract(
                pledge_id=pledge.id,
                project_id=pledge.project_id,
                merchant_id=pledge.merchant_id,
                customer_id=pledge.customer_id,
                currency=pledge.currency,
                referral_code=pledge.referral_code,
                paid_total=pledge.paid,
                refunded_total=pledge.refunded_amount,
                **extra,
            ),
        )

    async def count(self, session: AsyncSession, project_id: uuid.UUID, delta: int) -> None:
        """Moves the confirmed total (the caller holds the project's lock); a rise unlocks the
        stretch goals it passes."""
        if delta != 0:
            project = await projects.add_pledged(session, project_id, delta)
            if delta > 0:
                await unlock_stretch_goals(session, self.publisher, project)

    # --- pledging -------------------------------------------------------------------------

    async def place(
        self, principal: Principal, project_id: uuid.UUID, body: PledgeCreate, key: str
    ) -> PledgeOut:
        """Holds the places, then saves the card (nothing charged) or starts the payment.

        The pledge id comes from the backer and the Idempotency-Key, so a retry (or a crash
        between the steps) finds the pledge and resumes instead of pledging twice. The
        reservation commits before the provider is asked anything."""
        ctx = self.ctx()
        pledge_id = uuid.uuid5(uuid.NAMESPACE_URL, f"qunbuy:pledge:{principal.sub}:{key}")
        payment: PaymentRow | None = None
        async with self.db()() as session, session.begin():
            pledge = await repo.get_pledge(session, pledge_id)
            if pledge is None:
                pledge = await self._reserve(session, principal, project_id, pledge_id, body)
            if pledge.project_id != project_id:
                raise PledgeInFlight("this Idempotency-Key pledged for another project")
            if pledge.setup_id is None:
                payment = await record_payment(
                    session,
                    ctx,
                    payment_id=self.pay_id(pledge.id),
                    reference=payment_reference(pledge.id, PAY),
                    merchant_id=pledge.merchant_id,
                    customer_id=pledge.customer_id,
                    amount=pledge.amount,
                    currency=pledge.currency,
                    method=pledge.method,  # type: ignore[arg-type]
                    payment_method=body.payment_method,
                )
        if payment is not None:
            payment = await start_payment(ctx, payment, payment_method=body.payment_method)
            return await self.out(pledge.id, principal, payment=payment)
        assert pledge.setup_id is not None
        setup = await create_setup(
            ctx,
            setup_id=pledge.setup_id,
            customer_id=pledge.customer_id,
            payment_method=body.payment_method,
        )
        await self.card_saved(pledge.id, setup)
        return await self.out(pledge.id, principal, setup=setup)

    async def _reserve(
        self,
        session: AsyncSession,
        principal: Principal,
        project_id: uuid.UUID,
        pledge_id: uuid.UUID,
        body: PledgeCreate,
    ) -> PledgeRow:
        now = now_utc()
        project = await self.take_project(session, project_id, now)
        lines = await self._take_places(session, project, principal.sub, body, pledge_id, now)
        if body.amount < lines.minimum:
            raise PledgeBelowMinimum(
                f"at least {lines.minimum}", minimum=lines.minimum, field="amount"
            )
        saves_card = body.method == "card" and project.funding_model == "all_or_nothing"
        pledge = await repo.insert_pledge(
            session,
            {
                "id": pledge_id,
                "project_id": project.id,
                "merchant_id": project.merchant_id,
                "customer_id": principal.sub,
                "reward_id": body.reward_id,
                "amount": body.amount,
                "currency": project.currency,
                "method": body.method,
                "region": body.region,
                "shipping_fee": lines.shipping_fee,
                "referral_code": body.referral_code,
                "source": body.source,
                "status": PENDING,
                "hold_expires_at": now + self.hold_ttl,
                "setup_id": new_setup_id(self.service, principal.sub, f"pledge:{pledge_id}")
                if saves_card
                else None,
            },
        )
        if pledge is None:
            raise PledgeInFlight()
        await repo.insert_items(session, lines.items)
        return pledge

    async def take_project(
        self,
        session: AsyncSession,
        project_id: uuid.UUID,
        now: datetime,
        *,
        suspended_ok: bool = False,
    ) -> ProjectRow:
        """The project, locked, when it takes pledges and changes now; else why not."""
        project = await projects.get_project(session, project_id, lock=True)
        if project is None or project.status in ("draft", "submitted", "rejected"):
            raise ProjectNotFound()
        if project.deadline_at <= now or project.status in ("succeeded", "failed", "settled"):
            raise ProjectClosed()
        if project.status != "live":
            raise ProjectNotLive(launch_at=project.launch_at.isoformat())
        if project.suspended and not suspended_ok:
            raise ProjectSuspended()
        return project

    async def _take_places(
        self,
        session: AsyncSession,
        project: ProjectRow,
        customer_id: str,
        terms: PledgeTerms,
        pledge_id: uuid.UUID,
        now: datetime,
    ) -> Lines:
        """Checks the choice and holds its places (the caller holds the project's lock, and
        has given back the places this pledge held before, if any)."""
        if terms.reward_id is None:
            if terms.addons or project.support_minimum is None:
                raise PledgeRewardInvalid(field="reward_id")
            return Lines(items=[], minimum=project.support_minimum, shipping_fee=0)
        wanted = {terms.reward_id: terms.quantity}
        for addon in terms.addons:
            if addon.reward_id in wanted:
                raise PledgeRewardInvalid("each add-on once", field="addons")
            wanted[addon.reward_id] = addon.quantity
        rewards = await projects.rewards_by_id(session, project.id, list(wanted))
        if len(rewards) != len(wanted):
            raise RewardNotFound()
        if rewards[terms.reward_id].kind != "tier" or any(
            rewards[a.reward_id].kind != "addon" for a in terms.addons
        ):
            raise PledgeRewardInvalid(field="reward_id")
        items: list[ItemRow] = []
        shipping = 0
        for reward_id, quantity in sorted(wanted.items()):
            reward = rewards[reward_id]
            shipping += await self._hold(
                session, reward, customer_id, quantity, terms, pledge_id, now
            )
            items.append(ItemRow(pledge_id, reward_id, quantity, reward.amount))
        minimum = sum(x.quantity * x.unit_amount for x in items) + shipping
        return Lines(items=items, minimum=minimum, shipping_fee=shipping)

    async def _hold(
        self,
        session: AsyncSession,
        reward: RewardRow,
        customer_id: str,
        quantity: int,
        terms: PledgeTerms,
        pledge_id: uuid.UUID,
        now: datetime,
    ) -> int:
        """Holds ``quantity`` places of one reward; returns their shipping fee."""
        if (reward.starts_at and now < reward.starts_at) or (
            reward.ends_at and now >= reward.ends_at
        ):
            raise RewardNotAvailable(reward_id=str(reward.id))
        if reward.per_backer_limit is not None:
            held = await repo.backer_quantity(session, customer_id, reward.id, pledge_id)
            if held + quantity > reward.per_backer_limit:
                raise RewardBackerLimit(
                    reward_id=str(reward.id), limit=reward.per_backer_limit, held=held
                )
        shipping = 0
        if reward.shipping_fees is not None:
            fees = reward.shipping_fees
            fee = fees.get(terms.region or "", fees.get("*"))
            if terms.region is None or fee is None:
                raise PledgeRegionInvalid(regions=sorted(fees), field="region")
            shipping = fee * quantity
        if not await projects.reserve_places(session, reward.id, quantity):
            left = max(0, reward.places_left or 0)
            raise RewardSoldOut(f"{left} places left", reward_id=str(reward.id), available=left)
        return shipping

    async def release(self, session: AsyncSession, pledge: PledgeRow) -> None:
        """Gives a pledge's places back (the caller holds the project's lock)."""
        for item in await repo.take_items(session, pledge.id):
            await projects.release_places(session, item.reward_id, item.quantity)

    # --- the card -------------------------------------------------------------------------

    async def card_saved(self, pledge_id: uuid.UUID, setup: SetupRow) -> None:
        """A pending card pledge whose card is now saved is confirmed: it counts."""
        if setup.status != "succeeded":
            return
        async with self.db()() as session, session.begin():
            found = await repo.get_pledge(session, pledge_id)
            assert found is not None
            await projects.get_project(session, found.project_id, lock=True)
            pledge = await repo.get_pledge(session, pledge_id, lock=True)
            assert pledge is not None
            if pledge.status == PENDING and pledge.setup_id == setup.id:
                await self.confirm(session, pledge)

    async def confirm(self, session: AsyncSession, pledge: PledgeRow) -> PledgeRow:
        pledge = await repo.update_pledge(
            session, pledge.id, {"status": CONFIRMED, "confirmed_at": now_utc()}
        )
        await self.count(session, pledge.project_id, pledge.amount)
        return pledge

    async def setup_of(self, pledge: PledgeRow) -> SetupRow | None:
        if pledge.setup_id is None or self.payments is None:
            return None
        try:
            return await get_setup(self.payments, pledge.setup_id)
        except PaymentSetupNotFound:
            return None

    async def change_card(
        self, principal: Principal, pledge_id: uuid.UUID, payment_method: str, key: str
    ) -> SetupRow:
        """Saves another card for a card pledge (before the deadline, or in the fix window)."""
        ctx = self.ctx()
        async with self.db()() as session:
            pledge = await self.own_pledge(session, principal, pledge_id)
        if pledge.setup_id is None:
            raise PledgeStateConflict("this pledge is paid at once, not by a saved card")
        if pledge.status not in (PENDING, CONFIRMED, PAYMENT_FAILED):
            raise PledgeStateConflict(f"the card of a {pledge.status} pledge cannot change")
        setup = await create_setup(
            ctx,
            setup_id=new_setup_id(self.service, pledge.customer_id, f"pledge:{pledge.id}:{key}"),
            customer_id=pledge.customer_id,
            payment_method=payment_method,
        )
        if setup.status != "succeeded":
            return setup  # the client confirms it (3D Secure) and tries again
        async with self.db()() as session, session.begin():
            await projects.get_project(session, pledge.project_id, lock=True)
            locked = await repo.get_pledge(session, pledge.id, lock=True)
            assert locked is not None
            if locked.status in (PENDING, CONFIRMED, PAYMENT_FAILED):
                values: dict[str, Any] = {"setup_id": setup.id}
                if locked.status == PAYMENT_FAILED:
                    # In the fix window: the charge workers try the new card now.
                    values["charge_at"] = now_utc()
                    await notify_work(session)
                locked = await repo.update_pledge(session, locked.id, values)
                if locked.status == PENDING:
                    await self.confirm(session, locked)
        return setup

    # --- changes and cancellation ---------------------------------------------------------

    async def change(
        self, session: AsyncSession, principal: Principal, pledge_id: uuid.UUID, body: PledgeTerms
    ) -> PledgeRow:
        """Another reward, quantity, add-ons, region or amount, until the deadline. A paid
        pledge may only go down (the difference is refunded): paying more is a new pledge."""
        found = await self.own_pledge(session, principal, pledge_id)
        now = now_utc()
        project = await self.take_project(session, found.project_id, now)
        pledge = await repo.get_pledge(session, pledge_id, lock=True)
        assert pledge is not None
        if pledge.status not in (CONFIRMED, COLLECTED) and not (
            pledge.status == PENDING and pledge.setup_id is not None
        ):
            raise PledgeStateConflict(f"a {pledge.status} pledge cannot change now")
        if body.amount < pledge.amount:
            self._check_last_hour(project, now)
        if pledge.paid and body.amount > pledge.amount:
            raise PledgeStateConflict("a paid pledge may only go down; pledge again for more")
        await self.release(session, pledge)
        lines = await self._take_places(session, project, pledge.customer_id, body, pledge.id, now)
        if body.amount < lines.minimum:
            raise PledgeBelowMinimum(
                f"at least {lines.minimum}", minimum=lines.minimum, field="amount"
            )
        await repo.insert_items(session, lines.items)
        changed = await repo.update_pledge(
            session,
            pledge.id,
            {
                "reward_id": body.reward_id,
                "amount": body.amount,
                "region": body.region,
                "shipping_fee": lines.shipping_fee,
            },
        )
        if pledge.status in COUNTED:
            await self.count(session, pledge.project_id, body.amount - pledge.amount)
        if pledge.paid and body.amount < pledge.amount:
            return await self.decide_refund(
                session, changed, amount=pledge.amount - body.amount, reason="pledge_lowered"
            )
        return changed

    def _check_last_hour(self, project: ProjectRow, now: datetime) -> None:
        if project.no_refund_last_hour and now >= project.deadline_at - LAST_HOUR:
            raise PledgeLastHour(deadline_at=project.deadline_at.isoformat())

    async def cancel(
        self, session: AsyncSession, principal: Principal, pledge_id: uuid.UUID
    ) -> PledgeRow:
        """The backer withdraws before the deadline (also while the project is suspended):
        the places go back, and whatever was paid is refunded."""
        found = await self.own_pledge(session, principal, pledge_id)
        now = now_utc()
        project = await self.take_project(session, found.project_id, now, suspended_ok=True)
        pledge = await repo.get_pledge(session, pledge_id, lock=True)
        assert pledge is not None
        if pledge.status not in OPEN:
            raise PledgeStateConflict(f"a {pledge.status} pledge cannot be cancelled")
        self._check_last_hour(project, now)
        return await self.end(session, pledge, status="cancelled", reason="backer_cancelled")

    async def end(
        self, session: AsyncSession, pledge: PledgeRow, *, status: str, reason: str
    ) -> PledgeRow:
        """Ends a pledge (the caller holds project and pledge locks): its places go back, it
        stops counting, and whatever was paid is refunded."""
        if pledge.status in COUNTED:
            await self.count(session, pledge.project_id, -pledge.amount)
        await self.release(session, pledge)
        ended = await repo.update_pledge(
            session,
            pledge.id,
            {
                "status": status,
                "cancel_reason": reason,
                "ended_at": now_utc(),
                "charge_at": None,
                "charge_locked_until": None,
            },
        )
        if ended.refundable > 0:
            return await self.decide_refund(session, ended, amount=ended.refundable, reason=reason)
        return ended

    async def staff_refund(
        self,
        session: AsyncSession,
        principal: Principal,
        pledge_id: uuid.UUID,
        amount: int | None,
    ) -> PledgeRow:
        """Staff give money back on a paid pledge (also after the settlement: the creator's
        next statement deducts it)."""
        found = await repo.get_pledge(session, pledge_id)
        if found is None or not principal.acts_for(found.merchant_id):
            raise PledgeNotFound()
        await projects.get_project(session, found.project_id, lock=True)
        pledge = await repo.get_pledge(session, pledge_id, lock=True)
        assert pledge is not None
        wanted = pledge.refundable if amount is None else amount
        if not 0 < wanted <= pledge.refundable:
            raise PledgeRefundTooHigh(refundable=pledge.refundable, field="amount")
        return await self.decide_refund(session, pledge, amount=wanted, reason="staff_refund")

    # --- reading --------------------------------------------------------------------------

    async def own_pledge(
        self, session: AsyncSession, principal: Principal, pledge_id: uuid.UUID
    ) -> PledgeRow:
        """The backer's own pledge (admins see all); anyone else gets the 404 of no pledge."""
        pledge = await repo.get_pledge(session, pledge_id)
        if pledge is None or not (principal.is_admin or pledge.customer_id == principal.sub):
            raise PledgeNotFound()
        return pledge

    async def backer_pledge(self, principal: Principal, pledge_id: uuid.UUID) -> PledgeRow:
        """:meth:`own_pledge` in a session of its own, closed before the caller goes on (see
        :meth:`visible_pledge`)."""
        async with self.db()() as session:
            return await self.own_pledge(session, principal, pledge_id)

    async def visible_pledge(self, principal: Principal, pledge_id: uuid.UUID) -> PledgeRow:
        """The pledge for its backer, staff of its merchant and admins, read in a session of
        its own that is closed before the caller goes on: the request holds no connection
        while it takes others (with a full pool, that would wait on itself)."""
        async with self.db()() as session:
            pledge = await repo.get_pledge(session, pledge_id)
        if pledge is None or not (
            pledge.customer_id == principal.sub or principal.acts_for(pledge.merchant_id)
        ):
            raise PledgeNotFound()
        return pledge

    async def current_payment(self, pledge: PledgeRow) -> PaymentRow | None:
        """The payment the pledge was (or is being) paid with: the immediate one, else the
        latest off-session attempt."""
        if self.payments is None:
            return None
        if pledge.setup_id is None:
            payment_id = self.pay_id(pledge.id)
        elif pledge.charge_payment_id is not None:
            payment_id = pledge.charge_payment_id
        else:
            return None
        try:
            return (await get_payment_view(self.payments, payment_id)).payment
        except PaymentNotFound:
            return None

    async def out(
        self,
        pledge_id: uuid.UUID,
        principal: Principal,
        *,
        payment: PaymentRow | None = None,
        setup: SetupRow | None = None,
    ) -> PledgeOut:
        async with self.db()() as session:
            pledge = await repo.get_pledge(session, pledge_id)
            assert pledge is not None
            items = await repo.get_items(session, [pledge.id])
        payment = payment or await self.current_payment(pledge)
        setup = setup or await self.setup_of(pledge)
        mine = pledge.customer_id == principal.sub
        return PledgeOut.of(
            pledge,
            items,
            None if payment is None else PaymentSummary.of(payment, show_secret=mine),
            None if setup is None else SetupSummary.of(setup, show_secret=mine),
        )

    # --- following payments (the payment hook) --------------------------------------------

    async def on_payment(self, session: AsyncSession, change: PaymentChange) -> None:
        """Runs in the transaction that records a change of a ``pledge:`` payment."""
        parsed = parse_reference(change.payment.reference)
        if parsed is None:
            _log.warning("pledge_payment_reference_unknown", reference=change.payment.reference)
            return
        pledge_id, stage = parsed
        found = await repo.get_pledge(session, pledge_id)
        if found is None:
            _log.warning("pledge_payment_without_pledge", pledge_id=str(pledge_id))
            return
        await projects.get_project(session, found.project_id, lock=True)
        pledge = await repo.get_pledge(session, pledge_id, lock=True)
        assert pledge is not None
        payment = change.payment
        if change.kind == "succeeded":
            await self._paid(session, pledge, stage, payment)
        elif change.kind == "failed":
            if (
                stage == CHARGE
                and pledge.status == CHARGING
                and (payment.id == pledge.charge_payment_id)
            ):
                await self.charge_failed(session, pledge, payment.failure_code)
            elif stage == PAY and pledge.status == PENDING:
                await self.end(session, pledge, status="expired", reason="payment_failed")
        elif change.kind == "refunded":
            await self._refunded(session, pledge, int(change.details["refund_amount"]))
        elif change.kind == "refund_failed":
            amount = int(change.details["refund_amount"])
            _log.error("pledge_refund_bounced", pledge_id=str(pledge.id), amount=amount)
            await repo.update_pledge(
                session, pledge.id, {"refunded_amount": max(0, pledge.refunded_amount - amount)}
            )

    async def _paid(
        self, session: AsyncSession, pledge: PledgeRow, stage: str, payment: PaymentRow
    ) -> None:
        amount = payment.amount_captured or payment.amount
        if pledge.paid_payment_id == payment.id:
            return  # news we have acted on already (a redelivery)
        takes_it = pledge.paid == 0 and (
            (stage == PAY and pledge.status == PENDING)
            or (stage == CHARGE and pledge.status in CHARGEABLE)
        )
        values: dict[str, Any] = {"paid": pledge.paid + amount}
        if takes_it:
            values |= {
                "status": COLLECTED,
                "paid_payment_id": payment.id,
                "payment_fee": payment_fee(amount, self.payment_fee_bps),
                "paid_at": now_utc(),
                "charge_at": None,
                "charge_locked_until": None,
            }
        paid = await repo.update_pledge(session, pledge.id, values)
        if not takes_it:
            # Paid after the pledge ended, or paid twice: this payment goes back whole.
            await self.decide_refund(
                session, paid, amount=amount, reason="late_payment", payment_id=payment.id
            )
            return
        if pledge.status == PENDING:
            await self.count(session, pledge.project_id, pledge.amount)
        await self.publish(session, PledgeCharged, paid, amount=amount, method=paid.method)

    async def charge_failed(
        self, session: AsyncSession, pledge: PledgeRow, failure_code: str | None
    ) -> PledgeRow:
        """An off-session attempt failed (the caller holds the pledge's lock): the fix window
        opens at the first failure, the next automatic retry is set, the backer is told."""
        now = now_utc()
        first = pledge.first_failed_at or now
        fix_until = pledge.fix_until or first + FIX_WINDOW
        failed = await repo.update_pledge(
            session,
            pledge.id,
            {
                "status": PAYMENT_FAILED,
                "failure_code": failure_code,
                "first_failed_at": first,
                "fix_until": fix_until,
                "charge_at": next_retry(first, now),
                "charge_locked_until": None,
            },
        )
        await self.publish(
            session,
            PledgePaymentFailed,
            failed,
            attempt=failed.charge_attempt,
            amount=failed.amount,
            failure_code=failure_code,
            fix_until=fix_until,
            next_retry_at=failed.charge_at,
        )
        return failed

    async def _refunded(self, session: AsyncSession, pledge: PledgeRow, amount: int) -> None:
        refunded = pledge.refunded_amount + amount
        values: dict[str, Any] = {"refunded_amount": refunded}
        if refunded > pledge.refund_promised:
            # Refunded at the provider without a decision of ours (its dashboard, a dispute):
            # the promise catches up, so the pledge never promises it again.
            values["refund_promised"] = min(refunded, pledge.paid)
        pledge = await repo.update_pledge(session, pledge.id, values)
        await self.publish(session, PledgeRefunded, pledge, amount=amount)

    # --- refunds --------------------------------------------------------------------------

    async def decide_refund(
        self,
        session: AsyncSession,
        pledge: PledgeRow,
        *,
        amount: int,
        reason: str,
        payment_id: uuid.UUID | None = None,
    ) -> PledgeRow:
        """Promises ``amount`` back (the caller holds the pledge's lock) and schedules the
        refund, carried out outside any transaction by the refund job."""
        paid_with = payment_id or pledge.paid_payment_id
        assert paid_with is not None
        assert 0 < amount <= pledge.refundable
        promised = await repo.update_pledge(
            session, pledge.id, {"refund_promised": pledge.refund_promised + amount}
        )
        refund = await repo.insert_refund(
            session,
            {
                "id": uuid.uuid4(),
                "pledge_id": pledge.id,
                "payment_id": paid_with,
                "merchant_id": pledge.merchant_id,
                "amount": amount,
                "reason": reason,
                "status": "approved",
            },
        )
        await schedule(
            session, self.platform, kind=REFUND_JOB, key=str(refund.id), run_at=now_utc()
        )
        return promised

    async def run_refund(self, job: Job) -> None:
        """The detached refund job: one provider refund per decision, keyed by it."""
        ctx = self.ctx()
        async with self.db()() as session:
            refund = await repo.get_refund(session, uuid.UUID(job.key))
        if refund is None or refund.status == "done":
            return
        await refund_payment(
            ctx,
            refund.payment_id,
            amount=refund.amount,
            reason=refund.reason,
            request_key=f"pledge-refund:{refund.id}",
            requested_by="system",
        )
        async with self.db()() as session, session.begin():
            await repo.mark_refund_done(session, refund.id)

    # --- unconfirmed holds ----------------------------------------------------------------

    async def expire_due(self, limit: int = 200) -> int:
        """Pledges still unconfirmed at the end of their hold give their places back; a card
        saved meanwhile (3D Secure done, the webhook in) confirms the pledge instead.

        A sweep over an index, each pledge in its own short transaction under the project's
        and the pledge's locks: run twice, or on two workers, nothing ends twice."""
        async with self.db()() as session:
            due = await repo.expired_holds(session, limit)
        for pledge_id, project_id in due:
            async with self.db()() as session:
                pledge = await repo.get_pledge(session, pledge_id)
            setup = None if pledge is None else await self.setup_of(pledge)
            async with self.db()() as session, session.begin():
                project = await projects.get_project(session, project_id, lock=True)
                locked = await repo.get_pledge(session, pledge_id, lock=True)
                if locked is None or locked.status != PENDING or project is None:
                    continue
                saved = setup is not None and setup.status == "succeeded"
                if saved and project.status == "live" and project.deadline_at > now_utc():
                    await self.confirm(session, locked)
                else:
                    await self.end(session, locked, status="expired", reason="hold_expired")
        return len(due)

    async def next_expiry_in(self) -> float | None:
        async with self.db()() as session:
            return await repo.seconds_to_next_hold_expiry(session)


def visible_pledges(principal: Principal, filters: PledgeFilters) -> Select[Any]:
    """The pledges ``principal`` may list: backers their own, staff their merchant's (and a
    backer's, by filter), admins all; narrowed by ``filters``."""
    cols = repo.pledge_columns()
    stmt = scope_to_owner(
        repo.pledges_query(),
        principal,
        merchant_column=cols.merchant_id,
        owner_column=cols.customer_id,
    )
    if filters.customer_id is not None and (principal.is_admin or principal.has("staff")):
        stmt = stmt.where(cols.customer_id == filters.customer_id)
    if filters.status is not None:
        stmt = stmt.where(cols.status == filters.status)
    if filters.project_id is not None:
        stmt = stmt.where(cols.project_id == filters.project_id)
    if filters.created_from is not None:
        stmt = stmt.where(cols.created_at >= filters.created_from)
    if filters.created_to is not None:
        stmt = stmt.where(cols.created_at < filters.created_to)
    return stmt
