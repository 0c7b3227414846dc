"""Withdrawals: a distributor takes out what is available, staff approve and pay.

Under the distributor's row lock (commission reversals take it too), a request checks KYC,
the minimum and what is available, then posts: what the distributor owes (refunds after an
earlier withdrawal) is taken back first (available -> owed), and the amount with the fee
leaves available for ``withdrawing``. Paid: the amount goes to ``withdrawn`` and the fee to
the merchant; rejected, or a payout that failed: both go back to available. Every step is a
ledger entry; a withdrawal's state changes under its own lock, so a step happens once.

How it is paid is decided at approval. When the distributor has a payout account (a Stripe
connected account) and the payment layer is configured, the withdrawal becomes ``paying``
and the payout job (detached: no transaction open while the provider works) transfers the
amount through the payment layer, keyed by the withdrawal, so a second run or a second
worker gets the first transfer back; the answer makes it ``paid`` (the transfer id is its
reference) or ``failed`` (a refusal: the money returns to available). A transfer reversed
later (``transfer.reversed``) in full makes a paid withdrawal ``failed`` and returns the money;
reversed in part, what was taken back returns to available and the withdrawal stays paid. Staff
never mark a ``paying`` withdrawal: the transfer decides it. Without a payout account, staff
pay outside (a bank or WeChat transfer) and mark it paid with its reference, or failed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.referrals.commissions import repository as ledger
from services.referrals.commissions.service import account
from services.referrals.models import platform
from services.referrals.programs import repository as programs
from services.referrals.programs.service import (
    DistributorNotFound,
    DistributorStateConflict,
    program,
)
from services.referrals.withdrawals import repository as repo
from services.referrals.withdrawals.repository import WithdrawalRow
from shared.auth import Principal
from shared.errors import Conflict, DomainError, NotFound
from shared.payments import (
    PaymentContext,
    PaymentsNotConfigured,
    PayoutChange,
    domain_reference,
    parse_domain_reference,
    pay_out,
)
from shared.scheduler import Job, schedule

_log = structlog.get_logger("qunbuy.referrals")

PAYOUT_JOB = "withdrawal.payout"
REFERENCE_PREFIX = "withdrawal:"
PAYOUT = "payout"


class KycRequired(Conflict):
    code = "withdrawal_kyc_required"
    title = "Staff must verify the distributor (KYC) before any withdrawal"


class BelowMinimum(DomainError):
    status = 422
    code = "withdrawal_below_minimum"
    title = "Below the program's minimum withdrawal"


class AboveAvailable(DomainError):
    status = 422
    code = "withdrawal_above_available"
    title = "More than what is available, after what is owed and the fee"


class WithdrawalNotFound(NotFound):
    code = "withdrawal_not_found"
    title = "No such withdrawal"


class WithdrawalStateConflict(Conflict):
    code = "withdrawal_state_conflict"
    title = "The withdrawal is not in a state that allows this"


def fee_account(merchant_id: str) -> str:
    return f"merchant:{merchant_id}:withdrawal_fees"


def payout_reference(withdrawal_id: uuid.UUID) -> str:
    """The payout's reference in the payment layer (its transfer's metadata and group)."""
    return domain_reference(REFERENCE_PREFIX, withdrawal_id, PAYOUT)


async def _post(
    session: AsyncSession,
    w: WithdrawalRow,
    step: str,
    debit: str,
    credit: str,
    amount: int,
    *,
    occurrence: str = "",
) -> None:
    """One ledger entry of the withdrawal; ``occurrence`` tells apart entries of one kind
    that a withdrawal may have more than once (each partial reversal)."""
    if amount > 0:
        await ledger.post(
            session,
            {
                "merchant_id": w.merchant_id,
                "commission_id": None,
                "source_event": f"withdrawal:{w.id}:{step}{occurrence}",
                "kind": step,
                "debit_account": debit,
                "credit_account": credit,
                "amount": amount,
                "currency": w.currency,
            },
        )


async def request(
    session: AsyncSession, principal: Principal, distributor_id: uuid.UUID, amount: int
) -> WithdrawalRow:
    found = await programs.get_distributor(session, distributor_id, lock=True)
    if found is None or found.user_id != principal.sub:
        raise DistributorNotFound()
    if found.status not in ("active", "suspended"):  # a suspended one keeps what was earned
        raise DistributorStateConflict(f"a {found.status} distributor cannot withdraw")
    if found.kyc_verified_at is None:
        raise KycRequired()
    rules = await program(session, found.merchant_id)
    if amount < rules.min_withdrawal:
        raise BelowMinimum(minimum=rules.min_withdrawal)
    available = await ledger.balance(session, account(found.id, "available"))
    owed = -await ledger.balance(session, account(found.id, "owed"))
    most = available - owed - rules.withdrawal_fee
    if amount > most:
        raise AboveAvailable(most=max(0, most), owed=owed, fee=rules.withdrawal_fee)
    w = await repo.insert(
        session,
        {
            "id": uuid.uuid4(),
            "merchant_id": found.merchant_id,
            "distributor_id": found.id,
            "amount": amount,
            "fee": rules.withdrawal_fee,
            "taken_back": owed,
            "currency": rules.currency,
            "status": "requested",
            "requested_by": principal.sub,
        },
    )
    available_account = account(found.id, "available")
    await _post(session, w, "takeback", available_account, account(found.id, "owed"), owed)
    await _post(
        session, w, "withdraw", available_account, account(found.id, "withdrawing"), amount + w.fee
    )
    return w


async def staff_withdrawal(
    session: AsyncSession, principal: Principal, withdrawal_id: uuid.UUID
) -> WithdrawalRow:
    found = await repo.get(session, withdrawal_id, lock=True)
    if found is None or not principal.acts_for(found.merchant_id):
        raise WithdrawalNotFound()
    return found


async def approve(
    session: AsyncSession, principal: Principal, withdrawal_id: uuid.UUID, *, transfers: bool
) -> WithdrawalRow:
    """Approved: paid by a transfer (``paying``, the payout job scheduled) when ``transfers``
    are configured and the distributor has a payout account, else by staff (``approved``)."""
    w = await staff_withdrawal(session, principal, withdrawal_id)
    if w.status != "requested":
        raise WithdrawalStateConflict(f"a {w.status} withdrawal cannot be approved")
    payee = await programs.get_distributor(session, w.distributor_id)
    destination = payee.payout_account if payee is not None and transfers else None
    if destination is None:
        return await repo.update_withdrawal(
            session, w.id, {"status": "approved", "decided_by": principal.sub}
        )
    approved = await repo.update_withdrawal(
        session,
        w.id,
        {"status": "paying", "decided_by": principal.sub, "payout_account": destination},
    )
    await schedule(session, platform, kind=PAYOUT_JOB, key=str(w.id), run_at=datetime.now(UTC))
    return approved


async def _paid(
    session: AsyncSession, w: WithdrawalRow, reference: str, *, reversed_amount: int = 0
) -> WithdrawalRow:
    """Paid: the amount withdrawn, the fee the merchant's. ``reversed_amount``: what the
    provider already took back from the transfer (its answer, or a reversal's news that came
    while the withdrawal was ``paying``), returned to available at once."""
    held = account(w.distributor_id, "withdrawing")
    await _post(session, w, "payout", held, account(w.distributor_id, "withdrawn"), w.amount)
    await _post(session, w, "fee", held, fee_account(w.merchant_id), w.fee)
    paid = await repo.update_withdrawal(
        session,
        w.id,
        {"status": "paid", "external_reference": reference, "paid_at": datetime.now(UTC)},
    )
    taken_back = max(w.reversed_amount, reversed_amount)
    if taken_back == 0:
        return paid
    return await _reversed_in_part(session, replace(paid, reversed_amount=0), taken_back)


async def _reversed_in_part(session: AsyncSession, w: WithdrawalRow, total: int) -> WithdrawalRow:
    """A paid withdrawal whose transfer the provider took back in part, ``total`` so far:
    what was not returned yet goes from withdrawn back to available (the distributor may
    withdraw it again); the withdrawal stays paid, and its fee the merchant's."""
    more = total - w.reversed_amount
    if more <= 0:
        return w  # old news, or this reversal's news again
    withdrawn = account(w.distributor_id, "withdrawn")
    available = account(w.distributor_id, "available")
    await _post(session, w, "reversal", withdrawn, available, more, occurrence=f":{total}")
    return await repo.update_withdrawal(session, w.id, {"reversed_amount": total})


