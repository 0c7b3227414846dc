"""The deadline of a crowdfunding project: every saved card charged, with a worker killed.

    .venv/bin/python bench/deadline_charge.py [--pledges 10000] [--concurrency 32]

Starts, on a fresh database of the machine's PostgreSQL (127.0.0.1:5432), the crowdfund API
(WORKER_ENABLED=false) and one worker process (WORKER_ENABLED=true, the simulated provider,
CHARGE_RATE_PER_SECOND=0: no throttle), as deployed. Through the API it makes a live
project and ``--pledges`` card pledges (each backer with their own token, a card saved with
a SetupIntent, nothing charged). Then the deadline is brought to now (the one thing arranged
behind the API's back) and the worker charges every card. When half are charged the worker
is killed (SIGKILL) and a new one started. It prints charges/s, the time until every pledge
is settled (collected; the new worker waits for the killed one's leases, 60 s, to run out),
and the double charges: pledges with more than one succeeded charge,
counted both in our payment rows and in the simulated provider's own records (must be 0).

The reference, in the same run: a loop that only inserts as many payment rows, one
transaction each, from as many connections as the worker charges at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_proxy import free_port, peak_rss_mib, production, wait_http  # noqa: E402
from bench.support import fresh_database, stopped_at_exit  # noqa: E402
from shared.auth import TokenIssuer, public_pem  # noqa: E402
from shared.db import make_engine  # noqa: E402
from shared.wakeup import CHANNEL  # noqa: E402

PRICE = 9900
CONCURRENCY = 4  # CHARGE_CONCURRENCY of the worker, and the reference's connections

_COLLECTED = text(
    "SELECT count(*) FILTER (WHERE status = 'collected') AS collected,"
    " count(*) FILTER (WHERE status IN ('charge_due', 'charging')) AS due"
    " FROM pledge WHERE project_id = :p"
)
# Our side: a pledge whose charges (payment rows of its reference) succeeded more than once.
_DOUBLE_OURS = text(
    "SELECT count(*) FROM (SELECT reference FROM payment"
    " WHERE reference LIKE :charges AND status = 'succeeded'"
    " GROUP BY reference HAVING count(*) > 1) AS twice"
)
# The provider's side: succeeded PaymentIntents per pledge, from the simulated provider's rows.
_DOUBLE_PROVIDER = text(
    "SELECT count(*) FROM (SELECT data -> 'metadata' ->> 'reference' AS reference"
    " FROM simulated_object WHERE type = 'payment_intent' AND data ->> 'status' = 'succeeded'"
    " AND data -> 'metadata' ->> 'reference' LIKE :charges"
    " GROUP BY 1 HAVING count(*) > 1) AS twice"
)
_SUCCEEDED_PROVIDER = text(
    "SELECT count(*) FROM simulated_object WHERE type = 'payment_intent'"
    " AND data ->> 'status' = 'succeeded' AND data -> 'metadata' ->> 'reference' LIKE :charges"
)
_REFERENCE_ROW = text(
    "INSERT INTO payment (id, provider, reference, merchant_id, customer_id, method,"
    " capture_method, off_session, amount, currency, status)"
    " VALUES (:id, 'simulated', :ref, 'm_bench', :customer, 'card', 'automatic', true,"
    " :amount, 'CNY', 'succeeded')"
)


def project_body() -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "title": "Bench purifier",
        "story": "A benchmark.",
        "image_urls": [],
        "video_urls": [],
        "category": "home",
        "currency": "CNY",
        "goal": PRICE,
        "launch_at": (now - timedelta(minutes=1)).isoformat(),
        "deadline_at": (now + timedelta(days=2)).isoformat(),
        "risks": "None.",
        "delivery_promise": "Soon.",
    }


async def make_project(api: str, staff: str, admin: str) -> tuple[str, str]:
    async with httpx.AsyncClient(base_url=api, timeout=60) as http:
        staff_h = {"Authorization": f"Bearer {staff}"}
        created = await http.post("/v1/projects", json=project_body(), headers=staff_h)
        assert created.status_code == 201, created.text
        project_id = created.json()["id"]
        tier = {
            "title": "One purifier",
            "description": "One.",
            "amount": PRICE,
            "delivery_month": "2027-06",
            "shipping_fees": {"*": 0},
        }
        reward = await http.post(f"/v1/projects/{project_id}/rewards", json=tier, headers=staff_h)
        assert reward.status_code == 201, reward.text
        submitted = await http.post(f"/v1/projects/{project_id}/submit", headers=staff_h)
        assert submitted.status_code == 200, submitted.text
        approved = await http.post(
            f"/v1/projects/{project_id}/approve",
            json={},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert approved.json()["status"] == "live", approved.text
        return project_id, reward.json()["id"]


async def pledge_all(
    api: str, project_id: str, reward_id: str, tokens: list[str], concurrency: int
) -> float:
    """Every backer pledges once with a card that saves; returns the seconds it took."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for token in tokens:
        queue.put_nowait(token)
    body = {
        "reward_id": reward_id,
        "amount": PRICE,
        "region": "CN",
        "method": "card",
        "payment_method": "pm_card_visa",
    }
    started = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=api, timeout=120, limits=httpx.Limits(max_connections=concurrency)
    ) as http:

        async def backer() -> None:
            while not queue.empty():
                token = queue.get_nowait()
                headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex}
                answer = await http.post(
                    f"/v1/projects/{project_id}/pledges", json=body, headers=headers
                )
                assert answer.status_code == 201, answer.text
                assert answer.json()["status"] == "confirmed", answer.text

        await asyncio.gather(*(backer() for _ in range(concurrency)))
    return time.perf_counter() - started


