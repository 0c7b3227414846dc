"""Referral links: a distributor's share link (general, or for one campaign, group or
project) with a short code, a share URL and a QR code; a click is counted and binds the
customer who follows it (锁客) under the merchant's rule.

Link codes have 10 characters, distributor codes 8: a code at checkout names one or the
other, never both (commissions/service.py resolves it).
"""

from __future__ import annotations

import io
import uuid
from typing import Literal

import segno
from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals.commissions.service import bind_by_rule, now_utc
from services.referrals.links import repository as repo
from services.referrals.links.repository import LinkRow
from services.referrals.links.schemas import LinkIn, LinkOut
from services.referrals.programs import repository as programs
from services.referrals.programs.service import (
    DistributorNotFound,
    DistributorStateConflict,
    new_code,
)
from shared.auth import Principal
from shared.errors import Conflict, DomainError, NotFound

LINK_CODE_LENGTH = 10


class LinkNotFound(NotFound):
    code = "referral_link_not_found"
    title = "No such referral link"


class LinkTargetInvalid(DomainError):
    status = 422
    code = "referral_link_target_invalid"
    title = "A general link has no target; a campaign, group or project link needs one"


class LinkCodeExhausted(Conflict):
    code = "referral_link_code_taken"
    title = "No free code was found; try again"


def out(link: LinkRow, share_base_url: str, conversions: int = 0) -> LinkOut:
    return LinkOut(
        id=link.id,
        merchant_id=link.merchant_id,
        distributor_id=link.distributor_id,
        code=link.code,
        target_type=link.target_type,
        target_id=link.target_id,
        share_url=share_base_url + link.code,
        qr_png=f"/v1/referral-links/{link.code}/qr.png",
        qr_svg=f"/v1/referral-links/{link.code}/qr.svg",
        clicks=link.clicks,
        conversions=conversions,
        created_at=link.created_at,
    )


async def create(session: AsyncSession, principal: Principal, body: LinkIn) -> LinkRow:
    owner = await programs.get_distributor(session, body.distributor_id)
    if owner is None or owner.user_id != principal.sub:
        raise DistributorNotFound()
    if owner.status != "active":
        raise DistributorStateConflict(f"a {owner.status} distributor cannot share links")
    if (body.target_type == "general") != (body.target_id is None):
        raise LinkTargetInvalid(field="target_id")
    for _ in range(5):
        link = await repo.insert_link(
            session,
            {
                "id": uuid.uuid4(),
                "merchant_id": owner.merchant_id,
                "distributor_id": owner.id,
                "code": new_code(LINK_CODE_LENGTH),
                "target_type": body.target_type,
                "target_id": body.target_id,
            },
        )
        if link is not None:
            return link
    raise LinkCodeExhausted()


async def click(
    session: AsyncSession, code: str, principal: Principal | None
) -> tuple[LinkRow, bool]:
    """Counts the click; a signed-in customer (not the distributor) is bound by the rule."""
    link = await repo.count_click(session, code)
    if link is None:
        raise LinkNotFound()
    if principal is None:
        return link, False
    owner = await programs.get_distributor(session, link.distributor_id)
    rules = await programs.get_program(session, link.merchant_id)
    if owner is None or rules is None or owner.status != "active" or owner.user_id == principal.sub:
        return link, False
    bound_to = await bind_by_rule(session, rules, principal.sub, owner.id, now_utc())
    return link, bound_to == owner.id


def qr_image(share_url: str, kind: Literal["png", "svg"]) -> bytes:
    """The share URL as a QR code (segno: error correction M, a 4-module quiet zone)."""
    out = io.BytesIO()
    segno.make(share_url, error="m", micro=False).save(out, kind=kind, scale=8, border=4)
    return out.getvalue()


async def link(session: AsyncSession, code: str) -> LinkRow:
    found = await repo.link_by_code(session, code)
    if found is None:
        raise LinkNotFound()
    return found
