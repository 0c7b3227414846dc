"""Endpoints of referral links: distributors make them; anyone follows one, or its QR code."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request, status
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from services.referrals.links import repository as repo
from services.referrals.links import service
from services.referrals.links.repository import LinkRow
from services.referrals.links.schemas import ClickOut, LinkIn, LinkOut
from services.referrals.links.service import LinkCodeExhausted, LinkNotFound, LinkTargetInvalid
from services.referrals.programs.service import DistributorNotFound, DistributorStateConflict
from shared.auth import AnyCaller, OptionalUser
from shared.db import SessionDep
from shared.errors import Forbidden, Unauthorized, responses
from shared.pagination import InvalidCursor, Page, PageDep, fetch_page, scope_to_owner

Code = Annotated[str, Path(min_length=1, max_length=16, pattern=r"^[0-9A-Z]+$")]
_AUTH = (Unauthorized, Forbidden)


def _share_base(request: Request) -> str:
    base: str = request.app.state.settings.share_base_url
    return base


def links_router() -> APIRouter:
    router = APIRouter(prefix="/v1/referral-links", tags=["referral links"])

    @router.post(
        "",
        status_code=status.HTTP_201_CREATED,
        response_model=LinkOut,
        summary="Make a share link (general, or for a campaign, group or project)",
        responses=responses(
            *_AUTH,
            DistributorNotFound,
            DistributorStateConflict,
            LinkTargetInvalid,
            LinkCodeExhausted,
        ),
    )
    async def create(
        principal: AnyCaller, body: LinkIn, session: SessionDep, request: Request
    ) -> LinkOut:
        return service.out(await service.create(session, principal, body), _share_base(request))

    @router.get(
        "",
        response_model=Page[LinkOut],
        summary="Links with clicks and conversions: a distributor's own, staff their merchant's",
        responses=responses(*_AUTH, InvalidCursor),
    )
    async def list_links(
        principal: AnyCaller, session: SessionDep, page: PageDep, request: Request
    ) -> Page[LinkOut]:
        cols = repo.columns()
        stmt = repo.links_query()
        stmt = scope_to_owner(
            stmt,
            principal,
            merchant_column=cols.merchant_id,
            owner_column=repo.distributor_user_column(),
        )
        rows, cursor = await fetch_page(
            session, stmt, sort=cols.created_at, key=cols.id, params=page
        )
        base = _share_base(request)
        items = []
        for r in rows:
            values = dict(r._mapping)
            conversions = int(values.pop("conversions"))
            items.append(service.out(LinkRow(**values), base, conversions))
        return Page(items=items, next_cursor=cursor)

    @router.post(
        "/{code}/click",
        response_model=ClickOut,
        summary="Someone followed the link: counted; a signed-in customer is bound (锁客)",
        responses=responses(Unauthorized, LinkNotFound),
    )
    async def click(code: Code, principal: OptionalUser, session: SessionDep) -> ClickOut:
        link, bound = await service.click(session, code, principal)
        return ClickOut(
            code=link.code,
            merchant_id=link.merchant_id,
            target_type=link.target_type,
            target_id=link.target_id,
            bound=bound,
        )

    @router.get(
        "/{code}/qr.png",
        response_class=Response,
        summary="The link's QR code (PNG)",
        responses={200: {"content": {"image/png": {}}}, **responses(LinkNotFound)},
    )
    async def qr_png(code: Code, session: SessionDep, request: Request) -> Response:
        return await _qr(session, request, code, "png")

    @router.get(
        "/{code}/qr.svg",
        response_class=Response,
        summary="The link's QR code (SVG)",
        responses={200: {"content": {"image/svg+xml": {}}}, **responses(LinkNotFound)},
    )
    async def qr_svg(code: Code, session: SessionDep, request: Request) -> Response:
        return await _qr(session, request, code, "svg")

    return router


_MEDIA = {"png": "image/png", "svg": "image/svg+xml"}


async def _qr(
    session: AsyncSession, request: Request, code: str, kind: Literal["png", "svg"]
) -> Response:
    link = await service.link(session, code)
    body = service.qr_image(_share_base(request) + link.code, kind)
    return Response(
        body, media_type=_MEDIA[kind], headers={"cache-control": "public, max-age=86400"}
    )
