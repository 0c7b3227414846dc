"""The rules of eligibility: who may order from a campaign (everybody, listed member tiers,
or the holders of a purchase code), the life of a purchase code (issued, redeemed, used,
given back by an unpaid order that ends), and reservations before an opening, drawn by a
lottery anyone can check (``lottery.py``).

Locks: a campaign's row guards its eligibility. Changing the eligibility, the draw and every
order (``Orders._reserve``) take it for update; reservations take it for share, so they go
side by side and the draw sees every one that committed. A code changes only by conditional
``UPDATE``s: of concurrent redemptions or uses exactly one finds it as it expects.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.orders.eligibility import lottery
from services.orders.eligibility import repository as repo
from services.orders.eligibility.repository import CodeRow, EligibilityRow, TierRuleRow
from services.orders.eligibility.schemas import (
    CodeBatchIn,
    CodeBatchOut,
    CodeOut,
    DrawOut,
    EligibilityIn,
    EligibilityOut,
    IssuedCode,
    MemberOut,
    ReservationOut,
    ReservationsOut,
    TierOut,
    TierRuleOut,
    TiersIn,
    TiersOut,
)
from services.orders.presales import repository as campaigns
from services.orders.presales.repository import CampaignRow
from services.orders.presales.service import (
    EDITABLE,
    RUNNING,
    CampaignNotFound,
    CampaignStateConflict,
    now_utc,
    staff_campaign,
)
from shared.auth import Principal
from shared.errors import Conflict, DomainError, Forbidden, NotFound
from shared.events import Envelope
from shared.events.contracts import MemberTierSet

DRAW_ALGORITHM = (
    "commitment = sha256(seed); ticket = HMAC-SHA256(key=seed, message=reservation id), "
    "both UTF-8, hex; entries ranked by ticket, then id; the first `places` win"
)


class MemberTiersInvalid(DomainError):
    status = 422
    code = "member_tiers_invalid"
    title = "Member tier codes must be distinct"


class MemberTierUnknown(DomainError):
    status = 422
    code = "member_tier_unknown"
    title = "The merchant has no such member tier"


class MemberTierInUse(Conflict):
    code = "member_tier_in_use"
    title = "Members or campaigns still hold a tier left out of the list"


class EligibilityInvalid(DomainError):
    status = 422
    code = "eligibility_invalid"
    title = "The eligibility terms do not fit together"


class EligibilityTermsLocked(DomainError):
    status = 422
    code = "eligibility_terms_locked"
    title = "Customers paid or reserved: eligibility may change only in their favour"


class TierNotEligible(Forbidden):
    code = "tier_not_eligible"
    title = "Your member tier may not order from this campaign"


class TierLimitExceeded(Conflict):
    code = "tier_limit_exceeded"
    title = "This would take you over your member tier's limit"


class PurchaseCodeRequired(Forbidden):
    code = "purchase_code_required"
    title = "This campaign sells to holders of a purchase code only"


class PurchaseCodeInvalid(DomainError):
    status = 422
    code = "purchase_code_invalid"
    title = "No such purchase code for this campaign"


class PurchaseCodeExpired(DomainError):
    status = 422
    code = "purchase_code_expired"
    title = "This purchase code has expired"


class PurchaseCodeTaken(Conflict):
    code = "purchase_code_taken"
    title = "This purchase code belongs to another customer"


class PurchaseCodeUsed(Conflict):
    code = "purchase_code_used"
    title = "This purchase code has been used"


class PurchaseCodeUnitsExceeded(DomainError):
    status = 422
    code = "purchase_code_units_exceeded"
    title = "One purchase code admits fewer units"


class PurchaseCodeBatchInvalid(DomainError):
    status = 422
    code = "purchase_code_batch_invalid"
    title = "Give either a count or the customers, and an expiry in the future"


class ReservationsNotOffered(NotFound):
    code = "reservations_not_offered"
    title = "This campaign takes no reservations"


class ReservationClosed(Conflict):
    code = "reservation_closed"
    title = "Reservations closed with the draw or the opening"


class ReservationNotFound(NotFound):
    code = "reservation_not_found"
    title = "You have no reservation for this campaign"


class DrawDone(Conflict):
    code = "reservation_draw_done"
    title = "The reservations have been drawn already"


# --- purchase codes -----------------------------------------------------------------------

_CODE = re.compile(r"[A-Z2-7]{16}")
# Read aloud or typed from paper, 0, 1 and 8 are O, I and B (base32 has no 0, 1 or 8).
_TYPOS = str.maketrans({"0": "O", "1": "I", "8": "B", "-": None, " ": None})


def new_code() -> str:
    """80 random bits in RFC 4648 base32 (no 0, 1 or 8 to mistake for O, I or B), as
    XXXX-XXXX-XXXX-XXXX."""
    plain = base64.b32encode(secrets.token_bytes(10)).decode()
    return "-".join(plain[i : i + 4] for i in range(0, 16, 4))


def code_hash(code: str) -> str | None:
    """The SHA-256 a code is kept under (case, dashes and spaces are free); None: no code."""
    plain = code.upper().translate(_TYPOS)
    if _CODE.fullmatch(plain) is None:
        return None
    return hashlib.sha256(plain.encode()).hexdigest()


def _code_row(
    campaign_id: uuid.UUID,
    batch_id: uuid.UUID,
    *,
    source: str,
    customer_id: str | None,
    expires_at: datetime,
    by: str,
) -> tuple[str, dict[str, Any]]:
    code = new_code()
    hashed = code_hash(code)
    assert hashed is not None
    row = {
        "id": uuid.uuid4(),
        "campaign_id": campaign_id,
        "batch_id": batch_id,
        "source": source,
        "code_hash": hashed,
        "hint": code[-4:],
        "customer_id": customer_id,
        "status": "issued",
        "expires_at": expires_at,
        "created_by": by,
    }
    return code, row


def _refusal(
    code: CodeRow | None, campaign_id: uuid.UUID, customer_id: str, field: str
) -> DomainError:
    """Why ``code`` could not be redeemed or used by ``customer_id``."""
    if code is None or code.campaign_id != campaign_id:
        return PurchaseCodeInvalid(field=field)
    if code.customer_id not in (None, customer_id):
        return PurchaseCodeTaken(field=field)
    if code.status == "used":
        return PurchaseCodeUsed(field=field)
    return PurchaseCodeExpired(field=field, expired_at=code.expires_at.isoformat())


async def issue_codes(
    session: AsyncSession, principal: Principal, campaign_id: uuid.UUID, body: CodeBatchIn
) -> CodeBatchOut:
    """A batch of codes, shown this once (only their hashes are kept)."""
    campaign = await staff_campaign(session, principal, campaign_id)
    if campaign.status not in EDITABLE:
        raise CampaignStateConflict(f"a {campaign.status} campaign takes no more codes")
    if (body.count is None) == (body.customer_ids is None):
        raise PurchaseCodeBatchInvalid("give `count` or `customer_ids`", field="count")
    if body.expires_at <= now_utc():
        raise PurchaseCodeBatchInvalid("the expiry must be in the future", field="expires_at")
    holders: list[str | None] = (
        [*body.customer_ids] if body.customer_ids else [None] * (body.count or 0)
    )
    batch_id = uuid.uuid4()
    issued = [
        _code_row(
            campaign_id,
            batch_id,
            source="batch",
            customer_id=holder,
            expires_at=body.expires_at,
            by=principal.sub,
        )
        for holder in holders
    ]
    await repo.insert_codes(session, [row for _, row in issued])
    return CodeBatchOut(
        batch_id=batch_id,
        campaign_id=campaign_id,
        expires_at=body.expires_at,
        codes=[
            IssuedCode(id=row["id"], code=code, customer_id=row["customer_id"])
            for code, row in issued
        ],
    )


async def redeem(
    session: AsyncSession, principal: Principal, campaign_id: uuid.UUID, code: str
) -> CodeOut:
    """Binds a code to the customer who redeems it, once and for good (again: the same)."""
    campaign = await campaigns.get_campaign(session, campaign_id)
    if campaign is None or campaign.status == "draft":
        raise CampaignNotFound()
    hashed = code_hash(code)
    if hashed is None:
        raise PurchaseCodeInvalid(field="code")
    now = now_utc()
    row = await repo.redeem_code(session, campaign_id, hashed, principal.sub, now)
    if row is None:
        row = await repo.code_by_hash(session, hashed)
        mine = (
            row is not None
            and row.campaign_id == campaign_id
            and row.customer_id == principal.sub
            and row.status == "redeemed"
            and row.expires_at > now
        )
        if not mine:
            raise _refusal(row, campaign_id, principal.sub, "code")
    assert row is not None
    return CodeOut.of(row, now)


# --- ordering (called by Orders._reserve under the campaign's lock) -------------------------


async def admit_order(
    session: AsyncSession,
    campaign: CampaignRow,
    customer_id: str,
    order_id: uuid.UUID,
    *,
    quantity: int,
    purchase_code: str | None,
    now: datetime,
) -> int | None:
    """Whether the customer may place this order: raises the reason why not, or returns the
    unit price of their member tier (None: the campaign's). In ``code`` mode the order takes
    the code given, or else the customer's own, in this transaction (a refused order rolls
    back and takes nothing). A code given to a campaign that needs none is not taken."""
    if not campaign.restricted:  # open to everybody: nothing to read
        return None
    eligibility = await repo.get_eligibility(session, campaign.id)
    if eligibility is None or eligibility.mode == "open":
        return None
    if eligibility.mode == "tiers":
        rule = await repo.tier_rule_for(session, campaign.id, campaign.merchant_id, customer_id)
        if rule is None:
            raise TierNotEligible()
        if rule.per_customer_limit is not None:
            held = await campaigns.customer_units(session, campaign.id, customer_id)
            if held + quantity > rule.per_customer_limit:
                raise TierLimitExceeded(
                    f"you hold {held} of at most {rule.per_customer_limit} units",
                    limit=rule.per_customer_limit,
                    held=held,
                )
        return rule.unit_price
    if quantity > eligibility.units_per_code:
        raise PurchaseCodeUnitsExceeded(
            f"one code admits at most {eligibility.units_per_code} units",
            field="quantity",
            units_per_code=eligibility.units_per_code,
        )
    hashed = None if purchase_code is None else code_hash(purchase_code)
    if purchase_code is not None and hashed is None:
        raise PurchaseCodeInvalid(field="purchase_code")
    used = await repo.use_code(session, campaign.id, customer_id, order_id, now, code_hash=hashed)
    if used is None:
        if hashed is None:
            raise PurchaseCodeRequired()
        code = await repo.code_by_hash(session, hashed)
        raise _refusal(code, campaign.id, customer_id, "purchase_code")
    return None


async def give_back_code(session: AsyncSession, order_id: uuid.UUID) -> None:
    """An order that ends unpaid gives its code back to its customer (still until expiry)."""
    await repo.release_code(session, order_id)


# --- member tiers -------------------------------------------------------------------------


async def get_tiers(session: AsyncSession, merchant_id: str) -> TiersOut:
    tiers = await repo.list_tiers(session, merchant_id)
    return TiersOut(merchant_id=merchant_id, tiers=[TierOut.of(x) for x in tiers])


async def put_tiers(session: AsyncSession, merchant_id: str, body: TiersIn) -> TiersOut:
    codes = [x.code for x in body.tiers]
    if len(set(codes)) != len(codes):
        raise MemberTiersInvalid(field="tiers")
    if not await repo.delete_tiers_except(session, merchant_id, codes):
        raise MemberTierInUse()
    if body.tiers:
        await repo.upsert_tiers(session, merchant_id, [x.model_dump() for x in body.tiers])
    return await get_tiers(session, merchant_id)


async def get_member(session: AsyncSession, merchant_id: str, customer_id: str) -> MemberOut:
    row = await repo.get_membership(session, merchant_id, customer_id)
    return MemberOut(
        merchant_id=merchant_id,
        customer_id=customer_id,
        tier_code=None if row is None else row.tier_code,
        set_at=None if row is None else row.set_at,
        set_by=None if row is None else row.set_by,
    )


async def set_member(
    session: AsyncSession,
    merchant_id: str,
    customer_id: str,
    tier_code: str | None,
    *,
    at: datetime,
    by: str,
) -> None:
    """The customer's tier as of ``at`` (a fact older than the one stored changes nothing)."""
    if tier_code is not None and await repo.get_tier(session, merchant_id, tier_code) is None:
        raise MemberTierUnknown(field="tier_code")
    await repo.set_membership(session, merchant_id, customer_id, tier_code, at=at, by=by)


