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
from typing import cast

import structlog
from limits import RateLimitItem, parse
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter as SyncFixedWindow
from limits.strategies import MovingWindowRateLimiter as SyncMovingWindow
from limits.util import WindowStats
from starlette.types import Scope, Send

from shared.auth import TokenVerifier
from shared.errors import DomainError, send_problem

__all__ = ["LoopMemoryStorage", "RateLimited", "RateLimiter", "RouteLimits", "parse_limit"]

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


class LoopMemoryStorage(MemoryStorage):
    """The limits library's synchronous memory storage, for fixed-window counters used from
    one event loop only: a counter is dropped when it is next read after its window ended,
    and the counters nobody read again are swept every :attr:`SWEEP_SECONDS`, on the loop.

    The library's storage schedules a timer thread for that on every hit when none is
    running: under load, a new thread every 10 ms, and the loop stopped each time until the
    thread had started. That cost the gateway about 14 % of its proxied requests per second,
    the limits check itself about 6 % (docs/identity.md, "Rate limits"). Nothing here runs
    on another thread (the timer the library's constructor starts once finds the storage
    empty), so there is nothing to lock. The moving windows (the sign-in throttle, a few hits
    a minute) keep a storage of the library's own, with its timer: sharing one would let
    that thread walk and delete these counters under the loop."""

    # Its own scheme: inheriting "memory" would register this class under the library's name.
    STORAGE_SCHEME = ["qunbuy+loop-memory"]  # noqa: RUF012 - the library's declared type
    SWEEP_SECONDS = 10.0

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        self._next_sweep = time.monotonic() + self.SWEEP_SECONDS

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        self.get(key)  # drops the counter of a window that has ended
        count = self.storage[key] + amount
        self.storage[key] = count
        if count == amount:
            self.expirations[key] = time.time() + expiry
        if time.monotonic() >= self._next_sweep:
            self.sweep()
        return count

    def sweep(self) -> int:
        """Drops every counter whose window has ended; how many."""
        self._next_sweep = time.monotonic() + self.SWEEP_SECONDS
        now = time.time()
        ended = [key for key, until in self.expirations.items() if until <= now]
        for key in ended:
            self.storage.pop(key, None)
            del self.expirations[key]
            self.locks.pop(key, None)
        return len(ended)


class RateLimiter:
    """Counters in Redis (``REDIS_URL``: the limits library's asyncio Redis storage) or in this
    process's memory (:class:`LoopMemoryStorage`, the library's synchronous memory storage).

    Memory is the synchronous storage on purpose: a hit is a dict update. The library's
    asyncio memory storage starts a task on each hit that walks every counter: with 20,000
    callers in a window a hit cost about 220 us instead of 23 (docs/identity.md, "Rate
    limits")."""

    def __init__(self, redis_url: str | None) -> None:
        self._memory: tuple[SyncFixedWindow, SyncMovingWindow] | None = None
        self._redis: tuple[FixedWindowRateLimiter, MovingWindowRateLimiter] | None = None
        if redis_url:
            # wrap_exceptions: whatever the Redis client raises arrives as a StorageError.
            storage = storage_from_string(f"async+{redis_url}", wrap_exceptions=True)
            self._redis = (FixedWindowRateLimiter(storage), MovingWindowRateLimiter(storage))
        else:
            self._memory = (
                SyncFixedWindow(LoopMemoryStorage()),
                SyncMovingWindow(MemoryStorage()),
            )

    @property
    def memory_storage(self) -> LoopMemoryStorage | None:
        """The in-memory counters (None with Redis)."""
        if self._memory is None:
            return None
        return cast(LoopMemoryStorage, self._memory[0].storage)

    async def _stats(self, moving: bool, item: RateLimitItem, *keys: str) -> WindowStats:
        if self._memory is not None:
            return self._memory[1 if moving else 0].get_window_stats(item, *keys)
        assert self._redis is not None
        return await self._redis[1 if moving else 0].get_window_stats(item, *keys)

    async def hit(self, item: RateLimitItem, *keys: str) -> int | None:
        """Counts one request in a fixed window; the seconds to wait when over the limit."""
        try:
            if self._memory is not None:
                admitted = self._memory[0].hit(item, *keys)
            else:
                assert self._redis is not None
                admitted = await self._redis[0].hit(item, *keys)
            if admitted:
                return None
            stats = await self._stats(False, item, *keys)
        except StorageError as exc:
            _log.warning("rate_limit_store_failed", error=type(exc).__name__)
            return None
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def exhausted(self, item: RateLimitItem, *keys: str) -> int | None:
        """The seconds to wait when the moving window is full (nothing counted), else None."""
        try:
            if self._memory is not None:
                room = self._memory[1].test(item, *keys)
            else:
                assert self._redis is not None
                room = await self._redis[1].test(item, *keys)
            if room:
                return None
            stats = await self._stats(True, item, *keys)
        except StorageError as exc:
            _log.warning("rate_limit_store_failed", error=type(exc).__name__)
            return None
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def record(self, item: RateLimitItem, *keys: str) -> None:
        """Counts one event in the moving window (a failed sign-in)."""
        try:
            if self._memory is not None:
                self._memory[1].hit(item, *keys)
            else:
                assert self._redis is not None
                await self._redis[1].hit(item, *keys)
        except StorageError as exc:
            _log.warning("rate_limit_store_failed", error=type(exc).__name__)

    async def forget(self, item: RateLimitItem, *keys: str) -> None:
        try:
            if self._memory is not None:
                self._memory[1].clear(item, *keys)
            else:
                assert self._redis is not None
                await self._redis[1].clear(item, *keys)
        except StorageError as exc:
            _log.warning("rate_limit_store_failed", error=type(exc).__name__)


