"""Plain orders (services/orders/orders/plain.py), on real PostgreSQL: an order that needs
nothing but the list price is placed in one statement once the service knows the campaign's
terms, and it is the order the full path would have written; whenever the statement cannot
take it as it stands (terms changed, limits, eligibility, pause, sold out, an unknown or full
variant) it writes nothing and the full path answers; and concurrent plain orders never
oversell the campaign or a variant."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from services.orders.models import customer_order, presale_campaign, presale_variant
from services.orders.orders import service as orders_service
from services.orders.orders.plain import plain_terms
from shared.payments import PaymentProviderUnavailable
from tests.conftest import TokenFactory
from tests.orders.presale_support import open_campaign, order, terms_body
from tests.orders.statement_support import PLAIN, history, statements
from tests.shared.payments.support import PaymentsApp

FULL = ("WITH campaign AS (UPDATE presale_campaig", False)  # the full path's reservation


async def wechat(
    app: PaymentsApp, campaign_id: str, buyer: dict[str, str], **extra: Any
) -> tuple[Any, str]:
    """An order paid with WeChat Pay (no payment method given: a plain request), and the
    path it took: ``plain``, ``full``, or ``both`` (the plain statement wrote nothing)."""
    with statements(app) as seen:
        response = await order(
            app, buyer, campaign_id, method="wechat_pay", payment_method=None, **extra
        )
    paths = {"plain": PLAIN in seen, "full": FULL in seen}
    path = "both" if all(paths.values()) else next((k for k, x in paths.items() if x), "none")
    return response, path


async def order_row(app: PaymentsApp, order_id: str) -> dict[str, Any]:
    async with app.app.state.sessionmaker() as session:
        row = (
            await session.execute(
                select(customer_order).where(customer_order.c.id == uuid.UUID(order_id))
            )
        ).one()
    return dict(row._mapping)


async def payment_row(app: PaymentsApp, payment_id: str) -> dict[str, Any]:
    p = app.ctx.tables.payment
    async with app.app.state.sessionmaker() as session:
        row = (await session.execute(select(p).where(p.c.id == uuid.UUID(payment_id)))).one()
    return dict(row._mapping)


async def reserved(app: PaymentsApp, campaign_id: str) -> tuple[int, dict[str, int]]:
    """Units reserved on the campaign and on each of its variants."""
    async with app.app.state.sessionmaker() as session:
        total = await session.scalar(
            select(presale_campaign.c.reserved_quantity).where(
                presale_campaign.c.id == uuid.UUID(campaign_id)
            )
        )
        rows = await session.execute(
            select(presale_variant.c.sku, presale_variant.c.reserved_quantity).where(
                presale_variant.c.campaign_id == uuid.UUID(campaign_id)
            )
        )
        return int(total or 0), {r.sku: r.reserved_quantity for r in rows}


async def placed_rows(app: PaymentsApp, campaign_id: str) -> list[dict[str, Any]]:
    """The campaign's orders, each with its first payment's amount and history length."""
    o, p = customer_order, app.ctx.tables.payment
    h = app.ctx.tables.payment_status_change
    history_rows = select(func.count()).where(h.c.payment_id == p.c.id).scalar_subquery()
    async with app.app.state.sessionmaker() as session:
        rows = await session.execute(
            select(o.c.sku, o.c.quantity, o.c.first_amount, p.c.amount, history_rows.label("h"))
            .select_from(o.outerjoin(p, p.c.reference == func.concat("order:", o.c.id, ":first")))
            .where(o.c.campaign_id == uuid.UUID(campaign_id))
        )
        return [dict(r._mapping) for r in rows]


async def edit(app: PaymentsApp, campaign_id: str, staff: dict[str, str], **change: Any) -> None:
    """Staff change an open campaign's terms (its times as they are)."""
    seen = await app.client.get(f"/v1/presales/{campaign_id}", headers=staff)
    times = {k: seen.json()[k] for k in ("opens_at", "closes_at")}
    changed = await app.client.put(
        f"/v1/presales/{campaign_id}", json=terms_body(**times, **change), headers=staff
    )
    assert changed.status_code == 200, changed.text


# What differs between two orders of different buyers placed a moment apart.
_OWN = {"id", "customer_id", "expires_at", "created_at", "updated_at"}
_OWN_PAYMENT = {"id", "reference", "customer_id", "provider_payment_id", "client_secret"}