async def on_member_tier_set(
    session: AsyncSession, event: MemberTierSet, envelope: Envelope
) -> None:
    """``member.tier_set`` from the merchant's systems; an unknown tier is refused (422), so
    the relay keeps the event until the tier exists and it is re-driven."""
    await set_member(
        session,
        event.merchant_id,
        event.customer_id,
        event.tier_code,
        at=envelope.occurred_at,
        by=envelope.source,
    )


# --- a campaign's eligibility ---------------------------------------------------------------


async def visible_campaign(
    session: AsyncSession, principal: Principal | None, campaign_id: uuid.UUID
) -> CampaignRow:
    """A published campaign for anyone; a draft only for those who act for its merchant."""
    campaign = await campaigns.get_campaign(session, campaign_id)
    if campaign is None or (
        campaign.status == "draft"
        and (principal is None or not principal.acts_for(campaign.merchant_id))
    ):
        raise CampaignNotFound()
    return campaign


async def eligibility_out(session: AsyncSession, campaign: CampaignRow) -> EligibilityOut:
    row = await repo.get_eligibility(session, campaign.id)
    if row is None:
        return EligibilityOut(
            campaign_id=campaign.id, mode="open", tiers=[], units_per_code=1, reservations=None
        )
    rules = await repo.get_tier_rules(session, campaign.id)
    names = {x.code: x.name for x in await repo.list_tiers(session, campaign.merchant_id)}
    reservations = None
    if row.reservation_places is not None:
        assert row.draw_commitment is not None
        reservations = ReservationsOut(
            places=row.reservation_places,
            code_valid_hours=row.code_valid_hours,
            close_at=min(campaign.opens_at, row.drawn_at or campaign.opens_at),
            reserved=await repo.count_reservations(session, campaign.id),
            commitment=row.draw_commitment,
            drawn_at=row.drawn_at,
        )
    return EligibilityOut(
        campaign_id=campaign.id,
        mode=row.mode,
        tiers=[
            TierRuleOut(
                tier_code=x.tier_code,
                name=names[x.tier_code],
                per_customer_limit=x.per_customer_limit,
                unit_price=x.unit_price,
            )
            for x in rules
        ],
        units_per_code=row.units_per_code,
        reservations=reservations,
    )