# Route classes: what a caller may do how often (RATE_LIMIT_LOGIN, _WRITE, _READ).
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
# Tokens already verified, with their subject and expiry: a caller's next requests are
# counted under their user id without verifying the signature again.
_MAX_REMEMBERED = 10_000


class RouteLimits:
    """The rate limit of every request under /v1 except providers' webhooks, by caller (the
    token's user id when it carries a valid one, the client address otherwise) and route
    class: ``login`` (/v1/auth), ``write`` (every other method: orders, payments, pledges,
    refunds, withdrawals move money) and ``read``."""

    def __init__(
        self,
        limiter: RateLimiter,
        verifier: TokenVerifier,
        *,
        login: RateLimitItem,
        write: RateLimitItem,
        read: RateLimitItem,
    ) -> None:
        self.limiter = limiter
        self._verifier = verifier
        self._login, self._write, self._read = login, write, read
        self._subjects: dict[bytes, tuple[str, float]] = {}

    def route_class(self, method: str, path: bytes) -> tuple[str, RateLimitItem] | None:
        if path.startswith(b"/v1/webhooks/"):
            return None  # providers retry on their own schedule; their signatures are checked
        if path.startswith(b"/v1/auth/"):
            return "login", self._login
        if method in _READS:
            return "read", self._read
        return "write", self._write

    def caller(self, scope: Scope) -> str:
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                subject = self._subject(value[7:].strip())
                if subject is not None:
                    return f"user:{subject}"
                break
        client = scope.get("client")
        return f"addr:{client[0] if client else 'unknown'}"

    def _subject(self, token: bytes) -> str | None:
        known = self._subjects.get(token)
        if known is not None and known[1] > time.time():
            return known[0]
        try:
            principal = self._verifier.verify(token.decode("ascii"))
        except (DomainError, UnicodeDecodeError):
            return None  # counted by address; the service answers the bad token
        if len(self._subjects) >= _MAX_REMEMBERED:
            self._subjects.clear()
        self._subjects[token] = (principal.sub, float(principal.claims["exp"]))
        return principal.sub

    async def admit(self, scope: Scope, send: Send, path: bytes) -> bool:
        """True when the request may go on; otherwise answers 429 and returns False."""
        found = self.route_class(scope["method"], path)
        if found is None:
            return True
        name, item = found
        wait = await self.limiter.hit(item, name, self.caller(scope))
        if wait is None:
            return True
        await send_problem(
            scope,
            send,
            status=429,
            code=RateLimited.code,
            title=RateLimited.title,
            detail=f"At most {item} {name} requests; try again in {wait} s.",
            headers=[(b"retry-after", str(wait).encode()), (b"x-served-by", b"gateway")],
        )
        return False
