"""The rules of projects: valid terms (the deadline, no securities), the review lifecycle,
rewards that never get worse for their backers, stretch goals, and the public page.

The deadline, suspension's effect on charges and cancellation touch every pledge of a
project: they are the charges domain's (``services/crowdfund/charges/``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.crowdfund.projects import repository as repo
from services.crowdfund.projects.repository import ProjectRow, RewardRow
from services.crowdfund.projects.schemas import (
    ProjectCreate,
    ProjectTerms,
    PublicProject,
    RewardIn,
    RewardOut,
    StretchGoalIn,
    StretchGoalOut,
)
from shared.auth import Principal, ensure_staff_of
from shared.errors import Conflict, DomainError, NotFound
from shared.events import EventPublisher
from shared.events.contracts import ProjectStretchGoalUnlocked
from shared.money import normalize_currency
from shared.scheduler import schedule
from shared.tables import PlatformTables

LAUNCH_JOB = "project.launch"
DEADLINE_JOB = "project.deadline"
MIN_DURATION = timedelta(days=1)
MAX_DURATION = timedelta(days=60)
# Staff shape a project before review, and again after a rejection.
EDITABLE = ("draft", "rejected")
# Rewards and stretch goals change until the deadline.
BEFORE_DEADLINE = ("draft", "rejected", "approved", "live")
PUBLIC = ("approved", "live", "succeeded", "failed", "settled", "cancelled")
# The project's terms that review approved and backers rely on.
LOCKED_TERMS = (
    "goal",
    "launch_at",
    "deadline_at",
    "funding_model",
    "support_minimum",
    "no_refund_last_hour",
)

# Rewards that are securities (equity, profit or revenue shares, interest): reward and
# product crowdfunding only. Words, not substrings: "interesting" is not "interest".
_SECURITIES = re.compile(
    r"\b(equity|dividends?|shareholders?|shareholding|securities|"
    r"interest (rates?|payments?)|annual interest|\d+(\.\d+)?\s*% interest|"
    r"(revenue|profit)[ -]shar(e|es|ing)|return on investment)\b"
    r"|股权|股份|股东|分红|利息|收益权|年化|投资回报",
    re.IGNORECASE,
)


class ProjectNotFound(NotFound):
    code = "project_not_found"
    title = "No such project"


class ProjectStateConflict(Conflict):
    code = "project_state_conflict"
    title = "The project is not in a state that allows this"


class DeadlineInPast(DomainError):
    status = 422
    code = "project_deadline_in_past"
    title = "The deadline must be in the future"


class DeadlineOutOfRange(DomainError):
    status = 422
    code = "project_deadline_out_of_range"
    title = "The deadline must fall 1 to 60 days after the launch"


class MerchantRequired(DomainError):
    status = 422
    code = "merchant_required"
    title = "Admins name the merchant the project belongs to"


class ProjectTermsLocked(DomainError):
    status = 422
    code = "project_terms_locked"
    title = "Reviewed: the goal, schedule and funding model cannot change any more"


class ProjectIncomplete(DomainError):
    status = 422
    code = "project_incomplete"
    title = "A project needs a reward tier or support without reward before review"


class RewardNotFound(NotFound):
    code = "reward_not_found"
    title = "This project has no such reward"


class RewardIsSecurity(DomainError):
    status = 422
    code = "reward_is_security"
    title = "Rewards may not be equity, dividends, interest or profit shares (securities)"


class RewardScheduleInvalid(DomainError):
    status = 422
    code = "reward_schedule_invalid"
    title = "A reward's end must come after its start"


class RewardTermsLocked(DomainError):
    status = 422
    code = "reward_terms_locked"
    title = "This reward has backers: it may change only in their favour"


class RewardHasBackers(Conflict):
    code = "reward_has_backers"
    title = "A reward that has had backers cannot be deleted"


class StretchGoalInvalid(DomainError):
    status = 422
    code = "stretch_goal_invalid"
    title = "A stretch goal's threshold must be above the goal and not repeat another's"


class StretchGoalNotFound(NotFound):
    code = "stretch_goal_not_found"
    title = "No such stretch goal, or it is unlocked already"


def now_utc() -> datetime:
    return datetime.now(UTC)


# --- terms ------------------------------------------------------------------------------


def check_schedule(launch_at: datetime, deadline_at: datetime, now: datetime) -> None:
    if deadline_at <= now:
        raise DeadlineInPast(field="deadline_at")
    if not MIN_DURATION <= deadline_at - launch_at <= MAX_DURATION:
        raise DeadlineOutOfRange(field="deadline_at")


def _columns(terms: ProjectTerms) -> dict[str, Any]:
    return {
        "title": terms.title,
        "story": terms.story,
        "image_urls": list(terms.image_urls),
        "video_urls": list(terms.video_urls),
        "category": terms.category,
        "goal": terms.goal,
        "internal_target": terms.internal_target,
        "launch_at": terms.launch_at,
        "deadline_at": terms.deadline_at,
        "funding_model": terms.funding_model,
        "support_minimum": terms.support_minimum,
        "risks": terms.risks,
        "delivery_promise": terms.delivery_promise,
        "no_refund_last_hour": terms.no_refund_last_hour,
    }


def merchant_for_new(principal: Principal, requested: str | None) -> str:
    if principal.is_admin:
        if requested is None:
            raise MerchantRequired(field="merchant_id")
        return requested
    ensure_staff_of(principal, requested or principal.merchant_id or "")
    assert principal.merchant_id is not None
    return principal.merchant_id


async def create_project(
    session: AsyncSession, principal: Principal, body: ProjectCreate
) -> uuid.UUID:
    check_schedule(body.launch_at, body.deadline_at, now_utc())
    project_id = uuid.uuid4()
    await repo.insert_project(
        session,
        _columns(body)
        | {
            "id": project_id,
            "merchant_id": merchant_for_new(principal, body.merchant_id),
            "currency": normalize_currency(body.currency),
        },
    )
    return project_id


async def staff_project(
    session: AsyncSession, principal: Principal, project_id: uuid.UUID, *, lock: bool = False
) -> ProjectRow:
    """The project, for staff of its merchant and admins; anyone else learns nothing (404)."""
    row = await repo.get_project(session, project_id, lock=lock)
    if row is None or not principal.acts_for(row.merchant_id):
        raise ProjectNotFound()
    return row


async def update_terms(
    session: AsyncSession, principal: Principal, project_id: uuid.UUID, body: ProjectTerms
) -> None:
    project = await staff_project(session, principal, project_id, lock=True)
    if project.status not in (*EDITABLE, "approved", "live"):
        raise ProjectStateConflict(f"a {project.status} project cannot change")
    columns = _columns(body)
    if project.status in EDITABLE:
        check_schedule(body.launch_at, body.deadline_at, now_utc())
    else:
        for name in LOCKED_TERMS:
            if columns[name] != getattr(project, name):
                raise ProjectTermsLocked(f"{name} cannot change once reviewed", field=name)
    await repo.update_project(session, project_id, columns)


# --- review and lifecycle ---------------------------------------------------------------


async def submit(session: AsyncSession, principal: Principal, project_id: uuid.UUID) -> None:
    project = await staff_project(session, principal, project_id, lock=True)
    if project.status not in EDITABLE:
        raise ProjectStateConflict(
            f"only a draft or rejected project is submitted ({project.status})"
        )
    check_schedule(project.launch_at, project.deadline_at, now_utc())
    tiers = [x for x in await repo.get_rewards(session, project_id) if x.kind == "tier"]
    if not tiers and project.support_minimum is None:
        raise ProjectIncomplete(field="rewards")
    await repo.update_project(session, project_id, {"status": "submitted"})


async def _submitted(session: AsyncSession, project_id: uuid.UUID) -> ProjectRow:
    project = await repo.get_project(session, project_id, lock=True)
    if project is None:
        raise ProjectNotFound()
    if project.status != "submitted":
        raise ProjectStateConflict(f"only a submitted project is reviewed ({project.status})")
    return project


async def approve(
    session: AsyncSession,
    tables: PlatformTables,
    principal: Principal,
    project_id: uuid.UUID,
    fee_bps: int,
) -> None:
    """Admins approve: the project goes live at its launch time (at once if that has passed),
    and its deadline is scheduled; the platform fee of the day stays the project's."""
    project = await _submitted(session, project_id)
    now = now_utc()
    if project.deadline_at <= now:
        raise DeadlineInPast(field="deadline_at")
    live = project.launch_at <= now
    await repo.update_project(
        session,
        project_id,
        {
            "status": "live" if live else "approved",
            "platform_fee_bps": fee_bps,
            "review_reason": None,
            "reviewed_by": principal.sub,
            "reviewed_at": now,
        },
    )
    key = str(project_id)
    if not live:
        await schedule(session, tables, kind=LAUNCH_JOB, key=key, run_at=project.launch_at)
    await schedule(session, tables, kind=DEADLINE_JOB, key=key, run_at=project.deadline_at)


