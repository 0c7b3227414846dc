"""Withdrawals paid by Connect transfer through the payment layer, on real PostgreSQL.

Stripe: the real ``stripe`` SDK over HTTP against localstripe with Connect's transfer routes
added (``qunbuy.localstripe_connect``). That part is our stand-in (localstripe has no
``/v1/transfers`` and no local Stripe Connect exists); it honours idempotency keys, so the
transfers counted there are what Stripe would have paid. The simulated provider runs too
(the embedded mode's), with its events delivered through the webhook endpoint.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import stripe
from sqlalchemy import func, select

from services.referrals.app import create_app
from services.referrals.models import ledger_entry
from services.referrals.withdrawals.service import PAYOUT_JOB, payout_reference
from shared.auth import TokenIssuer
from shared.payments import (
    FAILING_PAYOUT_ACCOUNT,
    FAILING_PAYOUT_CODE,
    REVERSING_PAYOUT_ACCOUNT,
    PayoutChange,
)
from shared.payments._provider import transfer_from_object
from shared.scheduler import Job, JobRunner
from tests.conftest import TokenFactory
from tests.referrals.commission_support import Program, earner, withdraw
from tests.shared.payments.support import (
    STRIPE_WEBHOOK_SECRET,
    PaymentsApp,
    event,
    payments_app,
    payments_env,
    signed,
)

ACCOUNT = "acct_1DistributorPays"
NOW = datetime.now(UTC)


@pytest.fixture
async def stripe_referrals(
    service_env: Callable[..., dict[str, str]], localstripe_url: str
) -> AsyncIterator[PaymentsApp]:
    env = service_env("referrals") | payments_env("stripe", STRIPE_API_BASE=localstripe_url)
    async with payments_app("referrals", env, create_app) as app:
        yield app


@pytest.fixture
async def sim_referrals(service_env: Callable[..., dict[str, str]]) -> AsyncIterator[PaymentsApp]:
    env = service_env("referrals") | payments_env("simulated")
    async with payments_app("referrals", env, create_app) as app:
        yield app


async def run_jobs(app: PaymentsApp) -> int:
    """What the worker does: due jobs, then the simulated provider's outcomes and events."""
    runner = JobRunner(
        sessionmaker=app.app.state.sessionmaker,
        tables=app.app.state.tables,
        handlers=app.app.state.job_handlers,
    )
    total = 0
    while (ran := await runner.run_due()) > 0:
        total += ran
    await app.tick()
    return total


async def payout_jobs(app: PaymentsApp, withdrawal_id: str) -> int:
    jobs = app.app.state.tables.scheduled_job
    async with app.app.state.sessionmaker() as session:
        found = await session.scalar(
            select(func.count()).where(jobs.c.kind == PAYOUT_JOB, jobs.c.key == withdrawal_id)
        )
    return int(found or 0)


async def transfers(sdk: stripe.StripeClient, withdrawal_id: str) -> list[dict[str, Any]]:
    """The transfers made for a withdrawal, as the stand-in counts them."""
    group = payout_reference(uuid.UUID(withdrawal_id))
    listed = await sdk.v1.transfers.list_async({"transfer_group": group, "limit": 100})
    return [t.to_dict() for t in listed.data]


async def made_and_reversed(
    sdk: stripe.StripeClient, withdrawal_id: str, taken_back: int
) -> stripe.Transfer:
    """The transfer the payout job makes for a withdrawal of 1000 (its reference, attempt 1),
    made as if the job's answer was lost, then ``taken_back`` of it reversed."""
    reference = payout_reference(uuid.UUID(withdrawal_id))
    made = await sdk.v1.transfers.create_async(
        {
            "amount": 1000,
            "currency": "cny",
            "destination": ACCOUNT,
            "transfer_group": reference,
            "metadata": {"reference": reference, "qunbuy_attempt": "1"},
        }
    )
    await sdk.v1.transfers.reversals.create_async(made.id, {"amount": taken_back})
    return made


