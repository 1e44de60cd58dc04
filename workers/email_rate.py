"""The rate limit of an SMTP server: a token bucket per server, shared by every email job
running on this node (this process's event loop), so ten jobs at once send no faster than one.

The buckets are kept per event loop: an asyncio lock belongs to its loop, and every job of
one service runs on the service's loop. A bucket is made the first time a job sends to its
server and follows the settings the latest job brought.
"""
from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable

Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """`rate` messages per second on average, up to `burst` at once after a pause; a `rate`
    of 0 lets everything through. Waiters are served in the order they came (one lock)."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        self._clock, self._sleep = clock, sleep
        self.rate, self.burst = rate, max(1, burst)
        self._tokens = float(self.burst)
        self._at = clock()
        self._lock = asyncio.Lock()

    def configure(self, rate: float, burst: int) -> None:
        self._refill()
        self.rate, self.burst = rate, max(1, burst)
        self._tokens = min(self._tokens, float(self.burst))

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now

    async def acquire(self) -> None:
        """Wait until one message may go."""
        if self.rate <= 0:
            return
        async with self._lock:
            self._refill()
            while self._tokens < 1:
                await self._sleep((1 - self._tokens) / self.rate)
                self._refill()
            self._tokens -= 1


_buckets: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], TokenBucket]] = \
    weakref.WeakKeyDictionary()


def bucket_for(server: tuple[str, int], rate: float, burst: int) -> TokenBucket:
    """The bucket of `server` on the running loop, made or reconfigured with these settings."""
    buckets = _buckets.setdefault(asyncio.get_running_loop(), {})
    bucket = buckets.get(server)
    if bucket is None:
        bucket = buckets[server] = TokenBucket(rate, burst)
    elif (bucket.rate, bucket.burst) != (rate, max(1, burst)):
        bucket.configure(rate, burst)
    return bucket
