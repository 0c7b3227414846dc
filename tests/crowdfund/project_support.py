"""Helpers of the crowdfunding tests: project and reward bodies, a live project, pledging,
running due work the way the worker does.

Times are arranged behind the API's back in one place only (:func:`make_due`): a deadline, a
retry or a fix window's end is brought to now instead of waiting for it, and the jobs and
sweeps then run exactly as the worker runs them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from services.crowdfund.models import pledge, project
from shared.scheduler import JobRunner
from tests.conftest import TokenFactory
from tests.shared.payments.support import PaymentsApp, new_merchant


def project_body(**overrides: Any) -> dict[str, Any]:
    """An all-or-nothing project launched a minute ago, ten days to go, goal ¥10,000."""
    now = datetime.now(UTC)
    return {
        "title": "三个爸爸 air purifier for children",
        "story": "Made for our kids.\nBacked by parents.",
        "image_urls": ["https://img.example/purifier.png"],
        "video_urls": ["https://video.example/purifier.mp4"],
        "category": "home",
        "currency": "CNY",
        "goal": 1_000_000,
        "internal_target": 500_000,
        "launch_at": (now - timedelta(minutes=1)).isoformat(),
        "deadline_at": (now + timedelta(days=10)).isoformat(),
        "risks": "Certification may take longer.",
        "delivery_promise": "Ships within 90 days of the deadline.",
        **overrides,
    }


def tier_body(**overrides: Any) -> dict[str, Any]:
    """A ¥99 tier shipped in mainland China for free, ¥20 to Hong Kong, ¥50 elsewhere."""
    return {
        "title": "Early bird purifier",
        "description": "One purifier, filters for a year.",
        "amount": 9900,
        "delivery_month": "2027-06",
        "shipping_fees": {"CN": 0, "HK": 2000, "*": 5000},
        **overrides,
    }


async def draft_project(
    app: PaymentsApp, auth: TokenFactory, staff: dict[str, str] | None = None, **overrides: Any
) -> tuple[str, dict[str, str]]:
    """A draft of ``staff``'s merchant (a fresh one by default): its id and a staff header."""
    staff = staff or auth("staff", merchant_id=new_merchant())
    created = await app.client.post("/v1/projects", json=project_body(**overrides), headers=staff)
    assert created.status_code == 201, created.text
    return str(created.json()["id"]), staff


async def add_reward(
    app: PaymentsApp, staff: dict[str, str], project_id: str, **overrides: Any
) -> str:
    created = await app.client.post(
        f"/v1/projects/{project_id}/rewards", json=tier_body(**overrides), headers=staff
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def live_project(
    app: PaymentsApp,
    auth: TokenFactory,
    *,
    rewards: list[dict[str, Any]] | None = None,
    staff: dict[str, str] | None = None,
    **overrides: Any,
) -> tuple[str, dict[str, str], list[str]]:
    """A reviewed, live project with ``rewards`` (one ¥99 tier by default): its id, a staff
    header and the rewards' ids."""
    project_id, staff = await draft_project(app, auth, staff, **overrides)
    reward_ids = [await add_reward(app, staff, project_id, **r) for r in rewards or [{}]]
    submitted = await app.client.post(f"/v1/projects/{project_id}/submit", headers=staff)
    assert submitted.status_code == 200, submitted.text
    approved = await app.client.post(
        f"/v1/projects/{project_id}/approve", json={}, headers=auth("admin")
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "live"
    return project_id, staff, reward_ids


async def get_json(app: PaymentsApp, path: str, headers: dict[str, str] | None = None) -> Any:
    response = await app.client.get(path, headers=headers or {})
    assert response.status_code == 200, response.text
    return response.json()


async def outbox_payloads(app: PaymentsApp, event_type: str, **match: str) -> list[dict[str, Any]]:
    """The payloads of the outbox events of ``event_type`` whose payload has these values."""
    outbox = app.app.state.tables.outbox
    stmt = select(outbox.c.envelope).where(outbox.c.event_type == event_type)
    for name, value in match.items():
        stmt = stmt.where(outbox.c.envelope["payload"][name].as_string() == value)
    async with app.app.state.sessionmaker() as session:
        rows = await session.scalars(stmt.order_by(outbox.c.id))
        return [dict(envelope["payload"]) for envelope in rows]


def new_id() -> str:
    return str(uuid.uuid4())


async def place_pledge(
    app: PaymentsApp,
    backer: dict[str, str],
    project_id: str,
    reward_id: str | None,
    *,
    key: str | None = "",
    **body: Any,
) -> Any:
    """POSTs a pledge: by default one unit of ``reward_id`` for ¥99 shipped in CN, by a card
    that saves fine."""
    values = {
        "reward_id": reward_id,
        "amount": 9900,
        "region": "CN",
        "payment_method": "pm_card_visa",
        **body,
    }
    return await app.post(f"/v1/projects/{project_id}/pledges", values, backer, key=key)


async def run_jobs(app: PaymentsApp) -> int:
    """Runs every due job and sweep the way the worker does, then the simulated provider's
    events, until nothing is left; returns how much ran."""
    runner = JobRunner(
        sessionmaker=app.app.state.sessionmaker,
        tables=app.app.state.tables,
        handlers=app.app.state.job_handlers,
    )
    sweeps = app.app.state.sweeps
    total = 0
    while True:
        ran = await runner.run_due()
        for sweep in sweeps:
            ran += await sweep()
        await app.tick()
        if ran == 0:
            return total
        total += ran


async def make_due(app: PaymentsApp, project_id: str, *, what: str) -> None:
    """Brings a project's deadline (``what="deadline"``, with its job), its settlement
    (``"settle"``), its pledges' next retries (``"retry"``) or the end of their fix windows
    (``"window"``) to now."""
    past = datetime.now(UTC) - timedelta(seconds=2)
    pid = uuid.UUID(project_id)
    jobs = app.app.state.tables.scheduled_job
    async with app.app.state.sessionmaker() as session, session.begin():
        if what == "settle":
            await session.execute(
                update(jobs)
                .where(jobs.c.kind == "project.settle", jobs.c.key.startswith(project_id))
                .values(run_at=past)
            )
            return
        if what == "deadline":
            await session.execute(
                update(project).where(project.c.id == pid).values(deadline_at=past)
            )
            await session.execute(
                update(jobs)
                .where(jobs.c.kind == "project.deadline", jobs.c.key == project_id)
                .values(run_at=past)
            )
            return
        failed = (pledge.c.project_id == pid, pledge.c.status == "payment_failed")
        if what == "retry":
            # Time passes for the pledge: its window moves back as far as its retry does.
            jump = pledge.c.charge_at - past
            await session.execute(
                update(pledge)
                .where(*failed, pledge.c.charge_at.is_not(None))
                .values(
                    charge_at=past,
                    first_failed_at=pledge.c.first_failed_at - jump,
                    fix_until=pledge.c.fix_until - jump,
                )
            )
        else:
            await session.execute(update(pledge).where(*failed).values(fix_until=past))