@pytest.mark.parametrize(
    "deposit",
    [
        {"type": "deposit", "unit_deposit": 2000},
        {"type": "refundable_deposit", "unit_deposit": 1500},
        {"type": "inflated_deposit", "unit_deposit": 2000, "unit_credit": 5000},
        {"type": "full"},
    ],
    ids=lambda d: str(d["type"]),
)
async def test_a_plain_order_is_the_order_the_full_path_writes(
    sim_orders: PaymentsApp,
    auth: TokenFactory,
    deposit: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same request twice, once made to go the full path and once the plain one: the
    same order row, payment row and history but for what is each buyer's own."""
    campaign_id, _ = await open_campaign(sim_orders, auth, deposit=deposit, capacity=10)
    address = {"recipient_name": "Li Lei", "phone": "13800000000", "lines": ["1 Nanjing Rd"]}
    extra = {"quantity": 3, "referral_code": "REF-1", "delivery_address": address}
    with monkeypatch.context() as patched:
        patched.setattr(orders_service, "plain_request", lambda body: False)
        full, full_path = await wechat(sim_orders, campaign_id, auth("customer"), **extra)
    plain, plain_path = await wechat(sim_orders, campaign_id, auth("customer"), **extra)
    assert full.status_code == plain.status_code == 201, (full.text, plain.text)
    assert (full_path, plain_path) == ("full", "plain")
    rows = [await order_row(sim_orders, r.json()["id"]) for r in (full, plain)]
    assert {k: x for k, x in rows[0].items() if k not in _OWN} == {
        k: x for k, x in rows[1].items() if k not in _OWN
    }
    unit = 12900 if deposit["type"] == "full" else deposit["unit_deposit"]
    assert rows[1]["first_amount"] == 3 * unit
    payments = [await payment_row(sim_orders, r.json()["payment"]["id"]) for r in (full, plain)]
    assert {k: x for k, x in payments[0].items() if k not in _OWN_PAYMENT | _OWN} == {
        k: x for k, x in payments[1].items() if k not in _OWN_PAYMENT | _OWN
    }
    assert payments[1]["amount"] == rows[1]["first_amount"]
    assert payments[1]["reference"] == f"order:{rows[1]['id']}:first"
    for r in (full, plain):
        assert await history(sim_orders, r.json()["payment"]["id"]) == [
            (None, "creating"),
            ("creating", "requires_payment_method"),
        ]
    bodies = [
        {k: x for k, x in r.json().items() if k not in _OWN | {"payment"}} for r in (full, plain)
    ]
    assert bodies[0] == bodies[1]
    assert await reserved(sim_orders, campaign_id) == (6, {"S": 6, "M": 0})


async def test_terms_changed_since_they_were_learnt_are_priced_by_the_full_path(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    """The statement checks the terms on the locked row: a lower deposit set by staff after
    this process learnt the old one makes it write nothing, and the order is placed at the
    new deposit (by the full path, which learns it: the next order is plain again). The
    first order of a campaign new to the process reads its terms and is plain already."""
    campaign_id, staff = await open_campaign(sim_orders, auth, capacity=10)
    assert not plain_terms.knows(uuid.UUID(campaign_id))
    first, path = await wechat(sim_orders, campaign_id, auth("customer"))
    assert (first.status_code, path) == (201, "plain"), first.text
    assert first.json()["first_amount"] == 2000
    await edit(
        sim_orders,
        campaign_id,
        staff,
        capacity=10,
        deposit={"type": "deposit", "unit_deposit": 1500},
    )
    # An edit made by another replica: this process still holds the old terms.
    assert plain_terms.get(uuid.UUID(campaign_id)) is not None
    second, path = await wechat(sim_orders, campaign_id, auth("customer"))
    assert second.status_code == 201, second.text
    assert path == "both"
    assert second.json()["first_amount"] == 1500
    third, path = await wechat(sim_orders, campaign_id, auth("customer"))
    assert path == "plain"
    assert third.json()["first_amount"] == 1500
    assert await reserved(sim_orders, campaign_id) == (3, {"S": 3, "M": 0})


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"per_customer_limit": 1}, "presale_customer_limit"),
        ({"early_bird": {"unit_price": 9900, "units": 100}}, None),
    ],
    ids=["limit", "early_bird"],
)
async def test_terms_that_need_more_than_the_list_price_take_the_full_path(
    sim_orders: PaymentsApp, auth: TokenFactory, change: dict[str, Any], code: str | None
) -> None:
    """A limit per customer or an early-bird price set after the terms were learnt: the
    statement refuses them on the row and the full path applies them."""
    campaign_id, staff = await open_campaign(sim_orders, auth, capacity=10)
    buyer = auth("customer")
    first, _ = await wechat(sim_orders, campaign_id, buyer)
    assert first.status_code == 201, first.text
    await edit(sim_orders, campaign_id, staff, capacity=10, **change)
    second, path = await wechat(sim_orders, campaign_id, buyer)
    assert path == "both"
    if code is not None:
        assert second.status_code == 409, second.text
        assert second.json()["code"] == code
        assert await reserved(sim_orders, campaign_id) == (1, {"S": 1, "M": 0})
    else:
        assert second.status_code == 201, second.text
        assert second.json()["early_bird_price"] == 9900
    assert plain_terms.get(uuid.UUID(campaign_id)) is None