async def _returned(
    session: AsyncSession, w: WithdrawalRow, values: dict[str, object]
) -> WithdrawalRow:
    """The amount and the fee back from withdrawing to available (not paid after all)."""
    await _post(
        session,
        w,
        "return",
        account(w.distributor_id, "withdrawing"),
        account(w.distributor_id, "available"),
        w.amount + w.fee,
    )
    return await repo.update_withdrawal(session, w.id, values)


async def mark_paid(
    session: AsyncSession, principal: Principal, withdrawal_id: uuid.UUID, reference: str
) -> WithdrawalRow:
    w = await staff_withdrawal(session, principal, withdrawal_id)
    if w.status != "approved":
        raise WithdrawalStateConflict(f"a {w.status} withdrawal cannot be marked paid")
    return await _paid(session, w, reference)


async def give_back(
    session: AsyncSession,
    principal: Principal,
    withdrawal_id: uuid.UUID,
    *,
    status: str,
    reason: str | None,
) -> WithdrawalRow:
    """Rejected (requested or approved) or failed (approved, the payout bounced): the amount
    and the fee return to available. What was taken back stays settled."""
    w = await staff_withdrawal(session, principal, withdrawal_id)
    allowed = ("requested", "approved") if status == "rejected" else ("approved",)
    if w.status not in allowed:
        raise WithdrawalStateConflict(f"a {w.status} withdrawal cannot become {status}")
    return await _returned(
        session, w, {"status": status, "reason": reason, "decided_by": principal.sub}
    )


