"""The gateway's in-memory rate-limit counters, by how many callers are in the window.

    .venv/bin/python bench/rate_limits.py [--hits 20000]

Times ``gateway.ratelimit.RateLimiter.hit`` (``LoopMemoryStorage``: the limits library's
synchronous memory storage, expiring its counters on the event loop) against, in the same
run, the library's synchronous memory storage as it is (a timer thread expires its
counters) and its asyncio memory storage (what the gateway used first), with 1, 1,000 and
20,000 distinct callers counted in the window first. Prints microseconds per hit and peak
memory. No server and no database: the counters alone.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from limits import RateLimitItem, parse
from limits.aio.strategies import FixedWindowRateLimiter
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter as SyncFixedWindow

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.ratelimit import RateLimiter  # noqa: E402

Hit = Callable[[RateLimitItem, str, str], Awaitable[object]]


def gateway_hit() -> Hit:
    limiter = RateLimiter(None)
    return limiter.hit


def sync_memory_hit() -> Hit:
    limiter = SyncFixedWindow(MemoryStorage())

    async def hit(item: RateLimitItem, *keys: str) -> object:
        return limiter.hit(item, *keys)

    return hit


def asyncio_memory_hit() -> Hit:
    limiter = FixedWindowRateLimiter(storage_from_string("async+memory://"))
    return limiter.hit


async def per_hit_us(hit: Hit, callers: int, hits: int) -> float:
    item = parse("100000000/minute")
    for i in range(callers):
        await hit(item, "read", f"user:{i}")
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    for i in range(hits):
        await hit(item, "read", f"user:{i % callers}")
        if i % 32 == 0:
            await asyncio.sleep(0)  # let scheduled work run, as a serving loop does
    return (time.perf_counter() - started) / hits * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits", type=int, default=20_000)
    args = parser.parse_args()
    print(
        f"{'callers in the window':>22} {'gateway (loop memory)':>22} "
        f"{'library sync memory':>20} {'asyncio memory':>15}"
    )
    for callers in (1, 1_000, 20_000):
        ours = await per_hit_us(gateway_hit(), callers, args.hits)
        sync = await per_hit_us(sync_memory_hit(), callers, args.hits)
        reference = await per_hit_us(asyncio_memory_hit(), callers, args.hits)
        print(f"{callers:>22,} {ours:>19.1f} us {sync:>17.1f} us {reference:>12.1f} us")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:.1f} MiB")


if __name__ == "__main__":
    asyncio.run(main())
