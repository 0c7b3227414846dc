"""Programs and distributors: joining, approval, suspension, KYC, who sees what."""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import TokenFactory
from tests.referrals.commission_support import Program, pay


async def test_applications_wait_for_approval_and_kyc_is_recorded(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    await program.rules(enrollment="approval")
    applied = await program.join(f"u_{uuid.uuid4().hex[:8]}")
    assert applied["status"] == "pending"
    again = await referrals_client.post(
        "/v1/distributors",
        json={"merchant_id": program.merchant_id, "real_name": "Li", "phone": "13800000000"},
        headers=auth("customer", sub=applied["user_id"]),
    )
    assert (again.status_code, again.json()["code"]) == (409, "distributor_exists")
    pending = await referrals_client.get(
        "/v1/distributors", params={"status": "pending"}, headers=program.staff
    )
    assert [d["id"] for d in pending.json()["items"]] == [applied["id"]]
    approved = await referrals_client.post(
        f"/v1/distributors/{applied['id']}/approve", headers=program.staff
    )
    assert approved.json()["status"] == "active"
    twice = await referrals_client.post(
        f"/v1/distributors/{applied['id']}/approve", headers=program.staff
    )
    assert twice.json()["code"] == "distributor_state_conflict"
    verified = await referrals_client.post(
        f"/v1/distributors/{applied['id']}/verify", headers=program.staff
    )
    assert verified.json()["kyc_verified"] is True
    assert verified.json()["kyc_verified_by"] is not None


async def test_invitation_codes_must_be_an_active_distributors_of_the_same_merchant(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program, other = Program(referrals_client, auth), Program(referrals_client, auth)
    await program.rules()
    await other.rules()
    stranger = await other.join(f"u_{uuid.uuid4().hex[:8]}")
    for code in (stranger["code"], "NOSUCH22"):
        refused = await referrals_client.post(
            "/v1/distributors",
            json={
                "merchant_id": program.merchant_id,
                "real_name": "Han Meimei",
                "phone": "13900000000",
                "via_code": code,
            },
            headers=auth("customer"),
        )
        assert (refused.status_code, refused.json()["code"]) == (422, "invite_code_invalid")


async def test_staff_add_employees_and_see_only_their_merchants_distributors(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program, other = Program(referrals_client, auth), Program(referrals_client, auth)
    await program.rules()
    added = await referrals_client.post(
        "/v1/distributors/direct",
        json={"user_id": "employee-1", "real_name": "Wang", "phone": "13700000000"},
        headers=program.staff,
    )
    assert added.status_code == 201, added.text
    assert added.json()["status"] == "active"
    distributor_id = added.json()["id"]
    assert (
        await referrals_client.get(f"/v1/distributors/{distributor_id}", headers=other.staff)
    ).status_code == 404
    assert (
        await referrals_client.get(f"/v1/distributors/{distributor_id}", headers=auth("customer"))
    ).status_code == 404
    mine = await referrals_client.get(
        f"/v1/distributors/{distributor_id}", headers=auth("customer", sub="employee-1")
    )
    assert mine.status_code == 200
    suspended = await referrals_client.post(
        f"/v1/distributors/{distributor_id}/suspend", headers=other.staff
    )
    assert suspended.status_code == 404
    no_program = await referrals_client.post(
        "/v1/distributors",
        json={"merchant_id": "m_none", "real_name": "Li", "phone": "13800000000"},
        headers=auth("customer"),
    )
    assert (no_program.status_code, no_program.json()["code"]) == (404, "program_not_found")


async def test_a_campaigns_own_rates_apply_to_its_orders_under_the_programs_cap(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    await program.rules(level1_bps=1000, level2_bps=500, max_total_bps=2000)
    campaign = str(uuid.UUID(int=1))  # the campaign id Order events carry
    over = await referrals_client.put(
        f"/v1/commission-rules/overrides/presale/{campaign}",
        json={"level1_bps": 1800, "level2_bps": 300},
        headers=program.staff,
    )
    assert (over.status_code, over.json()["code"]) == (422, "commission_rates_over_cap")
    put = await referrals_client.put(
        f"/v1/commission-rules/overrides/presale/{campaign}",
        json={"level1_bps": 1500, "level2_bps": 200},
        headers=program.staff,
    )
    assert put.status_code == 200, put.text
    upline = await program.join(f"u_{uuid.uuid4().hex[:8]}")
    seller = await program.join(f"u_{uuid.uuid4().hex[:8]}", via=upline["code"])
    await pay(referrals_client, program, "buyer-o", seller["code"], 10000)
    assert (await program.balances(seller["id"]))["pending"] == 1500
    assert (await program.balances(upline["id"]))["pending"] == 200
    lowered = await program.rules(level1_bps=1000, level2_bps=500, max_total_bps=1500)
    assert lowered.json()["code"] == "commission_rates_over_cap"  # the override would exceed it
    other = auth("staff", merchant_id=f"m_{uuid.uuid4().hex[:8]}")
    for method in ("GET", "DELETE"):
        path = (
            "/v1/commission-rules/overrides"
            if method == "GET"
            else f"/v1/commission-rules/overrides/presale/{campaign}"
        )
        sneaky = await referrals_client.request(
            method, path, params={"merchant_id": program.merchant_id}, headers=other
        )
        assert sneaky.status_code == 403, (method, sneaky.text)
    listed = await referrals_client.get("/v1/commission-rules/overrides", headers=program.staff)
    assert [(o["target_id"], o["level1_bps"]) for o in listed.json()] == [(campaign, 1500)]
    gone = await referrals_client.delete(
        f"/v1/commission-rules/overrides/presale/{campaign}", headers=program.staff
    )
    assert gone.status_code == 204
    await pay(referrals_client, program, "buyer-p", seller["code"], 10000)
    assert (await program.balances(seller["id"]))["pending"] == 1500 + 1000
