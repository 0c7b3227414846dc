"""Updates, staff progress by day and by channel, and the backers CSV on real PostgreSQL."""

from __future__ import annotations

import csv
import io

from tests.conftest import TokenFactory
from tests.crowdfund.project_support import (
    draft_project,
    get_json,
    live_project,
    outbox_payloads,
    place_pledge,
)
from tests.shared.payments.support import PaymentsApp, new_merchant


async def test_updates_public_for_all_backers_only_for_backers_an_event_each(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, staff, (tier,) = await live_project(sim_crowdfund, auth)
    path = f"/v1/projects/{project_id}/updates"
    for title, visibility in (("Factory visit", "public"), ("Your survey", "backers")):
        posted = await sim_crowdfund.client.post(
            path, json={"title": title, "body": "Hello\nbackers", "visibility": visibility},
            headers=staff,
        )  # fmt: skip
        assert posted.status_code == 201, posted.text
    backer = auth("customer")
    await place_pledge(sim_crowdfund, backer, project_id, tier)
    anyone = await get_json(sim_crowdfund, path)
    assert [u["title"] for u in anyone["items"]] == ["Factory visit"]
    stranger = await get_json(sim_crowdfund, path, auth("customer"))
    assert [u["title"] for u in stranger["items"]] == ["Factory visit"]
    mine = await get_json(sim_crowdfund, path, backer)
    assert [u["title"] for u in mine["items"]] == ["Your survey", "Factory visit"]
    assert len((await get_json(sim_crowdfund, path, staff))["items"]) == 2
    events = await outbox_payloads(sim_crowdfund, "project.update_posted", project_id=project_id)
    assert [(e["title"], e["visibility"]) for e in events] == [
        ("Factory visit", "public"),
        ("Your survey", "backers"),
    ]
    other = auth("staff", merchant_id=new_merchant())
    refused = await sim_crowdfund.client.post(path, json={"title": "x", "body": "y"}, headers=other)
    assert (refused.status_code, refused.json()["code"]) == (404, "project_not_found")
    draft_id, draft_staff = await draft_project(sim_crowdfund, auth)
    early = await sim_crowdfund.client.post(
        f"/v1/projects/{draft_id}/updates", json={"title": "x", "body": "y"}, headers=draft_staff
    )
    assert (early.status_code, early.json()["code"]) == (409, "project_state_conflict")


async def test_staff_progress_by_day_and_channel_and_the_backers_csv(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, staff, (tier, addon) = await live_project(
        sim_crowdfund,
        auth,
        rewards=[
            {},
            {"kind": "addon", "title": "=Spare filter", "amount": 1500, "shipping_fees": None},
        ],
    )
    for code, source, amount in (("DAD1", "wechat_group", 9900), ("DAD1", "poster", 12000)):
        await place_pledge(
            sim_crowdfund, auth("customer"), project_id, tier, referral_code=code,
            source=source, amount=amount,
        )  # fmt: skip
    placed = await place_pledge(
        sim_crowdfund, auth("customer"), project_id, tier, region="HK", amount=13400,
        addons=[{"reward_id": addon, "quantity": 1}],
    )  # fmt: skip
    assert placed.status_code == 201, placed.text
    stats = await get_json(sim_crowdfund, f"/v1/projects/{project_id}/stats", staff)
    assert (stats["pledged_amount"], stats["backers"], stats["internal_target"]) == (
        35300,
        3,
        500_000,
    )
    assert stats["by_status"] == {"confirmed": {"pledges": 3, "amount": 35300}}
    (today,) = stats["daily"]
    assert (today["pledges"], today["amount"]) == (3, 35300)
    assert [(c["referral_code"], c["source"], c["amount"]) for c in stats["channels"]] == [
        (None, None, 13400),
        ("DAD1", "poster", 12000),
        ("DAD1", "wechat_group", 9900),
    ]
    bad_tz = await sim_crowdfund.client.get(
        f"/v1/projects/{project_id}/stats?tz=Mars/Base", headers=staff
    )
    assert (bad_tz.status_code, bad_tz.json()["code"]) == (422, "unknown_timezone")
    exported = await sim_crowdfund.client.get(
        f"/v1/projects/{project_id}/backers.csv", headers=staff
    )
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(rows) == 3
    shipped = next(r for r in rows if r["region"] == "HK")
    assert (shipped["add_ons"], shipped["shipping_fee"], shipped["delivery_month"]) == (
        "'=Spare filter x1",
        "2000",
        "2027-06",
    )
    assert shipped["reward"] == "Early bird purifier"
    other = auth("staff", merchant_id=new_merchant())
    hidden = await sim_crowdfund.client.get(f"/v1/projects/{project_id}/backers.csv", headers=other)
    assert hidden.status_code == 404
