"""Withdrawals: KYC, the minimum, what is available, the fee, take-backs, no overdraft."""

from __future__ import annotations

import asyncio

import httpx

from shared.events.contracts import OrderCompleted, OrderPaid, OrderRefunded
from tests.conftest import TokenFactory
from tests.referrals.commission_support import Order, Program, deliver, earner, withdraw


async def test_a_withdrawal_needs_kyc_and_stays_between_the_minimum_and_what_is_available(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    seller, me, _ = await earner(program, referrals_client, 20000)  # 2000 available
    unverified = await withdraw(referrals_client, me, seller["id"], 1000)
    assert (unverified.status_code, unverified.json()["code"]) == (409, "withdrawal_kyc_required")
    await referrals_client.post(f"/v1/distributors/{seller['id']}/verify", headers=program.staff)
    small = await withdraw(referrals_client, me, seller["id"], 99)
    assert (small.status_code, small.json()["code"]) == (422, "withdrawal_below_minimum")
    big = await withdraw(referrals_client, me, seller["id"], 1951)  # 2000 - 50 fee = 1950
    assert (big.status_code, big.json()["code"]) == (422, "withdrawal_above_available")
    assert big.json()["most"] == 1950
    someone_else = await withdraw(referrals_client, auth("customer"), seller["id"], 100)
    assert someone_else.status_code == 404
    assert (await program.balances(seller["id"]))["available"] == 2000


async def test_approved_and_paid_moves_the_money_and_a_rejection_returns_it(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    seller, me, _ = await earner(program, referrals_client, 20000)
    await referrals_client.post(f"/v1/distributors/{seller['id']}/verify", headers=program.staff)
    first = await withdraw(referrals_client, me, seller["id"], 1000)
    assert first.status_code == 201, first.text
    assert (await program.balances(seller["id"]))["withdrawing"] == 1050
    wid = first.json()["id"]
    early = await referrals_client.post(
        f"/v1/withdrawals/{wid}/paid", json={"external_reference": "WX1"}, headers=program.staff
    )
    assert early.json()["code"] == "withdrawal_state_conflict"
    await referrals_client.post(f"/v1/withdrawals/{wid}/approve", headers=program.staff)
    paid = await referrals_client.post(
        f"/v1/withdrawals/{wid}/paid", json={"external_reference": "WX1"}, headers=program.staff
    )
    assert paid.json()["status"] == "paid"
    assert await program.balances(seller["id"]) == {
        "pending": 0,
        "available": 950,
        "withdrawing": 0,
        "withdrawn": 1000,
        "owed": 0,
    }
    second = await withdraw(referrals_client, me, seller["id"], 500)
    rejected = await referrals_client.post(
        f"/v1/withdrawals/{second.json()['id']}/reject",
        json={"reason": "name mismatch"},
        headers=program.staff,
    )
    assert rejected.json()["status"] == "rejected"
    assert (await program.balances(seller["id"]))["available"] == 950


async def test_a_refund_after_withdrawal_is_owed_and_taken_from_the_next_withdrawal(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    seller, me, order = await earner(program, referrals_client, 20000)  # 2000 available
    await referrals_client.post(f"/v1/distributors/{seller['id']}/verify", headers=program.staff)
    w = await withdraw(referrals_client, me, seller["id"], 1900)  # + 50 fee: 50 left
    await referrals_client.post(f"/v1/withdrawals/{w.json()['id']}/approve", headers=program.staff)
    await referrals_client.post(
        f"/v1/withdrawals/{w.json()['id']}/paid",
        json={"external_reference": "WX2"},
        headers=program.staff,
    )
    order.refunded = 10000  # half refunded: 1000 of commission comes back
    await deliver(referrals_client, order.event(OrderRefunded, amount=10000))
    held = await program.balances(seller["id"])
    assert (held["available"], held["owed"]) == (0, 950)
    # A new order earns 3000; the next withdrawal first settles the 950 owed.
    another = Order(program.merchant_id, "buyer-next", seller["code"])
    another.paid = 30000
    await deliver(
        referrals_client, another.event(OrderPaid, stage="full", amount=30000, fully_paid=True)
    )
    await deliver(referrals_client, another.event(OrderCompleted))
    too_much = await withdraw(referrals_client, me, seller["id"], 2001)  # 3000 - 950 - 50
    assert too_much.json()["most"] == 2000
    taken = await withdraw(referrals_client, me, seller["id"], 2000)
    assert taken.json()["taken_back"] == 950
    assert await program.balances(seller["id"]) == {
        "pending": 0,
        "available": 0,
        "withdrawing": 2050,
        "withdrawn": 1900,
        "owed": 0,
    }


async def test_concurrent_withdrawals_never_overdraw(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    seller, me, _ = await earner(program, referrals_client, 20000)  # 2000 available
    await referrals_client.post(f"/v1/distributors/{seller['id']}/verify", headers=program.staff)
    answers = await asyncio.gather(
        *(withdraw(referrals_client, me, seller["id"], 900) for _ in range(10))
    )
    assert [a.status_code for a in answers].count(201) == 2  # 2 x (900 + 50) <= 2000
    assert {a.json()["code"] for a in answers if a.status_code != 201} == {
        "withdrawal_above_available"
    }
    held = await program.balances(seller["id"])
    assert (held["available"], held["withdrawing"]) == (100, 1900)
