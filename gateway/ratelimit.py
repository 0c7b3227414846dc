"""Rate limits at the gateway, with the ``limits`` library: counters in Redis when
``REDIS_URL`` is set (every replica shares them), in this process's memory otherwise.

Two uses: the route classes of every request (login, money-moving writes, reads; fixed
windows per caller), and the throttle of failed staff sign-ins (moving windows per account
and per client address). A counter store that fails is logged and let through: a Redis
outage must not take the platform down with it.
"""

from __future__ import annotations

import math
import time

import structlog
from limits import RateLimitItem, parse
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from shared.errors import DomainError

__all__ = ["RateLimited", "RateLimiter", "parse_limit"]

_log = structlog.get_logger("qunbuy.ratelimit")


class RateLimited(DomainError):
    status = 429
    code = "rate_limited"
    title = "Too many requests; try again later"

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


def parse_limit(text: str) -> RateLimitItem:
    """``"10/minute"``, ``"5 per 15 minutes"``: the limits library's notation."""
    return parse(text)


class RateLimiter:
    def __init__(self, redis_url: str | None) -> None:
        uri = "async+memory://" if not redis_url else f"async+{redis_url}"
        # wrap_exceptions: whatever the Redis client raises arrives as a StorageError.
        self.storage = storage_from_string(uri, wrap_exceptions=True)
        self.shared = bool(redis_url)
        self._fixed = FixedWindowRateLimiter(self.storage)
        self._moving = MovingWindowRateLimiter(self.storage)

    async def hit(self, item: RateLimitItem, *keys: str) -> int | None:
        """Counts one request in a fixed window; the seconds to wait when over the limit."""
        try:
            if await self._fixed.hit(item, *keys):
                return None
            stats = await self._fixed.get_window_stats(item, *keys)
        except StorageError as exc:
            _log.warning("rate_limit_store_failed", error=type(exc).__name__)
            return None
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def exhausted(self, item: RateLimitItem, *keys: str) -> int | None:
        """The seconds to wait when the moving window is full (nothing counted), else None."""
        try:
            if await self._moving.test(item, *keys):
                return None
            stats = await self._moving.get_window_stats(item, *keys)
        except StorageError as exc:
            _log.warning("rate_limit_store_failed", error=type(exc).__name__)
            return None
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def record(self, item: RateLimitItem, *keys: str) -> None:
        """Counts one event in the moving window (a failed sign-in)."""
        try:
            await self._moving.hit(item, *keys)
        except StorageError as exc:
            _log.warning("rate_limit_store_failed", error=type(exc).__name__)

    async def forget(self, item: RateLimitItem, *keys: str) -> None:
        try:
            await self._moving.clear(item, *keys)
        except StorageError as exc:
            _log.warning("rate_limit_store_failed", error=type(exc).__name__)
