"""Helpers of the pickup tests: an approved leader, a registered point."""

from __future__ import annotations

from typing import Any

from tests.conftest import TokenFactory
from tests.shared.payments.support import PaymentsApp


def point_body(merchant_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "merchant_id": merchant_id,
        "name": "翠苑一区 3 号楼门卫室",
        "address": "Hangzhou, Xihu, Cuiyuan 1st Community, Building 3",
        "contact_name": "Wang Fang",
        "contact_phone": "13900001111",
        "opening_hours": "每天 9:00-21:00",
        **overrides,
    }


async def merchant_of(app: PaymentsApp, campaign_id: str, staff: dict[str, str]) -> str:
    response = await app.client.get(f"/v1/presales/{campaign_id}", headers=staff)
    assert response.status_code == 200, response.text
    return str(response.json()["merchant_id"])


async def approved_leader(
    app: PaymentsApp, auth: TokenFactory, merchant_id: str, staff: dict[str, str]
) -> tuple[dict[str, str], dict[str, Any]]:
    """A customer who applied to lead pickup points and whom the merchant's staff approved."""
    leader = auth("customer")
    applied = await app.client.post(
        "/v1/pickup-points/leaders",
        json={"merchant_id": merchant_id, "real_name": "Wang Fang", "phone": "13900001111"},
        headers=leader,
    )
    assert applied.status_code == 201, applied.text
    approved = await app.client.post(
        f"/v1/pickup-points/leaders/{applied.json()['id']}/approve", json={}, headers=staff
    )
    assert approved.status_code == 200, approved.text
    return leader, approved.json()


async def pickup_point(
    app: PaymentsApp, auth: TokenFactory, merchant_id: str, staff: dict[str, str]
) -> tuple[dict[str, str], dict[str, Any]]:
    """An active point of an approved leader: the leader's header and the point."""
    leader, _ = await approved_leader(app, auth, merchant_id, staff)
    created = await app.client.post(
        "/v1/pickup-points", json=point_body(merchant_id), headers=leader
    )
    assert created.status_code == 201, created.text
    return leader, created.json()