async def reject(
    session: AsyncSession, principal: Principal, project_id: uuid.UUID, reason: str
) -> None:
    await _submitted(session, project_id)
    await repo.update_project(
        session,
        project_id,
        {
            "status": "rejected",
            "review_reason": reason,
            "reviewed_by": principal.sub,
            "reviewed_at": now_utc(),
        },
    )


async def launch_due(session: AsyncSession, project_id: uuid.UUID) -> None:
    """The scheduled launch: an approved project goes live (a second run changes nothing)."""
    project = await repo.get_project(session, project_id, lock=True)
    if project is not None and project.status == "approved":
        await repo.update_project(session, project_id, {"status": "live"})


async def set_suspended(session: AsyncSession, project_id: uuid.UUID, *, suspended: bool) -> None:
    """The kill switch (admins): no pledges, changes or charges while suspended."""
    project = await repo.get_project(session, project_id, lock=True)
    if project is None:
        raise ProjectNotFound()
    if project.status not in ("approved", "live", "succeeded"):
        raise ProjectStateConflict(f"a {project.status} project cannot be suspended or resumed")
    if project.suspended != suspended:
        await repo.update_project(session, project_id, {"suspended": suspended})


# --- rewards ----------------------------------------------------------------------------


def check_reward(body: RewardIn) -> None:
    if _SECURITIES.search(f"{body.title}\n{body.description}"):
        raise RewardIsSecurity(field="title")
    if body.starts_at and body.ends_at and body.ends_at <= body.starts_at:
        raise RewardScheduleInvalid(field="ends_at")


