"""The store contract: what the service asks of a job database, in job terms.

The public methods of `Store` and the small pure functions here own the lifecycle rules:
which status may follow which, what each transition changes (a claim: running, one more
attempt, the next `seq`, a lease), the fences (a running attempt's writes need its status
and attempt number), rescue's pending-vs-failed decision, and what a recorded cancel request
does to an ending. A backend implements the underscored hooks, which only move rows; where a
change depends on the row as it is at commit time (rescue, an ending while a cancel may be
requested), the backend calls the decision function given to it inside its transaction.

What a backend must guarantee
-----------------------------
- Durability before return: an awaited write has committed when it returns (a 201 is sent
  for a committed job only); `set_progress` is not awaited and is durable once its change
  is emitted.
- Fencing: a transition applies only to a row that matches its `Fence` (statuses, attempt,
  lease owner, owner), checked in the same transaction as the write; a row that does not
  match is left alone and the call returns None. A stale attempt can never overwrite an
  ending. Progress applies only while the job is running that same attempt.
- `seq`: every change of a job (a transition or a progress write) sets its `seq` to the
  value the change asks for (`BUMP`: one more than the stored one), so a job's changes are
  numbered without gaps in the order they commit. A reservation is not a change: it leaves
  `seq` alone and emits nothing.
- Atomicity of a claim: the jobs a claim returns were pending, due and unreserved when it
  committed, and no other claim (on any node) returns them for the same attempt.
- Ordering and the change sink: after each commit, every change it contained is handed to
  `Store.changes` in commit order, each with its new `seq` (the job as it is after the
  transition, or a `ProgressChange`), before the writes' awaitables resolve. Every caller
  that awaits a write therefore finds its change already emitted; nothing outside the
  store publishes a status.
- Deletion (retention): `purge_finished` removes finished rows for good. A deletion is not a
  change of the job: it takes no `seq` and emits nothing (nobody is told a job is gone).
- Jobs that follow jobs (`Job.after`): a job is stored, and retried, with its parents read
  in the same transaction (the owner's own: another user's job reads as missing), as
  `arm_change` decides: waiting (pending, `waiting_for`, never due: `models.WAITING_DUE`),
  runnable, or cancelled at once; a parent missing from a new job raises `UnknownParent`
  and stores nothing. The backend keeps a row per (parent, child) while the child is
  unfinished (`INSERT` when it is stored or retried pending, `DELETE` when it ends), so it
  finds a parent's children with one index seek. Every transition that ends a job, by any
  path (an ending, a cancel, a rescue, a corrupt row failed), applies `follow_change` to each
  child that waits for it, in the same transaction, each child's change with its `seq` and
  emitted after the parent's, and so on down to the grandchildren a cancel reaches. A
  finished job with an unfinished child is never purged (its result is the child's input).
- `exclusive`: True when this service alone uses the database (an SQLite file with its lock
  file): running jobs found at start were left by this service's previous run and can be
  taken back at once. A shared database (several nodes) says False: only expired leases
  are taken back.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from abc import ABC, abstractmethod
from asyncio import Future
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from contextlib import asynccontextmanager
from typing import Any, AsyncContextManager, AsyncIterator, Union

from offload.service.models import TERMINAL, WAITING_DUE, Job, JobStatus, now_ms, own_due

log = logging.getLogger("offload.store")

Change = dict[str, Any]

#: A job's columns in every backend's table, in the order backends read and write them
#: (besides `data` and `checkpoint`, which are read only where they are needed).
JOB_COLUMNS = (
    "id", "owner", "type", "status", "priority", "progress", "message", "attempts", "max_retries",
    "retry_delay_ms", "timeout_ms", "seq", "created_at", "started_at", "completed_at", "due_at",
    "error", "result", "idempotency_key", "lease_owner", "lease_until", "cancel_requested",
    "after", "after_failed", "waiting_for",
)


class _Bump:
    """A change value meaning "one more than the stored value" (attempts, seq)."""

    def __repr__(self) -> str:
        return "BUMP"


BUMP: Any = _Bump()

#: A decision applied by the backend to the row as it is inside the transaction.
Decide = Callable[[Job], Change]


@dataclass(frozen=True)
class WithParents:
    """A decision that also needs the row's parents (`Job.after`) as they are inside the
    transaction: `decide(row, parents)`, `parents` by id, the owner's own, a deleted one
    missing (a retry)."""

    decide: Callable[[Job, Mapping[str, Job]], Change]


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

    def admits(self, job: Job) -> bool:
        return (job.status in self.statuses
                and (self.attempt is None or job.attempts == self.attempt)
                and (self.lease_owner is None or job.lease_owner == self.lease_owner)
                and (self.owner is None or job.owner == self.owner))


@dataclass(frozen=True)
class ProgressChange:
    """A committed progress write of one attempt, with the `seq` it took."""

    job_id: str
    owner: str
    attempt: int
    progress: int
    message: str | None
    seq: int


#: What the change sink hands out: the job after a committed transition, or a progress write.
StoreChange = Union[Job, ProgressChange]
Listener = Callable[[StoreChange], None]


class ChangeSink:
    """The one source of job events: the store emits every committed change here, in commit
    order; the events hub, the scheduler (cancel requests) and later metrics, logs or other
    nodes subscribe. A listener must not block; one that raises is logged and the others
    still hear the change."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add `listener`; returns the function that removes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def emit(self, changes: Iterable[StoreChange]) -> None:
        for change in changes:
            for listener in list(self._listeners):
                try:
                    listener(change)
                except Exception:
                    log.exception("a change listener failed")


