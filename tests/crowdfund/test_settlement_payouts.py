"""The creator's payout by Connect transfer, on real PostgreSQL: the statement's payout
transferred once to the project's payout account, reconciling to the fen; a refused transfer
and a new attempt; what may not be paid.

Stripe runs through the real SDK against localstripe with Connect's transfer routes added
(``qunbuy.localstripe_connect``): that part is our stand-in, as localstripe has no
``/v1/transfers`` and no local Stripe Connect exists. It honours idempotency keys, so the
transfers counted there are what Stripe would have paid.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import stripe

from services.crowdfund.settlements.service import PAYOUT_JOB, payout_reference
from shared.payments import (
    FAILING_PAYOUT_ACCOUNT,
    FAILING_PAYOUT_CODE,
    REVERSING_PAYOUT_ACCOUNT,
    PayoutChange,
)
from shared.payments._provider import transfer_from_object
from shared.scheduler import Job
from tests.conftest import TokenFactory
from tests.crowdfund.project_support import (
    get_json,
    live_project,
    make_due,
    place_pledge,
    run_jobs,
)
from tests.shared.payments.support import PaymentsApp, new_merchant

ACCOUNT = "acct_1CreatorGetsPaid"


def fee(amount: int) -> int:
    """The payment fee booked per charge: 0.6 % (PAYMENT_FEE_BPS=60), half up to the fen."""
    return (amount * 60 + 5000) // 10000


async def settled(
    app: PaymentsApp,
    auth: TokenFactory,
    *,
    account: str | None,
    staff: dict[str, str] | None = None,
    amounts: tuple[int, ...] = (9900, 12345),
    tier_amount: int = 9900,
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """A project backed by saved cards of ``amounts``, its payout account set by its staff,
    charged at the deadline and settled (the worker run until nothing is due)."""
    staff = staff or auth("staff", merchant_id=new_merchant())
    project_id, _, (tier,) = await live_project(
        app, auth, staff=staff, goal=tier_amount, rewards=[{"amount": tier_amount}]
    )
    if account is not None:
        set_account = await app.client.put(
            f"/v1/projects/{project_id}/payout-account",
            json={"payout_account": account},
            headers=staff,
        )
        assert set_account.status_code == 200, set_account.text
        assert set_account.json()["payout_account"] == account
    for amount in amounts:
        placed = await place_pledge(app, auth("customer"), project_id, tier, amount=amount)
        assert placed.status_code == 201, placed.text
    await make_due(app, project_id, what="deadline")
    await run_jobs(app)
    await make_due(app, project_id, what="settle")
    await run_jobs(app)
    statement = await get_json(app, f"/v1/projects/{project_id}/settlement", staff)
    return project_id, staff, statement


async def transfers(sdk: stripe.StripeClient, settlement_id: str) -> list[dict[str, Any]]:
    group = payout_reference(uuid.UUID(settlement_id))
    listed = await sdk.v1.transfers.list_async({"transfer_group": group, "limit": 100})
    return [t.to_dict() for t in listed.data]


async def test_the_payout_is_transferred_once_and_reconciles_to_the_fen(
    stripe_crowdfund: PaymentsApp, auth: TokenFactory, localstripe_sdk: stripe.StripeClient
) -> None:
    app = stripe_crowdfund
    _, staff, statement = await settled(app, auth, account=ACCOUNT)
    collected = 9900 + 12345
    platform_fee = collected * 500 // 10000
    payout = collected - platform_fee - fee(9900) - fee(12345)
    assert (statement["collected"], statement["refunds"]) == (collected, 0)
    assert (statement["platform_fee"], statement["payment_fees"]) == (1112, 59 + 74)
    assert statement["payout"] == payout == 21_000
    assert (statement["status"], statement["payout_account"]) == ("paid", ACCOUNT)
    assert (statement["payout_attempt"], statement["paid_by"]) == (1, "system")
    (made,) = await transfers(localstripe_sdk, statement["id"])
    assert (made["amount"], made["currency"], made["destination"]) == (payout, "cny", ACCOUNT)
    assert statement["external_reference"] == made["id"]
    assert made["metadata"]["reference"] == payout_reference(uuid.UUID(statement["id"]))
    # The job again (a retry, another worker) pays nothing more.
    job = Job(
        id=0,
        kind=PAYOUT_JOB,
        key=f"{statement['id']}:1",
        run_at=datetime.now(UTC),
        payload={},
        attempts=1,
    )
    await app.app.state.settlements.run_payout(job)
    assert len(await transfers(localstripe_sdk, statement["id"])) == 1
    # A second payout, by transfer or by hand, is refused.
    admin = auth("admin")
    for path, body in (("payout", None), ("paid", {"external_reference": "ICBC-1"})):
        again = await app.client.post(
            f"/v1/projects/settlements/{statement['id']}/{path}", json=body, headers=admin
        )
        assert (again.status_code, again.json()["code"]) == (409, "settlement_state_conflict")
    assert len(await transfers(localstripe_sdk, statement["id"])) == 1
    shown = (await app.client.get("/v1/projects/settlements", headers=staff)).json()["items"]
    assert [s["status"] for s in shown] == ["paid"]


async def test_a_refused_transfer_fails_and_an_admin_starts_another(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    app = sim_crowdfund
    project_id, staff, statement = await settled(
        app, auth, account=FAILING_PAYOUT_ACCOUNT, amounts=(9900,)
    )
    assert statement["status"] == "failed"
    assert FAILING_PAYOUT_CODE in statement["failure_reason"]
    assert statement["external_reference"] is None
    payout_path = f"/v1/projects/settlements/{statement['id']}/payout"
    by_staff = await app.client.post(payout_path, headers=staff)
    assert (by_staff.status_code, by_staff.json()["code"]) == (403, "role_required")
    await app.client.put(
        f"/v1/projects/{project_id}/payout-account",
        json={"payout_account": ACCOUNT},
        headers=staff,
    )
    started = await app.client.post(payout_path, headers=auth("admin"))
    assert started.status_code == 200, started.text
    assert (started.json()["status"], started.json()["payout_attempt"]) == ("paying", 2)
    await run_jobs(app)
    paid = await get_json(app, f"/v1/projects/{project_id}/settlement", staff)
    assert paid["status"] == "paid"
    assert paid["external_reference"].startswith("tr_sim_")
    assert paid["failure_reason"] is None
    transfers_made = await app.provider_transfers(reference=payout_reference(uuid.UUID(paid["id"])))
    assert [t["amount"] for t in transfers_made] == [paid["payout"]]


async def test_without_a_payout_account_the_admin_pays_outside(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    app = sim_crowdfund
    _, _, statement = await settled(app, auth, account=None, amounts=(9900,))
    assert (statement["status"], statement["payout_account"]) == ("pending", None)
    admin = auth("admin")
    missing = await app.client.post(
        f"/v1/projects/settlements/{statement['id']}/payout", headers=admin
    )
    assert (missing.status_code, missing.json()["code"]) == (
        409,
        "settlement_payout_account_missing",
    )
    paid = await app.client.post(
        f"/v1/projects/settlements/{statement['id']}/paid",
        json={"external_reference": "ICBC-20270101-0042"},
        headers=admin,
    )
    assert (paid.json()["status"], paid.json()["external_reference"]) == (
        "paid",
        "ICBC-20270101-0042",
    )
    assert (
        await app.provider_transfers(reference=payout_reference(uuid.UUID(statement["id"]))) == []
    )


async def test_an_owed_statement_never_pays_out(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    app = sim_crowdfund
    staff = auth("staff", merchant_id=new_merchant())
    _, _, first = await settled(app, auth, account=None, staff=staff, amounts=(9900,))
    paid = await app.client.post(
        f"/v1/projects/settlements/{first['id']}/paid",
        json={"external_reference": "ICBC-1"},
        headers=auth("admin"),
    )
    assert paid.status_code == 200, paid.text
    (pledge,) = (await get_json(app, "/v1/pledges?limit=100", staff))["items"][:1]
    refund = await app.post(f"/v1/pledges/{pledge['id']}/refunds", {"amount": 9900}, staff)
    assert refund.status_code == 200, refund.text
    await run_jobs(app)
    # The creator's next project collects less than the refund it carries: it owes.
    project_id, _, owed = await settled(
        app, auth, account=ACCOUNT, staff=staff, amounts=(1000,), tier_amount=1000
    )
    assert owed["payout"] < 0
    assert (owed["status"], owed["payout_account"]) == ("owed", None)
    admin = auth("admin")
    for path, body in (("payout", None), ("paid", {"external_reference": "ICBC-2"})):
        refused = await app.client.post(
            f"/v1/projects/settlements/{owed['id']}/{path}", json=body, headers=admin
        )
        assert (refused.status_code, refused.json()["code"]) == (409, "settlement_owed")
        assert refused.headers["content-type"].startswith("application/problem+json")
    assert await app.provider_transfers(reference=payout_reference(uuid.UUID(owed["id"]))) == []
    assert (await get_json(app, f"/v1/projects/{project_id}/settlement", staff))["status"] == "owed"


async def test_a_payout_account_of_the_wrong_shape_is_refused(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    app = sim_crowdfund
    project_id, staff, _ = await live_project(app, auth)
    for value in ("acct_", "acct_12345", "ba_1CreatorGetsPaid", "acct_1Creator\x00Paid", 42):
        answer = await app.client.put(
            f"/v1/projects/{project_id}/payout-account",
            json={"payout_account": value},
            headers=staff,
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["code"] in ("payout_account_invalid", "validation_error")
    shape = await app.client.put(
        f"/v1/projects/{project_id}/payout-account",
        json={"payout_account": "acct_1Creator-GetsPaid"},
        headers=staff,
    )
    assert (shape.status_code, shape.json()["code"]) == (422, "payout_account_invalid")
    other = auth("staff", merchant_id=new_merchant())
    elsewhere = await app.client.put(
        f"/v1/projects/{project_id}/payout-account",
        json={"payout_account": ACCOUNT},
        headers=other,
    )
    assert (elsewhere.status_code, elsewhere.json()["code"]) == (404, "project_not_found")


async def test_a_reversed_transfer_makes_the_statement_failed_again(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    app = sim_crowdfund
    # The simulated provider makes the transfer, then reverses it (transfer.reversed), and
    # the worker delivers the event to the webhook endpoint.
    _, _staff, statement = await settled(
        app, auth, account=REVERSING_PAYOUT_ACCOUNT, amounts=(9900,)
    )
    assert statement["status"] == "failed"
    assert "transfer_reversed" in statement["failure_reason"]
    assert statement["external_reference"].startswith("tr_sim_")
    assert statement["paid_at"] is None
    (made,) = await app.provider_transfers(reference=payout_reference(uuid.UUID(statement["id"])))
    assert made["reversed"] is True
    assert made["amount_reversed"] == statement["payout"]


async def test_a_late_reversal_of_an_earlier_attempt_leaves_the_new_one_to_pay(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    """Attempt 1 is reversed (the statement fails), an admin starts attempt 2 to a good
    account, and attempt 1's reversal arrives again (a webhook delivery retried late): the
    new attempt stays ``paying`` and is paid once, by its own transfer."""
    app = sim_crowdfund
    project_id, staff, statement = await settled(
        app, auth, account=REVERSING_PAYOUT_ACCOUNT, amounts=(9900,)
    )
    assert statement["status"] == "failed"
    reference = payout_reference(uuid.UUID(statement["id"]))
    (first,) = await app.provider_transfers(reference=reference)
    account = await app.client.put(
        f"/v1/projects/{project_id}/payout-account",
        json={"payout_account": ACCOUNT},
        headers=staff,
    )
    assert account.status_code == 200, account.text
    started = await app.client.post(
        f"/v1/projects/settlements/{statement['id']}/payout", headers=auth("admin")
    )
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "paying"

    late = PayoutChange("reversed", reference, transfer_from_object(first))
    async with app.app.state.sessionmaker() as session, session.begin():
        await app.app.state.settlements.on_payout_change(session, late)
    still = await get_json(app, f"/v1/projects/{project_id}/settlement", staff)
    assert still["status"] == "paying"

    await run_jobs(app)
    paid = await get_json(app, f"/v1/projects/{project_id}/settlement", staff)
    made = await app.provider_transfers(reference=reference)
    second = [t for t in made if t["id"] != first["id"]]
    assert len(made) == 2
    assert len(second) == 1
    assert (paid["status"], paid["external_reference"]) == ("paid", second[0]["id"])
    assert second[0]["amount"] == paid["payout"]
    assert second[0]["reversed"] is False


async def test_a_transfer_reversed_in_part_is_recorded_and_the_statement_stays_paid(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    """Reversed in part (1000, then 2500 in all; the news late and twice): the statement stays
    paid and records what was taken back, never less than it knew; reversed in full it fails,
    and an admin's new attempt starts with nothing taken back."""
    app = sim_crowdfund
    project_id, staff, statement = await settled(app, auth, account=ACCOUNT, amounts=(9900,))
    assert (statement["status"], statement["reversed_amount"]) == ("paid", 0)
    reference = payout_reference(uuid.UUID(statement["id"]))
    (made,) = await app.provider_transfers(reference=reference)

    async def news(amount_reversed: int) -> dict[str, Any]:
        transfer = {**made, "amount_reversed": amount_reversed}
        transfer["reversed"] = amount_reversed == made["amount"]
        change = PayoutChange("reversed", reference, transfer_from_object(transfer))
        async with app.app.state.sessionmaker() as session, session.begin():
            await app.app.state.settlements.on_payout_change(session, change)
        found: dict[str, Any] = await get_json(app, f"/v1/projects/{project_id}/settlement", staff)
        return found

    seen = [(await news(total))["reversed_amount"] for total in (1000, 2500, 1000, 2500)]
    assert seen == [1000, 2500, 2500, 2500]
    now = await get_json(app, f"/v1/projects/{project_id}/settlement", staff)
    assert (now["status"], now["external_reference"]) == ("paid", made["id"])
    failed = await news(made["amount"])
    assert (failed["status"], failed["reversed_amount"]) == ("failed", failed["payout"])
    assert "transfer_reversed" in failed["failure_reason"]
    by_hand = await app.client.post(
        f"/v1/projects/settlements/{statement['id']}/paid",
        json={"external_reference": "BANK-REPAID-1"},
        headers=auth("admin"),
    )
    assert by_hand.status_code == 200, by_hand.text
    assert (by_hand.json()["status"], by_hand.json()["reversed_amount"]) == ("paid", 0)


