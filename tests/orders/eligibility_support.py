"""Helpers of the eligibility tests: a merchant with member tiers, campaigns with their
eligibility, purchase codes, and a campaign brought to its opening.

Times are arranged behind the API's back only here (:func:`make_opening_due`,
:func:`expire_codes`), the way ``presale_support.make_due`` does for closes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from services.orders.models import presale_campaign, purchase_code
from tests.conftest import TokenFactory
from tests.orders.presale_support import campaign_body
from tests.shared.payments.support import PaymentsApp, new_merchant

TIERS = [
    {"code": "normal", "name": "普通", "rank": 0},
    {"code": "silver", "name": "银卡", "rank": 1},
    {"code": "gold", "name": "金卡", "rank": 2},
]


@dataclass
class Merchant:
    app: PaymentsApp
    auth: TokenFactory
    id: str

    @property
    def staff(self) -> dict[str, str]:
        return self.auth("staff", merchant_id=self.id)

    async def campaign(self, *, publish: bool = True, **overrides: Any) -> str:
        """A campaign of this merchant (published unless told: open when it opens now)."""
        created = await self.app.client.post(
            "/v1/presales", json=campaign_body(**overrides), headers=self.staff
        )
        assert created.status_code == 201, created.text
        campaign_id = str(created.json()["id"])
        if publish:
            published = await self.app.client.post(
                f"/v1/presales/{campaign_id}/publish", headers=self.staff
            )
            assert published.status_code == 200, published.text
        return campaign_id

    async def upcoming(self, **overrides: Any) -> str:
        """A published campaign opening in an hour (reservations are taken until then)."""
        opens = datetime.now(UTC) + timedelta(hours=1)
        return await self.campaign(opens_at=opens.isoformat(), **overrides)

    async def set_eligibility(self, campaign_id: str, **body: Any) -> dict[str, Any]:
        response = await self.put_eligibility(campaign_id, **body)
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    async def put_eligibility(self, campaign_id: str, **body: Any) -> Any:
        return await self.app.client.put(
            f"/v1/presales/{campaign_id}/eligibility", json=body, headers=self.staff
        )

    async def tiers(self) -> None:
        response = await self.app.client.put(
            "/v1/presales/member-tiers", json={"tiers": TIERS}, headers=self.staff
        )
        assert response.status_code == 200, response.text

    async def member(self, customer: str, tier: str | None) -> None:
        response = await self.app.client.put(
            f"/v1/presales/members/{customer}", json={"tier_code": tier}, headers=self.staff
        )
        assert response.status_code == 200, response.text

    async def codes(self, campaign_id: str, **body: Any) -> list[dict[str, Any]]:
        """A batch of codes (``count=`` or ``customer_ids=``), valid for a day unless told."""
        body.setdefault("expires_at", (datetime.now(UTC) + timedelta(days=1)).isoformat())
        response = await self.app.client.post(
            f"/v1/presales/{campaign_id}/purchase-codes", json=body, headers=self.staff
        )
        assert response.status_code == 201, response.text
        issued: list[dict[str, Any]] = response.json()["codes"]
        return issued

    async def get(self, path: str) -> dict[str, Any]:
        response = await self.app.client.get(path, headers=self.staff)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def merchant(app: PaymentsApp, auth: TokenFactory) -> Merchant:
    return Merchant(app, auth, new_merchant())


def customer(auth: TokenFactory) -> tuple[str, dict[str, str]]:
    """A customer's id and Authorization header."""
    sub = f"c_{uuid.uuid4().hex[:10]}"
    return sub, auth("customer", sub=sub)


async def code_rows(app: PaymentsApp, campaign_id: str) -> list[dict[str, Any]]:
    """Every purchase code row of a campaign, as stored."""
    p = purchase_code
    async with app.app.state.sessionmaker() as session:
        rows = await session.execute(select(p).where(p.c.campaign_id == uuid.UUID(campaign_id)))
        return [dict(r._mapping) for r in rows]


async def expire_codes(app: PaymentsApp, campaign_id: str) -> None:
    """Every code of the campaign past its expiry."""
    p = purchase_code
    past = datetime.now(UTC) - timedelta(seconds=1)
    async with app.app.state.sessionmaker() as session, session.begin():
        await session.execute(
            update(p).where(p.c.campaign_id == uuid.UUID(campaign_id)).values(expires_at=past)
        )


async def make_opening_due(app: PaymentsApp, campaign_id: str) -> None:
    """Brings a published campaign's opening (and its ``presale.open`` job) to now."""
    past = datetime.now(UTC) - timedelta(seconds=2)
    c, j = presale_campaign, app.app.state.tables.scheduled_job
    async with app.app.state.sessionmaker() as session, session.begin():
        await session.execute(
            update(c).where(c.c.id == uuid.UUID(campaign_id)).values(opens_at=past)
        )
        await session.execute(
            update(j).where(j.c.kind == "presale.open", j.c.key == campaign_id).values(run_at=past)
        )