def _check(body: EligibilityIn, campaign: CampaignRow, known: set[str]) -> None:
    codes = [x.tier_code for x in body.tiers]
    if body.mode == "tiers" and not codes:
        raise EligibilityInvalid("list the tiers that may order", field="tiers")
    if body.mode != "tiers" and codes:
        raise EligibilityInvalid("tiers are for the `tiers` mode", field="tiers")
    if len(set(codes)) != len(codes):
        raise EligibilityInvalid("a tier is listed twice", field="tiers")
    for x in body.tiers:
        if x.tier_code not in known:
            raise MemberTierUnknown(field=f"tiers.{x.tier_code}")
        if (
            x.unit_price is not None
            and campaign.deposit_type != "full"
            and x.unit_price < campaign.unit_deposit
        ):
            raise EligibilityInvalid(
                "a tier's price may not be below the unit deposit",
                field=f"tiers.{x.tier_code}.unit_price",
            )
    if body.reservations is not None and body.mode != "code":
        raise EligibilityInvalid(
            "reservations draw purchase codes: `code` mode", field="reservations"
        )


def _reservation_refusal(
    campaign: CampaignRow,
    old: EligibilityRow | None,
    body: EligibilityIn,
    reserved: int,
    now: datetime,
) -> DomainError | None:
    """Reservations are set before the opening; once customers reserved, places and the
    codes' validity may only grow until the draw, and nothing changes after it."""
    new = body.reservations
    if old is not None and old.drawn_at is not None:
        kept = (old.reservation_places, old.code_valid_hours)
        if new is not None and (new.places, new.code_valid_hours) != kept:
            return EligibilityTermsLocked("the draw has run", field="reservations")
        return None
    if reserved:
        assert old is not None
        assert old.reservation_places is not None
        if (
            new is None
            or new.places < old.reservation_places
            or new.code_valid_hours < old.code_valid_hours
        ):
            return EligibilityTermsLocked(
                "customers have reserved: places and validity may only grow", field="reservations"
            )
        return None
    opened = campaign.status not in ("draft", "published") or campaign.opens_at <= now
    if new is not None and (old is None or old.reservation_places is None) and opened:
        return EligibilityInvalid("reservations are taken before the opening", field="reservations")
    return None


