"""Crowdfunding from end to end on real processes, through the gateway: a creator's project
reviewed by an admin and launched, backers pledging through a distributor's link (cards
saved, nothing charged; a WeChat Pay pledge paid at once with the simulated provider), the
deadline run by the worker, every card charged once, and the
pledge events reaching referrals as the distributor's commissions.

The deadline is ten days away when the project is approved (the rules allow no less than a
day); it is brought to now behind the API's back, the one thing arranged here, and the
worker then runs it as it would at that time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from services.crowdfund.models import platform as crowdfund_platform
from services.crowdfund.models import project
from shared.db import make_engine
from shared.wakeup import CHANNEL
from tests.conftest import Platform, TokenFactory
from tests.crowdfund.project_support import project_body, tier_body
from tests.helpers import eventually

pytestmark = pytest.mark.xdist_group("processes")

PRICE = 9900  # the tier: one purifier


async def test_a_project_funded_through_a_distributors_link(
    platform: Platform, platform_db_urls: dict[str, str], auth: TokenFactory
) -> None:
    merchant = f"m_cf_{uuid.uuid4().hex[:8]}"
    staff = auth("staff", merchant_id=merchant)
    seller_user = f"d_{uuid.uuid4().hex[:8]}"
    seller_auth = auth("customer", sub=seller_user)
    backers = [auth("customer") for _ in range(3)]
    async with httpx.AsyncClient(base_url=platform.gateway, timeout=30) as gw:

        async def post(path: str, json: dict[str, Any], headers: dict[str, str]) -> Any:
            response = await gw.post(
                path, json=json, headers={**headers, "Idempotency-Key": uuid.uuid4().hex}
            )
            assert response.status_code in (200, 201), response.text
            return response.json()

        async def get(path: str, headers: dict[str, str]) -> Any:
            response = await gw.get(path, headers=headers)
            assert response.status_code == 200, response.text
            return response.json()

        # The merchant's program and a distributor with a link to share.
        rules = await gw.put(
            "/v1/commission-rules",
            json={"enrollment": "open", "level1_bps": 1000, "holding_days": 0},
            headers=staff,
        )
        assert rules.status_code == 200, rules.text
        seller = await post(
            "/v1/distributors",
            {"merchant_id": merchant, "real_name": "Li", "phone": "13800000000"},
            seller_auth,
        )

        # The creator's project, reviewed by an admin: live at once (its launch has passed).
        goal = 2 * PRICE
        project_id = (await post("/v1/projects", project_body(goal=goal), staff))["id"]
        reward_id = (await post(f"/v1/projects/{project_id}/rewards", tier_body(), staff))["id"]
        await post(f"/v1/projects/{project_id}/submit", {}, staff)
        approved = await post(f"/v1/projects/{project_id}/approve", {}, auth("admin"))
        assert approved["status"] == "live"
        link = await post(
            "/v1/referral-links",
            {"distributor_id": seller["id"], "target_type": "project", "target_id": project_id},
            seller_auth,
        )

        # Backers arrive through the link and pledge with cards: saved, nothing charged.
        pledges = []
        for backer in backers:
            await post(f"/v1/referral-links/{link['code']}/click", {}, backer)
            pledged = await post(
                f"/v1/projects/{project_id}/pledges",
                {
                    "reward_id": reward_id,
                    "amount": PRICE,
                    "region": "CN",
                    "method": "card",
                    "payment_method": "pm_card_visa",
                    "referral_code": link["code"],
                },
                backer,
            )
            assert pledged["status"] == "confirmed", pledged
            pledges.append((backer, pledged))
        # A fourth backer pays with WeChat Pay at once (a wallet cannot be charged later) and
        # completes it with the simulated provider, through the gateway.
        wallet_backer = auth("customer")
        wallet = await post(
            f"/v1/projects/{project_id}/pledges",
            {
                "reward_id": reward_id,
                "amount": PRICE,
                "region": "CN",
                "method": "wechat_pay",
                "payment_method": "pm_wechat_pay",
            },
            wallet_backer,
        )
        assert wallet["status"] == "pending", wallet
        paid = await post(
            f"/v1/pledges/payments/{wallet['payment']['id']}/simulate-action",
            {"succeed": True},
            wallet_backer,
        )
        assert paid["status"] == "succeeded", paid

        async def wallet_collected() -> dict[str, Any] | None:
            mine = await get(f"/v1/pledges/{wallet['id']}", wallet_backer)
            return mine if mine["status"] == "collected" else None

        collected = await eventually(wallet_collected, "the wallet payment collects the pledge")
        assert collected["paid_total"] == PRICE
        public = await get(f"/v1/projects/{project_id}/public", {})
        assert public["raised"] == 4 * PRICE

    # Ten days pass: the deadline is now.
    engine = make_engine(platform_db_urls["crowdfund"], pool_size=1)
    jobs = crowdfund_platform.scheduled_job
    past = datetime.now(UTC) - timedelta(seconds=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                update(project)
                .where(project.c.id == uuid.UUID(project_id))
                .values(deadline_at=past)
            )
            moved = await conn.execute(
                update(jobs)
                .where(jobs.c.kind == "project.deadline", jobs.c.key == project_id)
                .values(run_at=past)
                .returning(jobs.c.id)
            )
            assert moved.first() is not None
            # Time moved by hand: the worker slept until the old run_at (or its 10 s safety
            # net), so it is woken as the clock would have woken it.
            await conn.execute(select(func.pg_notify(CHANNEL, "")))
    finally:
        await engine.dispose()

    async with httpx.AsyncClient(base_url=platform.gateway, timeout=30) as gw:

        async def charged() -> list[dict[str, Any]] | None:
            mine = []
            for backer, pledged in pledges:
                answer = await gw.get(f"/v1/pledges/{pledged['id']}", headers=backer)
                assert answer.status_code == 200, answer.text
                mine.append(answer.json())
            return mine if all(p["status"] == "collected" for p in mine) else None

        done = await eventually(charged, "the worker runs the deadline and charges every card")
        assert [p["paid_total"] for p in done] == [PRICE] * 3
        result = await gw.get(f"/v1/projects/{project_id}", headers=staff)
        assert result.json()["status"] == "succeeded"

        # Each charge reached referrals: 10 % for the distributor, released at once
        # (holding_days 0).
        async def commissions() -> list[tuple[str, int, str]] | None:
            listed = await gw.get("/v1/commissions?limit=10", headers=seller_auth)
            items = [(c["source_type"], c["amount"], c["state"]) for c in listed.json()["items"]]
            ready = [i for i in items if i[2] == "available"]
            return items if len(ready) == 3 else None

        found = await eventually(commissions, "the pledge events reach referrals", seconds=60)
        assert sorted(found) == [("pledge", PRICE // 10, "available")] * 3
