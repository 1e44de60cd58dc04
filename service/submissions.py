"""Submissions: whether a new job is admitted, storing it, and waking the scheduler.

Admission, in the order a request meets it: the service must be accepting (503
`shutting_down` while it drains), then the owner's submission rate and pending cap (429,
checked before the body is read, so a client hammering the service costs no parsing), then
the request is parsed and validated (422), then the global `[jobs] max_pending` (429).
Both pending caps count through one cache (`limits.PendingCounts`). A job that passes is
committed in the store before its answer; then the scheduler hears of it.
"""
from __future__ import annotations

import math
from typing import Any

from offload.service.config import Config
from offload.service.errors import Invalid, ShuttingDown, TooManyRequests
from offload.service.limits import Limits
from offload.service.models import Job
from offload.service.scheduler import Scheduler
from offload.service.store import IdempotencyMismatch, Store
from offload.service.validation import parse_submission
from offload.workers.registry import Registry

#: What a client at its pending cap is told to wait: jobs start within seconds when workers are free.
PENDING_RETRY_AFTER = 5


class Submissions:
    def __init__(self, config: Config, store: Store, scheduler: Scheduler, limits: Limits,
                 registry: Registry) -> None:
        self.config = config
        self.store = store
        self.scheduler = scheduler
        self.limits = limits
        self.registry = registry

    async def admit(self, owner: str) -> None:
        """Raise unless `owner` may submit now: 503 while shutting down, 429 (with
        Retry-After) when it submits too fast or has too many jobs waiting. The pending
        count is read before the insert, so concurrent submissions may overshoot the cap
        by the number in flight."""
        if not self.scheduler.accepting:
            raise ShuttingDown("the service is shutting down and takes no new jobs; try again shortly")
        limits = self.limits.config
        wait = self.limits.submissions.take(owner)
        if wait > 0:
            raise TooManyRequests(f"too many submissions: at most {limits.submit_rate:g} per second "
                                  f"(bursts of {limits.submit_burst}); retry later", math.ceil(wait))
        cap = limits.max_pending_per_user
        if cap and await self.limits.pending.count(self.store, owner) >= cap:
            raise TooManyRequests(f"you have {cap:,} pending jobs, the most allowed; submit more as they start",
                                  PENDING_RETRY_AFTER)

    async def submit(self, owner: str, body: Any, idempotency_key: str | None) -> tuple[Job, bool]:
        """Parse, check the queue's room, store: the job and whether it is new (False: the
        answer to an earlier request with the same idempotency key). Call `admit` first."""
        submission = parse_submission(body, owner, self.config, idempotency_key,
                                      now=self.scheduler.clock.now(), registry=self.registry)
        cap = self.config.jobs.max_pending
        if await self.limits.pending.count(self.store) >= cap:
            raise TooManyRequests(f"the queue is full ({cap} pending jobs); try again shortly", retry_after=1)
        try:
            job, created = await self.store.create(submission.job, submission.request_hash)
        except IdempotencyMismatch as exc:
            raise Invalid("idempotencyKey", f"was already used for job {exc.job.id} with a different request") from None
        if created:
            self.limits.pending.add(job.owner)
            self.scheduler.submitted(job)
        return job, created