async def reference(url: str, n: int) -> float:
    """N payment rows inserted one transaction each from CONCURRENCY connections: rows/s."""
    engine = make_engine(url, pool_size=CONCURRENCY)
    ids = iter(range(n))
    try:

        async def loop() -> None:
            for i in ids:
                async with engine.begin() as conn:
                    await conn.execute(
                        _REFERENCE_ROW,
                        {
                            "id": uuid.uuid4(),
                            "ref": f"bench:{i}:charge",
                            "customer": f"c{i}",
                            "amount": PRICE,
                        },
                    )

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(CONCURRENCY)))
        return n / (time.perf_counter() - started)
    finally:
        await engine.dispose()


async def run(args: argparse.Namespace, tmp: Path) -> None:
    async with fresh_database("crowdfund") as url:
        with stopped_at_exit() as procs:
            key = ec.generate_private_key(ec.SECP256R1())
            (tmp / "jwt-public.pem").write_bytes(public_pem(key))
            issuer = TokenIssuer(key, issuer="qunbuy-gateway", audience="qunbuy", ttl_seconds=7200)
            env = {
                "QUNBUY_MODE": "production",
                "DATABASE_URL": url,
                "JWT_PUBLIC_KEY_FILE": str(tmp / "jwt-public.pem"),
                "EVENT_SECRET": "bench",
                "PAYMENT_PROVIDER": "simulated",
                "SIMULATED_WEBHOOK_SECRET": "whsec_bench",
                "CHARGE_RATE_PER_SECOND": "0",
                "CHARGE_CONCURRENCY": str(CONCURRENCY),
                "LOG_LEVEL": "WARNING",
            }
            ports = {"api": free_port(), "worker": free_port(), "worker2": free_port()}
            api = production("crowdfund", ports["api"], {**env, "WORKER_ENABLED": "false"})
            procs.append(api)
            wait_http(f"http://127.0.0.1:{ports['api']}/healthz", timeout=120)
            api_url = f"http://127.0.0.1:{ports['api']}"
            staff = issuer.issue("bench-staff", ["staff"], merchant_id="m_bench")
            admin = issuer.issue("bench-admin", ["admin"])
            project_id, reward_id = await make_project(api_url, staff, admin)
            tokens = [issuer.issue(f"backer-{i}", ["customer"]) for i in range(args.pledges)]
            took = await pledge_all(api_url, project_id, reward_id, tokens, args.concurrency)
            print(
                f"{args.pledges} card pledges saved in {took:.1f} s "
                f"({args.pledges / took:.0f}/s); {os.cpu_count()} CPUs"
            )

            worker = production("crowdfund", ports["worker"], {**env, "WORKER_ENABLED": "true"})
            procs.append(worker)
            wait_http(f"http://127.0.0.1:{ports['worker']}/healthz", timeout=120)
            engine = make_engine(url, pool_size=1)
            try:
                async with engine.begin() as conn:
                    past = datetime.now(UTC) - timedelta(seconds=1)
                    await conn.execute(
                        text("UPDATE project SET deadline_at = :t WHERE id = :p"),
                        {"t": past, "p": uuid.UUID(project_id)},
                    )
                    await conn.execute(
                        text(
                            "UPDATE scheduled_job SET run_at = :t"
                            " WHERE kind = 'project.deadline' AND key = :p"
                        ),
                        {"t": past, "p": project_id},
                    )
                    await conn.execute(text(f"SELECT pg_notify('{CHANNEL}', '')"))
                started = time.perf_counter()
                killed_at: float | None = None
                restarted = None
                while True:
                    async with engine.connect() as conn:
                        row = (await conn.execute(_COLLECTED, {"p": uuid.UUID(project_id)})).one()
                    if killed_at is None and row.collected >= args.pledges // 2:
                        worker.send_signal(signal.SIGKILL)
                        worker.wait()
                        killed_at = time.perf_counter() - started
                        killed_count = row.collected
                        restarted = production(
                            "crowdfund", ports["worker2"], {**env, "WORKER_ENABLED": "true"}
                        )
                        procs.append(restarted)
                    if row.collected == args.pledges:
                        break
                    await asyncio.sleep(0.2)
                settled = time.perf_counter() - started
                async with engine.connect() as conn:
                    charges = {"charges": "pledge:%:charge"}
                    double_ours = await conn.scalar(_DOUBLE_OURS, charges)
                    double_provider = await conn.scalar(_DOUBLE_PROVIDER, charges)
                    succeeded = await conn.scalar(_SUCCEEDED_PROVIDER, charges)
            finally:
                await engine.dispose()
            per_s = args.pledges / settled
            ref = await reference(url, args.pledges)
            print(
                "\n| target | per s | time until all settled | double charges (ours / provider) |"
            )
            print("|---|---:|---:|---:|")
            print(
                f"| deadline charges ({args.pledges}, worker killed at {killed_at:.1f} s "
                f"after {killed_count} and restarted) | {per_s:.0f} | {settled:.1f} s | "
                f"{double_ours} / {double_provider} |"
            )
            print(f"| reference: payment rows inserted | {ref:.0f} | | |")
            print(f"\ncharges / reference: {per_s / ref:.0%}")
            print(f"succeeded PaymentIntents at the provider: {succeeded} (pledges {args.pledges})")
            assert restarted is not None
            print(
                f"peak RSS: API {peak_rss_mib(api.pid):.0f} MiB, "
                f"worker {peak_rss_mib(restarted.pid):.0f} MiB"
            )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pledges", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="qb-deadline-"))
    asyncio.run(run(args, tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