def _reward_columns(body: RewardIn) -> dict[str, Any]:
    return body.model_dump()


async def _project_before_deadline(
    session: AsyncSession, principal: Principal, project_id: uuid.UUID
) -> ProjectRow:
    project = await staff_project(session, principal, project_id, lock=True)
    if project.status not in BEFORE_DEADLINE:
        raise ProjectStateConflict(f"the rewards of a {project.status} project are final")
    return project


async def add_reward(
    session: AsyncSession, principal: Principal, project_id: uuid.UUID, body: RewardIn
) -> RewardRow:
    await _project_before_deadline(session, principal, project_id)
    check_reward(body)
    return await repo.insert_reward(
        session,
        _reward_columns(body)
        | {
            "id": uuid.uuid4(),
            "project_id": project_id,
            "position": await repo.next_reward_position(session, project_id),
        },
    )


def _favourable(old: RewardRow, new: RewardIn) -> list[tuple[bool, str, str]]:
    """What would leave a backer of ``old`` worse off (refused, by field)."""
    old_fees, new_fees = old.shipping_fees, new.shipping_fees
    fees_worse = (old_fees is None) != (new_fees is None) or any(
        region not in (new_fees or {}) or (new_fees or {})[region] > fee
        for region, fee in (old_fees or {}).items()
    )
    return [
        (new.kind != old.kind, "kind", "a tier stays a tier"),
        (new.amount > old.amount, "amount", "it may only fall"),
        (
            new.per_backer_limit is not None
            and (old.per_backer_limit is None or new.per_backer_limit < old.per_backer_limit),
            "per_backer_limit",
            "it may only grow",
        ),
        (
            old.delivery_month is not None
            and (new.delivery_month is None or new.delivery_month > old.delivery_month),
            "delivery_month",
            "delivery may only move earlier",
        ),
        (fees_worse, "shipping_fees", "fees may only fall, and no region may go"),
    ]


