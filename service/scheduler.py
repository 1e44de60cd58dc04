"""The scheduler: takes due jobs from the store and runs them, one per free worker slot.

It owns the running attempts of this node: their deadlines, their leases (renewed while
they run, so another node or a restart can take back the jobs of a node that died), their
progress (forwarded to the store, whose commits are the events) and their endings (each
one a fenced store transition: an attempt that lost its lease cannot overwrite the outcome;
what the transition is, `endings.decide` says). No job runs here: every attempt starts the
same way on a runner (`runners.py`): the process pool, or the async runner for `async def`
types.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offload.service.config import Config
from offload.service.errors import OffloadError, StoreUnavailable
from offload.service.models import Clock, Job, JobStatus
from offload.service.endings import EndingKind, Outcome, OutcomeKind, StopReason, decide
from offload.service.pool import Slot, WorkerPool
from offload.service.runners import AsyncRunner, Runner
from offload.service.store import Store
from offload.service.store.base import StoreChange
from offload.workers.context import Input
from offload.workers.errors import Cancelled
from offload.workers.registry import Registry

log = logging.getLogger("offload.scheduler")
#: The jitter's own generator: the process-wide `random` belongs to the application embedding
#: the service (and to test tools that check nobody else moves it).
_JITTER = random.Random()

LEASE_LOST = {"type": "WorkerLost", "message": "the node running this job stopped before it finished"}
#: An attempt's progress is written (and sent to its watchers) at most this often: a report
#: that comes sooner waits for the rest of the interval, replaced by any later one, so the
#: latest always arrives, at most this late. A 500-item invoice reports a dozen times in
#: 20 ms; each write is a commit and an event to every watcher (DESIGN: "progress may be
#: coalesced for a chatty job"). A job that reports at most 100 times a second never waits.
PROGRESS_INTERVAL_S = 0.01


@dataclass
class Running:
    job: Job
    runner: Runner
    #: Held so the loop keeps the attempt's task alive (it keeps only weak references).
    task: asyncio.Task[None] | None = None
    stop_reason: StopReason | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    final: Job | None = None
    #: The start of this (reserved) attempt was never recorded: it must not write anything.
    lost: bool = False


class Scheduler:
    def __init__(self, config: Config, store: Store, pool: WorkerPool, clock: Clock | None = None, *,
                 registry: Registry | None = None, async_runner: AsyncRunner | None = None) -> None:
        self.config = config
        #: Every time this scheduler records or compares (due times, claims, leases); it never
        #: goes back, so a wall clock stepped back does not stall the queue.
        self.clock = clock or Clock()
        self.store = store
        self.pool = pool
        self.node = "node_" + secrets.token_hex(6)
        self._results = str(config.results_path)
        self.running: dict[str, Running] = {}
        self.accepting = True
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Pending jobs reserved as the next ones for this node's workers, best first.
        self.reserved: list[Job] = []
        self._reservations_stale = False
        #: Jobs that became pending, as heard from the store's changes: new, retried, rescued,
        #: handed back. A claim (or reservation) queued at a count that found too few jobs is
        #: not made again until the count moves, a delayed job falls due, or the lease timer
        #: passes (`_dry`): otherwise every finished job would cost a claim that finds nothing.
        self._pending_seen = 0
        self._dry: dict[object, int] = {}
        #: Per claim key (a runner, or "reserve"): the count at the last news for its job
        #: types, so a new `email` job does not send the process pool's claim out again.
        self._news_at: dict[object, int] = {}
        #: Jobs `submitted` announced whose insert has not been heard yet: their insert does
        #: not count as news a second time (`_on_change`).
        self._announced: set[str] = set()
        #: Of those, the ones not due yet when heard (delayed, or retried after a backoff), and
        #: `store.next_due` as read at a count of `_due_seen`, good while the count stays there.
        self._delayed_seen = 0
        self._next_due: int | None = None
        self._due_seen = -1
        #: Cancel requests (recorded by any node) reach the attempt through the store's changes.
        # Those of other nodes too (a shared database): their new jobs, their cancel requests.
        store.subscribe_all(self._on_change)  # for as long as the store: they stop together
        # The job types are registered before the service starts: sort them out once, not
        # on every pass of the loop. Each runner runs the types it can: `async def` ones on
        # the loop, the others in the pool's processes.
        types = registry or Registry.from_modules(config.workers.modules)
        async_types = [name for name in types.names() if types.get(name).is_async]  # type: ignore[union-attr]
        process_types = [name for name in types.names() if name not in async_types]
        if async_runner is None:
            async_runner = AsyncRunner(types.get, config.workers.async_concurrency)
        if async_runner.savers is None:
            async_runner.savers = self._saver_of
        self._runners: list[tuple[Runner, list[str]]] = [(pool, process_types), (async_runner, async_types)]
        #: The claim keys a pending job of each type is news for (`_heard`).
        self._keys_of: dict[str | None, tuple[object, ...]] = {
            **{name: (pool, "reserve") for name in process_types}, **{name: (async_runner,) for name in async_types}}
        self._all_keys: tuple[object, ...] = (pool, "reserve", async_runner)

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
        for runner, _ in self._runners:
            runner.drain()
        for entry in list(self.running.values()):
            self._stop_entry(entry, StopReason.SHUTDOWN)
        pending = [w for w in waiting if not w.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.pool.stop_grace + 5)
        return _drained(entries)

    def stop_accepting(self) -> None:
        """Take no new jobs from now on (shutdown began); `stop` then drains the running ones."""
        self.accepting = False

    def hurry(self) -> None:
        """Cut a drain short (a second Ctrl-C): running jobs are stopped at once and go back
        to pending, as when the grace period runs out."""
        self._hurry.set()

    def submitted(self, job: Job) -> None:
        """A job is about to be stored: called just before its insert is queued, so that a
        claim this wakes up is queued right behind the insert and commits with it (one
        transaction stores and starts the job). Should the insert not happen after all (an
        idempotent repeat), the claim finds nothing, as any claim may."""
        self._heard(job.type)  # claim again, even if the last claim found nothing
        self._announced.add(job.id)
        if job.due_at > self.clock.now():
            self._delayed_seen += 1
        if self.reserved and self._outranks_reserved(job):
            self._reservations_stale = True
        self._wake.set()

    def settled(self, job_id: str) -> None:
        """The insert `submitted` announced has committed, or will not happen (an idempotent
        repeat, a refused request)."""
        self._announced.discard(job_id)

    # ---- the loop ------------------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        renew_every = self.config.jobs.lease_ms / 3000
        next_renew = loop.time() + renew_every
        # A database shared with other nodes is looked at this often whatever was heard, so
        # a lost notification delays a new job or a cancel by one poll at most, and a dead
        # node's jobs are taken back within a poll of their lease running out.
        poll_every = self.store.poll_interval
        next_poll = loop.time() + (poll_every or 0)
        while self.accepting:
            self._wake.clear()
            timeout = max(0.0, next_renew - loop.time())
            if poll_every is not None:
                timeout = min(timeout, max(0.0, next_poll - loop.time()))
            try:
                looked_at = self.clock.now()
                if poll_every is not None and loop.time() >= next_poll:
                    next_poll = loop.time() + poll_every
                    await self._poll()
                idle = await self._fill()
                if loop.time() >= next_renew:
                    await self._renew()
                    next_renew = loop.time() + renew_every
                    timeout = renew_every
                    if poll_every is not None:
                        timeout = min(timeout, max(0.0, next_poll - loop.time()))
                if idle:  # no due job for a free slot: sleep until the next delayed one is due
                    # Counted from before the claims: a job that fell due while they ran (a
                    # retry with a short backoff) is still ahead of `looked_at`, so the loop
                    # comes back at once instead of sleeping until the next lease renewal.
                    due = await self._next_due_after(looked_at)
                    if due is not None:
                        timeout = min(timeout, max(0.0, (due - self.clock.now()) / 1000))
            except Exception:  # the store went away for a moment: try again soon
                log.exception("scheduler pass failed")
                timeout = 1.0
            if not self._wake.is_set():
                timer = loop.call_later(timeout, self._wake.set)
                await self._wake.wait()
                timer.cancel()

    async def _next_due_after(self, now: int) -> int | None:
        if self._due_seen != self._delayed_seen or (self._next_due is not None and self._next_due <= now):
            self._due_seen = self._delayed_seen
            self._next_due = await self.store.next_due(now)
        return self._next_due

    def _heard(self, job_type: str | None) -> None:
        """A job of `job_type` (None: of any type) may be claimable: the claims for its type
        are made again, even if their last one found nothing."""
        self._pending_seen += 1
        for key in self._keys_of.get(job_type, self._all_keys):  # None, or a type no runner here has: all
            self._news_at[key] = self._pending_seen

    def _is_dry(self, key: object) -> bool:
        """No job of `key`'s types became pending since a claim for it found too few, and none fell due."""
        dry_at = self._dry.get(key)
        if dry_at is None or self._news_at.get(key, 0) > dry_at or self._due_seen != self._delayed_seen:
            return False  # a job became pending since, or nobody knows when the next one falls due
        return self._next_due is None or self._next_due > self.clock.now()

    async def _fill(self) -> bool:
        """Claim jobs for every free slot of every runner; True when a slot stayed free for
        want of due jobs."""
        if self._reservations_stale:
            await self._drop_reservations()
        while self.accepting:
            room = filled = False
            for runner, types in self._runners:
                if types and runner is not self.pool and self._is_dry(runner):
                    # Nothing new for its types: not even its slots are looked at (the async
                    # runner has a hundred). Counted as room: at worst the loop also works out
                    # when the next delayed job falls due.
                    room = True
                    continue
                slots = runner.reserve() if types else []
                if runner is self.pool:
                    while slots and self.reserved:  # jobs this node set aside start without a round trip
                        self._start_reserved(self.reserved.pop(0), slots.pop(0))
                    if not slots:  # every worker busy: set their next jobs aside
                        await self._top_up(types)
                if not slots:
                    continue
                room = True
                if self._is_dry(runner):
                    runner.unreserve(slots)
                    continue
                seen = self._pending_seen
                jobs: list[Job] = []
                try:
                    jobs = await self.store.claim(self.node, self.clock.now(), self.config.jobs.lease_ms, types,
                                                  limit=len(slots), per_owner=self.config.limits.max_running_per_user)
                    for job, slot in zip(jobs, slots, strict=False):
                        self._start(job, slot, runner)
                finally:
                    runner.unreserve(slots[len(jobs):])
                if len(jobs) < len(slots):
                    self._dry[runner] = seen
                filled = filled or len(jobs) == len(slots)
            if not room:  # every slot busy
                return False
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
        # A per-user cap counts running jobs only; reserved ones would slip past it. With
        # other nodes on the database, a job set aside here would wait for this node's busy
        # workers while another node's sit idle: each node claims when it has room instead.
        return self.accepting and not self.config.limits.max_running_per_user and self.store.exclusive

    async def _top_up(self, process_types: list[str]) -> None:
        want = self.pool.size - len(self.reserved)
        if want <= 0 or not self._reserving or self._reservations_stale or self._is_dry("reserve"):
            return
        seen = self._pending_seen
        jobs = await self.store.reserve(self.node, self.clock.now(), self.config.jobs.lease_ms, process_types, want)
        self.reserved.extend(jobs)
        if len(jobs) < want:
            self._dry["reserve"] = seen

    async def _drop_reservations(self) -> None:
        self._reservations_stale = False
        self._dry.clear()  # the jobs handed back can be claimed again
        dropped, self.reserved = self.reserved, []
        await self.store.unreserve(self.node, [job.id for job in dropped])

    def _outranks_reserved(self, job: Job) -> bool:
        return any(job.priority < held.priority or job.owner != held.owner for held in self.reserved)

    def _start_reserved(self, job: Job, slot: Slot) -> None:
        now = self.clock.now()
        started = self.store.start_reserved(job, now, self.config.jobs.lease_ms)
        running = dataclasses.replace(job, status=JobStatus.RUNNING, attempts=job.attempts + 1, started_at=now,
                                      progress=0, message=None, lease_until=now + self.config.jobs.lease_ms)
        entry = self._launch(running, slot, self.pool)
        asyncio.get_running_loop().create_task(self._confirm_start(entry, started))

    async def _confirm_start(self, entry: Running, started: Awaitable[Job | None]) -> None:
        try:
            job = await started
        except OffloadError:
            job = None
        if job is None:  # cancelled (or its reservation lapsed) before the start was recorded
            entry.lost = True
            self._stop_entry(entry, StopReason.LOST)
            return
        if entry.job.cancel_requested:  # heard before the start was confirmed
            job = dataclasses.replace(job, cancel_requested=True)
        entry.job = job

    def _start(self, job: Job, slot: Any, runner: Runner | None = None) -> None:
        self._launch(job, slot, runner or self.pool)

    def _launch(self, job: Job, slot: Any, runner: Runner) -> Running:
        """Run the attempt `job` describes on `runner`'s held `slot`."""
        entry = Running(job, runner)
        self.running[job.id] = entry
        entry.task = asyncio.get_running_loop().create_task(self._run(entry, slot), name=f"offload-job-{job.id}")
        return entry

    async def _poll(self) -> None:
        """What another node's notification would have said, read from the database: jobs
        may have become pending (the claims go out again), cancel requests of the attempts
        this node runs, and leases that ran out on a node that died."""
        self._heard(None)
        if self.running:
            for job in await self.store.cancel_requests(self.node):
                self._on_change(job)
        await self.store.rescue_expired(self.clock.now(), LEASE_LOST)

    async def _renew(self) -> None:
        # Claims are made again at least this often, whatever was heard: a reservation that
        # ran out (`rescue_expired` hands it back without a change) is found this way.
        self._dry.clear()
        if self.running or self.reserved:
            await self.store.renew_leases(self.node, self.clock.now() + self.config.jobs.lease_ms)
        await self.store.rescue_expired(self.clock.now(), LEASE_LOST)

    # ---- one attempt -------------------------------------------------------------------------
    async def _run(self, entry: Running, slot: Any) -> None:
        job = entry.job
        timeout_ms = job.timeout_ms or self.config.jobs.timeout_ms
        settings = self.config.jobs.settings.get(job.type, {})
        try:
            try:
                extras = await self._extras_of(job)
            except OffloadError as exc:  # the store did not answer: this attempt fails, and may retry
                entry.runner.unreserve([slot])
                outcome = Outcome(OutcomeKind.FAILED, error={"type": "InputsUnavailable", "message": exc.message})
            else:
                timer = asyncio.get_running_loop().call_later(timeout_ms / 1000, self._stop_entry, entry,
                                                              StopReason.TIMEOUT)
                progress = _Paced(self._progress_of(job))
                try:
                    outcome = await entry.runner.run(slot, job.id, job.attempts, job.type, job.data, settings,
                                                     self._results, progress, extras)
                finally:
                    timer.cancel()
                    progress.flush()  # the latest report is written before (with) the ending
            self._wake.set()  # the slot is free: claim the next job while this outcome is recorded
            entry.final = await self._record(entry, outcome)
        except Exception:
            log.exception("job %s: could not record its outcome; it will run again", job.id)
        finally:
            if self.running.get(job.id) is entry:  # not a later attempt of the same job
                del self.running[job.id]
            entry.done.set()
            self._wake.set()

    async def _extras_of(self, job: Job) -> dict[str, Any] | None:
        """What the attempt's `Context` gets besides the data (`Runner.run`'s `extras`):
        `checkpoint`, what an earlier attempt saved (`ctx.save`), and `inputs`, the jobs it followed in the order they were named (`ctx.inputs`), each with
        its result as stored and the absolute path of its result file. They are read now:
        a job that follows is only due once every parent ended, and a parent is kept
        (retention) while a job that follows it is unfinished. A failed or cancelled parent
        is an input only for a job that runs anyway (`afterFailed = "run"`)."""
        extras: dict[str, Any] = {}
        if job.checkpoint is not None:  # what an earlier attempt saved (`ctx.save`), read by the claim
            extras["checkpoint"] = job.checkpoint
        if not job.after:
            return extras or None
        parents = await self.store.get_many(job.after, job.owner)
        results = Path(self.config.results_path).absolute()
        inputs = []
        for job_id in job.after:
            parent = parents.get(job_id)
            if parent is None:  # deleted before this job was retried
                continue
            file = (parent.result or {}).get("file")
            path = str(results / file) if isinstance(file, str) and parent.status is JobStatus.COMPLETED else None
            inputs.append(Input(parent.id, parent.type, parent.result if parent.status is JobStatus.COMPLETED
                                else None, path, parent.status.value, parent.error).to_json())
        extras["inputs"] = inputs
        return extras

    def _saver_of(self, job_id: str, attempt: int) -> Callable[[Any], Awaitable[None]]:
        """The `ctx.save` of one attempt: a store write fenced to that attempt (see
        `Store.save_checkpoint`), committed before it returns. An attempt that no longer
        holds the job (stopped, its lease lost, replaced) gets `Cancelled` and saves nothing."""

        async def save(value: Any) -> None:
            entry = self.running.get(job_id)
            if entry is None or entry.job.attempts != attempt or entry.lost \
                    or not await self.store.save_checkpoint(entry.job, value):
                raise Cancelled(f"job {job_id}: attempt {attempt} no longer holds the job; nothing was saved")

        return save

    def _stop_entry(self, entry: Running, reason: StopReason | str) -> None:
        if entry.stop_reason is not None:
            return
        entry.stop_reason = reason = StopReason(reason)
        entry.runner.stop(entry.job.id, reason)

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
        stop = StopReason.LOST if entry.lost else entry.stop_reason
        ending = decide(outcome, stop, job.cancel_requested, job, now,
                        timeout_ms=job.timeout_ms or self.config.jobs.timeout_ms, jitter=_JITTER.random)
        final: Job | None = None
        if ending.kind is EndingKind.COMPLETE:
            final = await self.store.complete(job, ending.result, now)
        elif ending.kind is EndingKind.RELEASE:
            final = await self.store.release(job, now)
        elif ending.kind is EndingKind.CANCEL:
            final = await self.store.cancel_running(job, now)
        elif ending.kind in (EndingKind.RETRY, EndingKind.FAIL):
            assert ending.error is not None
            final = await self.store.fail(job, ending.error, now, ending.retry_at)
        else:  # DISCARD: the store never saw this attempt start; whatever it did is dropped
            self._discard_file(outcome)
            return None
        if final is None:
            log.warning("job %s attempt %d lost its lease before finishing; its outcome is discarded",
                        job.id, job.attempts)
            self._discard_file(outcome)
            return None
        return final

    def _discard_file(self, outcome: Outcome) -> None:
        if outcome.result and isinstance(outcome.result, dict) and "file" in outcome.result:
            (Path(self.config.results_path) / outcome.result["file"]).unlink(missing_ok=True)

    # ---- progress --------------------------------------------------------------------------------
    def _progress_of(self, job: Job) -> Callable[[int, str | None], None]:
        """Where the progress of `job`'s current attempt goes: the store (its commit is the event)."""
        job_id, attempt = job.id, job.attempts

        def progress(percent: int, message: str | None) -> None:
            entry = self.running.get(job_id)
            if entry is None or entry.job.attempts != attempt:
                return
            self.store.set_progress(entry.job, percent, message)

        return progress

    # ---- cancellation ---------------------------------------------------------------------------
    def _on_change(self, change: StoreChange) -> None:
        """Act on committed changes that concern this node: a job that became pending may be
        claimed; a cancel request of an attempt it runs stops that attempt ("cancelled"); a
        reserved job cancelled meanwhile is dropped."""
        if not isinstance(change, Job):
            return
        if change.id in self._announced:
            # The insert of a job `submitted` already counted: counting it again would make
            # the claim that started it (in the same commit) look stale, and send a second,
            # empty claim after it.
            self._announced.discard(change.id)
            if change.status is JobStatus.PENDING and not self.config.limits.max_running_per_user:
                return
        if change.status is JobStatus.PENDING or (self.config.limits.max_running_per_user
                                                   and change.status is not JobStatus.RUNNING):
            # With a per-user cap, a job that stops running frees a turn, of any type.
            self._heard(change.type if change.status is JobStatus.PENDING else None)
            if change.status is JobStatus.PENDING and change.due_at > self.clock.now():
                self._delayed_seen += 1
            self._wake.set()  # stored by any path (a batch, another node): claim it
        if change.status is JobStatus.CANCELLED and self.reserved:
            self.reserved = [held for held in self.reserved if held.id != change.id]
        if not change.cancel_requested or change.status is not JobStatus.RUNNING:
            return
        entry = self.running.get(change.id)
        if entry is None or entry.job.attempts != change.attempts or change.lease_owner != self.node:
            return
        entry.job = dataclasses.replace(entry.job, cancel_requested=True)
        self._stop_entry(entry, StopReason.CANCELLED)

    def workers(self) -> dict[str, Any]:
        """The worker processes, as operators see them (`/api/health`, `/api/stats`)."""
        return self.pool.describe()

    @property
    def workers_stopping(self) -> bool:
        """The worker pool is shutting down: no process that ends is replaced."""
        return self.pool.draining

    def describe(self) -> dict[str, Any]:
        return {"node": self.node, "running": len(self.running), "accepting": self.accepting,
                "workers": self.workers()}


