"""A pre-sale rush: N customers order at once from one campaign of limited capacity.

    .venv/bin/python bench/presale_rush.py [--customers 1000] [--capacity 300] [--rounds 1]

Starts, on a fresh database of the machine's PostgreSQL (127.0.0.1:5432), the orders service
(simulated payments, as in the embedded mode) behind the Qunbuy gateway, creates and opens a
campaign of ``--capacity`` units, and sends one order from each of ``--customers`` customers
(each with its own token and Idempotency-Key, one unit, a card that succeeds) all at once
through the gateway. It prints orders/s (answers, 201 or 409 sold out, per second of the
whole burst), p50/p99 latency, the answers by status, peak memory of both processes, and the
oversold count (units reserved beyond capacity, from the database: must be 0).

The reference, measured in the same run: the same burst through a second gateway to a bare
endpoint (``bench/reservation_reference.py``) that runs only the atomic reservation
statement on another campaign of the same capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_proxy import free_port, peak_rss_mib, production, uvicorn, wait_http  # noqa: E402
from bench.support import fresh_database, stopped_at_exit  # noqa: E402
from qunbuy.platform import SERVER_OPTIONS  # noqa: E402
from shared.auth import TokenIssuer, public_pem  # noqa: E402
from shared.db import make_engine  # noqa: E402

_COLUMNS = (
    "merchant_id, title, image_urls, currency, price_tiers, min_quantity, capacity, opens_at,"
    " closes_at, balance_window_hours, deposit_type, unit_deposit, unit_deposit_credit, status"
)
_COPY_CAMPAIGN = text(
    f"INSERT INTO presale_campaign (id, {_COLUMNS}) SELECT :id, {_COLUMNS}"
    " FROM presale_campaign WHERE id = :source"
)


def campaign(capacity: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "title": "Rush",
        "currency": "CNY",
        "variants": [{"sku": "ONE", "name": "One size"}],
        "price_tiers": [{"min_quantity": 1, "unit_price": 12900}],
        "min_quantity": 1,
        "capacity": capacity,
        "opens_at": (now - timedelta(minutes=1)).isoformat(),
        "closes_at": (now + timedelta(hours=1)).isoformat(),
        "deposit": {"type": "deposit", "unit_deposit": 2000},
    }


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time so far of each named process (PostgreSQL's backends come and go with the
    pools, so theirs is not counted)."""
    out = {}
    for label, pid in pids.items():
        times = psutil.Process(pid).cpu_times()
        out[label] = times.user + times.system
    return out


async def burst(gateway: str, path: str, tokens: list[str], pids: dict[str, int]) -> dict[str, Any]:
    """Every customer orders once, all at once; answers, latencies, CPU used per process."""
    body = {"sku": "ONE", "quantity": 1, "method": "wechat_pay"}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=len(tokens))
    async with aiohttp.ClientSession(
        gateway, connector=connector, timeout=aiohttp.ClientTimeout(total=300)
    ) as http:

        async def one(token: str) -> None:
            headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex}
            started = time.perf_counter()
            async with http.post(path, json=body, headers=headers) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            latencies.append(time.perf_counter() - started)

        cpu_before = cpu_seconds(pids)
        started = time.perf_counter()
        await asyncio.gather(*(one(t) for t in tokens))
        wall = time.perf_counter() - started
        cpu_after = cpu_seconds(pids)
    latencies.sort()
    return {
        "per_s": len(tokens) / wall,
        "wall_s": wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "statuses": dict(sorted(statuses.items())),
        "cpu": {k: cpu_after[k] - cpu_before[k] for k in cpu_after},
    }


async def new_campaigns(gateway: str, staff: str, url: str, capacity: int, twins: int) -> list[str]:
    """An open campaign made through the API, and ``twins`` copies for the references."""
    async with aiohttp.ClientSession(gateway) as http:
        headers = {"Authorization": f"Bearer {staff}"}
        async with http.post("/v1/presales", json=campaign(capacity), headers=headers) as r:
            campaign_id = str((await r.json())["id"])
        async with http.post(f"/v1/presales/{campaign_id}/publish", headers=headers) as r:
            assert r.status == 200, await r.text()
    ids = [campaign_id]
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            for _ in range(twins):
                ids.append(str(uuid.uuid4()))
                await conn.execute(
                    _COPY_CAMPAIGN, {"id": uuid.UUID(ids[-1]), "source": uuid.UUID(campaign_id)}
                )
    finally:
        await engine.dispose()
    return ids


async def reserved(url: str, campaign_id: str) -> int:
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            value = await conn.scalar(
                text("SELECT reserved_quantity FROM presale_campaign WHERE id = :id"),
                {"id": uuid.UUID(campaign_id)},
            )
            return int(value or 0)
    finally:
        await engine.dispose()


