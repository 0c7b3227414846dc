"""The rules of group buys one by one: bad offers, refused joins (expired, full, formed, twice,
one group per customer), who may set an offer, and changes after the first payment. Every
refusal is problem+json with a stable code and changes nothing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import TokenFactory
from tests.orders.group_support import (
    GROUP_PRICE,
    LIST_PRICE,
    group,
    group_campaign,
    join,
    joined,
    make_group_due,
    offer_body,
    open_group,
    opened,
)
from tests.orders.presale_support import open_campaign, run_jobs
from tests.shared.payments.support import PaymentsApp, new_merchant


async def _unchanged(
    app: PaymentsApp, campaign_id: str, staff: dict[str, str], buyer: dict[str, str], held: int
) -> None:
    """No order for ``buyer``, and the campaign holds the units it held before."""
    orders = await app.client.get("/v1/orders", headers=buyer)
    assert orders.json()["items"] == []
    campaign = await app.client.get(f"/v1/presales/{campaign_id}", headers=staff)
    assert campaign.json()["reserved_quantity"] == held


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    return body


@pytest.mark.parametrize("size", [1, 0, 101, -3, "3", 2.5, None])
async def test_a_group_size_out_of_range_is_refused_naming_the_field(
    sim_orders: PaymentsApp, auth: TokenFactory, size: Any
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth, deposit={"type": "full"})
    response = await sim_orders.client.put(
        f"/v1/presales/{campaign_id}/group-buy", json=offer_body(group_size=size), headers=staff
    )
    problem = _problem(response, 422, "validation_error")
    assert [e["path"] for e in problem["errors"]] == ["body.group_size"]
    offer = await sim_orders.client.get(f"/v1/presales/{campaign_id}/group-buy")
    _problem(offer, 404, "group_buy_not_enabled")


@pytest.mark.parametrize(
    ("prices", "field"),
    [
        ([{"sku": "S", "unit_price": 9900}], "prices"),
        ([{"sku": "S", "unit_price": 9900}, {"sku": "S", "unit_price": 9900}], "prices"),
        (
            [{"sku": "S", "unit_price": 9900}, {"sku": "XL", "unit_price": 9900}],
            "prices",
        ),
        (
            [{"sku": "S", "unit_price": LIST_PRICE + 1}, {"sku": "M", "unit_price": 9900}],
            "prices.S.unit_price",
        ),
        (
            [
                {"sku": "S", "unit_price": 9900, "leader_unit_price": 9900},
                {"sku": "M", "unit_price": 9900},
            ],
            "prices.S.leader_unit_price",
        ),
    ],
    ids=["a-variant-missing", "twice", "unknown-sku", "above-list-price", "leader-not-lower"],
)
async def test_group_prices_must_cover_each_variant_below_the_list_price(
    sim_orders: PaymentsApp, auth: TokenFactory, prices: list[dict[str, Any]], field: str
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth, deposit={"type": "full"})
    response = await sim_orders.client.put(
        f"/v1/presales/{campaign_id}/group-buy", json=offer_body(prices=prices), headers=staff
    )
    assert _problem(response, 422, "group_prices_invalid")["field"] == field
    offer = await sim_orders.client.get(f"/v1/presales/{campaign_id}/group-buy")
    _problem(offer, 404, "group_buy_not_enabled")


async def test_a_deposit_above_a_group_price_is_refused(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(
        sim_orders, auth, deposit={"type": "deposit", "unit_deposit": 9000}
    )
    response = await sim_orders.client.put(
        f"/v1/presales/{campaign_id}/group-buy", json=offer_body(), headers=staff
    )
    assert _problem(response, 422, "group_prices_invalid")["field"] == "prices.S.unit_price"


async def test_joining_an_expired_group_is_refused_and_changes_nothing(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await group_campaign(sim_orders, auth)
    code, _ = await opened(sim_orders, auth("customer"), campaign_id)
    await make_group_due(sim_orders, code)  # past its deadline; the job has not run yet
    buyer = auth("customer")
    _problem(await join(sim_orders, buyer, code), 409, "group_expired")
    await _unchanged(sim_orders, campaign_id, staff, buyer, held=1)
    public = await group(sim_orders, code)
    assert (public["places_left"], public["seconds_left"]) == (2, 0)


async def test_joining_a_full_group_is_refused_and_changes_nothing(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await group_campaign(sim_orders, auth, offer=offer_body(group_size=2))
    code, _ = await opened(sim_orders, auth("customer"), campaign_id)
    await joined(sim_orders, auth("customer"), code, payment_method=None)  # holds the place
    buyer = auth("customer")
    _problem(await join(sim_orders, buyer, code), 409, "group_full")
    await _unchanged(sim_orders, campaign_id, staff, buyer, held=2)
    assert (await group(sim_orders, code))["status"] == "open"


async def test_joining_ones_own_group_twice_is_refused(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, _ = await group_campaign(sim_orders, auth)
    leader, member = auth("customer"), auth("customer")
    code, _ = await opened(sim_orders, leader, campaign_id)
    _problem(await join(sim_orders, leader, code), 409, "group_already_member")
    await joined(sim_orders, member, code)
    _problem(await join(sim_orders, member, code), 409, "group_already_member")
    # One group per customer unless the offer allows more: opening a second is refused too.
    other = await open_group(sim_orders, member, campaign_id)
    _problem(other, 409, "group_one_per_customer")
    public = await group(sim_orders, code)
    assert (public["places_left"], len(public["members"])) == (1, 2)


async def test_with_multiple_groups_allowed_a_customer_joins_others_but_never_one_twice(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, _ = await group_campaign(sim_orders, auth, offer=offer_body(multiple_groups=True))
    me = auth("customer")
    mine, _ = await opened(sim_orders, me, campaign_id)
    theirs, _ = await opened(sim_orders, auth("customer"), campaign_id)
    assert (await join(sim_orders, me, theirs)).status_code == 201
    _problem(await join(sim_orders, me, theirs), 409, "group_already_member")
    _problem(await join(sim_orders, me, mine), 409, "group_already_member")


async def test_a_customer_whose_group_failed_may_open_another(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, _ = await group_campaign(sim_orders, auth)
    me = auth("customer")
    code, _ = await opened(sim_orders, me, campaign_id, payment_method=None)
    _problem(await open_group(sim_orders, me, campaign_id), 409, "group_one_per_customer")
    await make_group_due(sim_orders, code)
    await run_jobs(sim_orders)
    assert (await group(sim_orders, code))["status"] == "failed"
    assert (await open_group(sim_orders, me, campaign_id)).status_code == 201


async def test_unknown_codes_campaigns_without_groups_and_bad_bodies_are_refused(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    buyer = auth("customer")
    _problem(await sim_orders.client.get("/v1/groups/ZZZZZZZZZZ"), 404, "group_not_found")
    _problem(await join(sim_orders, buyer, "ZZZZZZZZZZ"), 404, "group_not_found")
    _problem(await sim_orders.client.get("/v1/groups/bad%00code"), 422, "validation_error")
    plain, staff = await open_campaign(sim_orders, auth, deposit={"type": "full"})
    _problem(await open_group(sim_orders, buyer, plain), 404, "group_buy_not_enabled")
    await _unchanged(sim_orders, plain, staff, buyer, held=0)
    campaign_id, _ = await group_campaign(sim_orders, auth)
    for bad in ({"display_name": "a\x00b"}, {"display_name": ""}, {"avatar_url": "javascript:x"}):
        response = await open_group(sim_orders, buyer, campaign_id, **bad)
        _problem(response, 422, "validation_error")
    missing = await sim_orders.client.get(f"/v1/presales/{uuid.uuid4()}/groups")
    _problem(missing, 404, "presale_not_found")
    alone = await sim_orders.client.get(f"/v1/orders/{uuid.uuid4()}/group", headers=buyer)
    _problem(alone, 404, "order_not_found")


async def test_only_the_merchants_staff_set_an_offer_and_only_on_a_running_campaign(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await open_campaign(sim_orders, auth, deposit={"type": "full"})
    path = f"/v1/presales/{campaign_id}/group-buy"
    stranger = auth("staff", merchant_id=new_merchant())
    _problem(
        await sim_orders.client.put(path, json=offer_body(), headers=stranger),
        404,
        "presale_not_found",
    )
    customer = await sim_orders.client.put(path, json=offer_body(), headers=auth("customer"))
    _problem(customer, 403, "role_required")
    await sim_orders.client.post(f"/v1/presales/{campaign_id}/cancel", headers=staff)
    ended = await sim_orders.client.put(path, json=offer_body(), headers=staff)
    _problem(ended, 409, "presale_state_conflict")
    _problem(await sim_orders.client.get(path), 404, "group_buy_not_enabled")


async def test_after_the_first_payment_the_offer_changes_only_in_the_buyers_favour(
    sim_orders: PaymentsApp, auth: TokenFactory
) -> None:
    campaign_id, staff = await group_campaign(sim_orders, auth)
    code, _ = await opened(sim_orders, auth("customer"), campaign_id)
    path = f"/v1/presales/{campaign_id}/group-buy"
    dearer = offer_body(
        prices=[{"sku": "S", "unit_price": GROUP_PRICE + 100}, {"sku": "M", "unit_price": 9900}]
    )
    for body, field in (
        (dearer, "prices.S.unit_price"),
        (offer_body(group_size=4), "group_size"),
        (offer_body(time_limit_minutes=60), "time_limit_minutes"),
    ):
        refused = await sim_orders.client.put(path, json=body, headers=staff)
        assert _problem(refused, 422, "presale_terms_locked")["field"] == field
    kinder = offer_body(group_size=2, virtual_completion=True, multiple_groups=True)
    accepted = await sim_orders.client.put(path, json=kinder, headers=staff)
    assert accepted.status_code == 200, accepted.text
    assert (accepted.json()["group_size"], accepted.json()["virtual_completion"]) == (2, True)
    withdrawn = await sim_orders.client.put(path, json=offer_body(group_size=2), headers=staff)
    assert _problem(withdrawn, 422, "presale_terms_locked")["field"] == "multiple_groups"
    # The group opened before keeps the size it was opened with.
    assert (await group(sim_orders, code))["size"] == 3
    new, _ = await opened(sim_orders, auth("customer"), campaign_id)
    assert (await group(sim_orders, new))["size"] == 2