def _favour_refusals(
    old: EligibilityRow | None, rules: list[TierRuleRow], new: EligibilityIn
) -> list[tuple[bool, str, str]]:
    """After the first payment: only changes that leave every buyer at least as well off."""
    mode = "open" if old is None else old.mode
    if new.mode != mode:
        return [
            (new.mode != "open", "mode", "it may only open up"),
            (
                any(x.unit_price is not None for x in rules),
                "mode",
                "the tiers' prices would be lost",
            ),
        ]
    if mode == "code":
        assert old is not None
        return [(new.units_per_code < old.units_per_code, "units_per_code", "it may only grow")]
    given = {x.tier_code: x for x in new.tiers}
    refusals = []
    for rule in rules:
        kept = given.get(rule.tier_code)
        name = f"tiers.{rule.tier_code}"
        if kept is None:
            refusals.append((True, name, "a tier cannot be removed"))
            continue
        limit, price = kept.per_customer_limit, kept.unit_price
        refusals += [
            (
                limit is not None
                and (rule.per_customer_limit is None or limit < rule.per_customer_limit),
                f"{name}.per_customer_limit",
                "it may only grow",
            ),
            (
                rule.unit_price is not None and (price is None or price > rule.unit_price),
                f"{name}.unit_price",
                "it may only fall",
            ),
        ]
    return refusals