async def test_a_part_reversed_while_a_new_attempt_is_paying_stays_recorded_when_paid(
    sim_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    """Attempt 1 reversed in full; attempt 2 starts with nothing taken back, hears of a part
    taken back from its transfer before the job records it, and keeps that figure when the
    job does; a notice about attempt 1 changes nothing."""
    app = sim_crowdfund
    project_id, staff, statement = await settled(
        app, auth, account=REVERSING_PAYOUT_ACCOUNT, amounts=(9900,)
    )
    assert (statement["status"], statement["reversed_amount"]) == ("failed", statement["payout"])
    reference = payout_reference(uuid.UUID(statement["id"]))
    (first,) = await app.provider_transfers(reference=reference)
    await app.client.put(
        f"/v1/projects/{project_id}/payout-account",
        json={"payout_account": ACCOUNT},
        headers=staff,
    )
    started = await app.client.post(
        f"/v1/projects/settlements/{statement['id']}/payout", headers=auth("admin")
    )
    assert (started.json()["status"], started.json()["reversed_amount"]) == ("paying", 0)

    async def notice(attempt: str, amount_reversed: int) -> None:
        transfer = {
            **first,
            "id": f"tr_attempt_{attempt}",
            "metadata": {**first["metadata"], "qunbuy_attempt": attempt},
            "amount_reversed": amount_reversed,
            "reversed": False,
        }
        change = PayoutChange("reversed", reference, transfer_from_object(transfer))
        async with app.app.state.sessionmaker() as session, session.begin():
            await app.app.state.settlements.on_payout_change(session, change)

    await notice("1", 700)  # an earlier attempt's transfer: not this one's
    await notice("2", 1200)
    paying = await get_json(app, f"/v1/projects/{project_id}/settlement", staff)
    assert (paying["status"], paying["reversed_amount"]) == ("paying", 1200)
    await run_jobs(app)
    paid = await get_json(app, f"/v1/projects/{project_id}/settlement", staff)
    assert (paid["status"], paid["reversed_amount"]) == ("paid", 1200)
