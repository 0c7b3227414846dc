"""Pledges through the real Stripe SDK against localstripe: a card saved at pledge time
(SetupIntent, nothing charged), charged off-session at the deadline, and a card that declines
then and opens the fix window."""

from __future__ import annotations

from tests.conftest import TokenFactory
from tests.crowdfund.project_support import (
    get_json,
    live_project,
    make_due,
    outbox_payloads,
    place_pledge,
    run_jobs,
)
from tests.shared.payments.support import PaymentsApp


async def test_saved_cards_are_charged_off_session_at_the_deadline_and_a_decline_waits(
    stripe_crowdfund: PaymentsApp, auth: TokenFactory
) -> None:
    app = stripe_crowdfund
    project_id, _, (tier,) = await live_project(app, auth, goal=9900)
    good_backer, bad_backer = auth("customer"), auth("customer")
    good = await place_pledge(app, good_backer, project_id, tier)
    bad = await place_pledge(
        app, bad_backer, project_id, tier, payment_method="pm_card_chargeCustomerFail"
    )
    for placed in (good, bad):
        assert placed.status_code == 201, placed.text
        body = placed.json()
        assert (body["status"], body["setup"]["status"], body["payment"]) == (
            "confirmed",
            "succeeded",
            None,
        )
    for placed in (good, bad):  # nothing charged before the deadline
        assert await app.count("payment", reference=f"pledge:{placed.json()['id']}:charge") == 0
    await make_due(app, project_id, what="deadline")
    await run_jobs(app)
    paid = await get_json(app, f"/v1/pledges/{good.json()['id']}", good_backer)
    assert (paid["status"], paid["paid_total"]) == ("collected", 9900)
    assert paid["payment"]["status"] == "succeeded"
    failed = await get_json(app, f"/v1/pledges/{bad.json()['id']}", bad_backer)
    assert (failed["status"], failed["failure_code"]) == ("payment_failed", "card_declined")
    assert failed["payment"]["failure_code"] == "card_declined"
    (told,) = await outbox_payloads(app, "pledge.payment_failed", pledge_id=failed["id"])
    assert told["attempt"] == 1