async def update_reward(
    session: AsyncSession,
    principal: Principal,
    project_id: uuid.UUID,
    reward_id: uuid.UUID,
    body: RewardIn,
) -> RewardRow:
    await _project_before_deadline(session, principal, project_id)
    old = await repo.get_reward(session, project_id, reward_id)
    if old is None:
        raise RewardNotFound()
    check_reward(body)
    if body.quantity_limit is not None and body.quantity_limit < old.reserved:
        raise RewardTermsLocked("quantity_limit: below the places held", field="quantity_limit")
    if await repo.reward_has_backers(session, reward_id):
        for refused, name, why in _favourable(old, body):
            if refused:
                raise RewardTermsLocked(f"{name}: {why}", field=name)
    return await repo.update_reward(session, reward_id, _reward_columns(body))


async def delete_reward(
    session: AsyncSession, principal: Principal, project_id: uuid.UUID, reward_id: uuid.UUID
) -> None:
    await _project_before_deadline(session, principal, project_id)
    if await repo.get_reward(session, project_id, reward_id) is None:
        raise RewardNotFound()
    if await repo.reward_has_backers(session, reward_id):
        raise RewardHasBackers()
    await repo.delete_reward(session, reward_id)


# --- stretch goals ----------------------------------------------------------------------


async def add_stretch_goal(
    session: AsyncSession,
    publisher: EventPublisher,
    principal: Principal,
    project_id: uuid.UUID,
    body: StretchGoalIn,
) -> None:
    project = await _project_before_deadline(session, principal, project_id)
    thresholds = {x.threshold for x in await repo.get_stretch_goals(session, project_id)}
    if body.threshold <= project.goal or body.threshold in thresholds:
        raise StretchGoalInvalid(field="threshold")
    await repo.insert_stretch_goal(
        session, body.model_dump() | {"id": uuid.uuid4(), "project_id": project_id}
    )
    # A goal passed already unlocks at once (and is announced like any other).
    await unlock_stretch_goals(session, publisher, project)


async def unlock_stretch_goals(
    session: AsyncSession, publisher: EventPublisher, project: ProjectRow
) -> None:
    """Unlocks, in order, the goals the confirmed total has passed, each announced once
    (the caller holds the project's lock). An unlocked goal stays unlocked."""
    for goal in await repo.unlock_stretch_goals(session, project.id, project.pledged_amount):
        await publisher.publish(
            session,
            ProjectStretchGoalUnlocked(
                project_id=project.id,
                merchant_id=project.merchant_id,
                currency=project.currency,
                goal=project.goal,
                raised=project.pledged_amount,
                stretch_goal_id=goal.id,
                threshold=goal.threshold,
                title=goal.title,
                unlocks=goal.unlocks,
            ),
        )


async def delete_stretch_goal(
    session: AsyncSession, principal: Principal, project_id: uuid.UUID, goal_id: uuid.UUID
) -> None:
    await _project_before_deadline(session, principal, project_id)
    if await repo.delete_stretch_goal(session, project_id, goal_id) is None:
        raise StretchGoalNotFound()


# --- public -----------------------------------------------------------------------------


async def public_project(
    session: AsyncSession, project_id: uuid.UUID, *, clock: Callable[[], datetime] = now_utc
) -> PublicProject:
    project = await repo.get_project(session, project_id)
    if project is None or project.status not in PUBLIC:
        raise ProjectNotFound()
    locked = project.final_amount is not None
    raised = project.final_amount if locked else project.pledged_amount
    backers = (
        project.final_backers
        if project.final_backers is not None
        else await repo.counted_backers(session, project_id)
    )
    assert raised is not None
    return PublicProject(
        id=project.id,
        title=project.title,
        story=project.story,
        image_urls=project.image_urls,
        video_urls=project.video_urls,
        category=project.category,
        currency=project.currency,
        status=project.status,
        suspended=project.suspended,
        funding_model=project.funding_model,
        launch_at=project.launch_at,
        deadline_at=project.deadline_at,
        seconds_left=max(0, int((project.deadline_at - clock()).total_seconds())),
        goal=project.goal,
        raised=raised,
        percent_bps=raised * 10_000 // project.goal,
        backers=backers,
        support_minimum=project.support_minimum,
        risks=project.risks,
        delivery_promise=project.delivery_promise,
        no_refund_last_hour=project.no_refund_last_hour,
        rewards=[RewardOut.of(x) for x in await repo.get_rewards(session, project_id)],
        stretch_goals=[
            StretchGoalOut.of(x) for x in await repo.get_stretch_goals(session, project_id)
        ],
    )