class _Paced:
    """One attempt's progress reports, passed on at most every `PROGRESS_INTERVAL_S`: the
    first at once, a later one as soon as the interval since the last passed, and one that
    comes sooner held (replacing any held before it) until then."""

    __slots__ = ("_write", "_loop", "_next_at", "_held", "_timer")

    def __init__(self, write: Callable[[int, str | None], None]) -> None:
        self._write = write
        self._loop = asyncio.get_running_loop()
        self._next_at = 0.0
        self._held: tuple[int, str | None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, percent: int, message: str | None) -> None:
        if self._timer is None and self._loop.time() >= self._next_at:
            self._pass(percent, message)
            return
        self._held = (percent, message)
        if self._timer is None:
            self._timer = self._loop.call_at(self._next_at, self._release)

    def _pass(self, percent: int, message: str | None) -> None:
        self._next_at = self._loop.time() + PROGRESS_INTERVAL_S
        self._write(percent, message)

    def _release(self) -> None:
        self._timer = None
        held, self._held = self._held, None
        if held is not None:
            self._pass(*held)

    def flush(self) -> None:
        """Pass the held report on now (the attempt ended: its ending is written next)."""
        if self._timer is not None:
            self._timer.cancel()
            self._release()


def _drained(entries: list[Running]) -> str:
    """What a drain did to the jobs that were running when it began."""
    def jobs(n: int) -> str:
        return f"{n} running job{'s' if n != 1 else ''}"

    returned = sum(1 for e in entries if e.stop_reason is StopReason.SHUTDOWN and e.final is not None
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
