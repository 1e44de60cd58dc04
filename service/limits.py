"""Per-user limits that keep one user (or one runaway client) from exhausting the service:
submission rate, pending jobs, open WebSockets, and how deeply job data may nest.

The body size limit is aiohttp's `client_max_size` (set in `create_app`), the WebSocket
message size is the socket's `max_msg_size`; per-type limits (invoice items, …) live in
each job type's validator. Counters here are in memory and per node.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from offload.service.config import LimitsConfig
from offload.service.errors import Invalid, TooManyRequests
from offload.service.store import Store

#: Buckets idle this long are full again and are dropped to bound memory.
_IDLE_SECONDS = 3600.0
#: What a client at its pending cap is told to wait: jobs start within seconds when workers are free.
PENDING_RETRY_AFTER = 5
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

    def take(self, key: str) -> float:
        """Take a token for `key`; 0 when granted, else seconds until one is available."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 10_000:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def _prune(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if now - b.at > _IDLE_SECONDS]:
            del self._buckets[key]


class Limits:
    def __init__(self, config: LimitsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.submissions = TokenBucket(config.submit_rate, config.submit_burst, clock)
        self.sockets: dict[str, int] = {}
        self.clock = clock
        #: Each owner's pending count as last read, and when: re-read at most every
        #: PENDING_FRESH seconds and counted up locally in between, so a burst of
        #: submissions does not count a long queue once per request.
        self._pending: dict[str, tuple[int, float]] = {}

    async def admit_submission(self, owner: str, store: Store) -> None:
        """Raise 429 (with Retry-After) when `owner` submits too fast or has too many
        jobs waiting. The pending count is read before the insert, so concurrent
        submissions may overshoot the cap by the number in flight."""
        wait = self.submissions.take(owner)
        if wait > 0:
            raise TooManyRequests(f"too many submissions: at most {self.config.submit_rate:g} per second "
                                  f"(bursts of {self.config.submit_burst}); retry later", math.ceil(wait))
        cap = self.config.max_pending_per_user
        if not cap:
            return
        now = self.clock()
        count, read_at = self._pending.get(owner, (0, float("-inf")))
        if now - read_at > PENDING_FRESH:
            count, read_at = await store.count_pending_of(owner), now
            if len(self._pending) > 10_000:
                self._pending = {k: v for k, v in self._pending.items() if now - v[1] <= PENDING_FRESH}
            self._pending[owner] = (count, read_at)
        if count >= cap:
            raise TooManyRequests(f"you have {cap:,} pending jobs, the most allowed; submit more as they start",
                                  PENDING_RETRY_AFTER)

    def forget_pending(self, owner: str) -> None:
        """`owner` cancelled a job: read the pending count afresh next time."""
        self._pending.pop(owner, None)

    def submitted(self, owner: str) -> None:
        """A job of `owner` was stored: count it until the next read of the pending count."""
        if owner in self._pending:
            count, read_at = self._pending[owner]
            self._pending[owner] = (count + 1, read_at)

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


def check_depth(value: Any, max_depth: int, field: str = "data") -> None:
    """422 when `value` nests arrays/objects deeper than `max_depth` levels. Level by level
    rather than recursive, so hostile input cannot exhaust the stack here; scalars are
    passed over with one type check each (a 5,000-line invoice costs about a millisecond)."""
    level = [value] if type(value) in _CONTAINERS else []
    depth = 1
    while level:
        if depth > max_depth:
            raise Invalid(field, f"nests objects and arrays deeper than {max_depth} levels")
        below = []
        for item in level:
            for child in (item.values() if type(item) is dict else item):
                if type(child) in _CONTAINERS:
                    below.append(child)
        level = below
        depth += 1


_CONTAINERS = (dict, list)
