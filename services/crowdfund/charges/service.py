"""The deadline and what follows it: the decision (goal reached or not), the off-session
charges of every saved card, the 7-day fix window of a failed charge, the drop at its end,
and an admin's cancellation of a project.

The decision runs in one transaction under the project's lock (the scheduled job's): a worker
that dies half-way commits nothing, and another runs the job again from the start. It never
calls the provider: on success it marks every saved-card pledge due (one statement); on
failure it decides the refunds (carried out by the refund job).

The charges are a sweep over an index of due pledges, not a job per pledge (docs/
architecture.md, "Sweeps for high-volume deadlines"): a worker claims a batch with ``FOR
UPDATE SKIP LOCKED`` and a lease, takes that many slots of the shared throttle, and charges
each in its slot with no transaction open. Each attempt has its own payment (and provider
idempotency key) derived from (pledge, attempt), so a worker that dies mid-charge leaves a
lease that runs out, and the next worker charges the same attempt again: the provider returns
the first result, nobody is charged twice. The outcome lands through the payment hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from services.crowdfund.charges import repository as repo
from services.crowdfund.charges.repository import Claim
from services.crowdfund.models import (
    COLLECTED,
    CONFIRMED,
    HOLDING,
    PAYMENT_FAILED,
    PENDING,
)
from services.crowdfund.pledges import repository as pledges_repo
from services.crowdfund.pledges.repository import PledgeRow
from services.crowdfund.pledges.service import (
    CHARGE,
    Pledges,
    PledgeStateConflict,
    next_retry,
    now_utc,
    payment_reference,
)
from services.crowdfund.projects import repository as projects
from services.crowdfund.projects.service import (
    DEADLINE_JOB,
    LAUNCH_JOB,
    ProjectNotFound,
    ProjectStateConflict,
)
from services.crowdfund.settlements.service import SETTLE_AFTER, SETTLE_JOB
from shared.events.contracts import PledgeDropped, ProjectFailed, ProjectSucceeded
from shared.payments import (
    PaymentError,
    PaymentNotCancelable,
    PaymentProviderUnavailable,
    PaymentRow,
    cancel_payment,
    charge_off_session,
    confirm_payment,
    get_payment_view,
)
from shared.scheduler import Job, cancel, schedule
from shared.wakeup import notify_work

_log = structlog.get_logger("qunbuy.crowdfund")

LEASE = timedelta(seconds=60)
RETRY_UNAVAILABLE = timedelta(seconds=30)
# An attempt's payment in these states can still succeed: no second attempt beside it.
_FINALLY_FAILED = ("requires_payment_method", "canceled")


@dataclass
class Charges:
    pledges: Pledges
    rate_per_second: float
    batch: int
    concurrency: int

    @property
    def interval(self) -> timedelta:
        return timedelta(seconds=1 / self.rate_per_second) if self.rate_per_second else timedelta()

    # --- the deadline ---------------------------------------------------------------------

    async def deadline(self, session: AsyncSession, job: Job) -> None:
        """The scheduled deadline: the goal is reached (or the project is flexible) and every
        saved card becomes due; or it is missed, and nobody is charged, wallets refunded."""
        project = await projects.get_project(session, uuid.UUID(job.key), lock=True)
        now = now_utc()
        if project is None or project.status != "live" or project.deadline_at > now:
            return  # decided already (or cancelled): a second run changes nothing
        pledges = self.pledges
        for pending in await pledges_repo.project_pledges(session, project.id, (PENDING,)):
            setup = await pledges.setup_of(pending)
            if setup is not None and setup.status == "succeeded":
                await pledges.confirm(session, pending)  # saved in time, not yet seen
            else:
                await pledges.end(session, pending, status="expired", reason="deadline")
        project = await projects.get_project(session, project.id, lock=True)
        assert project is not None
        raised, backers = (
            project.pledged_amount,
            await projects.counted_backers(session, project.id),
        )
        succeeded = project.funding_model == "flexible" or raised >= project.goal
        await projects.update_project(
            session,
            project.id,
            {
                "status": "succeeded" if succeeded else "failed",
                "final_amount": raised,
                "final_backers": backers,
                "decided_at": now,
            },
        )
        contract = ProjectSucceeded if succeeded else ProjectFailed
        await pledges.publisher.publish(
            session,
            contract(
                project_id=project.id,
                merchant_id=project.merchant_id,
                currency=project.currency,
                goal=project.goal,
                raised=raised,
                backers=backers,
                deadline_at=project.deadline_at,
            ),
        )
        if succeeded:
            await repo.mark_charges_due(session, project.id, now)
            await notify_work(session)
            await schedule(
                session,
                pledges.platform,
                kind=SETTLE_JOB,
                key=str(project.id),
                run_at=now + SETTLE_AFTER,
            )
            return
        for held in await pledges_repo.project_pledges(session, project.id, (CONFIRMED, COLLECTED)):
            await pledges.end(session, held, status="cancelled", reason="project_failed")

    # --- the charges ----------------------------------------------------------------------

    async def run_due(self) -> int:
        """Claims a batch of due charges and runs each in its slot of the throttle; returns how
        many it claimed."""
        lease = max(LEASE, 2 * self.interval * self.batch)
        async with self.pledges.db()() as session, session.begin():
            claims = await repo.claim_charges(session, self.batch, lease)
            first = await repo.take_slots(session, len(claims), self.interval) if claims else 0.0
        gate = asyncio.Semaphore(self.concurrency)
        start = asyncio.get_running_loop().time()

        async def in_slot(i: int, claim: Claim) -> None:
            at = start + first + i * self.interval.total_seconds()
            async with gate:
                await asyncio.sleep(max(0.0, at - asyncio.get_running_loop().time()))
                await self.charge(claim)

        await asyncio.gather(*(in_slot(i, c) for i, c in enumerate(claims)))
        return len(claims)

    async def charge(self, claim: Claim) -> PaymentRow | None:
        """One off-session attempt of a claimed pledge (no transaction open meanwhile)."""
        pledge = claim.pledge
        attempt = pledge.charge_attempt or 1
        if claim.was == PAYMENT_FAILED:
            previous = await self._payment(pledge.charge_payment_id)
            if previous is not None and previous.status not in _FINALLY_FAILED:
                # The backer is authenticating that attempt (or it is processing): it may
                # still succeed, so no second attempt beside it; the next retry day may try.
                assert pledge.first_failed_at is not None
                retry = next_retry(pledge.first_failed_at, now_utc())
                await self._release(claim, PAYMENT_FAILED, retry)
                return previous
            attempt = pledge.charge_attempt + 1
        charge_id = self.pledges.charge_id(pledge.id, attempt)
        async with self.pledges.db()() as session, session.begin():
            values = {"charge_attempt": attempt, "charge_payment_id": charge_id}
            if not await repo.update_claimed(session, claim, values):
                return None  # another worker holds it now
        assert pledge.setup_id is not None
        try:
            payment = await charge_off_session(
                self.pledges.ctx(),
                reference=payment_reference(pledge.id, CHARGE),
                merchant_id=pledge.merchant_id,
                customer_id=pledge.customer_id,
                setup_id=pledge.setup_id,
                amount=pledge.amount,
                currency=pledge.currency,
                attempt=attempt,
            )
        except PaymentProviderUnavailable:
            # The same attempt again soon (the lease is shortened, not released).
            _log.warning("pledge_charge_unavailable", pledge_id=str(pledge.id), attempt=attempt)
            async with self.pledges.db()() as session, session.begin():
                soon = {"charge_locked_until": now_utc() + RETRY_UNAVAILABLE}
                await repo.update_claimed(session, claim, soon)
            return None
        except PaymentError as exc:
            # No usable card (its setup was never finished), or the provider refused: a
            # failed attempt like a decline.
            await self._failed(pledge.id, attempt, getattr(exc, "code", None))
            return None
        if payment.status in _FINALLY_FAILED:
            # Declined before (a resumed attempt whose news the hook had already): the hook
            # ran then, or this records it now; either way the attempt is over.
            await self._failed(pledge.id, attempt, payment.failure_code)
        return payment

    async def _payment(self, payment_id: uuid.UUID | None) -> PaymentRow | None:
        if payment_id is None:
            return None
        try:
            return (await get_payment_view(self.pledges.ctx(), payment_id)).payment
        except PaymentError:
            return None

    async def _release(self, claim: Claim, status: str, charge_at: object) -> None:
        async with self.pledges.db()() as session, session.begin():
            values = {"status": status, "charge_at": charge_at, "charge_locked_until": None}
            await repo.update_claimed(session, claim, values)

    async def _failed(self, pledge_id: uuid.UUID, attempt: int, code: str | None) -> None:
        async with self.pledges.db()() as session, session.begin():
            pledge = await pledges_repo.get_pledge(session, pledge_id, lock=True)
            if (
                pledge is not None
                and pledge.status == "charging"
                and (pledge.charge_attempt == attempt)
            ):
                await self.pledges.charge_failed(session, pledge, code)

    # --- the fix window -------------------------------------------------------------------

    async def confirm(
        self, principal_sub: str, pledge: PledgeRow, payment_method: str, key: str
    ) -> PaymentRow:
        """The backer pays the failed attempt now (on-session: 3D Secure if the bank asks)."""
        if pledge.customer_id != principal_sub or pledge.charge_payment_id is None:
            raise PledgeStateConflict("only a charge that failed can be confirmed")
        async with self.pledges.db()() as session, session.begin():
            claim = await repo.claim_one(session, pledge.id, LEASE)
        if claim is None:
            raise PledgeStateConflict("this pledge has no failed charge to confirm now")
        assert pledge.charge_payment_id is not None
        try:
            payment = await confirm_payment(
                self.pledges.ctx(),
                pledge.charge_payment_id,
                payment_method=payment_method,
                request_key=key,
            )
        finally:
            # Whatever happened (the hook has applied a success or a decline), a worker may
            # act on the pledge again; a payment waiting for 3D Secure keeps new attempts off.
            await self._release(claim, PAYMENT_FAILED, claim.pledge.charge_at)
        return payment

    async def drop_due(self, limit: int = 200) -> int:
        """Failed pledges at the end of their fix window are dropped: the attempt waiting for
        the backer is cancelled first, and a payment that lands after all is kept."""
        async with self.pledges.db()() as session:
            due = await repo.due_drops(session, limit)
        for pledge_id, project_id in due:
            async with self.pledges.db()() as session:
                found = await pledges_repo.get_pledge(session, pledge_id)
            assert found is not None
            waiting = await self._payment(found.charge_payment_id)
            if waiting is not None and waiting.status not in (*_FINALLY_FAILED, "succeeded"):
                # A payment that succeeded meanwhile is not cancelable: the hook collected it.
                with contextlib.suppress(PaymentNotCancelable):
                    await cancel_payment(self.pledges.ctx(), waiting.id)
            async with self.pledges.db()() as session, session.begin():
                await projects.get_project(session, project_id, lock=True)
                pledge = await pledges_repo.get_pledge(session, pledge_id, lock=True)
                if pledge is None or pledge.status != PAYMENT_FAILED:
                    continue
                assert pledge.fix_until is not None
                if pledge.fix_until > now_utc():
                    continue
                dropped = await self.pledges.end(
                    session, pledge, status="dropped", reason="payment_failed"
                )
                await self.pledges.publish(
                    session,
                    PledgeDropped,
                    dropped,
                    amount=dropped.amount,
                    failure_code=dropped.failure_code,
                )
        return len(due)

    async def next_due_in(self) -> float | None:
        async with self.pledges.db()() as session:
            return await repo.seconds_to_next_charge(session)

    # --- cancellation ---------------------------------------------------------------------

    async def cancel_project(self, session: AsyncSession, project_id: uuid.UUID) -> None:
        """Admins stop a project: every pledge ends, nobody is charged any more, and whatever
        was paid goes back (a charge in flight that lands later is refunded by the hook)."""
        project = await projects.get_project(session, project_id, lock=True)
        if project is None:
            raise ProjectNotFound()
        if project.status not in ("approved", "live", "succeeded"):
            raise ProjectStateConflict(f"a {project.status} project cannot be cancelled")
        for held in await pledges_repo.project_pledges(session, project.id, HOLDING):
            await self.pledges.end(session, held, status="cancelled", reason="project_cancelled")
        await projects.update_project(
            session, project.id, {"status": "cancelled", "cancelled_at": now_utc()}
        )
        for kind in (LAUNCH_JOB, DEADLINE_JOB, SETTLE_JOB):
            await cancel(session, self.pledges.platform, kind=kind, key=str(project.id))
