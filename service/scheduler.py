"""The scheduler: takes due jobs from the store and runs them, one per free worker slot.

It owns the running attempts of this node: their deadlines, their leases (renewed while
they run, so another node or a restart can take back the jobs of a node that died), their
progress (forwarded to the store, whose commits are the events) and their endings (each one a
fenced store transition: an attempt that lost its lease cannot overwrite the outcome).
CPU work never runs here: process job types run in the pool, `async def` types run as
tasks on the loop.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import secrets
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offload.service.config import Config
from offload.service.errors import OffloadError, StoreUnavailable, TooManyRequests
from offload.service.events import EventHub
from offload.service.models import Clock, Job, JobStatus
from offload.service.pool import Outcome, Slot, WorkerPool
from offload.service.store import Store
from offload.service.store.base import StoreChange
from offload.workers import registry
from offload.workers.context import Context
from offload.workers.errors import Cancelled, JobError

log = logging.getLogger("offload.scheduler")
#: The jitter's own generator: the process-wide `random` belongs to the application embedding
#: the service (and to test tools that check nobody else moves it).
_JITTER = random.Random()

LEASE_LOST = {"type": "WorkerLost", "message": "the node running this job stopped before it finished"}


@dataclass
class Running:
    job: Job
    task: asyncio.Task[None] | None = None
    stop_reason: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    final: Job | None = None
    #: The start of this (reserved) attempt was never recorded: it must not write anything.
    lost: bool = False


class Scheduler:
    def __init__(self, config: Config, store: Store, hub: EventHub, pool: WorkerPool, clock: Clock | None = None) -> None:
        self.config = config
        #: Every time this scheduler records or compares (due times, claims, leases); it never
        #: goes back, so a wall clock stepped back does not stall the queue.
        self.clock = clock or Clock()
        self.store = store
        self.hub = hub
        self.pool = pool
        self.node = "node_" + secrets.token_hex(6)
        self.running: dict[str, Running] = {}
        self.accepting = True
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._async_running = 0
        self._pending = 0
        self._pending_read_at = float("-inf")
        #: Pending jobs reserved as the next ones for this node's workers, best first.
        self.reserved: list[Job] = []
        self._reservations_stale = False
        pool.on_progress = self._on_progress
        #: Cancel requests (recorded by any node) reach the attempt through the store's changes.
        self._unsubscribe = store.changes.subscribe(self._on_change)
        # The job types are registered before the service starts: sort them out once, not
        # on every pass of the loop.
        self._async_types = [name for name in registry.names() if registry.get(name).is_async]  # type: ignore[union-attr]
        self._process_types = [name for name in registry.names() if name not in self._async_types]

    # ---- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        # With a database of its own, a job still marked running was left by a previous run of
        # this service: take it back now instead of waiting for its lease to run out.
        latest = await self.store.latest_time()
        if latest is not None:  # the wall clock went back while the service was down
            self.clock.not_before(latest)
        now = self.clock.now()
        horizon = now + (self.config.jobs.lease_ms + 1 if self.store.exclusive else 0)
        rescued = await self.store.rescue_expired(now, LEASE_LOST, expired_before=horizon)
        for job in rescued:
            log.warning("job %s was running when the service stopped: now %s", job.id, job.status.value)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="offload-scheduler")

    async def stop(self, grace: float) -> str:
        """Stop taking jobs, give the running ones `grace` seconds (less if `hurry()` is
        called), then stop them and hand them back as pending without counting the attempt.
        Returns what the drain did, as a sentence for the operator."""
        self.accepting = False
        self._wake.set()
        if self._task is not None:
            # Let the loop finish its pass rather than cancel it: a claim cancelled in flight
            # could commit jobs as running with nobody to run them.
            await self._task
        try:
            await self._drop_reservations()
        except OffloadError:
            log.warning("could not give back reserved jobs; they return to the queue when the lease runs out")
        entries = list(self.running.values())
        if not entries:
            return "no running jobs"
        waiting = [asyncio.ensure_future(entry.done.wait()) for entry in entries]
        all_done: asyncio.Future[Any] = asyncio.gather(*waiting)
        hurry: asyncio.Future[Any] = asyncio.ensure_future(self._hurry.wait())
        await asyncio.wait([all_done, hurry], timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        hurry.cancel()
        self.pool.draining = True
        for entry in list(self.running.values()):
            self._stop_entry(entry, "shutdown")
        pending = [w for w in waiting if not w.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.pool.stop_grace + 5)
        return _drained(entries)

    def hurry(self) -> None:
        """Cut a drain short (a second Ctrl-C): running jobs are stopped at once and go back
        to pending, as when the grace period runs out."""
        self._hurry.set()

    async def admit(self) -> None:
        """Refuse a submission (429) while the pending queue is at `max_pending`. The count
        is re-read at most every 250 ms and counted up locally in between."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._pending_read_at > 0.25:
            self._pending = await self.store.count_pending()
            self._pending_read_at = loop.time()
        if self._pending >= self.config.jobs.max_pending:
            raise TooManyRequests(f"the queue is full ({self.config.jobs.max_pending} pending jobs); "
                                  "try again shortly", retry_after=1)

    def submitted(self, job: Job) -> None:
        """A new job was stored (its watchers heard it from the store): count it against
        `max_pending`, and run it if a slot is free."""
        self._pending += 1
        if self.reserved and self._outranks_reserved(job):
            self._reservations_stale = True
        self._wake.set()

    def notify(self) -> None:
        """Something changed (a job was submitted, a slot freed): look for work now."""
        self._wake.set()

    # ---- the loop ------------------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        renew_every = self.config.jobs.lease_ms / 3000
        next_renew = loop.time() + renew_every
        while self.accepting:
            self._wake.clear()
            timeout = max(0.0, next_renew - loop.time())
            try:
                looked_at = self.clock.now()
                idle = await self._fill()
                if loop.time() >= next_renew:
                    await self._renew()
                    next_renew = loop.time() + renew_every
                    timeout = renew_every
                if idle:  # no due job for a free slot: sleep until the next delayed one is due
                    # Counted from before the claims: a job that fell due while they ran (a
                    # retry with a short backoff) is still ahead of `looked_at`, so the loop
                    # comes back at once instead of sleeping until the next lease renewal.
                    due = await self.store.next_due(looked_at)
                    if due is not None:
                        timeout = min(timeout, max(0.0, (due - self.clock.now()) / 1000))
            except Exception:  # the store went away for a moment: try again soon
                log.exception("scheduler pass failed")
                timeout = 1.0
            if not self._wake.is_set():
                timer = loop.call_later(timeout, self._wake.set)
                await self._wake.wait()
                timer.cancel()

    async def _fill(self) -> bool:
        """Claim jobs for every free slot; True when a slot stayed free for want of due jobs."""
        async_types, process_types = self._async_types, self._process_types
        if self._reservations_stale:
            await self._drop_reservations()
        while self.accepting:
            slots = self.pool.reserve()
            while slots and self.reserved:  # jobs this node set aside start without a round trip
                self._start_reserved(self.reserved.pop(0), slots.pop(0))
            room = self.config.workers.async_concurrency - self._async_running if async_types else 0
            if not slots:  # every worker busy: set their next jobs aside
                await self._top_up(process_types)
                if room <= 0:
                    return False
            jobs: list[Job] = []
            try:
                if slots:
                    jobs = await self.store.claim(self.node, self.clock.now(), self.config.jobs.lease_ms, process_types,
                                                  limit=len(slots), per_owner=self.config.limits.max_running_per_user)
                for job, slot in zip(jobs, slots, strict=False):
                    self._start(job, slot)
            finally:
                self.pool.unreserve(slots[len(jobs):])
            async_jobs = await self.store.claim(self.node, self.clock.now(), self.config.jobs.lease_ms, async_types,
                                                limit=room, per_owner=self.config.limits.max_running_per_user) if room > 0 else []
            for job in async_jobs:
                self._start(job, None)
            filled = (slots and len(jobs) == len(slots)) or (room > 0 and len(async_jobs) == room)
            if not filled:  # the store has no more due jobs for the room there is
                return True
        return False

    # ---- reservations ------------------------------------------------------------------------
    # While every worker is busy, the scheduler reserves the next job for each of them, so a
    # worker that frees up starts its next job at once and the start is recorded meanwhile,
    # instead of waiting for a claim's commit first. A submission that should go before a
    # reserved job (better priority, or another user's turn) gives the reservations back.

    @property
    def _reserving(self) -> bool:
        # A per-user cap counts running jobs only; reserved ones would slip past it.
        return self.accepting and not self.config.limits.max_running_per_user

    async def _top_up(self, process_types: list[str]) -> None:
        want = self.pool.size - len(self.reserved)
        if want <= 0 or not self._reserving or self._reservations_stale:
            return
        jobs = await self.store.reserve(self.node, self.clock.now(), self.config.jobs.lease_ms, process_types, want)
        self.reserved.extend(jobs)

    async def _drop_reservations(self) -> None:
        self._reservations_stale = False
        dropped, self.reserved = self.reserved, []
        await self.store.unreserve(self.node, [job.id for job in dropped])

    def _outranks_reserved(self, job: Job) -> bool:
        return any(job.priority < held.priority or job.owner != held.owner for held in self.reserved)

    def _start_reserved(self, job: Job, slot: Slot) -> None:
        now = self.clock.now()
        started = self.store.start_reserved(job, now, self.config.jobs.lease_ms)
        running = dataclasses.replace(job, status=JobStatus.RUNNING, attempts=job.attempts + 1, started_at=now,
                                      progress=0, message=None, lease_until=now + self.config.jobs.lease_ms)
        entry = self._launch(running, slot)
        asyncio.get_running_loop().create_task(self._confirm_start(entry, started))

    async def _confirm_start(self, entry: Running, started: Awaitable[Job | None]) -> None:
        try:
            job = await started
        except OffloadError:
            job = None
        if job is None:  # cancelled (or its reservation lapsed) before the start was recorded
            entry.lost = True
            self._stop_entry(entry, "lost")
            return
        if entry.job.cancel_requested:  # heard before the start was confirmed
            job = dataclasses.replace(job, cancel_requested=True)
        entry.job = job

    def _start(self, job: Job, slot: Slot | None) -> None:
        self._launch(job, slot)

    def _launch(self, job: Job, slot: Slot | None) -> Running:
        """Run the attempt `job` describes: on `slot`'s process, or on the loop without one."""
        entry = Running(job)
        self.running[job.id] = entry
        if slot is None:
            self._async_running += 1
        entry.task = asyncio.get_running_loop().create_task(self._run(entry, slot), name=f"offload-job-{job.id}")
        return entry

    async def _renew(self) -> None:
        if self.running or self.reserved:
            await self.store.renew_leases(self.node, self.clock.now() + self.config.jobs.lease_ms)
        await self.store.rescue_expired(self.clock.now(), LEASE_LOST)

    # ---- one attempt -------------------------------------------------------------------------
    async def _run(self, entry: Running, slot: Slot | None) -> None:
        job = entry.job
        job_type = registry.get(job.type)
        timeout_ms = job.timeout_ms or self.config.jobs.timeout_ms
        settings = self.config.jobs.settings.get(job.type, {})
        try:
            if slot is not None:
                outcome = await self._run_in_process(entry, slot, settings, timeout_ms)
            elif job_type is not None:
                outcome = await self._run_async(entry, job_type.handler, settings, timeout_ms)
            else:
                outcome = Outcome("failed", error={"type": "UnknownJobType", "message": f"job type {job.type!r} "
                                  "is not registered on this node"}, permanent=True)
            self._wake.set()  # the slot is free: claim the next job while this outcome is recorded
            entry.final = await self._record(entry, outcome)
        except Exception:
            log.exception("job %s: could not record its outcome; it will run again", job.id)
        finally:
            if slot is None:
                self._async_running -= 1
            if self.running.get(job.id) is entry:  # not a later attempt of the same job
                del self.running[job.id]
            entry.done.set()
            self._wake.set()

    async def _run_in_process(self, entry: Running, slot: Slot, settings: Mapping[str, Any], timeout_ms: int) -> Outcome:
        job = entry.job
        timer = asyncio.get_running_loop().call_later(timeout_ms / 1000, self._stop_entry, entry, "timeout")
        try:
            return await self.pool.run(slot, job.id, job.attempts, job.type, job.data, settings,
                                       str(self.config.results_path))
        finally:
            timer.cancel()

    async def _run_async(self, entry: Running, handler: Any, settings: Mapping[str, Any], timeout_ms: int) -> Outcome:
        job = entry.job

        def send(percent: int, message: str | None) -> None:
            self._on_progress(job.id, job.attempts, percent, message)

        ctx = Context(job.id, job.attempts, settings, send, lambda: entry.stop_reason is not None)
        try:
            value = await asyncio.wait_for(handler(job.data, ctx), timeout_ms / 1000)
        except asyncio.TimeoutError:
            entry.stop_reason = "timeout"
            return Outcome("stopped")
        except (Cancelled, asyncio.CancelledError):
            if entry.stop_reason is None:
                raise
            return Outcome("stopped")
        except JobError as exc:
            return Outcome("failed", error={"type": exc.type, "message": exc.message}, permanent=exc.permanent)
        except Exception as exc:
            return Outcome("failed", error={"type": exc.__class__.__name__, "message": str(exc) or repr(exc)})
        return Outcome("completed", result={"value": value})

    def _stop_entry(self, entry: Running, reason: str) -> None:
        if entry.stop_reason is not None:
            return
        entry.stop_reason = reason
        if not self.pool.stop(entry.job.id, reason) and entry.task is not None:
            job_type = registry.get(entry.job.type)
            if job_type is not None and job_type.is_async:
                entry.task.cancel()

    async def _record(self, entry: Running, outcome: Outcome) -> Job | None:
        """Record the outcome, waiting out a store fault (locked, read-only, full disk): the
        outcome is kept in memory and written as soon as the store takes writes again."""
        delay = 0.05
        while True:
            try:
                return await self._finish(entry, outcome)
            except StoreUnavailable as exc:
                if not self.accepting:
                    raise
                log.warning("job %s: outcome not recorded yet (%s); retrying in %.1f s", entry.job.id, exc.message, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _finish(self, entry: Running, outcome: Outcome) -> Job | None:
        job, now = entry.job, self.clock.now()
        if entry.lost:  # the store never saw this attempt start; whatever it did is dropped
            self._discard_file(outcome)
            return None
        reason = entry.stop_reason
        if outcome.kind == "completed" and reason != "shutdown":
            final = await self.store.complete(job, outcome.result, now)
        elif reason == "shutdown":
            final = await self.store.release(job, now)
        elif reason == "cancelled" or outcome.kind == "cancelled" or job.cancel_requested:
            final = await self.store.cancel_running(job, now)
        else:
            if reason == "timeout":
                timeout = job.timeout_ms or self.config.jobs.timeout_ms
                error, permanent = {"type": "Timeout", "message": f"the attempt ran past its timeout of {timeout} ms"}, False
            else:
                error, permanent = outcome.error or {"type": "Error", "message": "the job failed"}, outcome.permanent
            retry_at = None if permanent or job.attempts > job.max_retries else now + self._backoff(job)
            final = await self.store.fail(job, error, now, retry_at)
        if final is None:
            log.warning("job %s attempt %d lost its lease before finishing; its outcome is discarded",
                        job.id, job.attempts)
            self._discard_file(outcome)
            return None
        return final

    def _backoff(self, job: Job) -> int:
        """Exponential backoff from the job's retry delay, with up to 25 % jitter."""
        base = job.retry_delay_ms * (2 ** (job.attempts - 1))
        return int(min(base, 3_600_000) * (1 + _JITTER.random() * 0.25))

    def _discard_file(self, outcome: Outcome) -> None:
        if outcome.result and isinstance(outcome.result, dict) and "file" in outcome.result:
            (Path(self.config.results_path) / outcome.result["file"]).unlink(missing_ok=True)

    # ---- progress --------------------------------------------------------------------------------
    def _on_progress(self, job_id: str, attempt: int, percent: int, message: str | None) -> None:
        entry = self.running.get(job_id)
        if entry is None or entry.job.attempts != attempt:
            return
        self.store.set_progress(entry.job, percent, message)

    # ---- cancellation ---------------------------------------------------------------------------
    def _on_change(self, change: StoreChange) -> None:
        """Act on committed changes that concern this node: a cancel request of an attempt it
        runs stops that attempt ("cancelled"); a reserved job cancelled meanwhile is dropped."""
        if not isinstance(change, Job):
            return
        if change.status is JobStatus.CANCELLED and self.reserved:
            self.reserved = [held for held in self.reserved if held.id != change.id]
        if not change.cancel_requested or change.status is not JobStatus.RUNNING:
            return
        entry = self.running.get(change.id)
        if entry is None or entry.job.attempts != change.attempts or change.lease_owner != self.node:
            return
        entry.job = dataclasses.replace(entry.job, cancel_requested=True)
        self._stop_entry(entry, "cancelled")

    def describe(self) -> dict[str, Any]:
        return {"node": self.node, "running": len(self.running), "accepting": self.accepting,
                "workers": self.pool.describe()}


def _drained(entries: list[Running]) -> str:
    """What a drain did to the jobs that were running when it began."""
    def jobs(n: int) -> str:
        return f"{n} running job{'s' if n != 1 else ''}"

    returned = sum(1 for e in entries if e.stop_reason == "shutdown" and e.final is not None
                   and e.final.status is JobStatus.PENDING)
    finished = sum(1 for e in entries if e.final is not None) - returned  # an attempt that ended by itself
    unsettled = len(entries) - returned - finished
    if finished == len(entries):
        return f"all running jobs finished ({finished})"
    parts = []
    if finished:
        parts.append(f"{jobs(finished)} finished")
    if returned:
        parts.append(f"{jobs(returned)} returned to pending")
    if unsettled:
        parts.append(f"{jobs(unsettled)} not recorded (they run again once their lease runs out)")
    return ", ".join(parts)