async def test_a_pause_or_a_restriction_after_the_terms_were_learnt_is_obeyed(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth, capacity=10)
    first, _ = await wechat(sim_orders, campaign_id, auth("customer"))
    assert first.status_code == 201, first.text
    paused = await sim_orders.client.post(f"/v1/presales/{campaign_id}/pause", headers=staff)
    assert paused.status_code == 200, paused.text
    refused, path = await wechat(sim_orders, campaign_id, auth("customer"))
    assert path == "both"  # tried, wrote nothing
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "presale_paused"
    resumed = await sim_orders.client.post(f"/v1/presales/{campaign_id}/resume", headers=staff)
    assert resumed.status_code == 200, resumed.text
    again, path = await wechat(sim_orders, campaign_id, auth("customer"))
    assert (again.status_code, path) == (201, "plain"), again.text
    tiers = await sim_orders.client.put(
        "/v1/presales/member-tiers",
        json={"tiers": [{"code": "gold", "name": "金卡", "rank": 1}]},
        headers=staff,
    )
    assert tiers.status_code == 200, tiers.text
    restricted = await sim_orders.client.put(
        f"/v1/presales/{campaign_id}/eligibility",
        json={"mode": "tiers", "tiers": [{"tier_code": "gold"}]},
        headers=staff,
    )
    assert restricted.status_code == 200, restricted.text
    outsider, path = await wechat(sim_orders, campaign_id, auth("customer"))
    assert path == "both"
    assert outsider.status_code == 403, outsider.text
    assert outsider.json()["code"] == "tier_not_eligible"
    assert await reserved(sim_orders, campaign_id) == (2, {"S": 2, "M": 0})


