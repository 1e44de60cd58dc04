"""The counters behind the per-user limits that keep one user (or one runaway client) from
exhausting the service: submission rate, pending jobs, open WebSockets. Admission itself
(which limit refuses a submission, with what answer) is `submissions.py`'s.

The body size limit is aiohttp's `client_max_size` (set in `create_app`), the WebSocket
message size is the socket's `max_msg_size`; per-type limits (invoice items, …) live in
each job type's validator, the nesting depth of job data in `validation.check_depth`.
Counters here are in memory and per node.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from offload.service.config import LimitsConfig
from offload.service.errors import TooManyRequests
from offload.service.store import Store

#: Buckets idle this long are full again and are dropped to bound memory.
_IDLE_SECONDS = 3600.0
#: Seconds a pending count read from the store is trusted (and counted up locally).
PENDING_FRESH = 0.25


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second; one token per submission."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, count: int = 1) -> float:
        """Take `count` tokens for `key` (a batch takes one per job, at most `burst`, so
        any batch the service accepts can pass once the bucket is full); 0 when granted,
        else seconds until they are available. Nothing is taken when refused."""
        need = float(min(count, self.burst))
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 10_000:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= need:
            bucket.tokens -= need
            return 0.0
        return (need - bucket.tokens) / self.rate

    def _prune(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if now - b.at > _IDLE_SECONDS]:
            del self._buckets[key]


class PendingCounts:
    """How many jobs are pending, in all (`owner=None`) and per owner, as last read from the
    store, counted up locally in between: each count is re-read at most every PENDING_FRESH
    seconds, so a burst of submissions does not count a long queue once per request. The one
    cache behind both pending caps (`[jobs] max_pending`, `[limits] max_pending_per_user`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._counts: dict[str | None, tuple[int, float]] = {}

    async def count(self, store: Store, owner: str | None = None) -> int:
        now = self.clock()
        count, read_at = self._counts.get(owner, (0, float("-inf")))
        if now - read_at > PENDING_FRESH:
            count = await (store.count_pending() if owner is None else store.count_pending_of(owner))
            if len(self._counts) > 10_000:
                self._counts = {k: v for k, v in self._counts.items() if now - v[1] <= PENDING_FRESH}
            self._counts[owner] = (count, now)
        return count

    def add(self, owner: str, jobs: int = 1) -> None:
        """`jobs` jobs of `owner` were stored: count them, in all and for `owner`, until the next read."""
        for key in (None, owner):
            if key in self._counts:
                count, read_at = self._counts[key]
                self._counts[key] = (count + jobs, read_at)

    def forget(self, owner: str) -> None:
        """Read `owner`'s count afresh next time."""
        self._counts.pop(owner, None)


class Limits:
    def __init__(self, config: LimitsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.submissions = TokenBucket(config.submit_rate, config.submit_burst, clock)
        self.sockets: dict[str, int] = {}
        self.pending = PendingCounts(clock)

    def forget_pending(self, owner: str) -> None:
        """`owner` cancelled a job: read the pending count afresh next time."""
        self.pending.forget(owner)

    def open_socket(self, owner: str) -> None:
        """Count a new WebSocket of `owner`; 429 when it has as many as allowed."""
        cap = self.config.max_websockets_per_user
        if self.sockets.get(owner, 0) >= cap:
            raise TooManyRequests(f"at most {cap} WebSocket connections per user; close one first", 5)
        self.sockets[owner] = self.sockets.get(owner, 0) + 1

    def close_socket(self, owner: str) -> None:
        left = self.sockets.get(owner, 0) - 1
        if left > 0:
            self.sockets[owner] = left
        else:
            self.sockets.pop(owner, None)
