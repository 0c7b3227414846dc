"""The rules of updates: creators post them once a project is reviewed; the public reads the
public ones, backers (and the project's staff) all of them; each is announced once."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from services.crowdfund.projects import repository as projects
from services.crowdfund.projects.service import (
    PUBLIC,
    ProjectNotFound,
    ProjectStateConflict,
    staff_project,
)
from services.crowdfund.updates import repository as repo
from services.crowdfund.updates.repository import UpdateRow
from services.crowdfund.updates.schemas import UpdateIn
from shared.auth import Principal
from shared.events import EventPublisher
from shared.events.contracts import ProjectUpdatePosted


async def post(
    session: AsyncSession,
    publisher: EventPublisher,
    principal: Principal,
    project_id: uuid.UUID,
    body: UpdateIn,
) -> UpdateRow:
    project = await staff_project(session, principal, project_id)
    if project.status not in PUBLIC or project.status == "cancelled":
        raise ProjectStateConflict(f"a {project.status} project posts no updates")
    update = await repo.insert_update(
        session,
        body.model_dump()
        | {"id": uuid.uuid4(), "project_id": project_id, "posted_by": principal.sub},
    )
    await publisher.publish(
        session,
        ProjectUpdatePosted(
            project_id=project.id,
            merchant_id=project.merchant_id,
            update_id=update.id,
            title=update.title,
            visibility=body.visibility,
        ),
    )
    return update


async def readable(
    session: AsyncSession, principal: Principal | None, project_id: uuid.UUID
) -> Select[Any]:
    """The updates ``principal`` may read: backers-only ones for the project's backers and
    staff, the public ones for everyone (no login needed)."""
    project = await projects.get_project(session, project_id)
    if project is None or project.status not in PUBLIC:
        raise ProjectNotFound()
    backers_too = principal is not None and (
        principal.acts_for(project.merchant_id)
        or await repo.is_backer(session, project_id, principal.sub)
    )
    return repo.updates_query(project_id, backers_too=backers_too)
