"""Commission events: paid-order events through the signed inbox, against plain inserts.

    .venv/bin/python bench/commission_events.py [--events 100000] [--concurrency 16] [--batch 100]

Starts the referrals service on a fresh database of the machine's PostgreSQL (127.0.0.1:5432)
with a program (10 % and 5 %) and a two-level chain of distributors, then POSTs ``--events``
signed ``order.paid`` events (each a new order through the level-1 distributor's code) from
``--concurrency`` clients, as the relays of orders would: ``--batch`` events a POST to
``/internal/events/batch`` (the relay's ``max_events_per_post``, 100), or with ``--batch 1``
one event a POST to ``/internal/events`` (the relay before batches). It prints
events/s and the time until every commission is on the ledger, and, in the same run, the
reference: the same ledger rows (two commissions and two entries an event) written by plain
inserts, one transaction an event, from as many connections. Then the dashboard's latency
(p50 and max of 50 requests) for a distributor of a merchant with 10,000 and with
1,000,000 ledger entries (``--big`` sets the second size).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_proxy import free_port, production, wait_http  # noqa: E402
from bench.support import fresh_database, stopped_at_exit  # noqa: E402
from shared.auth import TokenIssuer, public_pem  # noqa: E402
from shared.db import make_engine  # noqa: E402
from shared.events import SIGNATURE_HEADER, Envelope, sign  # noqa: E402
from shared.events._relay import RelayPolicy  # noqa: E402
from shared.events.contracts import OrderPaid  # noqa: E402

SECRET = "bench-secret"


def paid_event(merchant: str, code: str) -> dict[str, object]:
    payload = OrderPaid(
        order_id=uuid.uuid4(),
        campaign_id=uuid.uuid4(),
        merchant_id=merchant,
        customer_id=f"c-{uuid.uuid4().hex[:8]}",
        sku="S",
        quantity=1,
        currency="CNY",
        referral_code=code,
        paid_total=12900,
        refunded_total=0,
        stage="full",
        amount=12900,
        fully_paid=True,
    )
    envelope = Envelope(type="order.paid", source="orders", payload=payload.model_dump(mode="json"))
    return envelope.model_dump(mode="json")


def bodies_of(events: list[dict[str, object]], batch: int) -> list[tuple[str, bytes, int]]:
    """(path, body, events) of each POST, as the relay sends them (compact JSON)."""
    if batch == 1:
        return [("/internal/events", _compact(e), 1) for e in events]
    return [
        ("/internal/events/batch", _compact({"events": events[i : i + batch]}), batch)
        for i in range(0, len(events), batch)
    ]


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


async def feed(
    url: str, bodies: list[tuple[str, bytes, int]], concurrency: int
) -> tuple[float, list[float]]:
    """POSTs every body from ``concurrency`` clients; returns the wall time and each POST's
    latency. Every event of every batch must be applied."""
    queue: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker() -> None:
            while not queue.empty():
                path, body, n = queue.get_nowait()
                started = time.perf_counter()
                response = await client.post(
                    path,
                    content=body,
                    headers={
                        SIGNATURE_HEADER: sign(SECRET, body),
                        "content-type": "application/json",
                    },
                )
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}: {response.text[:200]}")
                if n > 1:
                    statuses = {r["status"] for r in response.json()["results"]}
                    if statuses != {"applied"}:
                        raise RuntimeError(f"batch not applied: {statuses}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


async def reference(
    url: str, merchant: str, seller: str, upline: str, n: int, concurrency: int
) -> float:
    """The same ledger rows by plain inserts, one transaction an event (two commissions, two
    entries) from ``concurrency`` connections, as the inbox writes them."""
    engine = make_engine(url, pool_size=concurrency)
    commission = text(
        "INSERT INTO commission (id, source_type, source_id, merchant_id, distributor_id, level,"
        " rate_bps, currency, amount, state) VALUES (:id, 'order', :source, :m, :d, :level,"
        " :rate, 'CNY', :amount, 'pending')"
    )
    entry = text(
        "INSERT INTO ledger_entry (merchant_id, commission_id, source_event, kind, debit_account,"
        " credit_account, amount, currency) VALUES (:m, :c, :event, 'accrue', :debit, :credit,"
        " :amount, 'CNY')"
    )
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            queue.get_nowait()
            source, event = uuid.uuid4(), str(uuid.uuid4())
            async with engine.begin() as conn:
                for level, who, rate, amount in ((1, seller, 1000, 1290), (2, upline, 500, 645)):
                    cid = uuid.uuid4()
                    await conn.execute(
                        commission,
                        {
                            "id": cid,
                            "source": source,
                            "m": merchant,
                            "d": who,
                            "level": level,
                            "rate": rate,
                            "amount": amount,
                        },
                    )
                    await conn.execute(
                        entry,
                        {
                            "m": merchant,
                            "c": cid,
                            "event": event,
                            "debit": f"merchant:{merchant}:commission_expense",
                            "credit": f"distributor:{who}:pending",
                            "amount": amount,
                        },
                    )

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await engine.dispose()
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its own, not its children's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def grow_ledger(url: str, merchant: str, distributor: str, total: int) -> None:
    """Ledger entries of other distributors of the merchant, up to ``total`` in all."""
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            have = int(
                await conn.scalar(
                    text("SELECT count(*) FROM ledger_entry WHERE merchant_id = :m"),
                    {"m": merchant},
                )
                or 0
            )
            if total > have:
                await conn.execute(
                    text(
                        "INSERT INTO ledger_entry (merchant_id, source_event, kind, debit_account,"
                        " credit_account, amount, currency) SELECT :m, :event || g, 'accrue',"
                        " :debit, :prefix || md5((g % 5000)::text) || :suffix, 100, 'CNY'"
                        " FROM generate_series(1, :n) AS g"
                    ),
                    {
                        "m": merchant,
                        "n": total - have,
                        "event": "bench:",
                        "debit": f"merchant:{merchant}:commission_expense",
                        "prefix": "distributor:",
                        "suffix": ":pending",
                    },
                )
            await conn.execute(text("ANALYZE ledger_entry"))
    finally:
        await engine.dispose()
    del distributor


async def dashboard_latency(base: str, distributor: str, token: str) -> tuple[float, float]:
    latencies = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for _ in range(50):
            started = time.perf_counter()
            response = await client.get(
                f"/v1/distributors/{distributor}/dashboard",
                headers={"Authorization": f"Bearer {token}"},
            )
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    latencies.sort()
    return statistics.median(latencies) * 1000, latencies[-1] * 1000


async def run(args: argparse.Namespace, tmp: Path) -> None:
    async with fresh_database("referrals") as url:
        # Stopped before the database is dropped.
        with stopped_at_exit() as procs:
            key = ec.generate_private_key(ec.SECP256R1())
            (tmp / "jwt-public.pem").write_bytes(public_pem(key))
            issuer = TokenIssuer(key, issuer="qunbuy-gateway", audience="qunbuy", ttl_seconds=3600)
            port = free_port()
            env = {
                "QUNBUY_MODE": "production",
                "DATABASE_URL": url,
                "JWT_PUBLIC_KEY_FILE": str(tmp / "jwt-public.pem"),
                "EVENT_SECRET": SECRET,
                "LOG_LEVEL": "WARNING",
            }
            service = production("referrals", port, env)
            procs.append(service)
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/healthz", timeout=120)
            merchant = "m_bench"
            staff = {
                "Authorization": f"Bearer {issuer.issue('staff', ['staff'], merchant_id=merchant)}"
            }
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                rules = {"enrollment": "open", "level1_bps": 1000, "level2_bps": 500}
                assert (
                    await client.put("/v1/commission-rules", json=rules, headers=staff)
                ).status_code == 200
                person = {"merchant_id": merchant, "real_name": "Bench", "phone": "13800000000"}
                a_token = issuer.issue("upline", ["customer"])
                upline = (
                    await client.post(
                        "/v1/distributors",
                        json=person,
                        headers={"Authorization": f"Bearer {a_token}"},
                    )
                ).json()
                b_token = issuer.issue("seller", ["customer"])
                seller = (
                    await client.post(
                        "/v1/distributors",
                        json={**person, "via_code": upline["code"]},
                        headers={"Authorization": f"Bearer {b_token}"},
                    )
                ).json()
            events = [paid_event(merchant, seller["code"]) for _ in range(args.events)]
            cpu_before = cpu_seconds(service.pid)
            wall, latencies = await feed(base, bodies_of(events, args.batch), args.concurrency)
            cpu = cpu_seconds(service.pid) - cpu_before
            latencies.sort()
            engine = make_engine(url, pool_size=1)
            async with engine.connect() as conn:
                entries = await conn.scalar(text("SELECT count(*) FROM ledger_entry"))
            await engine.dispose()
            print(
                f"{args.events} order.paid events, {args.concurrency} clients,"
                f" {args.batch} event(s) a POST, one referrals process"
            )
            print("| target | events/s | p50 ms a POST | p99 ms a POST | time to the ledger s |")
            print("|---|---:|---:|---:|---:|")
            print(
                f"| signed inbox -> commissions | {args.events / wall:.0f} | "
                f"{statistics.median(latencies) * 1000:.1f} | "
                f"{latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} | {wall:.1f} |"
            )
            print(f"referrals process: {cpu / args.events * 1000:.2f} ms of CPU an event")
            assert entries == 2 * args.events, f"{entries} entries for {args.events} events"
            ref = await reference(
                url, merchant, seller["id"], upline["id"], args.events, args.concurrency
            )
            print(f"| plain inserts of the same rows | {args.events / ref:.0f} | | | {ref:.1f} |")
            print(f"inbox / reference: {ref / wall:.0%}")
            token = issuer.issue("seller", ["customer"])
            for size in (10_000, args.big):
                await grow_ledger(url, merchant, seller["id"], size)
                p50, worst = await dashboard_latency(base, seller["id"], token)
                print(
                    f"dashboard with {size:,} ledger entries for the merchant: "
                    f"p50 {p50:.1f} ms, max {worst:.1f} ms"
                )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument(
        "--batch", type=int, default=RelayPolicy().max_events_per_post, help="events a POST"
    )
    args = parser.parse_args()
    asyncio.run(run(args, Path(tempfile.mkdtemp(prefix="qb-commissions-"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