async def put_eligibility(
    session: AsyncSession, principal: Principal, campaign_id: uuid.UUID, body: EligibilityIn
) -> CampaignRow:
    campaign = await staff_campaign(session, principal, campaign_id, lock=True)
    if campaign.status not in EDITABLE:
        raise CampaignStateConflict(f"a {campaign.status} campaign cannot change")
    known = {x.code for x in await repo.list_tiers(session, campaign.merchant_id, lock=True)}
    _check(body, campaign, known)
    old = await repo.get_eligibility(session, campaign_id)
    rules = await repo.get_tier_rules(session, campaign_id)
    reserved = await repo.count_reservations(session, campaign_id)
    refused = _reservation_refusal(campaign, old, body, reserved, now_utc())
    if refused is not None:
        raise refused
    if campaign.terms_locked_at is not None:
        for refuse, name, why in _favour_refusals(old, rules, body):
            if refuse:
                raise EligibilityTermsLocked(f"{name}: {why}", field=name)
    places, hours = (
        (body.reservations.places, body.reservations.code_valid_hours)
        if body.reservations is not None
        else (None, 24)
    )
    if old is not None and old.drawn_at is not None:
        places, hours = old.reservation_places, old.code_valid_hours  # the draw's record
    seed = old.draw_seed if old is not None and old.draw_seed else None
    if seed is None and places is not None:
        seed = lottery.new_seed()
    await repo.put_eligibility(
        session,
        campaign_id,
        {
            "mode": body.mode,
            "units_per_code": body.units_per_code,
            "reservation_places": places,
            "code_valid_hours": hours,
            "draw_seed": seed,
            "draw_commitment": None if seed is None else lottery.commitment(seed),
            "updated_by": principal.sub,
        },
    )
    await repo.replace_tier_rules(
        session,
        campaign_id,
        [
            {
                "tier_code": x.tier_code,
                "merchant_id": campaign.merchant_id,
                "position": i,
                "per_customer_limit": x.per_customer_limit,
                "unit_price": x.unit_price,
            }
            for i, x in enumerate(body.tiers)
        ],
    )
    # Orders read the eligibility only on a restricted campaign (the row locked above).
    return await campaigns.update_campaign(
        session, campaign_id, {"restricted": body.mode != "open"}
    )


# --- reservations and the draw ----------------------------------------------------------


async def _offered(session: AsyncSession, campaign_id: uuid.UUID) -> EligibilityRow:
    row = await repo.get_eligibility(session, campaign_id)
    if row is None or row.reservation_places is None:
        raise ReservationsNotOffered()
    return row


async def reserve(
    session: AsyncSession, principal: Principal, campaign_id: uuid.UUID
) -> tuple[ReservationOut, bool]:
    """The customer's place in the draw (one per customer), and whether it is new."""
    campaign = await repo.campaign_for_share(session, campaign_id)
    if campaign is None or campaign.status == "draft":
        raise CampaignNotFound()
    eligibility = await _offered(session, campaign_id)
    closed = campaign.status != "published" or campaign.opens_at <= now_utc()
    if eligibility.drawn_at is not None or closed:
        raise ReservationClosed(close_at=campaign.opens_at.isoformat())
    row, made = await repo.insert_reservation(session, campaign_id, principal.sub)
    return ReservationOut.of(row, None), made


