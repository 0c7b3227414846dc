"""Referral links: codes, share URLs, QR codes, clicks, binding (锁客) and conversions."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import TokenFactory
from tests.referrals.commission_support import Program, pay


async def _link(
    client: httpx.AsyncClient, who: dict[str, str], distributor: dict[str, Any], **body: Any
) -> httpx.Response:
    return await client.post(
        "/v1/referral-links", json={"distributor_id": distributor["id"], **body}, headers=who
    )


async def test_a_link_has_a_code_a_share_url_and_qr_codes(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    await program.rules()
    user = f"u_{uuid.uuid4().hex[:8]}"
    seller = await program.join(user)
    made = await _link(
        referrals_client, auth("customer", sub=user), seller, target_type="presale", target_id="c1"
    )
    assert made.status_code == 201, made.text
    link = made.json()
    assert len(link["code"]) == 10
    assert link["share_url"].endswith("/r/" + link["code"])
    png = await referrals_client.get(link["qr_png"])
    assert (png.status_code, png.headers["content-type"]) == (200, "image/png")
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    svg = await referrals_client.get(link["qr_svg"])
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in svg.content
    missing = await referrals_client.get("/v1/referral-links/NOSUCHCODE/qr.png")
    assert (missing.status_code, missing.json()["code"]) == (404, "referral_link_not_found")
    bad = await referrals_client.get("/v1/referral-links/%00/qr.png")
    assert bad.status_code == 422


@pytest.mark.parametrize(
    ("body", "status"),
    [({"target_type": "general", "target_id": "c1"}, 422), ({"target_type": "presale"}, 422)],
)
async def test_a_link_target_must_fit_its_type(
    referrals_client: httpx.AsyncClient, auth: TokenFactory, body: dict[str, Any], status: int
) -> None:
    program = Program(referrals_client, auth)
    await program.rules()
    user = f"u_{uuid.uuid4().hex[:8]}"
    seller = await program.join(user)
    answer = await _link(referrals_client, auth("customer", sub=user), seller, **body)
    assert (answer.status_code, answer.json()["code"]) == (status, "referral_link_target_invalid")
    someone = await _link(referrals_client, auth("customer"), seller)
    assert someone.status_code == 404  # only the distributor makes their links


async def test_a_click_binds_the_customer_first_touch_and_counts(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    await program.rules(attribution="first_touch", level2_bps=0)
    users = [f"u_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    first, second = [await program.join(u) for u in users]
    links = [
        (await _link(referrals_client, auth("customer", sub=u), d)).json()
        for u, d in zip(users, (first, second), strict=True)
    ]
    customer = f"c_{uuid.uuid4().hex[:8]}"
    me = auth("customer", sub=customer)
    bound = await referrals_client.post(f"/v1/referral-links/{links[0]['code']}/click", headers=me)
    assert bound.json()["bound"] is True
    later = await referrals_client.post(f"/v1/referral-links/{links[1]['code']}/click", headers=me)
    assert later.json()["bound"] is False  # first touch: the first binding stays
    anonymous = await referrals_client.post(f"/v1/referral-links/{links[1]['code']}/click")
    assert anonymous.json()["bound"] is False
    await pay(referrals_client, program, customer, None, 10000)  # no code: the binding
    assert (await program.balances(first["id"]))["pending"] == 1000
    assert (await program.balances(second["id"]))["pending"] == 0
    listed = await referrals_client.get(
        "/v1/referral-links", headers=auth("customer", sub=users[1])
    )
    (mine,) = listed.json()["items"]
    assert (mine["clicks"], mine["conversions"]) == (2, 0)


async def test_last_touch_a_code_at_checkout_wins_and_counts_as_the_links_conversion(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    await program.rules(attribution="last_touch", level2_bps=0)
    users = [f"u_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    first, second = [await program.join(u) for u in users]
    link = (await _link(referrals_client, auth("customer", sub=users[1]), second)).json()
    customer = f"c_{uuid.uuid4().hex[:8]}"
    await referrals_client.post(
        f"/v1/referral-links/{first['code']}/click", headers=auth("customer", sub=customer)
    )  # not a link code: 404, nothing bound
    first_link = (await _link(referrals_client, auth("customer", sub=users[0]), first)).json()
    await referrals_client.post(
        f"/v1/referral-links/{first_link['code']}/click", headers=auth("customer", sub=customer)
    )
    await pay(referrals_client, program, customer, link["code"], 10000)  # the link code
    assert (await program.balances(second["id"]))["pending"] == 1000
    assert (await program.balances(first["id"]))["pending"] == 0
    listed = await referrals_client.get(
        "/v1/referral-links", headers=auth("customer", sub=users[1])
    )
    assert listed.json()["items"][0]["conversions"] == 1


async def test_a_distributor_clicking_their_own_link_is_not_bound(
    referrals_client: httpx.AsyncClient, auth: TokenFactory
) -> None:
    program = Program(referrals_client, auth)
    await program.rules()
    user = f"u_{uuid.uuid4().hex[:8]}"
    seller = await program.join(user)
    link = (await _link(referrals_client, auth("customer", sub=user), seller)).json()
    own = await referrals_client.post(
        f"/v1/referral-links/{link['code']}/click", headers=auth("customer", sub=user)
    )
    assert own.json()["bound"] is False