# --- payouts by transfer ----------------------------------------------------------------


def _failure(code: str | None, message: str | None) -> str:
    return f"payout failed: {code or 'refused'}: {message or ''}".strip()[:500]


@dataclass
class Payouts:
    """The payout job and hook; the database and payments are attached at start-up."""

    sessionmaker: async_sessionmaker[AsyncSession] | None = None
    payments: PaymentContext | None = field(default=None, repr=False)

    def _db(self) -> async_sessionmaker[AsyncSession]:
        assert self.sessionmaker is not None, "Payouts.sessionmaker is set at start-up"
        return self.sessionmaker

    async def run(self, job: Job) -> None:
        """The detached payout job of one ``paying`` withdrawal: one transfer, keyed by the
        withdrawal (a second run, or a second worker, gets the first one back). An outage
        raises: the job runs again later with the same key."""
        async with self._db()() as session:
            w = await repo.get(session, uuid.UUID(job.key))
        if w is None or w.status != "paying" or w.payout_account is None:
            return  # decided already (the answer of an earlier run, or a reversal)
        if self.payments is None:
            raise PaymentsNotConfigured()
        result = await pay_out(
            self.payments,
            reference=payout_reference(w.id),
            destination=w.payout_account,
            amount=w.amount,
            currency=w.currency,
            metadata={"merchant_id": w.merchant_id, "distributor_id": str(w.distributor_id)},
        )
        async with self._db()() as session, session.begin():
            locked = await repo.get(session, w.id, lock=True)
            if locked is None or locked.status != "paying":
                return
            if result.status == "paid":
                assert result.transfer is not None
                await _paid(
                    session,
                    locked,
                    result.transfer.id,
                    reversed_amount=result.transfer.amount_reversed,
                )
            else:
                reason = _failure(result.failure_code, result.failure_message)
                # Made and reversed in full before the job saw it, or refused (nothing made).
                reversed_amount = locked.amount if result.transfer is not None else 0
                values = {"status": "failed", "reason": reason, "reversed_amount": reversed_amount}
                await _returned(session, locked, values)
        _log.info("withdrawal_payout", withdrawal_id=str(w.id), outcome=result.status)

    async def on_payout_change(self, session: AsyncSession, change: PayoutChange) -> None:
        """A transfer reversed (``transfer.reversed``, in the transaction recording the
        provider event). In full: the distributor did not get the money, so it returns to
        available, as for a failed payout. In part: what was taken back returns to
        available and the withdrawal stays paid (docs/referrals.md, Withdrawals)."""
        parsed = parse_domain_reference(REFERENCE_PREFIX, (PAYOUT,), change.reference)
        if parsed is None:
            return
        w = await repo.get(session, parsed[0], lock=True)
        if w is None:
            return
        transfer = change.transfer
        paid_by_it = w.status == "paid" and w.external_reference == transfer.id
        if transfer.amount_reversed < transfer.amount:
            if w.status == "paying":
                # The news came before the job recorded the transfer: kept for when it does.
                taken_back = min(w.amount, max(w.reversed_amount, transfer.amount_reversed))
                await repo.update_withdrawal(session, w.id, {"reversed_amount": taken_back})
            elif paid_by_it:
                await _reversed_in_part(session, w, min(w.amount, transfer.amount_reversed))
            _log.warning(
                "withdrawal_transfer_partly_reversed",
                withdrawal_id=str(w.id),
                amount_reversed=transfer.amount_reversed,
            )
            return
        reason = _failure("transfer_reversed", f"transfer {transfer.id} was reversed")
        if w.status == "paying":
            # The reversal's news came before the job recorded the transfer.
            values = {"status": "failed", "reason": reason, "reversed_amount": w.amount}
            await _returned(session, w, values)
        elif paid_by_it:
            withdrawn = account(w.distributor_id, "withdrawn")
            available = account(w.distributor_id, "available")
            # What a partial reversal returned before is not returned twice.
            rest = w.amount - w.reversed_amount
            await _post(session, w, "reversal", withdrawn, available, rest)
            await _post(session, w, "fee_reversal", fee_account(w.merchant_id), available, w.fee)
            await repo.update_withdrawal(
                session, w.id, {"status": "failed", "reason": reason, "reversed_amount": w.amount}
            )
