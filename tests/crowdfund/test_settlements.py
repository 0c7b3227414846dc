"""Fees and settlement on real PostgreSQL: a statement reconciling to the fen after the fix
window, the payout record, and a refund after settlement carried to the next statement."""

from __future__ import annotations

from typing import Any

from tests.conftest import TokenFactory
from tests.crowdfund.project_support import (
    get_json,
    live_project,
    make_due,
    place_pledge,
    run_jobs,
)
from tests.shared.payments.support import PaymentsApp, new_merchant


def fee(amount: int) -> int:
    """The payment fee booked per charge: 0.6 % (PAYMENT_FEE_BPS=60), half up to the fen."""
    return (amount * 60 + 5000) // 10000


async def _settlement(app: PaymentsApp, project_id: str, staff: dict[str, str]) -> Any:
    return await app.client.get(f"/v1/projects/{project_id}/settlement", headers=staff)


async def test_a_settlement_statement_reconciles_to_the_fen(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    staff = auth("staff", merchant_id=new_merchant())
    project_id, _, (tier,) = await live_project(sim_crowdfund, auth, staff=staff, goal=9900)
    cards = [
        (await place_pledge(sim_crowdfund, auth("customer"), project_id, tier)).json()
        for _ in range(3)
    ]
    wallet_backer = auth("customer")
    wallet = (
        await place_pledge(
            sim_crowdfund, wallet_backer, project_id, tier, amount=12345,
            method="wechat_pay", payment_method="pm_wechat_pay",
        )
    ).json()  # fmt: skip
    await sim_crowdfund.client.post(
        f"/v1/pledges/payments/{wallet['payment']['id']}/simulate-action",
        json={"succeed": True},
        headers=wallet_backer,
    )
    lowered = await sim_crowdfund.client.put(
        f"/v1/pledges/{wallet['id']}",
        json={"reward_id": tier, "amount": 11345, "region": "CN"},
        headers=wallet_backer,
    )
    assert lowered.status_code == 200, lowered.text
    await place_pledge(
        sim_crowdfund, auth("customer"), project_id, tier,
        payment_method="pm_card_chargeCustomerFail",
    )  # fmt: skip
    await make_due(sim_crowdfund, project_id, what="deadline")
    await run_jobs(sim_crowdfund)
    # One pledge is still in its fix window: the settlement waits for it.
    await make_due(sim_crowdfund, project_id, what="settle")
    await run_jobs(sim_crowdfund)
    waiting = await _settlement(sim_crowdfund, project_id, staff)
    assert (waiting.status_code, waiting.json()["code"]) == (404, "settlement_not_found")
    await make_due(sim_crowdfund, project_id, what="window")
    await run_jobs(sim_crowdfund)
    await make_due(sim_crowdfund, project_id, what="settle")
    await run_jobs(sim_crowdfund)
    response = await _settlement(sim_crowdfund, project_id, staff)
    assert response.status_code == 200, response.text
    statement = response.json()
    collected = 3 * 9900 + 12345
    refunds = 1000
    payment_fees = 3 * fee(9900) + fee(12345)
    platform_fee = (collected - refunds) * 500 // 10000
    assert (payment_fees, platform_fee) == (3 * 59 + 74, 2052)
    assert statement["collected"] == collected
    assert statement["refunds"] == refunds
    assert statement["payment_fees"] == payment_fees
    assert (statement["platform_fee_bps"], statement["platform_fee"]) == (500, platform_fee)
    assert statement["payout"] == collected - refunds - platform_fee - payment_fees == 38742
    assert (statement["pledges_collected"], statement["pledges_dropped"]) == (4, 1)
    assert statement["status"] == "pending"
    project = await get_json(sim_crowdfund, f"/v1/projects/{project_id}", staff)
    assert project["status"] == "settled"
    # The payout is made outside and recorded by a platform admin.
    paid_path = f"/v1/projects/settlements/{statement['id']}/paid"
    body = {"external_reference": "ICBC-20270101-0042"}
    refused = await sim_crowdfund.client.post(paid_path, json=body, headers=staff)
    assert (refused.status_code, refused.json()["code"]) == (403, "role_required")
    admin = auth("admin")
    paid = await sim_crowdfund.client.post(paid_path, json=body, headers=admin)
    assert paid.status_code == 200, paid.text
    assert (paid.json()["status"], paid.json()["external_reference"]) == (
        "paid",
        "ICBC-20270101-0042",
    )
    again = await sim_crowdfund.client.post(paid_path, json=body, headers=admin)
    assert (again.status_code, again.json()["code"]) == (409, "settlement_state_conflict")
    listed = await get_json(sim_crowdfund, "/v1/projects/settlements", staff)
    assert [s["id"] for s in listed["items"]] == [statement["id"]]
    other = auth("staff", merchant_id=new_merchant())
    assert (await get_json(sim_crowdfund, "/v1/projects/settlements", other))["items"] == []
    assert (await _settlement(sim_crowdfund, project_id, other)).status_code == 404

    # A refund after the settlement is deducted by the creator's next statement.
    refund = await sim_crowdfund.post(
        f"/v1/pledges/{cards[0]['id']}/refunds", {"amount": 2000}, staff
    )
    assert refund.status_code == 200, refund.text
    too_much = await sim_crowdfund.post(
        f"/v1/pledges/{cards[0]['id']}/refunds", {"amount": 9900}, staff
    )
    assert (too_much.status_code, too_much.json()["code"]) == (422, "pledge_refund_exceeds_paid")
    await run_jobs(sim_crowdfund)
    next_id, _, (next_tier,) = await live_project(sim_crowdfund, auth, staff=staff, goal=9900)
    await place_pledge(sim_crowdfund, auth("customer"), next_id, next_tier)
    await make_due(sim_crowdfund, next_id, what="deadline")
    await run_jobs(sim_crowdfund)
    await make_due(sim_crowdfund, next_id, what="settle")
    await run_jobs(sim_crowdfund)
    carried = (await _settlement(sim_crowdfund, next_id, staff)).json()
    assert (carried["collected"], carried["refunds"]) == (9900, 2000)
    assert carried["platform_fee"] == (9900 - 2000) * 500 // 10000 == 395
    assert carried["payout"] == 9900 - 2000 - 395 - fee(9900) == 7446
    first = (await _settlement(sim_crowdfund, project_id, staff)).json()
    assert first["refunds"] == 1000  # the first statement never changes


async def test_a_failed_project_is_never_settled(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    project_id, staff, (tier,) = await live_project(sim_crowdfund, auth)
    await place_pledge(sim_crowdfund, auth("customer"), project_id, tier)
    await make_due(sim_crowdfund, project_id, what="deadline")
    await run_jobs(sim_crowdfund)
    assert (await get_json(sim_crowdfund, f"/v1/projects/{project_id}", staff))["status"] == (
        "failed"
    )
    response = await _settlement(sim_crowdfund, project_id, staff)
    assert (response.status_code, response.json()["code"]) == (404, "settlement_not_found")