@dataclass(frozen=True)
class SlotRecord:
    """The latest slot (milliseconds since the epoch) a schedule dealt with, and the job it
    created; `job_id` is None for a slot passed over (skipped after a downtime, or the one a
    new schedule started from)."""

    schedule: str
    slot: int
    job_id: str | None


@dataclass(frozen=True)
class Purged:
    """A finished job that `purge_finished` deleted, with its result file's name, if any
    (the caller deletes the file once the deletion committed)."""

    job_id: str
    owner: str
    status: JobStatus
    file: str | None


@dataclass(frozen=True)
class ResultFile:
    """The result file of a completed job, as `result_files` lists them."""

    job_id: str
    file: str
    completed_at: int


class IdempotencyMismatch(Exception):
    """The idempotency key was used before with a different request. `index`: the place of
    the clashing job in a `create_many` call (None for `create`)."""

    def __init__(self, job: Job, index: int | None = None) -> None:
        super().__init__(job.id)
        self.job = job
        self.index = index


class UnknownParent(ValueError):
    """A job named in `after` is not one of the owner's: unknown and another user's alike.
    `position`: its place in `Job.after`; `index`: the new job's place in a `create_many`
    call (None for `create`)."""

    def __init__(self, job_id: str, position: int, index: int | None = None) -> None:
        super().__init__(job_id)
        self.job_id = job_id
        self.position = position
        self.index = index


@asynccontextmanager
async def _always_alone() -> AsyncIterator[bool]:
    yield True


def settle(futures: Iterable[Future[Any]], outcomes: Iterable[tuple[bool, Any]],
           progress: Iterable[tuple[Any, ...]], seqs: Iterable[int | None]) -> None:
    """After a write batch committed and its changes were emitted: each queued write's
    future gets its outcome (a value, or the error of that write alone), then each progress
    row's `on_commit` (its last item) gets the row's new `seq`, unless its fence let it
    write nothing. The same for every backend's writer."""
    for future, (ok, value) in zip(futures, outcomes, strict=True):
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    for (*_, on_commit), seq in zip(progress, seqs, strict=True):
        if on_commit is not None and seq is not None:
            on_commit(seq)


def fail_all(futures: Iterable[Future[Any]], error: BaseException) -> None:
    """A write batch rolled back: every write queued in it fails with `error`."""
    for future in futures:
        if not future.done():
            future.set_exception(error)


