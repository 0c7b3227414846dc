"""Endpoints of project updates: creators post, everyone (or only backers) reads."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from services.crowdfund.projects.router import PublisherDep
from services.crowdfund.projects.service import ProjectNotFound, ProjectStateConflict
from services.crowdfund.updates import repository as repo
from services.crowdfund.updates import service
from services.crowdfund.updates.repository import UpdateRow
from services.crowdfund.updates.schemas import UpdateIn, UpdateOut
from shared.auth import CatalogStaff, OptionalUser
from shared.db import SessionDep
from shared.errors import Forbidden, Unauthorized, responses
from shared.pagination import InvalidCursor, Page, PageDep, fetch_page

router = APIRouter(prefix="/v1/projects/{project_id}/updates", tags=["updates"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UpdateOut,
    summary="Post an update (public, or for backers only); backers are told by an event",
    responses=responses(Unauthorized, Forbidden, ProjectNotFound, ProjectStateConflict),
)
async def post(
    principal: CatalogStaff,
    project_id: uuid.UUID,
    body: UpdateIn,
    session: SessionDep,
    publisher: PublisherDep,
) -> UpdateOut:
    return UpdateOut.of(await service.post(session, publisher, principal, project_id, body))


@router.get(
    "",
    response_model=Page[UpdateOut],
    summary="Updates, newest first: public ones for everyone, all for backers and staff",
    responses=responses(Unauthorized, ProjectNotFound, InvalidCursor),
)
async def list_updates(
    principal: OptionalUser, project_id: uuid.UUID, session: SessionDep, page: PageDep
) -> Page[UpdateOut]:
    stmt = await service.readable(session, principal, project_id)
    cols = repo.update_columns()
    rows, cursor = await fetch_page(session, stmt, sort=cols.created_at, key=cols.id, params=page)
    return Page(items=[UpdateOut.of(UpdateRow(**r._mapping)) for r in rows], next_cursor=cursor)
