"""Withdrawals: a distributor takes out what is available, staff approve and pay.

Under the distributor's row lock (commission reversals take it too), a request checks KYC,
the minimum and what is available, then posts: what the distributor owes (refunds after an
earlier withdrawal) is taken back first (available -> owed), and the amount with the fee
leaves available for ``withdrawing``. Paid: the amount goes to ``withdrawn`` and the fee to
the merchant; rejected, or a payout that failed: both go back to available. Every step is a
ledger entry; a withdrawal's state changes under its own lock, so a step happens once.

Payouts are made outside (a bank or WeChat transfer) and marked paid by staff with its
reference; paying through Stripe Connect is not built yet.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals.commissions import repository as ledger
from services.referrals.commissions.service import account
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


async def _post(
    session: AsyncSession, w: WithdrawalRow, step: str, debit: str, credit: str, amount: int
) -> None:
    if amount > 0:
        await ledger.post(
            session,
            {
                "merchant_id": w.merchant_id,
                "commission_id": None,
                "source_event": f"withdrawal:{w.id}:{step}",
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
    session: AsyncSession, principal: Principal, withdrawal_id: uuid.UUID
) -> WithdrawalRow:
    w = await staff_withdrawal(session, principal, withdrawal_id)
    if w.status != "requested":
        raise WithdrawalStateConflict(f"a {w.status} withdrawal cannot be approved")
    return await repo.update_withdrawal(
        session, w.id, {"status": "approved", "decided_by": principal.sub}
    )


async def mark_paid(
    session: AsyncSession, principal: Principal, withdrawal_id: uuid.UUID, reference: str
) -> WithdrawalRow:
    w = await staff_withdrawal(session, principal, withdrawal_id)
    if w.status != "approved":
        raise WithdrawalStateConflict(f"a {w.status} withdrawal cannot be paid")
    held = account(w.distributor_id, "withdrawing")
    await _post(session, w, "payout", held, account(w.distributor_id, "withdrawn"), w.amount)
    await _post(session, w, "fee", held, fee_account(w.merchant_id), w.fee)
    return await repo.update_withdrawal(
        session,
        w.id,
        {"status": "paid", "external_reference": reference, "paid_at": datetime.now(UTC)},
    )


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
    await _post(
        session,
        w,
        "return",
        account(w.distributor_id, "withdrawing"),
        account(w.distributor_id, "available"),
        w.amount + w.fee,
    )
    return await repo.update_withdrawal(
        session, w.id, {"status": status, "reason": reason, "decided_by": principal.sub}
    )
