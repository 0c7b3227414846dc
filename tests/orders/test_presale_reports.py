"""Staff reports: campaign statistics, the factory's demand per variant, the orders CSV."""

from __future__ import annotations

import csv
import io

from tests.conftest import TokenFactory
from tests.orders.presale_support import make_due, open_campaign, order, run_jobs
from tests.shared.payments.support import PaymentsApp, new_merchant


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def test_stats_count_units_buyers_money_and_conversion(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth, min_quantity=3)
    alice, bob = auth("customer"), auth("customer")
    await order(sim_orders, alice, campaign_id, quantity=2)
    await order(sim_orders, bob, campaign_id, quantity=1, sku="M")
    await order(sim_orders, bob, campaign_id, quantity=1, payment_method=None)  # never paid
    response = await sim_orders.client.get(
        f"/v1/presales/{campaign_id}/stats", params={"tz": "Asia/Shanghai"}, headers=staff
    )
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["units_committed"] == 3
    assert stats["buyers"] == 2
    assert (stats["orders_placed"], stats["orders_paid"]) == (3, 2)
    assert stats["conversion_bps"] == 6666
    assert stats["deposits_paid"] == 3 * 2000
    assert stats["gmv"] == 3 * 2000
    assert sum(p["orders_placed"] for p in stats["daily"]) == 3
    assert sum(p["paid"] for p in stats["daily"]) == 6000
    bad = await sim_orders.client.get(
        f"/v1/presales/{campaign_id}/stats", params={"tz": "../../etc/passwd"}, headers=staff
    )
    assert (bad.status_code, bad.json()["code"]) == (422, "unknown_timezone")
    other = auth("staff", merchant_id=new_merchant())
    hidden = await sim_orders.client.get(f"/v1/presales/{campaign_id}/stats", headers=other)
    assert hidden.status_code == 404


async def test_the_demand_csv_gives_units_per_variant_once_the_campaign_succeeded(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth, min_quantity=3)
    early = await sim_orders.client.get(f"/v1/presales/{campaign_id}/demand.csv", headers=staff)
    assert early.json()["code"] == "presale_state_conflict"
    buyer = auth("customer")
    placed = await order(sim_orders, buyer, campaign_id, quantity=2)
    await order(sim_orders, auth("customer"), campaign_id, quantity=3, sku="M")
    await make_due(sim_orders, campaign_id, what="close")
    await run_jobs(sim_orders)
    await sim_orders.post(
        f"/v1/orders/{placed.json()['id']}/balance-payment",
        {"payment_method": "pm_card_visa"},
        buyer,
    )
    response = await sim_orders.client.get(f"/v1/presales/{campaign_id}/demand.csv", headers=staff)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = {r["sku"]: r for r in _rows(response.text)}
    assert (rows["S"]["units_paid"], rows["S"]["units_awaiting_balance"]) == ("2", "0")
    assert (rows["M"]["units_paid"], rows["M"]["units_awaiting_balance"]) == ("0", "3")
    assert rows["S"]["final_unit_price"] == "12900"


async def test_the_orders_csv_is_the_merchants_only_and_defuses_formulas(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth)
    await order(sim_orders, auth("customer"), campaign_id, referral_code="=HYPERLINK(1)")
    await order(sim_orders, auth("customer"), campaign_id, referral_code="PLAIN")
    other_campaign, _ = await open_campaign(sim_orders, auth)
    await order(sim_orders, auth("customer"), other_campaign)
    response = await sim_orders.client.get("/v1/orders/export.csv", headers=staff)
    assert response.status_code == 200, response.text
    rows = _rows(response.text)
    assert {r["campaign_id"] for r in rows} == {campaign_id}
    assert sorted(r["referral_code"] for r in rows) == ["'=HYPERLINK(1)", "PLAIN"]
    filtered = await sim_orders.client.get(
        "/v1/orders/export.csv", params={"status": "cancelled"}, headers=staff
    )
    assert _rows(filtered.text) == []
    customer = await sim_orders.client.get("/v1/orders/export.csv", headers=auth("customer"))
    assert customer.status_code == 403
