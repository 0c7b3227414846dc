"""The creator's settlement: after the fix window, one statement per project,

    collected - refunds - platform fee - payment fees = payout

exact to the fen, and its payout record. Refunds made after a statement are deducted by the
creator's next one.

The payout: when the project has a payout account (the creator's Stripe connected account)
and the payment layer is configured, a statement with something to pay becomes ``paying`` at
settlement and the payout job (detached: no transaction open while the provider works)
transfers ``payout`` through the payment layer, keyed by (statement, attempt), so a second
run or worker gets the first transfer back. The answer makes it ``paid`` (the transfer id is
its reference) or ``failed`` (with the provider's reason); a transfer reversed later in full
makes a paid statement ``failed``, and one reversed in part records what was taken back
(``reversed_amount``) on the statement, which stays paid. An admin may start a transfer for
a ``pending`` or ``failed`` statement (a new attempt), or record a payout made outside (bank
transfer) with its reference. An ``owed`` statement (the creator owes the platform) never pays out.

    pending --(account set: at settlement, or an admin)--> paying --> paid | failed
    pending | failed --(an admin, paid outside)--> paid        paid --(reversed)--> failed
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.crowdfund.models import CHARGEABLE, platform
from services.crowdfund.pledges import repository as pledges_repo
from services.crowdfund.pledges.service import now_utc
from services.crowdfund.projects import repository as projects
from services.crowdfund.projects.repository import ProjectRow
from services.crowdfund.projects.service import staff_project
from services.crowdfund.settlements import repository as repo
from services.crowdfund.settlements.repository import SettlementRow
from shared.auth import Principal
from shared.errors import Conflict, NotFound
from shared.payments import (
    PaymentContext,
    PaymentsNotConfigured,
    PayoutChange,
    check_payout_account,
    domain_reference,
    parse_domain_reference,
    pay_out,
)
from shared.scheduler import Job, schedule
from shared.tables import PlatformTables

_log = structlog.get_logger("qunbuy.crowdfund")

SETTLE_JOB = "project.settle"
PAYOUT_JOB = "settlement.payout"
REFERENCE_PREFIX = "settlement:"
PAYOUT = "payout"
# After the deadline: the fix windows its charges open (7 days), and a margin.
SETTLE_AFTER = timedelta(days=7, hours=1)
BPS = 10_000


class SettlementNotFound(NotFound):
    code = "settlement_not_found"
    title = "No settlement (yet) for this"


class SettlementStateConflict(Conflict):
    code = "settlement_state_conflict"
    title = "The settlement is not in a state that allows this (paid, or being paid)"


class SettlementOwed(Conflict):
    code = "settlement_owed"
    title = "The creator owes this statement's amount: there is nothing to pay out"


class PayoutAccountMissing(Conflict):
    code = "settlement_payout_account_missing"
    title = "The project has no payout account: set one, or pay outside and mark it paid"


def payout_reference(settlement_id: uuid.UUID) -> str:
    """The payout's reference in the payment layer (its transfer's metadata and group)."""
    return domain_reference(REFERENCE_PREFIX, settlement_id, PAYOUT)


def _job_key(settlement_id: uuid.UUID, attempt: int) -> str:
    return f"{settlement_id}:{attempt}"


def platform_fee(base: int, bps: int) -> int:
    """The platform's fee on what the creator keeps: rounded down to the fen (in the
    creator's favour), never below zero."""
    return max(0, base) * bps // BPS