async def test_sold_out_unknown_and_full_variants_take_nothing_and_get_the_full_answer(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    """The statement fails as a whole when the variant takes nothing (an unknown SKU, a
    full variant): the campaign's units are not taken either; and it takes nothing from a
    campaign without the units."""
    variants = [{"sku": "S", "name": "Small"}, {"sku": "M", "name": "Medium", "capacity": 1}]
    campaign_id, _ = await open_campaign(
        sim_orders, auth, capacity=3, min_quantity=1, variants=variants
    )
    first, path = await wechat(sim_orders, campaign_id, auth("customer"))
    assert (first.status_code, path) == (201, "plain"), first.text
    unknown, path = await wechat(sim_orders, campaign_id, auth("customer"), sku="XL")
    assert (unknown.status_code, path) == (422, "both"), unknown.text
    assert unknown.json()["code"] == "presale_variant_unknown"
    assert await reserved(sim_orders, campaign_id) == (1, {"S": 1, "M": 0})
    medium, path = await wechat(sim_orders, campaign_id, auth("customer"), sku="M")
    assert (medium.status_code, path) == (201, "plain"), medium.text
    full, path = await wechat(sim_orders, campaign_id, auth("customer"), sku="M")
    assert (full.status_code, path) == (409, "both"), full.text
    assert full.json()["code"] == "presale_sold_out"
    assert await reserved(sim_orders, campaign_id) == (2, {"S": 1, "M": 1})
    last, path = await wechat(sim_orders, campaign_id, auth("customer"), quantity=2)
    assert (last.status_code, path) == (409, "both"), last.text
    assert last.json()["code"] == "presale_sold_out"
    assert await reserved(sim_orders, campaign_id) == (2, {"S": 1, "M": 1})
    assert len(await placed_rows(sim_orders, campaign_id)) == 2


async def test_two_hundred_concurrent_plain_orders_for_fifty_units_reserve_exactly_fifty(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, _ = await open_campaign(sim_orders, auth, capacity=50)
    first, _ = await wechat(sim_orders, campaign_id, auth("customer"))
    assert first.status_code == 201, first.text
    with statements(sim_orders) as seen:
        answers = await asyncio.gather(
            *(
                order(
                    sim_orders,
                    auth("customer"),
                    campaign_id,
                    method="wechat_pay",
                    payment_method=None,
                )
                for _ in range(200)
            )
        )
    codes = [r.status_code for r in answers]
    assert codes.count(201) == 49, codes
    assert {r.json()["code"] for r in answers if r.status_code != 201} == {"presale_sold_out"}
    assert seen.count(PLAIN) >= 49  # every placed order, and some that found none left
    assert await reserved(sim_orders, campaign_id) == (50, {"S": 50, "M": 0})
    rows = await placed_rows(sim_orders, campaign_id)
    assert len(rows) == 50
    assert all(r["amount"] == r["first_amount"] == 2000 and r["h"] >= 1 for r in rows), rows


async def test_plain_and_full_orders_at_once_share_the_campaign_and_variant_exactly(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    """200 concurrent orders, half plain (WeChat Pay) and half full (a card given), half
    for a variant of 20 units, on a campaign of 50: 20 of that variant, 50 in all."""
    variants = [{"sku": "S", "name": "Small", "capacity": 20}, {"sku": "M", "name": "Medium"}]
    campaign_id, _ = await open_campaign(sim_orders, auth, capacity=50, variants=variants)
    first, _ = await wechat(sim_orders, campaign_id, auth("customer"), sku="M")
    assert first.status_code == 201, first.text

    async def attempt(i: int) -> Any:
        sku = "S" if i % 2 else "M"
        if i % 4 < 2:
            return await order(
                sim_orders,
                auth("customer"),
                campaign_id,
                sku=sku,
                method="wechat_pay",
                payment_method=None,
            )
        return await order(sim_orders, auth("customer"), campaign_id, sku=sku)

    answers = await asyncio.gather(*(attempt(i) for i in range(200)))
    assert [r.status_code for r in answers].count(201) == 49
    assert {r.status_code for r in answers} == {201, 409}
    assert await reserved(sim_orders, campaign_id) == (50, {"S": 20, "M": 30})
    rows = await placed_rows(sim_orders, campaign_id)
    assert sorted(r["sku"] for r in rows) == ["M"] * 30 + ["S"] * 20
    assert all(r["amount"] == r["first_amount"] for r in rows), rows


@pytest.mark.parametrize("plain", [True, False], ids=["plain", "full"])
async def test_a_retry_after_the_provider_failed_resumes_the_order_it_committed(
    sim_orders: PaymentsApp, auth: TokenFactory, monkeypatch: pytest.MonkeyPatch, plain: bool
) -> None:
    """The order commits before the provider is asked; the provider is down (the one thing
    stood in for here: the call to it fails as an outage would), the answer is a 5xx and the
    key is released. The retry with the same key finds the order and starts its payment:
    one order, one payment, the units taken once."""
    campaign_id, _ = await open_campaign(sim_orders, auth, capacity=10)
    buyer = auth("customer")
    key = uuid.uuid4().hex
    pay: dict[str, Any] = {"method": "wechat_pay", "payment_method": None} if plain else {}

    async def provider_down(*args: Any, **kwargs: Any) -> Any:
        raise PaymentProviderUnavailable("the provider does not answer")

    with monkeypatch.context() as patched:
        patched.setattr(orders_service, "start_payment", provider_down)
        failed = await order(sim_orders, buyer, campaign_id, key=key, **pay)
    assert failed.status_code == 503, failed.text
    for _ in range(2):
        retried = await order(sim_orders, buyer, campaign_id, key=key, **pay)
        assert retried.status_code == 201, retried.text
    assert await reserved(sim_orders, campaign_id) == (1, {"S": 1, "M": 0})
    rows = await placed_rows(sim_orders, campaign_id)
    assert len(rows) == 1
    assert rows[0]["amount"] == rows[0]["first_amount"] == 2000
    expected = "requires_payment_method" if plain else "deposit_paid"
    assert (retried.json()["payment"]["status"] if plain else retried.json()["status"]) == (
        expected
    )


async def test_a_payment_row_the_payment_layer_refuses_is_answered_by_the_full_path(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    """A full prepayment above the payment layer's maximum (5,000,000 fen in the tests): the
    plain path writes nothing and the full path refuses it, taking no units."""
    campaign_id, _ = await open_campaign(sim_orders, auth, capacity=1000, deposit={"type": "full"})
    first, path = await wechat(sim_orders, campaign_id, auth("customer"))
    assert (first.status_code, path) == (201, "plain"), first.text
    large, path = await wechat(sim_orders, campaign_id, auth("customer"), quantity=400)
    assert path == "full"  # the plain statement never ran
    assert large.status_code == 422, large.text
    assert large.json()["code"] == "payment_amount_above_maximum"
    assert await reserved(sim_orders, campaign_id) == (1, {"S": 1, "M": 0})
