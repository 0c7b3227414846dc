"""Endpoints of projects: staff of the merchant shape them, admins review and police them,
anyone reads the project page."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status

from services.crowdfund.projects import repository as repo
from services.crowdfund.projects import service
from services.crowdfund.projects.schemas import (
    ProjectCreate,
    ProjectOut,
    ProjectStatus,
    ProjectTerms,
    PublicProject,
    RejectIn,
    ReviewIn,
    RewardIn,
    RewardOut,
    StretchGoalIn,
)
from services.crowdfund.projects.service import (
    DeadlineInPast,
    DeadlineOutOfRange,
    MerchantRequired,
    ProjectIncomplete,
    ProjectNotFound,
    ProjectStateConflict,
    ProjectTermsLocked,
    RewardHasBackers,
    RewardIsSecurity,
    RewardNotFound,
    RewardScheduleInvalid,
    RewardTermsLocked,
    StretchGoalInvalid,
    StretchGoalNotFound,
)
from shared.auth import AnyStaff, CatalogStaff, Principal, require_roles
from shared.db import SessionDep
from shared.errors import Forbidden, Unauthorized, responses
from shared.events import EventPublisher
from shared.money import UnknownCurrency
from shared.pagination import InvalidCursor, Page, PageDep, fetch_page, scope_to_merchant

# Reviewing and the kill switch are the platform's (docs/crowdfund.md, "Roles").
Admin = Annotated[Principal, require_roles("admin")]
_AUTH = (Unauthorized, Forbidden)
_REWARD = (ProjectNotFound, ProjectStateConflict, RewardIsSecurity, RewardScheduleInvalid)


def _publisher(request: Request) -> EventPublisher:
    publisher: EventPublisher = request.app.state.publisher
    return publisher


PublisherDep = Annotated[EventPublisher, Depends(_publisher)]


async def project_out(session: SessionDep, project_id: uuid.UUID) -> ProjectOut:
    project = await repo.get_project(session, project_id)
    if project is None:
        raise ProjectNotFound()
    return ProjectOut.of(
        project,
        await repo.get_rewards(session, project_id),
        await repo.get_stretch_goals(session, project_id),
    )


router = APIRouter(prefix="/v1/projects", tags=["projects"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ProjectOut,
    summary="Create a crowdfunding project (a draft)",
    responses=responses(
        *_AUTH, DeadlineInPast, DeadlineOutOfRange, MerchantRequired, UnknownCurrency
    ),
)
async def create(principal: CatalogStaff, body: ProjectCreate, session: SessionDep) -> ProjectOut:
    project_id = await service.create_project(session, principal, body)
    return await project_out(session, project_id)


@router.get(
    "",
    response_model=Page[ProjectOut],
    summary="The merchant's projects, newest first (admins: all, e.g. ?status=submitted)",
    responses=responses(*_AUTH, InvalidCursor),
)
async def list_projects(
    principal: AnyStaff,
    session: SessionDep,
    page: PageDep,
    status_is: Annotated[ProjectStatus | None, Query(alias="status")] = None,
) -> Page[ProjectOut]:
    cols = repo.project_columns()
    stmt = scope_to_merchant(repo.projects_query(), principal, cols.merchant_id)
    if status_is is not None:
        stmt = stmt.where(cols.status == status_is)
    rows, cursor = await fetch_page(session, stmt, sort=cols.created_at, key=cols.id, params=page)
    projects = [repo.ProjectRow(**r._mapping) for r in rows]
    children = await repo.children_of(session, [x.id for x in projects])
    return Page(items=[ProjectOut.of(x, *children[x.id]) for x in projects], next_cursor=cursor)


@router.get(
    "/{project_id}",
    response_model=ProjectOut,
    summary="A project as its staff see it (the internal target included)",
    responses=responses(*_AUTH, ProjectNotFound),
)
async def get(principal: AnyStaff, project_id: uuid.UUID, session: SessionDep) -> ProjectOut:
    await service.staff_project(session, principal, project_id)
    return await project_out(session, project_id)


@router.put(
    "/{project_id}",
    response_model=ProjectOut,
    summary="Change a project (once reviewed: not the goal, schedule or funding model)",
    responses=responses(
        *_AUTH,
        ProjectNotFound,
        ProjectStateConflict,
        ProjectTermsLocked,
        DeadlineInPast,
        DeadlineOutOfRange,
    ),
)
async def update(
    principal: CatalogStaff, project_id: uuid.UUID, body: ProjectTerms, session: SessionDep
) -> ProjectOut:
    await service.update_terms(session, principal, project_id, body)
    return await project_out(session, project_id)


@router.post(
    "/{project_id}/submit",
    response_model=ProjectOut,
    summary="Submit a draft (or a rejected project) for review",
    responses=responses(
        *_AUTH,
        ProjectNotFound,
        ProjectStateConflict,
        ProjectIncomplete,
        DeadlineInPast,
        DeadlineOutOfRange,
    ),
)
async def submit(principal: CatalogStaff, project_id: uuid.UUID, session: SessionDep) -> ProjectOut:
    await service.submit(session, principal, project_id)
    return await project_out(session, project_id)


@router.post(
    "/{project_id}/approve",
    response_model=ProjectOut,
    summary="Approve a submitted project (admins): live at its launch time",
    responses=responses(*_AUTH, ProjectNotFound, ProjectStateConflict, DeadlineInPast),
)
async def approve(
    principal: Admin,
    project_id: uuid.UUID,
    body: ReviewIn,
    session: SessionDep,
    request: Request,
) -> ProjectOut:
    fee = (
        body.platform_fee_bps
        if body.platform_fee_bps is not None
        else request.app.state.settings.platform_fee_bps
    )
    await service.approve(session, request.app.state.tables, principal, project_id, fee)
    return await project_out(session, project_id)


@router.post(
    "/{project_id}/reject",
    response_model=ProjectOut,
    summary="Reject a submitted project with the reason (admins)",
    responses=responses(*_AUTH, ProjectNotFound, ProjectStateConflict),
)
async def reject(
    principal: Admin, project_id: uuid.UUID, body: RejectIn, session: SessionDep
) -> ProjectOut:
    await service.reject(session, principal, project_id, body.reason)
    return await project_out(session, project_id)


@router.post(
    "/{project_id}/suspend",
    response_model=ProjectOut,
    summary="The kill switch (admins): no pledges, changes or charges while suspended",
    responses=responses(*_AUTH, ProjectNotFound, ProjectStateConflict),
)
async def suspend(principal: Admin, project_id: uuid.UUID, session: SessionDep) -> ProjectOut:
    await service.set_suspended(session, project_id, suspended=True)
    return await project_out(session, project_id)


@router.post(
    "/{project_id}/resume",
    response_model=ProjectOut,
    summary="Lift a suspension (admins)",
    responses=responses(*_AUTH, ProjectNotFound, ProjectStateConflict),
)
async def resume(principal: Admin, project_id: uuid.UUID, session: SessionDep) -> ProjectOut:
    await service.set_suspended(session, project_id, suspended=False)
    return await project_out(session, project_id)


@router.get(
    "/{project_id}/public",
    response_model=PublicProject,
    summary="The project page (no login): story, terms, raised, backers, tiers, stretch goals",
    responses=responses(ProjectNotFound),
)
async def public(project_id: uuid.UUID, session: SessionDep) -> PublicProject:
    return await service.public_project(session, project_id)


@router.post(
    "/{project_id}/rewards",
    status_code=status.HTTP_201_CREATED,
    response_model=RewardOut,
    summary="Add a reward tier or an add-on",
    responses=responses(*_AUTH, *_REWARD),
)
async def add_reward(
    principal: CatalogStaff, project_id: uuid.UUID, body: RewardIn, session: SessionDep
) -> RewardOut:
    return RewardOut.of(await service.add_reward(session, principal, project_id, body))


@router.put(
    "/{project_id}/rewards/{reward_id}",
    response_model=RewardOut,
    summary="Change a reward (once it has backers: only in their favour)",
    responses=responses(*_AUTH, *_REWARD, RewardNotFound, RewardTermsLocked),
)
async def update_reward(
    principal: CatalogStaff,
    project_id: uuid.UUID,
    reward_id: uuid.UUID,
    body: RewardIn,
    session: SessionDep,
) -> RewardOut:
    row = await service.update_reward(session, principal, project_id, reward_id, body)
    return RewardOut.of(row)


@router.delete(
    "/{project_id}/rewards/{reward_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a reward nobody ever pledged for",
    responses=responses(
        *_AUTH, ProjectNotFound, ProjectStateConflict, RewardNotFound, RewardHasBackers
    ),
)
async def delete_reward(
    principal: CatalogStaff, project_id: uuid.UUID, reward_id: uuid.UUID, session: SessionDep
) -> None:
    await service.delete_reward(session, principal, project_id, reward_id)


@router.post(
    "/{project_id}/stretch-goals",
    status_code=status.HTTP_201_CREATED,
    response_model=ProjectOut,
    summary="Add a stretch goal (a threshold above the goal, and what it unlocks)",
    responses=responses(*_AUTH, ProjectNotFound, ProjectStateConflict, StretchGoalInvalid),
)
async def add_stretch_goal(
    principal: CatalogStaff,
    project_id: uuid.UUID,
    body: StretchGoalIn,
    session: SessionDep,
    publisher: PublisherDep,
) -> ProjectOut:
    await service.add_stretch_goal(session, publisher, principal, project_id, body)
    return await project_out(session, project_id)


@router.delete(
    "/{project_id}/stretch-goals/{goal_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Withdraw a stretch goal not unlocked yet",
    responses=responses(*_AUTH, ProjectNotFound, ProjectStateConflict, StretchGoalNotFound),
)
async def delete_stretch_goal(
    principal: CatalogStaff, project_id: uuid.UUID, goal_id: uuid.UUID, session: SessionDep
) -> None:
    await service.delete_stretch_goal(session, principal, project_id, goal_id)
