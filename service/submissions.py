"""Submissions: whether a new job is admitted, storing it, and waking the scheduler.

Admission, in the order a request meets it: the service must be accepting (503
`shutting_down` while it drains), then the owner's submission rate and pending cap (429,
checked before the body is read, so a client hammering the service costs no parsing), then
the request is parsed and validated (422), then the global `[jobs] max_pending` (429).
Both pending caps count through one cache (`limits.PendingCounts`). A job that passes is
committed in the store before its answer; then the scheduler hears of it.

A batch (`POST /api/jobs/batch`) meets the same rules, counted by its size: 503 while
draining, then its shape and `[limits] max_batch_jobs` (422; the count is in the body, so it
is read first), then the rate (one token per job) and the owner's pending cap (the batch
must fit), then every job is validated (422 naming `jobs[i].…`), then the global cap, and
all of them are stored in one transaction. All or nothing: one invalid job, or one
idempotency key reused with another request, refuses the whole batch and stores nothing.

A job that follows others (`options.after`) is checked against its parents in the
transaction that stores it: a parent that is not the owner's (unknown, or another user's:
the same answer) is a 422 naming `options.after[i]`, and nothing is stored. A batch job may
follow an earlier job of its batch as `#i`; naming itself or a later one is refused, so a
batch holds no cycle (and no other request can make one: a job follows only jobs that
existed before it).
"""
from __future__ import annotations

import math
from typing import Any

from offload.service.config import Config
from offload.service.errors import Invalid, ShuttingDown, TooManyRequests
from offload.service.limits import Limits
from offload.service.models import Job, JobStatus
from offload.service.scheduler import Scheduler
from offload.service.store import IdempotencyMismatch, Store
from offload.service.store.base import UnknownParent
from offload.service.validation import Submission, parse_submission
from offload.service.uploads import Upload
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

    def accepting(self) -> None:
        """503 while the service drains."""
        if not self.scheduler.accepting:
            raise ShuttingDown("the service is shutting down and takes no new jobs; try again shortly")

    async def admit(self, owner: str, jobs: int = 1) -> None:
        """Raise unless `owner` may submit `jobs` jobs now: 503 while shutting down, 429
        (with Retry-After) when it submits too fast or they would not fit under its pending
        cap. The pending count is read before the insert, so concurrent submissions may
        overshoot the cap by the number in flight."""
        self.accepting()
        limits = self.limits.config
        wait = self.limits.submissions.take(owner, jobs)
        if wait > 0:
            raise TooManyRequests(f"too many submissions: at most {limits.submit_rate:g} jobs per second "
                                  f"(bursts of {limits.submit_burst}); retry later", math.ceil(wait))
        cap = limits.max_pending_per_user
        if cap and await self.limits.pending.count(self.store, owner) + jobs > cap:
            more = "" if jobs == 1 else f" and these {jobs:,} would not fit"
            raise TooManyRequests(f"you may have {cap:,} pending jobs at most{more}; submit more as they start",
                                  PENDING_RETRY_AFTER)

    async def submit(self, owner: str, body: Any, idempotency_key: str | None,
                     upload: Upload | None = None) -> tuple[Job, bool]:
        """Parse, check the queue's room, store: the job and whether it is new (False: the
        answer to an earlier request with the same idempotency key). Call `admit` first.
        An `upload` becomes the job's input file before the insert; the caller deletes it
        when this raises or answers an earlier job (`uploads`)."""
        submission = parse_submission(body, owner, self.config, idempotency_key,
                                      now=self.scheduler.clock.now(), registry=self.registry)
        cap = self.config.jobs.max_pending
        if await self.limits.pending.count(self.store) >= cap:
            raise TooManyRequests(f"the queue is full ({cap} pending jobs); try again shortly", retry_after=1)
        if upload is not None:
            await upload.keep(self.config.results_path, submission.job.id)
        self.scheduler.submitted(submission.job)  # before the insert is queued: see `submitted`
        try:
            job, created = await self.store.create(submission.job, submission.request_hash)
        except IdempotencyMismatch as exc:
            raise Invalid("idempotencyKey", f"was already used for job {exc.job.id} with a different request") from None
        except UnknownParent as exc:
            raise unknown_parent(submission, exc) from None
        finally:
            self.scheduler.settled(submission.job.id)
        if created and job.status is JobStatus.PENDING:  # not one cancelled at once by a failed parent
            self.limits.pending.add(job.owner)
        return job, created

    def batch_jobs(self, body: Any) -> list[Any]:
        """The job bodies of a batch request: 422 unless `{"jobs": [...]}` with 1 to
        `[limits] max_batch_jobs` of them."""
        jobs = body.get("jobs") if isinstance(body, dict) else None
        if not isinstance(jobs, list):
            raise Invalid("jobs", 'must be an array of jobs: {"jobs": [{"type", "data", "options"?}, ...]}')
        most = self.limits.config.max_batch_jobs
        if not 1 <= len(jobs) <= most:
            raise Invalid("jobs", f"holds {len(jobs):,} jobs; a batch holds 1 to {most:,} "
                                  "([limits] max_batch_jobs)")
        return jobs

    async def submit_many(self, owner: str, bodies: list[Any]) -> list[tuple[Job, bool]]:
        """Validate every job, check the queue's room for all of them, store them in one
        transaction: each job and whether it is new. Call `admit(owner, len(bodies))` first."""
        now = self.scheduler.clock.now()
        submissions = []
        for index, body in enumerate(bodies):
            try:
                submissions.append(parse_submission(body, owner, self.config, now=now, registry=self.registry,
                                                    batch_index=index))
            except Invalid as exc:
                field = f"jobs[{index}]" if exc.field == "body" else f"jobs[{index}].{exc.field}"
                raise Invalid(field, exc.problem) from None
            if self.registry.get(submissions[-1].job.type).upload is not None:  # type: ignore[union-attr]
                raise Invalid(f"jobs[{index}].type", "takes an uploaded file: submit it alone to POST /api/jobs")
        cap = self.config.jobs.max_pending
        if await self.limits.pending.count(self.store) + len(submissions) > cap:
            raise TooManyRequests(f"the queue is full ({cap} pending jobs at most); try again shortly", retry_after=1)
        for submission in submissions:
            self.scheduler.submitted(submission.job)
        try:
            answers = await self.store.create_many([(s.job, s.request_hash) for s in submissions])
        except IdempotencyMismatch as exc:
            raise Invalid(f"jobs[{exc.index}].options.idempotencyKey",
                          f"was already used for job {exc.job.id} with a different request") from None
        except UnknownParent as exc:
            assert exc.index is not None
            error = unknown_parent(submissions[exc.index], exc)
            raise Invalid(f"jobs[{exc.index}].{error.field}", error.problem) from None
        finally:
            for submission in submissions:
                self.scheduler.settled(submission.job.id)
        created = [job for job, new in answers if new and job.status is JobStatus.PENDING]
        if created:
            self.limits.pending.add(owner, len(created))
        return answers


def unknown_parent(submission: Submission, exc: UnknownParent) -> Invalid:
    """The one answer for a parent that is not the caller's job: unknown and another user's
    read alike, so the answer never tells that a job of someone else exists."""
    return Invalid(submission.after_field(exc.position), f"there is no job {exc.job_id} of yours to follow")