async def approved_withdrawal(
    app: PaymentsApp, auth: TokenFactory, *, account: str | None = ACCOUNT, amount: int = 1000
) -> tuple[Program, dict[str, Any], dict[str, Any]]:
    """A verified distributor with 2000 available, their payout account set by themselves,
    and a withdrawal of ``amount`` (fee 50) approved by staff."""
    program = Program(app.client, auth)
    seller, me, _ = await earner(program, app.client, 20000)
    await app.client.post(f"/v1/distributors/{seller['id']}/verify", headers=program.staff)
    if account is not None:
        set_account = await app.client.put(
            f"/v1/distributors/{seller['id']}/payout-account",
            json={"payout_account": account},
            headers=me,
        )
        assert set_account.status_code == 200, set_account.text
        assert set_account.json()["payout_account"] == account
    requested = await withdraw(app.client, me, seller["id"], amount)
    assert requested.status_code == 201, requested.text
    approved = await app.client.post(
        f"/v1/withdrawals/{requested.json()['id']}/approve", headers=program.staff
    )
    assert approved.status_code == 200, approved.text
    return program, seller, approved.json()


async def current(app: PaymentsApp, program: Program, withdrawal_id: str) -> dict[str, Any]:
    listed = await app.client.get("/v1/withdrawals?limit=100", headers=program.staff)
    found: list[dict[str, Any]] = [w for w in listed.json()["items"] if w["id"] == withdrawal_id]
    assert len(found) == 1
    return found[0]


async def ledger_entries(app: PaymentsApp, withdrawal_id: str) -> list[tuple[str, int]]:
    async with app.app.state.sessionmaker() as session:
        rows = await session.execute(
            select(ledger_entry.c.kind, ledger_entry.c.amount)
            .where(ledger_entry.c.source_event.startswith(f"withdrawal:{withdrawal_id}:"))
            .order_by(ledger_entry.c.id)
        )
        return [(str(k), int(a)) for k, a in rows]


