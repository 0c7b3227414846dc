"""The rules of referral programs and distributors: commission rates within the cap, joining
(open or by application), the upline (set once, at joining), suspension and KYC.

No commission is ever paid for joining or recruiting (拉人头): joining writes no ledger
entry; commissions come only from paid orders and charged pledges (commissions/service.py).
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals.programs import repository as repo
from services.referrals.programs.repository import DistributorRow, OverrideRow, ProgramRow
from services.referrals.programs.schemas import AddIn, ApplyIn, OverrideIn, ProgramIn
from shared.auth import Principal, ensure_staff_of
from shared.errors import Conflict, DomainError, NotFound
from shared.payments import check_payout_account

_CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I: read aloud, typed by hand
_CODE_LENGTH = 8


# ``added_by`` of a distributor record made for a pickup-point leader by their first commission.
LEADER_ENROLMENT = "pickup-point"


class RatesOverCap(DomainError):
    status = 422
    code = "commission_rates_over_cap"
    title = "Level 1, level 2 and leader rates together exceed the merchant's cap"


class ProgramNotFound(NotFound):
    code = "program_not_found"
    title = "This merchant runs no referral program"


class DistributorNotFound(NotFound):
    code = "distributor_not_found"
    title = "No such distributor"


class AlreadyDistributor(Conflict):
    code = "distributor_exists"
    title = "This user is a distributor of this merchant already"


class InviteCodeInvalid(DomainError):
    status = 422
    code = "invite_code_invalid"
    title = "The invitation code is not an active distributor's of this merchant"


class DistributorStateConflict(Conflict):
    code = "distributor_state_conflict"
    title = "The distributor is not in a state that allows this"


def now_utc() -> datetime:
    return datetime.now(UTC)


def new_code(length: int = _CODE_LENGTH) -> str:
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(length))


def _check_cap(level1: int, level2: int, leader: int, cap: int) -> None:
    total = level1 + level2 + leader
    if total > cap:
        raise RatesOverCap(f"{total} bps over a cap of {cap}", total=total, cap=cap)


async def put_rules(
    session: AsyncSession, principal: Principal, merchant_id: str, body: ProgramIn
) -> ProgramRow:
    ensure_staff_of(principal, merchant_id)
    _check_cap(body.level1_bps, body.level2_bps, body.leader_bps, body.max_total_bps)
    for override in await repo.overrides(session, merchant_id):
        # A lower cap must not leave a campaign's override above it.
        _check_cap(
            override.level1_bps, override.level2_bps, override.leader_bps, body.max_total_bps
        )
    return await repo.put_program(session, merchant_id, body.model_dump())


async def put_override(
    session: AsyncSession,
    principal: Principal,
    merchant_id: str,
    target_type: str,
    target_id: str,
    body: OverrideIn,
) -> OverrideRow:
    """Rates for one campaign or project, under the program's cap (orders paid from then on
    earn them; commissions already made keep theirs)."""
    ensure_staff_of(principal, merchant_id)
    rules = await program(session, merchant_id)
    _check_cap(body.level1_bps, body.level2_bps, body.leader_bps, rules.max_total_bps)
    return await repo.put_override(
        session,
        {
            "merchant_id": merchant_id,
            "target_type": target_type,
            "target_id": target_id,
            **body.model_dump(),
            "updated_by": principal.sub,
        },
    )


async def rates_for(
    session: AsyncSession, rules: ProgramRow, target_type: str, target_id: str
) -> tuple[int, int, int]:
    """(level 1, level 2, leader) rates of an order of this campaign or project."""
    found = await repo.get_override(session, rules.merchant_id, target_type, target_id)
    if found is None:
        return rules.level1_bps, rules.level2_bps, rules.leader_bps
    return found.level1_bps, found.level2_bps, found.leader_bps


async def program(session: AsyncSession, merchant_id: str) -> ProgramRow:
    found = await repo.get_program(session, merchant_id)
    if found is None:
        raise ProgramNotFound()
    return found


async def _insert(session: AsyncSession, values: dict[str, object]) -> DistributorRow:
    for _ in range(5):  # a code collision (32^8 codes) is tried again with another code
        row = await repo.insert_distributor(session, {**values, "code": new_code()})
        if row is not None:
            return row
        existing = await repo.distributor_of(
            session, str(values["merchant_id"]), str(values["user_id"])
        )
        if existing is not None:
            raise AlreadyDistributor()
    raise AlreadyDistributor("no free code; try again")


async def leader_payee(session: AsyncSession, merchant_id: str, user_id: str) -> DistributorRow:
    """The record a pickup-point leader's commission is paid through: their own when they
    are a distributor of the merchant already, else one made now (active, no upline; real
    name and phone unknown until KYC, which a withdrawal needs as for anyone). The orders
    service approved them as a leader; joining the program adds no commission of its own."""
    found = await repo.distributor_of(session, merchant_id, user_id)
    if found is not None:
        return found
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "merchant_id": merchant_id,
        "user_id": user_id,
        "upline_id": None,
        "status": "active",
        "real_name": "",
        "phone": "",
        "added_by": LEADER_ENROLMENT,
    }
    try:
        return await _insert(session, values)
    except AlreadyDistributor:  # made by a concurrent event a moment ago
        found = await repo.distributor_of(session, merchant_id, user_id)
        assert found is not None
        return found


async def apply(session: AsyncSession, principal: Principal, body: ApplyIn) -> DistributorRow:
    """A customer joins: at once in an open program, pending staff approval otherwise. The
    distributor whose code invited them becomes their upline, for good."""
    rules = await program(session, body.merchant_id)
    upline_id = None
    if body.via_code is not None:
        upline = await repo.distributor_by_code(session, body.via_code)
        if upline is None or upline.merchant_id != body.merchant_id or upline.status != "active":
            raise InviteCodeInvalid(field="via_code")
        if upline.user_id == principal.sub:
            raise InviteCodeInvalid("not your own code", field="via_code")
        upline_id = upline.id
    return await _insert(
        session,
        {
            "id": uuid.uuid4(),
            "merchant_id": body.merchant_id,
            "user_id": principal.sub,
            "upline_id": upline_id,
            "status": "active" if rules.enrollment == "open" else "pending",
            "real_name": body.real_name,
            "phone": body.phone,
        },
    )


async def add(
    session: AsyncSession, principal: Principal, merchant_id: str, body: AddIn
) -> DistributorRow:
    ensure_staff_of(principal, merchant_id)
    await program(session, merchant_id)
    return await _insert(
        session,
        {
            "id": uuid.uuid4(),
            "merchant_id": merchant_id,
            "user_id": body.user_id,
            "upline_id": None,
            "status": "active",
            "real_name": body.real_name,
            "phone": body.phone,
            "added_by": principal.sub,
        },
    )


async def staff_distributor(
    session: AsyncSession, principal: Principal, distributor_id: uuid.UUID
) -> DistributorRow:
    found = await repo.get_distributor(session, distributor_id, lock=True)
    if found is None or not principal.acts_for(found.merchant_id):
        raise DistributorNotFound()
    return found


async def visible_distributor(
    session: AsyncSession, principal: Principal, distributor_id: uuid.UUID
) -> DistributorRow:
    """Their own record for a distributor, their merchant's for staff; else a 404."""
    found = await repo.get_distributor(session, distributor_id)
    if found is None or not (
        found.user_id == principal.sub or principal.acts_for(found.merchant_id)
    ):
        raise DistributorNotFound()
    return found


