"""The views: a distributor's dashboard, the leaderboard, the staff's program report."""

from __future__ import annotations

import uuid

import httpx

from shared.events.contracts import OrderCompleted, OrderRefunded
from tests.conftest import TokenFactory
from tests.referrals.commission_support import Program, deliver, pay


async def test_the_dashboard_shows_earnings_team_and_masked_customers_to_its_owner_only(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    await program.rules()
    user = f"u_{uuid.uuid4().hex[:8]}"
    seller = await program.join(user)
    member = await program.join(f"u_{uuid.uuid4().hex[:8]}", via=seller["code"])
    await pay(referrals_client, program, "customer-alpha", seller["code"], 10000)
    await pay(referrals_client, program, "customer-alpha", seller["code"], 5000)
    mine = await referrals_client.get(
        f"/v1/distributors/{seller['id']}/dashboard", headers=auth("customer", sub=user)
    )
    assert mine.status_code == 200, mine.text
    board = mine.json()
    assert board["balances"]["pending"] == 1500
    assert sum(d["earned"] for d in board["daily"]) == 1500
    assert [m["id"] for m in board["team"]] == [member["id"]]
    assert board["team"][0]["name"] == "L*"
    assert board["customers"] == [{"customer": "cu***ha", "orders": 2, "sales": 15000}]
    other = await referrals_client.get(
        f"/v1/distributors/{seller['id']}/dashboard",
        headers=auth("customer", sub=member["user_id"]),
    )
    assert other.status_code == 404
    bad_tz = await referrals_client.get(
        f"/v1/distributors/{seller['id']}/dashboard",
        params={"tz": "Mars/Olympus"},
        headers=auth("customer", sub=user),
    )
    assert (bad_tz.status_code, bad_tz.json()["code"]) == (422, "unknown_timezone")


async def test_the_leaderboard_ranks_by_commission_or_sales_for_the_programs_people(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    await program.rules(level2_bps=0)
    users = [f"u_{uuid.uuid4().hex[:8]}" for _ in range(3)]
    people = [await program.join(u) for u in users]
    for person, amount in zip(people, (5000, 20000, 10000), strict=True):
        await pay(referrals_client, program, f"c-{uuid.uuid4().hex[:6]}", person["code"], amount)
    ranked = await referrals_client.get(
        "/v1/distributors/leaderboard",
        params={"merchant_id": program.merchant_id, "by": "sales"},
        headers=auth("customer", sub=users[0]),
    )
    assert ranked.status_code == 200, ranked.text
    assert [(r["rank"], r["distributor_id"], r["value"]) for r in ranked.json()["ranks"]] == [
        (1, people[1]["id"], 20000),
        (2, people[2]["id"], 10000),
        (3, people[0]["id"], 5000),
    ]
    by_commission = await referrals_client.get(
        "/v1/distributors/leaderboard",
        params={"merchant_id": program.merchant_id, "by": "commission", "period": "day"},
        headers=program.staff,
    )
    assert [r["value"] for r in by_commission.json()["ranks"]] == [2000, 1000, 500]
    outsider = await referrals_client.get(
        "/v1/distributors/leaderboard",
        params={"merchant_id": program.merchant_id},
        headers=auth("customer"),
    )
    assert (outsider.status_code, outsider.json()["code"]) == (403, "not_in_program")


async def test_the_program_report_shows_cost_against_sales_queues_and_self_referrals(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    await program.rules(enrollment="approval", level2_bps=0)
    user = f"u_{uuid.uuid4().hex[:8]}"
    seller = await program.join(user)
    await referrals_client.post(f"/v1/distributors/{seller['id']}/approve", headers=program.staff)
    await program.join(f"u_{uuid.uuid4().hex[:8]}")  # a pending application
    await pay(referrals_client, program, "buyer-x", seller["code"], 30000)
    await pay(referrals_client, program, user, seller["code"], 9000)  # self-referral
    for _ in range(5):  # one payer, five orders through one distributor
        await pay(referrals_client, program, "farmer", seller["code"], 100)
    late = await pay(referrals_client, program, "returner", seller["code"], 1000)
    await deliver(referrals_client, late.event(OrderCompleted))
    late.refunded = 1000  # refunded once its commission was available
    await deliver(referrals_client, late.event(OrderRefunded, amount=1000))
    report = await referrals_client.get("/v1/commissions/report", headers=program.staff)
    assert report.status_code == 200, report.text
    body = report.json()
    assert body["pending_applications"] == 1
    assert body["pending_withdrawals"] == 0
    assert sum(d["gmv"] for d in body["daily"]) == 30000 + 500
    assert sum(d["commission"] for d in body["daily"]) == 3000 + 50
    assert [(f["kind"], f["customer"], f["orders"]) for f in body["flags"]] == [
        ("self_referral", user, None),
        ("repeat_payer", "farmer", 5),
        ("refund_after_completion", "returner", None),
    ]
    other = auth("staff", merchant_id=f"m_{uuid.uuid4().hex[:8]}")
    assert (
        await referrals_client.get(
            "/v1/commissions/report", params={"merchant_id": program.merchant_id}, headers=other
        )
    ).status_code == 403