async def run(args: argparse.Namespace, tmp: Path) -> None:
    async with fresh_database("orders") as url, fresh_database("gateway") as identity_url:
        # Stopped before the database is dropped.
        with stopped_at_exit() as procs:
            key = ec.generate_private_key(ec.SECP256R1())
            (tmp / "jwt.pem").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            (tmp / "jwt-public.pem").write_bytes(public_pem(key))
            issuer = TokenIssuer(key, issuer="qunbuy-gateway", audience="qunbuy", ttl_seconds=3600)
            ports = {
                n: free_port()
                for n in (
                    "orders",
                    "worker",
                    "reference",
                    "framed",
                    "gateway",
                    "gateway_ref",
                    "gateway_framed",
                )
            }
            service_env = {
                "QUNBUY_MODE": "production",
                "DATABASE_URL": url,
                "JWT_PUBLIC_KEY_FILE": str(tmp / "jwt-public.pem"),
                "EVENT_SECRET": "bench",
                "PAYMENT_PROVIDER": "simulated",
                "SIMULATED_WEBHOOK_SECRET": "whsec_bench",
                "LOG_LEVEL": "WARNING",
            }
            # As deployed (deploy/k8s): the API process serves requests only
            # (WORKER_ENABLED=false) and the orders-worker process runs the scheduler, the
            # relay and the simulated provider's deliveries.
            api_env = {**service_env, "WORKER_ENABLED": "false"}
            orders = production("orders", ports["orders"], api_env)
            worker = production(
                "orders", ports["worker"], {**service_env, "WORKER_ENABLED": "true"}
            )
            # The references on the same server as the service (its protocol, its loop).
            served = SERVER_OPTIONS["orders"]
            reference = uvicorn(
                "bench.reservation_reference:app",
                ports["reference"],
                {"DATABASE_URL": url},
                False,
                served,
            )
            framed = uvicorn(
                "bench.reservation_reference:framed", ports["framed"], api_env, True, served
            )
            procs += [orders, worker, reference, framed]
            gateways = {}
            for gw, upstream in (
                ("gateway", "orders"),
                ("gateway_ref", "reference"),
                ("gateway_framed", "framed"),
            ):
                env = {
                    "QUNBUY_MODE": "production",
                    "JWT_PRIVATE_KEY_FILE": str(tmp / "jwt.pem"),
                    "ORDERS_URL": f"http://127.0.0.1:{ports[upstream]}",
                    "DATABASE_URL": identity_url,  # the identity store (unused by the burst)
                    "LOG_LEVEL": "WARNING",
                }
                gateways[gw] = production("gateway", ports[gw], env)
                procs.append(gateways[gw])
            for port in ports.values():
                wait_http(f"http://127.0.0.1:{port}/healthz", timeout=120)
            print(f"orders pid {orders.pid}, gateway pid {gateways['gateway'].pid}")
            staff = issuer.issue("bench-staff", ["staff"], merchant_id="m_bench")
            gateway_url = f"http://127.0.0.1:{ports['gateway']}"
            targets = [
                ("orders (real endpoint)", "gateway", orders),
                ("reference (reservation only)", "gateway_ref", reference),
                ("reference in the service frame", "gateway_framed", framed),
            ]
            print(
                f"{args.customers} customers, capacity {args.capacity}, one unit each, "
                f"through the gateway; {os.cpu_count()} CPUs"
            )
            for round_no in range(1, args.rounds + 1):
                ids = await new_campaigns(gateway_url, staff, url, args.capacity, len(targets) - 1)
                tokens = [
                    issuer.issue(f"bench-{round_no}-{i}", ["customer"])
                    for i in range(args.customers)
                ]
                results = {}
                for (label, gw, service), campaign_id in zip(targets, ids, strict=True):
                    pids = {
                        "service": service.pid,
                        "worker": worker.pid,
                        "gateway": gateways[gw].pid,
                        "load": os.getpid(),
                    }
                    outcome = await burst(
                        f"http://127.0.0.1:{ports[gw]}",
                        f"/v1/presales/{campaign_id}/orders",
                        tokens,
                        pids,
                    )
                    results[label] = (outcome, await reserved(url, campaign_id))
                print(f"\nround {round_no}")
                print(
                    "| target | orders/s | p50 ms | p99 ms | answers | reserved | oversold "
                    "| CPU s: service / gateway / load / orders worker |"
                )
                print("|---|---:|---:|---:|---|---:|---:|---|")
                for label, (r, units) in results.items():
                    cpu = " / ".join(
                        f"{r['cpu'][k]:.1f}" for k in ("service", "gateway", "load", "worker")
                    )
                    print(
                        f"| {label} | {r['per_s']:.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                        f"{r['statuses']} | {units} | {max(0, units - args.capacity)} | {cpu} |"
                    )
                real = results[targets[0][0]][0]["per_s"]
                for label, _, _ in targets[1:]:
                    print(f"real / {label}: {real / results[label][0]['per_s']:.0%}")
            print(
                f"\npeak RSS: orders {peak_rss_mib(orders.pid):.0f} MiB, "
                f"gateway {peak_rss_mib(gateways['gateway'].pid):.0f} MiB"
            )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--capacity", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="qb-rush-"))
    asyncio.run(run(args, tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