async def settle(
    session: AsyncSession, tables: PlatformTables, job: Job, *, transfers: bool = False
) -> None:
    """The scheduled settlement of a project that succeeded (a second run changes nothing).
    A pledge still in its fix window puts it off until the window ends. With ``transfers``
    (the payment layer is configured) and the project's payout account set, a positive payout
    starts its transfer."""
    project_id = job.key.split("@")[0]
    project = await projects.get_project(session, uuid.UUID(project_id), lock=True)
    if project is None or project.status != "succeeded":
        return
    still_open = await pledges_repo.project_pledges(session, project.id, CHARGEABLE)
    if still_open:
        # A job cannot move itself (it is marked done when it returns): a later one, keyed
        # by its time, takes over.
        ends = [p.fix_until or p.charge_locked_until or now_utc() for p in still_open]
        later = max(ends) + timedelta(hours=1)
        key = f"{project_id}@{later.isoformat()}"
        await schedule(session, tables, kind=SETTLE_JOB, key=key, run_at=later)
        return
    settlement_id = uuid.uuid4()
    collected, _, payment_fees = await pledges_repo.money_totals(session, project.id)
    refunds = await pledges_repo.take_unsettled_refunds(
        session, project.merchant_id, project.currency, settlement_id
    )
    bps = project.platform_fee_bps or 0
    fee = platform_fee(collected - refunds, bps)
    payout = collected - refunds - fee - payment_fees
    counts = await pledges_repo.status_totals(session, project.id)
    destination = project.payout_account if transfers and payout > 0 else None
    status = "owed" if payout < 0 else "pending" if destination is None else "paying"
    await repo.insert_settlement(
        session,
        {
            "id": settlement_id,
            "project_id": project.id,
            "merchant_id": project.merchant_id,
            "currency": project.currency,
            "collected": collected,
            "refunds": refunds,
            "platform_fee_bps": bps,
            "platform_fee": fee,
            "payment_fees": payment_fees,
            "payout": payout,
            "pledges_collected": counts.get("collected", (0, 0))[0],
            "pledges_dropped": counts.get("dropped", (0, 0))[0],
            "status": status,
            **(_paying(destination, 1, "system") if destination is not None else {}),
        },
    )
    await projects.update_project(session, project.id, {"status": "settled"})
    if destination is not None:
        await _schedule_payout(session, tables, settlement_id, 1)


def _paying(destination: str, attempt: int, by: str) -> dict[str, Any]:
    return {
        "status": "paying",
        "payout_account": destination,
        "payout_attempt": attempt,
        "paid_by": by,
        "failure_reason": None,
        "reversed_amount": 0,  # a new transfer: nothing taken back from it
    }


async def _schedule_payout(
    session: AsyncSession, tables: PlatformTables, settlement_id: uuid.UUID, attempt: int
) -> None:
    await schedule(
        session,
        tables,
        kind=PAYOUT_JOB,
        key=_job_key(settlement_id, attempt),
        run_at=now_utc(),
    )


async def project_settlement(
    session: AsyncSession, principal: Principal, project_id: uuid.UUID
) -> SettlementRow:
    found = await repo.project_settlement(session, project_id)
    if found is None or not principal.acts_for(found.merchant_id):
        raise SettlementNotFound()
    return found


async def mark_paid(
    session: AsyncSession, principal: Principal, settlement_id: uuid.UUID, reference: str
) -> SettlementRow:
    """A platform admin records the payout made outside (bank transfer), with its reference:
    a pending statement, or one whose transfer failed (never one being paid by transfer)."""
    await _payable(session, settlement_id)
    return await repo.update_settlement(
        session,
        settlement_id,
        {
            "status": "paid",
            "external_reference": reference,
            "paid_by": principal.sub,
            "paid_at": now_utc(),
            "reversed_amount": 0,  # paid outside: no transfer of ours to take back
        },
    )


async def _payable(session: AsyncSession, settlement_id: uuid.UUID) -> SettlementRow:
    """The (locked) statement, when it can still be paid: pending, or its transfer failed."""
    found = await repo.get_settlement(session, settlement_id, lock=True)
    if found is None:
        raise SettlementNotFound()
    if found.status == "owed":
        raise SettlementOwed(f"the creator owes {-found.payout}", owed=-found.payout)
    if found.status not in ("pending", "failed"):
        raise SettlementStateConflict(f"this settlement is {found.status}")
    return found


async def start_payout(
    session: AsyncSession,
    principal: Principal,
    settlement_id: uuid.UUID,
    *,
    transfers: bool,
) -> SettlementRow:
    """A platform admin starts the transfer of a pending statement (its project's payout
    account set since), or a new attempt of one that failed."""
    found = await _payable(session, settlement_id)
    if found.payout == 0:
        raise SettlementStateConflict("this statement has nothing to pay out")
    if not transfers:
        raise PaymentsNotConfigured()
    project = await projects.get_project(session, found.project_id)
    if project is None or project.payout_account is None:
        raise PayoutAccountMissing()
    attempt = found.payout_attempt + 1
    row = await repo.update_settlement(
        session, found.id, _paying(project.payout_account, attempt, principal.sub)
    )
    await _schedule_payout(session, platform, found.id, attempt)
    return row


async def set_payout_account(
    session: AsyncSession, principal: Principal, project_id: uuid.UUID, value: str | None
) -> ProjectRow:
    """The merchant's money staff (or an admin) set or remove the creator's connected account;
    a statement being paid keeps the account its transfer was started with."""
    project = await staff_project(session, principal, project_id, lock=True)
    if value is not None:
        check_payout_account(value)
    return await projects.update_project(session, project.id, {"payout_account": value})