class TestStripeTransfer:
    async def test_an_approved_withdrawal_is_transferred_once_and_paid(
        self,
        stripe_referrals: PaymentsApp,
        auth: TokenFactory,
        localstripe_sdk: stripe.StripeClient,
    ) -> None:
        app = stripe_referrals
        program, seller, w = await approved_withdrawal(app, auth)
        assert (w["status"], w["payout_account"]) == ("paying", ACCOUNT)
        # Staff cannot mark it paid or failed beside the transfer.
        for path, body in (("paid", {"external_reference": "WX9"}), ("failed", {})):
            refused = await app.client.post(
                f"/v1/withdrawals/{w['id']}/{path}", json=body, headers=program.staff
            )
            assert (refused.status_code, refused.json()["code"]) == (
                409,
                "withdrawal_state_conflict",
            )
        assert await run_jobs(app) >= 1
        made = await transfers(localstripe_sdk, w["id"])
        assert len(made) == 1
        assert (made[0]["amount"], made[0]["currency"], made[0]["destination"]) == (
            1000,
            "cny",
            ACCOUNT,
        )
        paid = await current(app, program, w["id"])
        assert (paid["status"], paid["external_reference"]) == ("paid", made[0]["id"])
        assert paid["paid_at"] is not None
        assert await program.balances(seller["id"]) == {
            "pending": 0,
            "available": 950,
            "withdrawing": 0,
            "withdrawn": 1000,
            "owed": 0,
        }
        assert await ledger_entries(app, w["id"]) == [
            ("withdraw", 1050),
            ("payout", 1000),
            ("fee", 50),
        ]
        # The job again (a retry, a second worker) changes nothing.
        job = Job(id=0, kind=PAYOUT_JOB, key=w["id"], run_at=NOW, payload={}, attempts=1)
        await app.app.state.payouts.run(job)
        assert len(await transfers(localstripe_sdk, w["id"])) == 1
        again = await app.client.post(
            f"/v1/withdrawals/{w['id']}/paid",
            json={"external_reference": "WX9"},
            headers=program.staff,
        )
        assert (again.status_code, again.json()["code"]) == (409, "withdrawal_state_conflict")

    async def test_two_workers_at_once_pay_once(
        self,
        stripe_referrals: PaymentsApp,
        auth: TokenFactory,
        localstripe_sdk: stripe.StripeClient,
    ) -> None:
        app = stripe_referrals
        program, seller, w = await approved_withdrawal(app, auth, amount=700)
        job = Job(id=0, kind=PAYOUT_JOB, key=w["id"], run_at=NOW, payload={}, attempts=1)
        await asyncio.gather(*(app.app.state.payouts.run(job) for _ in range(4)))
        assert len(await transfers(localstripe_sdk, w["id"])) == 1
        assert (await current(app, program, w["id"]))["status"] == "paid"
        assert await ledger_entries(app, w["id"]) == [
            ("withdraw", 750),
            ("payout", 700),
            ("fee", 50),
        ]
        assert (await program.balances(seller["id"]))["withdrawn"] == 700

    async def test_two_approvals_at_once_start_one_payout(
        self,
        stripe_referrals: PaymentsApp,
        auth: TokenFactory,
        localstripe_sdk: stripe.StripeClient,
    ) -> None:
        app = stripe_referrals
        program = Program(app.client, auth)
        seller, me, _ = await earner(program, app.client, 20000)
        await app.client.post(f"/v1/distributors/{seller['id']}/verify", headers=program.staff)
        await app.client.put(
            f"/v1/distributors/{seller['id']}/payout-account",
            json={"payout_account": ACCOUNT},
            headers=me,
        )
        requested = (await withdraw(app.client, me, seller["id"], 1000)).json()
        answers = await asyncio.gather(
            *(
                app.client.post(f"/v1/withdrawals/{requested['id']}/approve", headers=program.staff)
                for _ in range(3)
            )
        )
        assert sorted(a.status_code for a in answers) == [200, 409, 409]
        assert await payout_jobs(app, requested["id"]) == 1
        await run_jobs(app)
        assert len(await transfers(localstripe_sdk, requested["id"])) == 1
        assert (await program.balances(seller["id"]))["withdrawn"] == 1000

    async def test_a_refused_transfer_fails_and_the_money_returns(
        self,
        stripe_referrals: PaymentsApp,
        auth: TokenFactory,
        localstripe_sdk: stripe.StripeClient,
    ) -> None:
        app = stripe_referrals
        program, seller, w = await approved_withdrawal(app, auth, account=FAILING_PAYOUT_ACCOUNT)
        assert w["status"] == "paying"
        await run_jobs(app)
        failed = await current(app, program, w["id"])
        assert failed["status"] == "failed"
        assert FAILING_PAYOUT_CODE in failed["reason"]
        assert await transfers(localstripe_sdk, w["id"]) == []
        assert await program.balances(seller["id"]) == {
            "pending": 0,
            "available": 2000,
            "withdrawing": 0,
            "withdrawn": 0,
            "owed": 0,
        }
        assert await ledger_entries(app, w["id"]) == [("withdraw", 1050), ("return", 1050)]

    async def test_a_reversed_transfer_returns_the_money_once(
        self,
        stripe_referrals: PaymentsApp,
        auth: TokenFactory,
        localstripe_sdk: stripe.StripeClient,
    ) -> None:
        app = stripe_referrals
        program, seller, w = await approved_withdrawal(app, auth)
        await run_jobs(app)
        (made,) = await transfers(localstripe_sdk, w["id"])
        await localstripe_sdk.v1.transfers.reversals.create_async(made["id"])
        reversed_ = (await localstripe_sdk.v1.transfers.retrieve_async(made["id"])).to_dict()
        news = event("transfer.reversed", reversed_)
        body, headers = signed(news, STRIPE_WEBHOOK_SECRET)
        first = await app.client.post("/webhooks/stripe", content=body, headers=headers)
        assert (first.status_code, first.json()["status"]) == (200, "applied")
        again = await app.client.post("/webhooks/stripe", content=body, headers=headers)
        assert again.json()["status"] == "duplicate"
        failed = await current(app, program, w["id"])
        assert failed["status"] == "failed"
        assert "transfer_reversed" in failed["reason"]
        assert await program.balances(seller["id"]) == {
            "pending": 0,
            "available": 2000,
            "withdrawing": 0,
            "withdrawn": 0,
            "owed": 0,
        }
        # Another event about it (a redelivery under a new id) returns nothing twice.
        body, headers = signed(event("transfer.reversed", reversed_), STRIPE_WEBHOOK_SECRET)
        await app.client.post("/webhooks/stripe", content=body, headers=headers)
        assert (await program.balances(seller["id"]))["available"] == 2000
        kinds = [k for k, _ in await ledger_entries(app, w["id"])]
        assert kinds == ["withdraw", "payout", "fee", "reversal", "fee_reversal"]

    async def test_a_transfer_reversed_in_parts_returns_each_part_once_then_the_rest(
        self,
        stripe_referrals: PaymentsApp,
        auth: TokenFactory,
        localstripe_sdk: stripe.StripeClient,
    ) -> None:
        """Reversed in part (300, then 200 more): each part goes from withdrawn back to
        available once, whatever the order and number of the events, and the withdrawal stays
        paid with its fee; reversed in full at last, the rest and the fee come back."""
        app = stripe_referrals
        program, seller, w = await approved_withdrawal(app, auth)
        await run_jobs(app)
        (made,) = await transfers(localstripe_sdk, w["id"])

        async def reverse(amount: int) -> dict[str, Any]:
            await localstripe_sdk.v1.transfers.reversals.create_async(
                made["id"], {"amount": amount}
            )
            return (await localstripe_sdk.v1.transfers.retrieve_async(made["id"])).to_dict()

        async def deliver(transfer: dict[str, Any]) -> str:
            body, headers = signed(event("transfer.reversed", transfer), STRIPE_WEBHOOK_SECRET)
            answer = await app.client.post("/webhooks/stripe", content=body, headers=headers)
            assert answer.status_code == 200, answer.text
            return str(answer.json()["status"])

        first, second = await reverse(300), await reverse(200)
        assert (first["amount_reversed"], first["reversed"]) == (300, False)
        # The later news first, then the earlier one (and each again): 500 back, once.
        for news in (second, first, second, first):
            assert await deliver(news) == "applied"
        found = await current(app, program, w["id"])
        assert (found["status"], found["reversed_amount"]) == ("paid", 500)
        assert await program.balances(seller["id"]) == {
            "pending": 0,
            "available": 1450,  # 2000 - 1000 - 50 + 500
            "withdrawing": 0,
            "withdrawn": 500,
            "owed": 0,
        }
        assert await ledger_entries(app, w["id"]) == [
            ("withdraw", 1050),
            ("payout", 1000),
            ("fee", 50),
            ("reversal", 500),
        ]
        assert await deliver(await reverse(500)) == "applied"
        failed = await current(app, program, w["id"])
        assert (failed["status"], failed["reversed_amount"]) == ("failed", 1000)
        assert "transfer_reversed" in failed["reason"]
        assert await program.balances(seller["id"]) == {
            "pending": 0,
            "available": 2000,
            "withdrawing": 0,
            "withdrawn": 0,
            "owed": 0,
        }
        assert [k for k, _ in await ledger_entries(app, w["id"])] == [
            "withdraw",
            "payout",
            "fee",
            "reversal",
            "reversal",
            "fee_reversal",
        ]

    async def test_a_part_reversed_before_the_job_records_the_transfer_is_returned_when_it_does(
        self,
        stripe_referrals: PaymentsApp,
        auth: TokenFactory,
        localstripe_sdk: stripe.StripeClient,
    ) -> None:
        """The transfer is made and reversed in part, and the news arrives, while the
        withdrawal is still ``paying`` (the job's answer was lost): kept, and returned to
        available when the job's next run finds the transfer and records it paid."""
        app = stripe_referrals
        program, seller, w = await approved_withdrawal(app, auth)
        made = await made_and_reversed(localstripe_sdk, w["id"], 250)
        reversed_ = (await localstripe_sdk.v1.transfers.retrieve_async(made.id)).to_dict()
        body, headers = signed(event("transfer.reversed", reversed_), STRIPE_WEBHOOK_SECRET)
        answer = await app.client.post("/webhooks/stripe", content=body, headers=headers)
        assert answer.json()["status"] == "applied"
        paying = await current(app, program, w["id"])
        assert (paying["status"], paying["reversed_amount"]) == ("paying", 250)
        assert (await program.balances(seller["id"]))["withdrawing"] == 1050
        await run_jobs(app)
        paid = await current(app, program, w["id"])
        assert (paid["status"], paid["external_reference"]) == ("paid", made.id)
        assert paid["reversed_amount"] == 250
        assert len(await transfers(localstripe_sdk, w["id"])) == 1  # found, not made again
        assert await program.balances(seller["id"]) == {
            "pending": 0,
            "available": 1200,  # 2000 - 1050 + 250
            "withdrawing": 0,
            "withdrawn": 750,
            "owed": 0,
        }

    async def test_the_job_books_what_was_taken_back_before_it_saw_the_transfer(
        self,
        stripe_referrals: PaymentsApp,
        auth: TokenFactory,
        localstripe_sdk: stripe.StripeClient,
    ) -> None:
        """The job's answer lost, the transfer reversed meanwhile and its news lost too: the
        next run finds the transfer and books what the provider says was taken back, in
        part (paid, the part back to available) or in full (failed, all of it back)."""
        app = stripe_referrals
        outcomes = []
        for taken_back in (300, 1000):
            program, seller, w = await approved_withdrawal(app, auth)
            await made_and_reversed(localstripe_sdk, w["id"], taken_back)
            await run_jobs(app)
            found = await current(app, program, w["id"])
            balances = await program.balances(seller["id"])
            outcomes.append((found["status"], found["reversed_amount"], balances["available"]))
        assert outcomes == [("paid", 300, 1250), ("failed", 1000, 2000)]

    async def test_a_part_known_from_its_news_and_from_the_job_is_booked_at_the_larger(
        self,
        stripe_referrals: PaymentsApp,
        auth: TokenFactory,
        localstripe_sdk: stripe.StripeClient,
    ) -> None:
        """While ``paying``, news of 400 taken back; the job's answer (read earlier) says
        250: the larger is booked, once."""
        app = stripe_referrals
        program, seller, w = await approved_withdrawal(app, auth)
        made = await made_and_reversed(localstripe_sdk, w["id"], 250)
        later = {
            **(await localstripe_sdk.v1.transfers.retrieve_async(made.id)).to_dict(),
            "amount_reversed": 400,
        }
        reference = payout_reference(uuid.UUID(w["id"]))
        change = PayoutChange("reversed", reference, transfer_from_object(later))
        async with app.app.state.sessionmaker() as session, session.begin():
            await app.app.state.payouts.on_payout_change(session, change)
        await run_jobs(app)
        found = await current(app, program, w["id"])
        assert (found["status"], found["reversed_amount"]) == ("paid", 400)
        assert (await program.balances(seller["id"]))["available"] == 1350  # 2000 - 1050 + 400
        assert (await ledger_entries(app, w["id"]))[-1] == ("reversal", 400)

    async def test_a_transfer_of_another_service_is_not_ours(
        self, stripe_referrals: PaymentsApp, localstripe_sdk: stripe.StripeClient
    ) -> None:
        made = await localstripe_sdk.v1.transfers.create_async(
            {
                "amount": 100,
                "currency": "cny",
                "destination": ACCOUNT,
                "metadata": {"reference": f"settlement:{uuid.uuid4()}:payout"},
            }
        )
        await localstripe_sdk.v1.transfers.reversals.create_async(made.id)
        reversed_ = (await localstripe_sdk.v1.transfers.retrieve_async(made.id)).to_dict()
        body, headers = signed(event("transfer.reversed", reversed_), STRIPE_WEBHOOK_SECRET)
        answer = await stripe_referrals.client.post(
            "/webhooks/stripe", content=body, headers=headers
        )
        assert answer.json()["status"] == "unknown_object"

    async def test_without_a_payout_account_staff_pay_outside(
        self,
        stripe_referrals: PaymentsApp,
        auth: TokenFactory,
        localstripe_sdk: stripe.StripeClient,
    ) -> None:
        app = stripe_referrals
        program, seller, w = await approved_withdrawal(app, auth, account=None)
        assert (w["status"], w["payout_account"]) == ("approved", None)
        assert await payout_jobs(app, w["id"]) == 0
        paid = await app.client.post(
            f"/v1/withdrawals/{w['id']}/paid",
            json={"external_reference": "WX-BANK-1"},
            headers=program.staff,
        )
        assert (paid.json()["status"], paid.json()["external_reference"]) == (
            "paid",
            "WX-BANK-1",
        )
        assert await transfers(localstripe_sdk, w["id"]) == []
        assert (await program.balances(seller["id"]))["withdrawn"] == 1000