async def my_reservation(
    session: AsyncSession, principal: Principal, campaign_id: uuid.UUID
) -> ReservationOut:
    """Reserved, won (with the code, used by the customer's next order by itself), or
    not drawn: how customers learn the outcome."""
    row = await repo.get_reservation(session, campaign_id, principal.sub)
    if row is None:
        raise ReservationNotFound()
    code = None if row.code_id is None else await repo.get_code(session, row.code_id)
    return ReservationOut.of(row, None if code is None else CodeOut.of(code, now_utc()))


async def draw_out(session: AsyncSession, campaign_id: uuid.UUID) -> DrawOut:
    """The draw's public record: before it, the commitment; after it, the seed and digest."""
    campaign = await campaigns.get_campaign(session, campaign_id)
    if campaign is None or campaign.status == "draft":
        raise CampaignNotFound()
    row = await _offered(session, campaign_id)
    assert row.reservation_places is not None
    assert row.draw_commitment is not None
    drawn = row.drawn_at is not None
    entries = row.draw_entries if drawn else await repo.count_reservations(session, campaign_id)
    assert entries is not None
    return DrawOut(
        campaign_id=campaign_id,
        status="drawn" if drawn else "pending",
        places=row.reservation_places,
        entries=entries,
        winners=min(entries, row.reservation_places) if drawn else None,
        commitment=row.draw_commitment,
        seed=row.draw_seed if drawn else None,
        digest=row.draw_digest,
        drawn_at=row.drawn_at,
        algorithm=DRAW_ALGORITHM,
    )


async def draw_now(session: AsyncSession, principal: Principal, campaign_id: uuid.UUID) -> None:
    """Staff draw before the opening (reservations close then)."""
    campaign = await staff_campaign(session, principal, campaign_id, lock=True)
    eligibility = await _offered(session, campaign_id)
    if eligibility.drawn_at is not None:
        raise DrawDone()
    if campaign.status not in RUNNING:
        raise CampaignStateConflict(f"a {campaign.status} campaign draws nothing")
    await _draw(session, campaign, eligibility)


async def draw_due(session: AsyncSession, campaign_id: uuid.UUID) -> None:
    """The draw at the opening (run by the ``presale.open`` job, which moves with the
    opening): once, and not before its time."""
    campaign = await campaigns.get_campaign(session, campaign_id, lock=True)
    if campaign is None or campaign.status not in RUNNING:
        return
    if campaign.opens_at > now_utc() + timedelta(seconds=1):
        return
    eligibility = await repo.get_eligibility(session, campaign_id)
    if eligibility is None or eligibility.reservation_places is None or eligibility.drawn_at:
        return
    await _draw(session, campaign, eligibility)


async def _draw(session: AsyncSession, campaign: CampaignRow, eligibility: EligibilityRow) -> None:
    """Ranks every reservation by its ticket; the first ``places`` get a code bound to them,
    valid for ``code_valid_hours`` from the opening; the others are ``not_drawn``."""
    assert eligibility.draw_seed is not None
    assert eligibility.reservation_places is not None
    now = now_utc()
    entrants = await repo.entrants(session, campaign.id)
    tickets = lottery.draw(eligibility.draw_seed, entrants)
    expires_at = max(campaign.opens_at, now) + timedelta(hours=eligibility.code_valid_hours)
    batch_id = uuid.uuid5(campaign.id, "draw")
    codes, outcomes = [], []
    for t in tickets:
        code_id = None
        if t.rank <= eligibility.reservation_places:
            _, row = _code_row(
                campaign.id,
                batch_id,
                source="lottery",
                customer_id=entrants[t.entry],
                expires_at=expires_at,
                by="draw",
            )
            row.update(status="redeemed", redeemed_at=now)
            codes.append(row)
            code_id = row["id"]
        status = "not_drawn" if code_id is None else "won"
        outcomes.append({"rid": t.entry, "t": t.ticket, "n": t.rank, "s": status, "code": code_id})
    await repo.insert_codes(session, codes)
    await repo.record_draw(session, outcomes)
    await repo.update_eligibility(
        session,
        campaign.id,
        {"drawn_at": now, "draw_entries": len(tickets), "draw_digest": lottery.digest(entrants)},
    )