def encode_cursor(pos: int) -> str:
    """A list cursor: the submission order (`pos`) where the page ended, opaque to clients."""
    return base64.urlsafe_b64encode(f"p{pos}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """Raises ValueError for a cursor no store made."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("p"):
            raise ValueError
        return int(raw[1:])
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise ValueError(f"invalid cursor {cursor!r}") from None


# ---- the rules, as pure functions -------------------------------------------------------------
def claim_change(node: str, now: int, lease_ms: int) -> Change:
    """What a claim makes of a pending job: running on `node`, one more attempt, a change."""
    return {"status": JobStatus.RUNNING, "attempts": BUMP, "seq": BUMP, "started_at": now, "progress": 0,
            "message": None, "lease_owner": node, "lease_until": now + lease_ms}


def progress_fence(attempt: int) -> Fence:
    """Progress counts only while the job runs the attempt that reports it."""
    return Fence(frozenset({JobStatus.RUNNING}), attempt=attempt)


def cancelled_change(now: int) -> Change:
    return {"status": JobStatus.CANCELLED, "completed_at": now, "lease_owner": None, "lease_until": None}


def ending_change(job: Job, change: Change, now: int) -> Change:
    """An attempt that ends while a cancel is requested is cancelled, whatever else it would
    have become (a retry, a failure, a release at shutdown); only a completion wins over it."""
    if job.cancel_requested and change.get("status") is not JobStatus.COMPLETED:
        return cancelled_change(now)
    return change


#: What may be retried (`Store.retry`): a job that ended without its work done.
RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


def retry_change(now: int) -> Change:
    """What a retry makes of a failed or cancelled job: pending again and due `now`, as if
    new (no attempts, progress, error, result, times or cancel request), keeping its id,
    data, options and `createdAt`. The change takes the next `seq`, so a client watching
    the job sees it go pending again."""
    return {"status": JobStatus.PENDING, "attempts": 0, "progress": 0, "message": None, "error": None,
            "result": None, "started_at": None, "completed_at": None, "due_at": now, "lease_owner": None,
            "lease_until": None, "cancel_requested": False}


def rescue_change(job: Job, now: int, exhausted_error: dict[str, str]) -> Change:
    """What a running job whose lease ran out becomes: cancelled if a cancel was requested,
    failed with `exhausted_error` once it used all its attempts, else pending (due now)."""
    if job.cancel_requested:
        return {**cancelled_change(now), "progress": 0, "message": None}
    change: Change = {"due_at": now, "error": exhausted_error, "progress": 0, "message": None,
                      "lease_owner": None, "lease_until": None}
    if job.attempts > job.max_retries:
        change.update(status=JobStatus.FAILED, completed_at=now)
    else:
        change.update(status=JobStatus.PENDING, completed_at=None)
    return change


# ---- jobs that follow jobs ------------------------------------------------------------------------
#: What a batch job writes in `after` to name an earlier job of the same batch: `#0` is the first.
BATCH_REF = "#"


def batch_refs(job: Job, earlier: list[str]) -> Job:
    """`job` with each `#i` of its `after` replaced by the id of the batch's job `i` (the
    jobs stored before it in the same call, an idempotent repeat's earlier job included)."""
    if not any(ref.startswith(BATCH_REF) for ref in job.after):
        return job
    after = [earlier[int(ref[1:])] if ref.startswith(BATCH_REF) else ref for ref in job.after]
    return replace(job, after=tuple(dict.fromkeys(after)))


def dependency_error(parent: Job | None, job_id: str) -> dict[str, str]:
    """The error of a job cancelled because a job it follows did not complete."""
    if parent is None:
        return {"type": "DependencyFailed", "message": f"job {job_id} no longer exists"}
    why = str(parent.error.get("message") or "") if parent.error else ""
    if parent.error and parent.error.get("type") == "DependencyFailed" and ": job " in why:
        why = why.split(": ", 1)[1]  # name the first job that failed, however long the chain: "job A failed: …"
    return {"type": "DependencyFailed", "message": f"job {job_id} {parent.status.value}" + (f": {why}" if why else "")}


def arm_change(job: Job, parents: Mapping[str, Job], now: int, *, new: bool) -> Change:
    """What a job that follows `job.after` is as it is stored (`new`) or retried, with its
    parents as they are in that transaction: it waits (never due, `waiting_for`) for the
    ones not finished; a completed one is satisfied already. A failed, cancelled or (on a
    retry) deleted parent cancels it at once with `DependencyFailed` naming that job, unless
    `after_failed` is "run", which counts it as done. A new job naming a job that is not
    the owner's raises `UnknownParent`, whatever that job is."""
    if new:
        for position, job_id in enumerate(job.after):
            if job_id not in parents:
                raise UnknownParent(job_id, position)
    due = own_due(job.due_at)
    if job.after_failed != "run":
        for job_id in job.after:
            parent = parents.get(job_id)
            if parent is None or parent.status in (JobStatus.FAILED, JobStatus.CANCELLED):
                return {**cancelled_change(now), "error": dependency_error(parent, job_id), "waiting_for": (),
                        "due_at": due}
    waiting = tuple(job_id for job_id in job.after if job_id in parents and not parents[job_id].status.terminal)
    return {"waiting_for": waiting, "due_at": WAITING_DUE + due if waiting else due}


def follow_change(child: Job, parent: Job) -> Change | None:
    """What a pending `child` becomes when `parent`, which it waits for, ended: it stops
    waiting for it, and is due (at its own due time, or now) once it waits for nothing. A
    parent that failed for good or was cancelled cancels it, naming the parent (its own
    children follow in turn), unless it runs anyway (`after_failed = "run"`). None when
    the child does not wait for `parent`."""
    if parent.id not in child.waiting_for or child.status is not JobStatus.PENDING:
        return None
    now = parent.completed_at or now_ms()
    if parent.status is not JobStatus.COMPLETED and child.after_failed != "run":
        return {**cancelled_change(now), "error": dependency_error(parent, parent.id), "waiting_for": (),
                "due_at": own_due(child.due_at)}
    waiting = tuple(job_id for job_id in child.waiting_for if job_id != parent.id)
    if waiting:
        return {"waiting_for": waiting}
    return {"waiting_for": (), "due_at": max(now, own_due(child.due_at))}


class Store(ABC):
    """A job database. `open()` creates or migrates the schema; `close()` flushes and closes."""

    # What a backend's writer queues and is woken by (`_next_batch`): the writes in order,
    # the latest progress of each job, and whether the store is closing.
    _ops: list[Any]
    _progress: dict[str, Any]
    _wake: asyncio.Event
    _closing: bool

    #: True when one service alone uses this database (an SQLite file): running jobs found
    #: at start were left by its previous run. False for a database shared by nodes, where
    #: only expired leases are taken back.
    exclusive = False

    def __init__(self) -> None:
        #: Every committed change, in commit order (see the module docstring). This includes
        #: the changes the store makes by itself: a stored row that cannot be read is failed
        #: as `CorruptJob` wherever it is met (a read, a claim, a transition).
        self.changes = ChangeSink()
        #: The changes other nodes sharing this database committed, as this node hears them
        #: (PostgreSQL: LISTEN/NOTIFY), each job's in `seq` order; never this node's own, and
        #: nothing at all on a database of one node's own (SQLite). Listeners that act for
        #: clients or for the jobs this node runs (events, cancel requests, wake-ups)
        #: subscribe to both sinks (`subscribe_all`); those that count this node's work
        #: (statistics, metrics, the job log) to `changes` alone. A notification can be lost
        #: (a dropped connection): whoever must not miss a change also looks by itself every
        #: `poll_ms`.
        self.remote = ChangeSink()
        #: Told of each commit of writes: its latency in seconds (from the batch's start to
        #: its commit) and how many writes it held (metrics). Must not block.
        self.on_commit: Callable[[float, int], None] | None = None

    #: How often (seconds) a node should look at the database by itself, for what another
    #: node's lost notification would have told it; None when no other node can write (SQLite).
    poll_interval: float | None = None
    #: The backend's name, as metrics label it.
    backend = "unknown"

    def subscribe_all(self, listener: Listener) -> Callable[[], None]:
        """Hear this node's changes and the other nodes' (`remote`); returns the unsubscribe."""
        stops = (self.changes.subscribe(listener), self.remote.subscribe(listener))

        def unsubscribe() -> None:
            for stop in stops:
                stop()

        return unsubscribe

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

    async def get_many(self, job_ids: Iterable[str], owner: str | None = None) -> dict[str, Job]:
        """The jobs among `job_ids` that exist (and are `owner`'s, when given), by id."""
        found = {}
        for job_id in job_ids:
            job = await self.get(job_id, owner)
            if job is not None:
                found[job_id] = job
        return found

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
    async def count_unfinished(self, owner: str | None, now: int) -> list[tuple[str, int, bool | None, int]]:
        """Pending and running jobs of `owner` (everyone's when None) as `(status, priority,
        due, count)` rows, `due` telling a pending job due at `now` from a later one, and None
        for a job that waits for other jobs (`Job.waiting_for`). Read on
        the partial indexes of unfinished jobs: its cost follows the queue, not the table."""

    @abstractmethod
    async def finished_since(self, since: int) -> list[tuple[str, str, str, int, int]]:
        """Jobs that finished at or after `since`, as `(owner, type, status, minute, count)`
        rows (`minute`: `completed_at // 60000`). Read once at start, before any write, so
        the statistics of the last hour and of today survive a restart."""

    @abstractmethod
    async def running_by_node(self) -> dict[str, int]:
        """Running jobs per node (lease owner), every node's: the cluster view of `/api/stats`."""

    @abstractmethod
    async def count_pending(self) -> int: ...

    @abstractmethod
    async def count_pending_of(self, owner: str) -> int:
        """How many pending jobs `owner` has (the per-user cap); cheap on an index."""

    @abstractmethod
    async def next_due(self, now: int) -> int | None:
        """When the earliest pending job that is not yet due becomes due, if any (a job that
        waits for other jobs has no time to become due at)."""

    @abstractmethod
    async def latest_time(self) -> int | None:
        """The latest time recorded (the newest job's creation), if any: the service's clock
        starts no earlier, whatever the wall clock says."""

    @abstractmethod
    async def list_scheduled(self, owner: str | None, now: int, *, type: str | None = None, limit: int = 50,
                             cursor: str | None = None, waiting: bool = False) -> Page:
        """`list_jobs` of the pending jobs that are not due at `now` (delayed with `delay` or
        `runAt`, or waiting out a retry's backoff): newest first, paged the same way. With
        `waiting`, the pending jobs that wait for other jobs instead (and only those)."""

    @abstractmethod
    async def result_files(self, ended_before: int, *, limit: int,
                           after: str | None = None) -> tuple[list[ResultFile], str | None]:
        """Up to `limit` result files of jobs completed before `ended_before`, in the order
        they completed, after the place `after` (a marker this method returned) ended, and
        the marker of the last one listed (`after` itself when none is). The rows stay."""

    @abstractmethod
    async def unfinished_page(self, owner: str | None, *, limit: int, cursor: str | None = None) -> Page:
        """Up to `limit` pending and running jobs of `owner` (every owner's when None), in
        submission order, after the page `cursor` ended; `next_cursor` is None on the last
        page. Each page is read on its own, so a job that finished before its page is left
        out and one queued after the first page is still met."""

    @abstractmethod
    async def last_slots(self) -> dict[str, SlotRecord]:
        """The latest recorded slot of every schedule, by schedule name."""

    # ---- writes --------------------------------------------------------------------------
    async def fire_slot(self, schedule: str, slot: int, job: Job | None,
                        request_hash: str | None = None) -> tuple[Job | None, bool] | None:
        """Record `slot` as the latest one of `schedule` and store `job` (as `create` does), in
        one transaction: both or neither. None, storing nothing, when this slot or a later
        one is recorded already (an earlier run of this service, or another node, fired it):
        a unique `(schedule, slot)` makes that hold across nodes. Otherwise `create`'s answer
        for the job, or `(None, False)` for `job=None`, which records the slot as passed
        over. Earlier slots of the schedule may be forgotten once a later one is recorded."""
        if job is not None and job.status is not JobStatus.PENDING:
            raise ValueError("a new job must be pending")
        return await self._fire_slot(schedule, slot, job, request_hash)

    async def create(self, job: Job, request_hash: str | None = None) -> tuple[Job, bool]:
        """Store a new pending job; durable when this returns. With an idempotency key that
        the owner used before, returns `(existing, False)` instead, or raises
        `IdempotencyMismatch` when the earlier request differed. A job with `after` is
        stored as `arm_change` makes it (waiting, or cancelled at once), or raises
        `UnknownParent` and stores nothing."""
        if job.status is not JobStatus.PENDING:
            raise ValueError("a new job must be pending")
        return await self._insert(job, request_hash)

    async def create_many(self, jobs: list[tuple[Job, str | None]]) -> list[tuple[Job, bool]]:
        """Store new pending jobs (each with its request hash) in one transaction, all or
        none: durable together when this returns, their changes emitted in the given order.
        Each answer is `create`'s for its job (an idempotency key used before answers the
        earlier job, also one used earlier in the same call). A key used with a different
        request raises `IdempotencyMismatch` (with its `index`) and stores none of them. A
        job's `after` may name an earlier job of the call as `#i` (`batch_refs`); a parent
        that is not the owner's raises `UnknownParent` (with its `index`), storing none."""
        if any(job.status is not JobStatus.PENDING for job, _ in jobs):
            raise ValueError("a new job must be pending")
        if not jobs:
            return []
        return await self._insert_many(jobs)

    async def claim(self, node: str, now: int, lease_ms: int, types: Iterable[str] | None = None,
                    limit: int = 1, per_owner: int = 0) -> list[Job]:
        """Take up to `limit` due pending jobs and mark them running on `node`, counting an
        attempt; returned in the order they should start. Priorities are strict; within one,
        owners share the slots round-robin (each owner's own jobs by due time, then
        submission order), and with `per_owner` no owner gets more than that many running."""
        return await self._claim(node, now, lease_ms, None if types is None else tuple(types),
                                 claim_change(node, now, lease_ms), limit, per_owner)

    def set_progress(self, job: Job, progress: int, message: str | None,
                     on_commit: Callable[[int], None] | None = None) -> None:
        """Record the latest progress of a running attempt. Not awaited: writes that arrive
        together are coalesced per job into one change, which takes the job's next `seq` like
        any other change and is emitted as a `ProgressChange` (so a client that keeps up sees
        no gap in a job's events). `on_commit(seq)` runs once the value is durable; never for
        an attempt that no longer owns the job (`progress_fence`)."""
        self._queue_progress(job.id, progress_fence(job.attempts), progress, message, on_commit)

    async def complete(self, job: Job, result: Any, now: int) -> Job | None:
        """Finish the attempt `job` describes; None if that attempt no longer owns the job.
        A completion stands even when a cancel was requested meanwhile: the work is done."""
        return await self._transition(job.id, self._fence_attempt(job), {
            "status": JobStatus.COMPLETED, "progress": 100, "completed_at": now, "result": result,
            "error": None, "lease_owner": None, "lease_until": None, "checkpoint": None})

    async def fail(self, job: Job, error: dict[str, str], now: int, retry_at: int | None) -> Job | None:
        """End the attempt with an error: back to pending until `retry_at`, or failed when
        `retry_at` is None; cancelled instead when a cancel was requested (`ending_change`).
        None if the attempt no longer owns the job."""
        change: Change = {"error": error, "lease_owner": None, "lease_until": None}
        if retry_at is None:
            change.update(status=JobStatus.FAILED, completed_at=now)
        else:
            change.update(status=JobStatus.PENDING, due_at=retry_at)
        return await self._transition(job.id, self._fence_attempt(job), lambda row: ending_change(row, change, now))

    async def release(self, job: Job, now: int | None = None) -> Job | None:
        """Give a running attempt back without counting it (graceful shutdown); cancelled
        instead when a cancel was requested."""
        change: Change = {"status": JobStatus.PENDING, "attempts": job.attempts - 1, "progress": 0, "message": None,
                          "lease_owner": None, "lease_until": None}
        at = now_ms() if now is None else now
        return await self._transition(job.id, self._fence_attempt(job), lambda row: ending_change(row, change, at))

    async def save_checkpoint(self, job: Job, value: Any) -> bool:
        """Store `value` (JSON) as the checkpoint of the running attempt `job` describes,
        committed when this returns; False, storing nothing, when that attempt no longer
        holds the job (`_fence_attempt`: running, the same attempt, the same lease owner), so
        a replaced attempt can never overwrite what its successor saved. Not a change: no
        `seq`, no event (the checkpoint is not on the wire). A completion clears it; a
        failure, a release and `retry` keep it, so a retried job resumes where it stopped.
        Raises `TypeError` for a value that is not JSON, before anything is queued."""
        return await self._save_checkpoint(job.id, self._fence_attempt(job), value)

    async def cancel_pending(self, job_id: str, owner: str | None, now: int) -> Job | None:
        return await self._transition(job_id, Fence(frozenset({JobStatus.PENDING}), owner=owner), cancelled_change(now))

    async def request_cancel(self, job_id: str, owner: str | None) -> Job | None:
        """Record that the running job should be cancelled (a change, with its event): the
        node running the attempt hears it through `changes` and stops it; whatever the
        attempt then ends as, except a completion, becomes cancelled (`ending_change`), and
        so does a rescue of its lease (`rescue_change`). None unless the job is running."""
        return await self._transition(job_id, Fence(frozenset({JobStatus.RUNNING}), owner=owner),
                                      {"cancel_requested": True})

    async def reserve(self, node: str, now: int, lease_ms: int, types: Iterable[str], limit: int) -> list[Job]:
        """Mark up to `limit` due pending jobs as this node's next ones, in the order `claim`
        would take them. They stay pending (no attempt, no change, no event) and no claim takes
        them; `start_reserved` starts one without a round trip before its work begins, and an
        unused reservation is given back with `unreserve` or runs out with the node's lease."""
        return await self._claim(node, now, lease_ms, tuple(types),
                                 {"lease_owner": node, "lease_until": now + lease_ms}, limit, 0)

    def start_reserved(self, job: Job, now: int, lease_ms: int) -> Awaitable[Job | None]:
        """Start the attempt of a job this node reserved. Queued at once, so it is recorded
        before anything the attempt itself writes; None if the job was cancelled meanwhile."""
        assert job.lease_owner is not None
        change = claim_change(job.lease_owner, now, lease_ms)
        return self._begin_transition(job.id, Fence(frozenset({JobStatus.PENDING}), lease_owner=job.lease_owner),
                                      change)

    async def unreserve(self, node: str, job_ids: list[str]) -> None:
        if job_ids:
            await self._unreserve(node, job_ids)

    async def cancel_running(self, job: Job, now: int) -> Job | None:
        return await self._transition(job.id, self._fence_attempt(job), cancelled_change(now))

    async def renew_leases(self, node: str, until: int) -> int:
        """Extend every lease `node` holds; returns how many it still holds."""
        return await self._renew(node, until)

    async def rescue_expired(self, now: int, max_attempts_error: dict[str, str], *,
                             expired_before: int | None = None) -> list[Job]:
        """Take back running jobs whose lease ran out (their node died or hung), as
        `rescue_change` decides: pending (due at `now`), failed once it has used all its
        attempts, or cancelled when a cancel was requested. `expired_before` (default `now`)
        moves the lease cut-off, e.g. past every lease when the caller knows their node is
        gone, without making the rescued jobs wait for it. Lapsed reservations are given
        back too."""
        def decide(job: Job) -> Change:
            return {**rescue_change(job, now, max_attempts_error), "seq": BUMP}

        return await self._rescue(now if expired_before is None else expired_before, decide)

    async def retry(self, job_id: str, owner: str | None, now: int) -> Job | None:
        """Queue a failed or cancelled job again as a new attempt cycle (`retry_change`):
        the same id, pending and due `now`, attempts from zero. None unless the job is
        still failed or cancelled (and `owner`'s, when given) as the change commits."""
        def decide(row: Job, parents: Mapping[str, Job]) -> Change:
            change = retry_change(now)
            if row.after:  # it follows its parents again, as they are now (`arm_change`)
                change.update(arm_change(replace(row, due_at=now), parents, now, new=False))
            return change

        return await self._transition(job_id, Fence(RETRYABLE, owner=owner), WithParents(decide))

    async def purge_finished(self, status: JobStatus, ended_before: int, limit: int) -> list[Purged]:
        """Delete up to `limit` jobs of the finished `status` that ended before
        `ended_before`, the oldest endings first, in one transaction of their own among the
        other writes; returns them once it committed. A job that is no longer `status` when
        it commits (retried meanwhile) is left alone. Not a change: nothing is emitted."""
        if status not in TERMINAL:
            raise ValueError(f"only finished jobs are deleted, not {status.value} ones")
        if limit < 1:
            return []
        return await self._purge(status, ended_before, limit)

    async def cancel_requests(self, node: str) -> list[Job]:
        """The running jobs leased to `node` whose cancel was requested: how a node that
        polls (`poll_interval`) hears a request another node recorded, should the
        notification be lost. A database of one node's own has no other node to hear: every
        request reaches `changes` on the node that runs the attempt, so nothing is listed."""
        return []

    def alone(self, task: str) -> AsyncContextManager[bool]:
        """`async with store.alone("retention") as mine:` True when no other node sharing
        the database runs `task` meanwhile (it holds until the block ends), False when one
        does (skip the work this time). A database of one node's own: always True."""
        return _always_alone()

    async def compact(self, pages: int) -> int:
        """Give up to `pages` pages of the space freed by deleted jobs back to the file
        system, without holding other writes back for long; returns how many pages are
        still free for it afterwards (0: done). A backend that reclaims space by itself
        has nothing to do."""
        return 0

    async def _next_batch(self) -> tuple[list[Any], list[tuple[Any, ...]]] | None:
        """For a backend's write loop: wait until something is queued, then take every write
        and progress row queued so far; None once the store is closing with nothing left."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            ops, self._ops = self._ops, []
            progress, self._progress = self._progress, {}
            if ops or progress:
                return ops, list(progress.values())
            if self._closing:
                return None

    async def _transition(self, job_id: str, fence: Fence, change: Change | Decide | WithParents) -> Job | None:
        return await self._begin_transition(job_id, fence, change)

    @staticmethod
    def _fence_attempt(job: Job) -> Fence:
        return Fence(frozenset({JobStatus.RUNNING}), attempt=job.attempts, lease_owner=job.lease_owner)

    # ---- backend hooks ---------------------------------------------------------------------
    # They only move rows. A change is a dict of column values (`BUMP`: one more than stored);
    # a change that sets `seq` is a change of the job and is emitted to `changes` after its
    # commit; one that does not (a reservation, a lease) is not.

    @abstractmethod
    async def _insert(self, job: Job, request_hash: str | None) -> tuple[Job, bool]:
        """Insert the row (a change, emitted) unless the owner used its idempotency key."""

    @abstractmethod
    async def _insert_many(self, jobs: list[tuple[Job, str | None]]) -> list[tuple[Job, bool]]:
        """`_insert` for each job, in order, in one transaction; nothing on a mismatch."""

    @abstractmethod
    async def _claim(self, node: str, now: int, lease_ms: int, types: tuple[str, ...] | None,
                     change: Change, limit: int, per_owner: int) -> list[Job]:
        """Pick the jobs (`claim`'s order, atomically) and apply `change` to each."""

    @abstractmethod
    def _begin_transition(self, job_id: str, fence: Fence,
                          change: Change | Decide | WithParents) -> Awaitable[Job | None]:
        """Apply `change` (or `change(row)`, decided on the row inside the transaction, or
        `change.decide(row, parents)` for `WithParents`) with the next `seq` if the row
        matches `fence`; a job that ends takes its children along (`follow_change`). Queued at once, in order with the writes before
        and after it; the awaitable gives the new row, or None."""

    def _queue_progress(self, job_id: str, fence: Fence, progress: int, message: str | None,
                        on_commit: Callable[[int], None] | None) -> None:
        """Queue a progress write (coalesced per job), applied with the next `seq` if the row
        matches `fence`, after the transitions queued before it (its place: `len(_ops)`)."""
        if self._closing:
            return
        self._progress.pop(job_id, None)  # re-inserted last: the dict stays in queueing order
        self._progress[job_id] = (progress, message, job_id, fence, len(self._ops), on_commit)
        self._wake.set()

    @abstractmethod
    async def _fire_slot(self, schedule: str, slot: int, job: Job | None,
                         request_hash: str | None) -> tuple[Job | None, bool] | None:
        """In one transaction: unless a slot >= `slot` of `schedule` is recorded, record it
        (with the job's id) and `_insert` the job; a clash stores neither."""

    @abstractmethod
    async def _save_checkpoint(self, job_id: str, fence: Fence, value: Any) -> bool:
        """Write the job's checkpoint if its row matches `fence` (not a change); True if it did."""

    @abstractmethod
    async def _renew(self, node: str, until: int) -> int: ...

    @abstractmethod
    async def _unreserve(self, node: str, job_ids: list[str]) -> None: ...

    @abstractmethod
    async def _purge(self, status: JobStatus, ended_before: int, limit: int) -> list[Purged]:
        """Delete the rows `purge_finished` describes, in one transaction queued with the other writes."""

    @abstractmethod
    async def _rescue(self, expired_before: int, decide: Decide) -> list[Job]:
        """Free reservations whose lease ended before `expired_before`, and apply `decide(row)`
        to every running row whose lease did, in one transaction."""


__all__ = ["BATCH_REF", "BUMP", "JOB_COLUMNS", "RETRYABLE", "TERMINAL", "ChangeSink", "Fence", "IdempotencyMismatch", "Page",
           "ProgressChange", "Purged", "ResultFile", "SlotRecord", "Store", "StoreChange", "UnknownParent",
           "WithParents", "arm_change", "batch_refs", "claim_change", "dependency_error", "ending_change",
           "fail_all", "follow_change", "progress_fence", "rescue_change", "retry_change", "settle"]