class TestPayoutAccount:
    @pytest.mark.parametrize(
        "value", ["acct_", "acct_1 2 3 4 5 6", "ba_1DistributorPays", "acct_1Distributor-Pays"]
    )
    async def test_a_payout_account_of_the_wrong_shape_is_refused(
        self, stripe_referrals: PaymentsApp, auth: TokenFactory, value: str
    ) -> None:
        program = Program(stripe_referrals.client, auth)
        seller, me, _ = await earner(program, stripe_referrals.client, 20000)
        answer = await stripe_referrals.client.put(
            f"/v1/distributors/{seller['id']}/payout-account",
            json={"payout_account": value},
            headers=me,
        )
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["code"] == "payout_account_invalid"
        shown = await stripe_referrals.client.get(
            f"/v1/distributors/{seller['id']}", headers=program.staff
        )
        assert shown.json()["payout_account"] is None

    async def test_money_staff_set_and_remove_it_and_nobody_else_may(
        self, stripe_referrals: PaymentsApp, auth: TokenFactory, issuer: TokenIssuer
    ) -> None:
        client = stripe_referrals.client
        program = Program(client, auth)
        seller, _, _ = await earner(program, client, 20000)
        path = f"/v1/distributors/{seller['id']}/payout-account"
        body = {"payout_account": ACCOUNT}
        stranger = await client.put(path, json=body, headers=auth())
        assert (stranger.status_code, stranger.json()["code"]) == (404, "distributor_not_found")
        other_staff = auth("staff", merchant_id=f"m_{uuid.uuid4().hex[:8]}")
        elsewhere = await client.put(path, json=body, headers=other_staff)
        assert elsewhere.status_code == 404
        token = issuer.issue(
            "operator-1", ["staff"], merchant_id=program.merchant_id, merchant_role="operator"
        )
        operator = await client.put(path, json=body, headers={"Authorization": f"Bearer {token}"})
        assert (operator.status_code, operator.json()["code"]) == (403, "merchant_role_required")
        finance = issuer.issue(
            "finance-1", ["staff"], merchant_id=program.merchant_id, merchant_role="finance"
        )
        set_by_staff = await client.put(
            path, json=body, headers={"Authorization": f"Bearer {finance}"}
        )
        assert set_by_staff.json()["payout_account"] == ACCOUNT
        removed = await client.put(path, json={"payout_account": None}, headers=program.staff)
        assert removed.json()["payout_account"] is None


class TestSimulatedTransfer:
    async def test_paid_then_reversed_by_the_simulated_provider(
        self, sim_referrals: PaymentsApp, auth: TokenFactory
    ) -> None:
        app = sim_referrals
        program, seller, w = await approved_withdrawal(app, auth, account=REVERSING_PAYOUT_ACCOUNT)
        await run_jobs(app)  # transferred, then reversed and its event delivered
        await app.tick()
        found = await current(app, program, w["id"])
        assert found["status"] == "failed", found
        assert found["external_reference"].startswith("tr_sim_")
        assert (await program.balances(seller["id"]))["available"] == 2000

    async def test_paid_by_the_simulated_provider(
        self, sim_referrals: PaymentsApp, auth: TokenFactory
    ) -> None:
        app = sim_referrals
        program, seller, w = await approved_withdrawal(app, auth)
        await run_jobs(app)
        found = await current(app, program, w["id"])
        assert found["status"] == "paid"
        assert (await program.balances(seller["id"]))["withdrawn"] == 1000
