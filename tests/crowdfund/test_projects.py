"""Crowdfunding projects on real PostgreSQL: terms, review, the once-live rules, rewards,
stretch goals, the kill switch, who may act, and the public page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.scheduler import JobRunner
from tests.conftest import TokenFactory
from tests.crowdfund.project_support import (
    add_reward,
    draft_project,
    get_json,
    live_project,
    outbox_payloads,
    project_body,
    tier_body,
)
from tests.shared.payments.support import PaymentsApp, new_merchant

NOW = datetime.now(UTC)


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        (
            {
                "launch_at": NOW.isoformat(),
                "deadline_at": (NOW + timedelta(days=60, minutes=5)).isoformat(),
            },
            "project_deadline_out_of_range",
        ),
        (
            {"deadline_at": (NOW + timedelta(hours=23)).isoformat()},
            "project_deadline_out_of_range",
        ),
        (
            {
                "launch_at": (NOW - timedelta(days=3)).isoformat(),
                "deadline_at": (NOW - timedelta(minutes=1)).isoformat(),
            },
            "project_deadline_in_past",
        ),
    ],
)
async def test_a_deadline_outside_1_to_60_days_or_in_the_past_is_refused(
    sim_crowdfund: PaymentsApp, auth: TokenFactory, overrides: dict[str, Any], code: str
) -> None:
    staff = auth("staff", merchant_id=new_merchant())
    response = await sim_crowdfund.client.post(
        "/v1/projects", json=project_body(**overrides), headers=staff
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert (response.json()["code"], response.json()["field"]) == (code, "deadline_at")
    assert (await get_json(sim_crowdfund, "/v1/projects", staff))["items"] == []


async def test_exactly_sixty_days_is_allowed(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    launch = NOW + timedelta(hours=1)
    project_id, staff = await draft_project(
        sim_crowdfund,
        auth,
        launch_at=launch.isoformat(),
        deadline_at=(launch + timedelta(days=60)).isoformat(),
    )
    project = await get_json(sim_crowdfund, f"/v1/projects/{project_id}", staff)
    assert project["status"] == "draft"
    assert project["funding_model"] == "all_or_nothing"


@pytest.mark.parametrize(
    "title",
    [
        "10% equity in the company",
        "Annual dividends for life",
        "产品分红权",
        "8% interest payments",
    ],
)
async def test_equity_dividend_and_interest_rewards_are_refused(
    sim_crowdfund: PaymentsApp, auth: TokenFactory, title: str
) -> None:
    project_id, staff = await draft_project(sim_crowdfund, auth)
    response = await sim_crowdfund.client.post(
        f"/v1/projects/{project_id}/rewards", json=tier_body(title=title), headers=staff
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "reward_is_security"
    project = await get_json(sim_crowdfund, f"/v1/projects/{project_id}", staff)
    assert project["rewards"] == []
    # An interesting reward is not interest.
    assert await add_reward(sim_crowdfund, staff, project_id, title="An interesting gadget")


async def test_review_lifecycle_reject_with_reason_then_approve(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, staff = await draft_project(sim_crowdfund, auth)
    admin = auth("admin")
    base = f"/v1/projects/{project_id}"
    incomplete = await sim_crowdfund.client.post(f"{base}/submit", headers=staff)
    assert (incomplete.status_code, incomplete.json()["code"]) == (422, "project_incomplete")
    await add_reward(sim_crowdfund, staff, project_id)
    assert (await sim_crowdfund.client.post(f"{base}/submit", headers=staff)).status_code == 200
    # Staff cannot review their own project.
    self_review = await sim_crowdfund.client.post(f"{base}/approve", json={}, headers=staff)
    assert (self_review.status_code, self_review.json()["code"]) == (403, "role_required")
    no_reason = await sim_crowdfund.client.post(f"{base}/reject", json={}, headers=admin)
    assert no_reason.status_code == 422
    rejected = await sim_crowdfund.client.post(
        f"{base}/reject", json={"reason": "Show the certification"}, headers=admin
    )
    assert rejected.json()["status"] == "rejected"
    assert rejected.json()["review_reason"] == "Show the certification"
    again = await sim_crowdfund.client.post(f"{base}/approve", json={}, headers=admin)
    assert (again.status_code, again.json()["code"]) == (409, "project_state_conflict")
    edited = await sim_crowdfund.client.put(
        base, json={**_terms(), "risks": "Certified by CQC."}, headers=staff
    )
    assert edited.status_code == 200, edited.text
    assert (await sim_crowdfund.client.post(f"{base}/submit", headers=staff)).status_code == 200
    approved = await sim_crowdfund.client.post(
        f"{base}/approve", json={"platform_fee_bps": 300}, headers=admin
    )
    assert approved.status_code == 200, approved.text
    assert (approved.json()["status"], approved.json()["platform_fee_bps"]) == ("live", 300)


def _terms(**overrides: Any) -> dict[str, Any]:
    body = project_body(**overrides)
    body.pop("currency")
    return body


async def test_an_approved_project_goes_live_at_its_launch_time(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    launch = NOW + timedelta(hours=2)
    project_id, staff = await draft_project(
        sim_crowdfund,
        auth,
        launch_at=launch.isoformat(),
        deadline_at=(launch + timedelta(days=5)).isoformat(),
    )
    await add_reward(sim_crowdfund, staff, project_id)
    await sim_crowdfund.client.post(f"/v1/projects/{project_id}/submit", headers=staff)
    approved = await sim_crowdfund.client.post(
        f"/v1/projects/{project_id}/approve", json={}, headers=auth("admin")
    )
    assert approved.json()["status"] == "approved"
    assert approved.json()["platform_fee_bps"] == 500  # the platform's rate of the day
    jobs = sim_crowdfund.app.state.tables.scheduled_job
    async with sim_crowdfund.app.state.sessionmaker() as session, session.begin():
        await session.execute(
            jobs.update()
            .where(jobs.c.kind == "project.launch", jobs.c.key == project_id)
            .values(run_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    runner = JobRunner(
        sessionmaker=sim_crowdfund.app.state.sessionmaker,
        tables=sim_crowdfund.app.state.tables,
        handlers=sim_crowdfund.app.state.job_handlers,
    )
    assert await runner.run_due() >= 1
    project = await get_json(sim_crowdfund, f"/v1/projects/{project_id}", staff)
    assert project["status"] == "live"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("goal", 2_000_000),
        ("funding_model", "flexible"),
        ("deadline_at", "+20d"),
    ],
)
async def test_once_live_the_goal_deadline_and_funding_model_cannot_change(
    sim_crowdfund: PaymentsApp, auth: TokenFactory, field: str, value: Any
) -> None:
    project_id, staff, _ = await live_project(sim_crowdfund, auth)
    current = await get_json(sim_crowdfund, f"/v1/projects/{project_id}", staff)
    terms = {k: current[k] for k in _terms()}
    if value == "+20d":
        value = (NOW + timedelta(days=20)).isoformat()
    response = await sim_crowdfund.client.put(
        f"/v1/projects/{project_id}", json={**terms, field: value}, headers=staff
    )
    assert response.status_code == 422, response.text
    assert (response.json()["code"], response.json()["field"]) == ("project_terms_locked", field)
    after = await get_json(sim_crowdfund, f"/v1/projects/{project_id}", staff)
    assert after[field] == current[field]
    # The story is the creator's to tell.
    told = await sim_crowdfund.client.put(
        f"/v1/projects/{project_id}", json={**terms, "story": "Chapter two."}, headers=staff
    )
    assert told.status_code == 200, told.text
    assert told.json()["story"] == "Chapter two."


async def test_another_merchants_staff_see_nothing_and_change_nothing(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, staff, (reward_id,) = await live_project(sim_crowdfund, auth)
    other = auth("staff", merchant_id=new_merchant())
    base = f"/v1/projects/{project_id}"
    for response in (
        await sim_crowdfund.client.get(base, headers=other),
        await sim_crowdfund.client.put(base, json=_terms(), headers=other),
        await sim_crowdfund.client.post(f"{base}/rewards", json=tier_body(), headers=other),
        await sim_crowdfund.client.put(
            f"{base}/rewards/{reward_id}", json=tier_body(amount=1), headers=other
        ),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "project_not_found"
    assert (await get_json(sim_crowdfund, "/v1/projects", other))["items"] == []
    mine = await get_json(sim_crowdfund, "/v1/projects", staff)
    assert [p["id"] for p in mine["items"]] == [project_id]
    assert mine["items"][0]["rewards"][0]["amount"] == 9900
    # A customer is no staff at all; nobody without a token gets in.
    assert (await sim_crowdfund.client.get(base, headers=auth("customer"))).status_code == 403
    assert (await sim_crowdfund.client.get(base)).status_code == 401


async def test_the_public_page_needs_no_login_and_never_shows_the_internal_target(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    draft_id, _ = await draft_project(sim_crowdfund, auth)
    hidden = await sim_crowdfund.client.get(f"/v1/projects/{draft_id}/public")
    assert (hidden.status_code, hidden.json()["code"]) == (404, "project_not_found")
    project_id, staff, _ = await live_project(
        sim_crowdfund, auth, rewards=[{"quantity_limit": 50}, {"kind": "addon", "amount": 1500}]
    )
    await sim_crowdfund.client.post(
        f"/v1/projects/{project_id}/stretch-goals",
        json={"threshold": 2_000_000, "title": "Night mode", "unlocks": "A quiet fan"},
        headers=staff,
    )
    page = await get_json(sim_crowdfund, f"/v1/projects/{project_id}/public")
    assert "internal_target" not in page
    assert "500000" not in str(page)
    assert (page["raised"], page["goal"], page["percent_bps"], page["backers"]) == (
        0,
        1_000_000,
        0,
        0,
    )
    assert 9 * 86400 < page["seconds_left"] <= 10 * 86400
    tier, addon = page["rewards"]
    assert (tier["kind"], tier["places_left"], addon["kind"]) == ("tier", 50, "addon")
    assert [(g["title"], g["unlocked"]) for g in page["stretch_goals"]] == [("Night mode", False)]


async def test_stretch_goals_sit_above_the_goal_and_do_not_repeat(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, staff, _ = await live_project(sim_crowdfund, auth)
    path = f"/v1/projects/{project_id}/stretch-goals"
    for threshold in (1_000_000, 500):
        low = await sim_crowdfund.client.post(
            path, json={"threshold": threshold, "title": "x"}, headers=staff
        )
        assert (low.status_code, low.json()["code"]) == (422, "stretch_goal_invalid")
    first = await sim_crowdfund.client.post(
        path, json={"threshold": 1_500_000, "title": "x"}, headers=staff
    )
    assert first.status_code == 201
    twice = await sim_crowdfund.client.post(
        path, json={"threshold": 1_500_000, "title": "y"}, headers=staff
    )
    assert twice.json()["code"] == "stretch_goal_invalid"
    assert (
        await outbox_payloads(sim_crowdfund, "project.stretch_goal_unlocked", project_id=project_id)
        == []
    )


async def test_the_kill_switch_is_for_admins(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, staff, _ = await live_project(sim_crowdfund, auth)
    base = f"/v1/projects/{project_id}"
    refused = await sim_crowdfund.client.post(f"{base}/suspend", headers=staff)
    assert (refused.status_code, refused.json()["code"]) == (403, "role_required")
    admin = auth("admin")
    suspended = await sim_crowdfund.client.post(f"{base}/suspend", headers=admin)
    assert suspended.json()["suspended"] is True
    page = await get_json(sim_crowdfund, f"{base}/public")
    assert (page["status"], page["suspended"]) == ("live", True)
    resumed = await sim_crowdfund.client.post(f"{base}/resume", headers=admin)
    assert resumed.json()["suspended"] is False
    draft_id, _ = await draft_project(sim_crowdfund, auth)
    wrong = await sim_crowdfund.client.post(f"/v1/projects/{draft_id}/suspend", headers=admin)
    assert (wrong.status_code, wrong.json()["code"]) == (409, "project_state_conflict")


async def test_a_reward_ending_before_it_starts_is_refused(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, staff = await draft_project(sim_crowdfund, auth)
    response = await sim_crowdfund.client.post(
        f"/v1/projects/{project_id}/rewards",
        json=tier_body(
            starts_at=(NOW + timedelta(days=2)).isoformat(),
            ends_at=(NOW + timedelta(days=1)).isoformat(),
        ),
        headers=staff,
    )
    assert (response.status_code, response.json()["code"]) == (422, "reward_schedule_invalid")
    bad_region = await sim_crowdfund.client.post(
        f"/v1/projects/{project_id}/rewards",
        json=tier_body(shipping_fees={"china": 0}),
        headers=staff,
    )
    assert (bad_region.status_code, bad_region.json()["code"]) == (422, "validation_error")