_TRANSITIONS = {
    "approve": ("pending", "active"),
    "reject": ("pending", "rejected"),
    "suspend": ("active", "suspended"),
    "reinstate": ("suspended", "active"),
}


async def decide(
    session: AsyncSession, principal: Principal, distributor_id: uuid.UUID, action: str
) -> DistributorRow:
    """Approve or reject an application; suspend (nothing new is earned, what was earned
    stays) or reinstate."""
    found = await staff_distributor(session, principal, distributor_id)
    before, after = _TRANSITIONS[action]
    if found.status != before:
        raise DistributorStateConflict(f"cannot {action} a {found.status} distributor")
    return await repo.update_distributor(
        session, found.id, {"status": after, "decided_by": principal.sub}
    )


async def verify(
    session: AsyncSession, principal: Principal, distributor_id: uuid.UUID
) -> DistributorRow:
    """KYC done by staff: recorded with who and when (withdrawals need it)."""
    found = await staff_distributor(session, principal, distributor_id)
    if found.kyc_verified_at is not None:
        return found
    return await repo.update_distributor(
        session, found.id, {"kyc_verified_by": principal.sub, "kyc_verified_at": now_utc()}
    )


async def set_payout_account(
    session: AsyncSession, principal: Principal, distributor_id: uuid.UUID, value: str | None
) -> DistributorRow:
    """The distributor themselves, or their merchant's money staff, set (or remove) the
    connected account that withdrawals approved from now on are transferred to."""
    found = await repo.get_distributor(session, distributor_id, lock=True)
    if found is None or not (
        found.user_id == principal.sub or principal.acts_for(found.merchant_id)
    ):
        raise DistributorNotFound()
    if value is not None:
        check_payout_account(value)
    return await repo.update_distributor(
        session, found.id, {"payout_account": value, "payout_account_set_by": principal.sub}
    )
