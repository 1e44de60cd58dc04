"""The store contract: what the service asks of a job database, in job terms.

The public methods own the lifecycle rules (which status may follow which, what a
transition changes, fencing by attempt and lease); a backend implements the underscored
hooks, which only move rows. Every state change bumps the job's `seq`, so an event's `seq`
is the number of the change that produced it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from offload.service.models import TERMINAL, Job, JobStatus

Change = dict[str, Any]


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class Fence:
    """Conditions a transition requires; a row that does not match is left alone."""

    statuses: frozenset[JobStatus]
    attempt: int | None = None
    lease_owner: str | None = None
    owner: str | None = None


class IdempotencyMismatch(Exception):
    """The idempotency key was used before with a different request."""

    def __init__(self, job: Job) -> None:
        super().__init__(job.id)
        self.job = job


class Store(ABC):
    """A job database. `open()` creates or migrates the schema; `close()` flushes and closes."""

    #: True when one service alone uses this database (an SQLite file): running jobs found
    #: at start were left by its previous run. False for a database shared by nodes, where
    #: only expired leases are taken back.
    exclusive = False

    #: Called with each job the store changed by itself rather than on request: a stored row
    #: that could not be read is failed as `CorruptJob` wherever it is met (a read, a claim,
    #: a transition), so it hurts only itself. The service publishes these like its own.
    on_change: Callable[[Job], None] | None = None

    def _announce(self, jobs: Iterable[Job]) -> None:
        for job in jobs:
            if self.on_change is not None:
                self.on_change(job)

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise if the database does not answer."""

    @abstractmethod
    async def writable(self) -> None:
        """Raise `StoreUnavailable` naming the reason unless the database takes a write now.

        A read proves nothing here: a database locked by another process, read-only or on a
        full disk still answers `SELECT 1`. A backend commits a write that changes no job,
        in order with the other writes, so readiness probes tell the truth. Cheap enough
        for a probe every second; concurrent calls may share one probe."""

    # ---- reads -------------------------------------------------------------------------
    @abstractmethod
    async def get(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job, or None when it does not exist or belongs to another owner."""

    @abstractmethod
    async def list_jobs(
        self, owner: str | None, *, status: JobStatus | None = None, type: str | None = None,
        limit: int = 50, cursor: str | None = None,
    ) -> Page:
        """Newest first; `cursor` is the `next_cursor` of the page before."""

    @abstractmethod
    async def count_by_status(self, owner: str | None = None) -> dict[str, int]:
        """Jobs per status (every status present, zero included): `owner`'s, or everyone's."""

    @abstractmethod
    async def count_pending(self) -> int: ...

    @abstractmethod
    async def count_pending_of(self, owner: str) -> int:
        """How many pending jobs `owner` has (the per-user cap); cheap on an index."""

    @abstractmethod
    async def next_due(self, now: int) -> int | None:
        """When the earliest pending job that is not yet due becomes due, if any."""

    @abstractmethod
    async def latest_time(self) -> int | None:
        """The latest time recorded (the newest job's creation), if any: the service's clock
        starts no earlier, whatever the wall clock says."""

    @abstractmethod
    async def unfinished_page(self, owner: str | None, *, limit: int, cursor: str | None = None) -> Page:
        """Up to `limit` pending and running jobs of `owner` (every owner's when None), in
        submission order, after the page `cursor` ended; `next_cursor` is None on the last
        page. Each page is read on its own, so a job that finished before its page is left
        out and one queued after the first page is still met."""

    # ---- writes --------------------------------------------------------------------------
    async def create(self, job: Job, request_hash: str | None = None) -> tuple[Job, bool]:
        """Store a new pending job; durable when this returns. With an idempotency key that
        the owner used before, returns `(existing, False)` instead, or raises
        `IdempotencyMismatch` when the earlier request differed."""
        if job.status is not JobStatus.PENDING:
            raise ValueError("a new job must be pending")
        return await self._insert(job, request_hash)

    async def claim(self, node: str, now: int, lease_ms: int, types: Iterable[str] | None = None,
                    limit: int = 1, per_owner: int = 0) -> list[Job]:
        """Take up to `limit` due pending jobs and mark them running on `node`, counting an
        attempt; returned in the order they should start. Priorities are strict; within one,
        owners share the slots round-robin (each owner's own jobs by due time, then
        submission order), and with `per_owner` no owner gets more than that many running."""
        return await self._claim(
            node, now, lease_ms, None if types is None else tuple(types),
            {"status": JobStatus.RUNNING, "started_at": now, "progress": 0, "message": None,
             "lease_owner": node, "lease_until": now + lease_ms},
            limit, per_owner,
        )

    def set_progress(self, job: Job, progress: int, message: str | None,
                     on_commit: Callable[[int], None] | None = None) -> None:
        """Record the latest progress of a running attempt. Not awaited: writes that arrive
        together are coalesced per job into one change, which takes the job's next `seq` like
        any other change (so a client that keeps up sees no gap in a job's events).
        `on_commit(seq)` runs once the value is durable; never for an attempt that no longer
        owns the job."""
        self._queue_progress(job.id, job.attempts, progress, message, on_commit)

    async def complete(self, job: Job, result: Any, now: int) -> Job | None:
        """Finish the attempt `job` describes; None if that attempt no longer owns the job."""
        return await self._transition(job.id, self._fence_attempt(job), {
            "status": JobStatus.COMPLETED, "progress": 100, "completed_at": now, "result": result,
            "error": None, "lease_owner": None, "lease_until": None})

    async def fail(self, job: Job, error: dict[str, str], now: int, retry_at: int | None) -> Job | None:
        """End the attempt with an error: back to pending until `retry_at`, or failed when
        `retry_at` is None. None if the attempt no longer owns the job."""
        change: Change = {"error": error, "lease_owner": None, "lease_until": None}
        if retry_at is None:
            change.update(status=JobStatus.FAILED, completed_at=now)
        else:
            change.update(status=JobStatus.PENDING, due_at=retry_at)
        return await self._transition(job.id, self._fence_attempt(job), change)

    async def release(self, job: Job) -> Job | None:
        """Give a running attempt back without counting it (graceful shutdown)."""
        return await self._transition(job.id, self._fence_attempt(job), {
            "status": JobStatus.PENDING, "attempts": job.attempts - 1, "progress": 0, "message": None,
            "lease_owner": None, "lease_until": None})

    async def cancel_pending(self, job_id: str, owner: str | None, now: int) -> Job | None:
        return await self._transition(job_id, Fence(frozenset({JobStatus.PENDING}), owner=owner), {
            "status": JobStatus.CANCELLED, "completed_at": now, "lease_owner": None, "lease_until": None})

    async def reserve(self, node: str, now: int, lease_ms: int, types: Iterable[str], limit: int) -> list[Job]:
        """Mark up to `limit` due pending jobs as this node's next ones, in the order `claim`
        would take them. They stay pending (no attempt, no event) and no claim takes them;
        `start_reserved` starts one without a round trip before its work begins, and an
        unused reservation is given back with `unreserve` or runs out with the node's lease."""
        return await self._claim(node, now, lease_ms, tuple(types),
                                 {"lease_owner": node, "lease_until": now + lease_ms}, limit, 0)

    def start_reserved(self, job: Job, now: int, lease_ms: int) -> Awaitable[Job | None]:
        """Start the attempt of a job this node reserved. Queued at once, so it is recorded
        before anything the attempt itself writes; None if the job was cancelled meanwhile."""
        assert job.lease_owner is not None
        return self._begin_transition(job.id, Fence(frozenset({JobStatus.PENDING}), lease_owner=job.lease_owner), {
            "status": JobStatus.RUNNING, "attempts": job.attempts + 1, "started_at": now, "progress": 0,
            "message": None, "lease_until": now + lease_ms})

    async def unreserve(self, node: str, job_ids: list[str]) -> None:
        if job_ids:
            await self._unreserve(node, job_ids)

    async def cancel_running(self, job: Job, now: int) -> Job | None:
        return await self._transition(job.id, self._fence_attempt(job), {
            "status": JobStatus.CANCELLED, "completed_at": now, "lease_owner": None, "lease_until": None})

    async def renew_leases(self, node: str, until: int) -> int:
        """Extend every lease `node` holds; returns how many it still holds."""
        return await self._renew(node, until)

    async def rescue_expired(self, now: int, max_attempts_error: dict[str, str], *,
                             expired_before: int | None = None) -> list[Job]:
        """Take back running jobs whose lease ran out (their node died or hung): each goes
        back to pending, due at `now`, or to failed when it has used all its attempts.
        `expired_before` (default `now`) moves the lease cut-off, e.g. past every lease when
        the caller knows their node is gone, without making the rescued jobs wait for it."""
        return await self._rescue(now if expired_before is None else expired_before, now, max_attempts_error)

    @staticmethod
    def _fence_attempt(job: Job) -> Fence:
        return Fence(frozenset({JobStatus.RUNNING}), attempt=job.attempts, lease_owner=job.lease_owner)

    # ---- backend hooks ---------------------------------------------------------------------
    @abstractmethod
    async def _insert(self, job: Job, request_hash: str | None) -> tuple[Job, bool]: ...

    @abstractmethod
    async def _claim(self, node: str, now: int, lease_ms: int, types: tuple[str, ...] | None,
                     change: Change, limit: int, per_owner: int) -> list[Job]: ...

    async def _transition(self, job_id: str, fence: Fence, change: Change) -> Job | None:
        return await self._begin_transition(job_id, fence, change)

    @abstractmethod
    def _begin_transition(self, job_id: str, fence: Fence, change: Change) -> Awaitable[Job | None]:
        """Apply `change` and bump `seq` if the row matches `fence`. Queued at once, in order
        with the writes before and after it; the awaitable gives the new row, or None."""

    @abstractmethod
    def _queue_progress(self, job_id: str, attempt: int, progress: int, message: str | None,
                        on_commit: Callable[[int], None] | None) -> None: ...

    @abstractmethod
    async def _renew(self, node: str, until: int) -> int: ...

    @abstractmethod
    async def _unreserve(self, node: str, job_ids: list[str]) -> None: ...

    @abstractmethod
    async def _rescue(self, expired_before: int, now: int, exhausted_error: dict[str, str]) -> list[Job]: ...


__all__ = ["TERMINAL", "Fence", "IdempotencyMismatch", "Page", "Store"]