def _failure(code: str | None, message: str | None) -> str:
    return f"{code or 'refused'}: {message or ''}".strip()[:500]


@dataclass
class Settlements:
    """The payout job and hook; the database and payments are attached at start-up."""

    tables: PlatformTables
    sessionmaker: async_sessionmaker[AsyncSession] | None = None
    payments: PaymentContext | None = field(default=None, repr=False)

    def _db(self) -> async_sessionmaker[AsyncSession]:
        assert self.sessionmaker is not None, "Settlements.sessionmaker is set at start-up"
        return self.sessionmaker

    async def settle(self, session: AsyncSession, job: Job) -> None:
        await settle(session, self.tables, job, transfers=self.payments is not None)

    async def run_payout(self, job: Job) -> None:
        """The detached payout job of one attempt: one transfer, keyed by (statement,
        attempt); a second run gets the first back. An outage raises: it runs again later."""
        settlement_id, attempt = job.key.rsplit(":", 1)
        async with self._db()() as session:
            found = await repo.get_settlement(session, uuid.UUID(settlement_id))
        if (
            found is None
            or found.status != "paying"
            or found.payout_attempt != int(attempt)
            or found.payout_account is None
        ):
            return  # decided already, or another attempt's
        if self.payments is None:
            raise PaymentsNotConfigured()
        result = await pay_out(
            self.payments,
            reference=payout_reference(found.id),
            destination=found.payout_account,
            amount=found.payout,
            currency=found.currency,
            attempt=found.payout_attempt,
            metadata={"merchant_id": found.merchant_id, "project_id": str(found.project_id)},
        )
        async with self._db()() as session, session.begin():
            locked = await repo.get_settlement(session, found.id, lock=True)
            if locked is None or (locked.status, locked.payout_attempt) != (
                "paying",
                found.payout_attempt,
            ):
                return
            if result.status == "paid":
                assert result.transfer is not None
                values: dict[str, Any] = {
                    "status": "paid",
                    "external_reference": result.transfer.id,
                    "paid_at": now_utc(),
                    # Taken back in part already (its news may have come first).
                    "reversed_amount": min(
                        locked.payout,
                        max(locked.reversed_amount, result.transfer.amount_reversed),
                    ),
                }
            else:
                reason = _failure(result.failure_code, result.failure_message)
                # Made and reversed in full before the job saw it, or refused (nothing made).
                reversed_amount = max(locked.payout, 0) if result.transfer is not None else 0
                values = {
                    "status": "failed",
                    "failure_reason": reason,
                    "reversed_amount": reversed_amount,
                }
            await repo.update_settlement(session, found.id, values)
        _log.info("settlement_payout", settlement_id=str(found.id), outcome=result.status)

    async def on_payout_change(self, session: AsyncSession, change: PayoutChange) -> None:
        """A transfer reversed. In full: the creator did not keep the payout, so the
        statement is ``failed`` again (an admin pays it anew). In part: it stays paid, and
        what was taken back is recorded on it (``reversed_amount``) for a person to settle."""
        parsed = parse_domain_reference(REFERENCE_PREFIX, (PAYOUT,), change.reference)
        if parsed is None:
            return
        found = await repo.get_settlement(session, parsed[0], lock=True)
        if found is None:
            return
        transfer = change.transfer
        # Only the transfer of the attempt now running (or the one the statement was paid by):
        # a late event about an earlier attempt's reversed transfer must not touch a new one.
        current = transfer.metadata.get("qunbuy_attempt") == str(found.payout_attempt)
        ours = (found.status == "paying" and current) or (
            found.status == "paid" and found.external_reference == transfer.id
        )
        if not ours:
            return
        if transfer.amount_reversed < transfer.amount:
            taken_back = min(found.payout, max(found.reversed_amount, transfer.amount_reversed))
            await repo.update_settlement(session, found.id, {"reversed_amount": taken_back})
            _log.warning(
                "settlement_transfer_partly_reversed",
                settlement_id=str(found.id),
                amount_reversed=taken_back,
            )
            return
        reason = _failure("transfer_reversed", f"transfer {transfer.id} was reversed")
        await repo.update_settlement(
            session,
            found.id,
            {
                "status": "failed",
                "failure_reason": reason,
                "paid_at": None,
                "reversed_amount": max(found.payout, 0),
            },
        )
