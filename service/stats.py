"""Statistics for `GET /api/stats` and the WebSocket's `stats` events.

Nothing here walks the job table while the service runs. What grows with the table is kept
in memory, fed by the store's change stream (`store.changes`, every committed transition in
commit order): the jobs finished in each minute of today and the last hour, per user, and
the run times and queue waits of the recent jobs of each type, per user (bounded: at most
`[stats] window_samples` each, and only those of the last `window_s` seconds count). The
minutes are seeded from the store once at start, before the scheduler writes anything, so a
restart does not forget the morning. What the store answers cheaply, it answers: the job
counts by status (as before) and the unfinished jobs by priority, read on the partial
indexes of pending and running jobs; each such read is reused for `cache_ms` per scope.

Times come from the service's `Clock`: a test steps it to move the hour and the day.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from offload.service.config import StatsConfig
from offload.service.errors import OffloadError
from offload.service.events import EventHub, Subscriber
from offload.service.models import Clock, Job, JobStatus, Priority, iso
from offload.service.store import Store
from offload.service.store.base import StoreChange

if TYPE_CHECKING:  # imported at the first read: a service nobody asks for statistics never loads it
    import psutil

log = logging.getLogger("offload.stats")

MINUTE_MS = 60_000
DAY_MS = 86_400_000
FINISHED = (JobStatus.COMPLETED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)


def version() -> str:
    """The version `offload --version` prints (read from the package, not from its installed
    metadata: `importlib.metadata` would cost the service some 16 modules for one string)."""
    from offload import __version__

    return __version__


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile (`p` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def start_of_day(ms: int) -> int:
    """Midnight UTC of the day `ms` falls on."""
    return ms - ms % DAY_MS


def error_rate(completed: int, failed: int) -> float | None:
    """Failed among the jobs that ran to an end (cancelled ones do not count); None when none did."""
    ended = completed + failed
    return round(failed / ended, 4) if ended else None


#: What `observe` makes of a change that started an attempt, and of one that queued a job
#: again after a failed attempt; a finished job is its final status.
STARTED, RETRIED = "started", "retried"
_RUNNING, _PENDING, _CANCELLED = JobStatus.RUNNING, JobStatus.PENDING, JobStatus.CANCELLED


def observe(change: Job) -> tuple[str, int | None] | None:
    """The one reading of changes that statistics and metrics share, cheap enough for every
    committed change: `(STARTED, queue wait ms)` for an attempt that started (from due to
    start), `(status, run ms)` for a job that finished (the run time of its last attempt:
    None for a cancelled one), `(RETRIED, None)` for a job queued again after a failed
    attempt; None for anything else (a submission, a cancel request, progress)."""
    status = change.status
    if status is _PENDING:
        if change.error is not None and change.attempts > 0 and change.started_at is not None:
            return RETRIED, None
        return None
    if status is _RUNNING:
        started = change.started_at
        if change.cancel_requested or started is None:
            return None  # a cancel request of a running attempt, not a start
        wait = started - change.due_at
        return STARTED, wait if wait > 0 else 0
    completed = change.completed_at
    if completed is None:
        return None
    started = change.started_at
    if status is _CANCELLED or started is None:
        return status.value, None
    run = completed - started
    return status.value, run if run > 0 else 0


class FinishedMinutes:
    """Jobs finished per minute and status, per user, for today and the last hour: at most
    1,440 + 60 minutes per user, the older ones dropped as the clock moves on."""

    def __init__(self) -> None:
        self._by_owner: dict[str, dict[int, dict[str, int]]] = defaultdict(dict)

    def add(self, owner: str, status: str, at_ms: int, count: int = 1) -> None:
        minutes = self._by_owner[owner]
        minute = minutes.get(at_ms // MINUTE_MS)
        if minute is None:  # a new minute (once a minute at most): forget the stale ones
            self._prune(minutes, at_ms)
            minute = minutes[at_ms // MINUTE_MS] = dict.fromkeys(FINISHED, 0)
        minute[status] += count

    def prune(self, now: int) -> None:
        for minutes in self._by_owner.values():
            self._prune(minutes, now)

    @staticmethod
    def _prune(minutes: dict[int, dict[str, int]], now: int) -> None:
        oldest = min(now - 3_600_000, start_of_day(now)) // MINUTE_MS
        for stale in [m for m in minutes if m < oldest]:
            del minutes[stale]

    def totals(self, owner: str | None, since: int) -> dict[str, int]:
        """Jobs finished at or after `since` (to the minute), by status."""
        first = since // MINUTE_MS
        owners = self._by_owner.values() if owner is None else [self._by_owner.get(owner, {})]
        total = dict.fromkeys(FINISHED, 0)
        for minutes in owners:
            for minute, counts in minutes.items():
                if minute >= first:
                    for status, n in counts.items():
                        total[status] += n
        return total


@dataclass
class Samples:
    """The recent jobs of one user and type: (when, milliseconds) pairs, oldest first."""

    run: deque[tuple[int, int]]
    wait: deque[tuple[int, int]]


def _summary(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "meanMs": None, "p95Ms": None}
    return {"count": len(values), "meanMs": round(sum(values) / len(values), 1), "p95Ms": percentile(values, 95)}


class RecentTypes:
    """Per user and type: the run times (start to end, of completed and failed attempts) and
    queue waits (due to start) of the latest `limit` jobs."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_key: dict[tuple[str, str], Samples] = {}

    def _samples(self, owner: str, type: str) -> Samples:
        samples = self._by_key.get((owner, type))
        if samples is None:
            samples = self._by_key[(owner, type)] = Samples(deque(maxlen=self.limit), deque(maxlen=self.limit))
        return samples

    def ran(self, owner: str, type: str, at: int, ms: int) -> None:
        self._samples(owner, type).run.append((at, ms))

    def waited(self, owner: str, type: str, at: int, ms: int) -> None:
        self._samples(owner, type).wait.append((at, ms))

    def summary(self, owner: str | None, since: int) -> dict[str, Any]:
        runs: dict[str, list[int]] = defaultdict(list)
        waits: dict[str, list[int]] = defaultdict(list)
        for (who, type), samples in self._by_key.items():
            if owner is not None and who != owner:
                continue
            runs[type].extend(ms for at, ms in samples.run if at >= since)
            waits[type].extend(ms for at, ms in samples.wait if at >= since)
        out = {}
        for type in sorted(set(runs) | set(waits)):
            run, wait = _summary(runs[type]), _summary(waits[type])
            if run["count"] or wait["count"]:
                out[type] = {"count": run["count"], "runTime": {k: run[k] for k in ("meanMs", "p95Ms")},
                             "started": wait["count"], "queueWait": {k: wait[k] for k in ("meanMs", "p95Ms")}}
        return out


class ProcessProbe:
    """CPU and memory of the worker processes (psutil). CPU % is measured between two reads
    of the same process: the first read of a new process says 0."""

    def __init__(self) -> None:
        self._processes: dict[int, psutil.Process] = {}

    def read(self, pids: list[int]) -> dict[int, tuple[float, int] | None]:
        import psutil

        for gone in set(self._processes) - set(pids):
            del self._processes[gone]
        out: dict[int, tuple[float, int] | None] = {}
        for pid in pids:
            try:
                process = self._processes.get(pid)
                if process is None:
                    process = self._processes[pid] = psutil.Process(pid)
                with process.oneshot():
                    out[pid] = (process.cpu_percent(None), process.memory_info().rss)
            except psutil.Error:  # it ended meanwhile
                self._processes.pop(pid, None)
                out[pid] = None
        return out


@dataclass
class _Cached:
    value: Any
    at: float


@dataclass
class Statistics:
    """The figures of one service. `on_change` is subscribed to the store's changes;
    `seed` runs once at start, before the scheduler; `read(owner)` answers a request."""

    config: StatsConfig
    store: Store
    clock: Clock
    hub: EventHub
    #: The worker pool's figures and its processes (`WorkerPool`), and the scheduler's
    #: (node, running, accepting); set once the scheduler runs.
    scheduler: Any = None
    #: Open WebSocket connections, as counted by the application.
    connections: Callable[[], int] = lambda: 0
    started_at: int = 0
    finished: FinishedMinutes = field(default_factory=FinishedMinutes)
    types: RecentTypes = field(init=False)
    probe: ProcessProbe = field(default_factory=ProcessProbe)
    #: Told of every change `observe` reads something in, with that reading (the metrics):
    #: a change is read once, whoever counts it.
    observers: list[Callable[[Job, str, int | None], None]] = field(default_factory=list)
    _cache: dict[tuple[str, str | None], _Cached] = field(default_factory=dict)
    _reading: dict[tuple[str, str | None], asyncio.Future[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.types = RecentTypes(self.config.window_samples)
        self.started_at = self.started_at or self.clock.now()

    # ---- fed by the store --------------------------------------------------------------------
    async def seed(self) -> None:
        """The jobs finished since the earlier of an hour ago and midnight, from the store."""
        now = self.clock.now()
        try:
            rows = await self.store.finished_since(min(now - 3_600_000, start_of_day(now)))
        except OffloadError as exc:  # the figures start from zero; the service itself is fine
            log.warning("statistics: could not read today's finished jobs (%s); counting from now", exc.message)
            return
        for owner, _type, status, minute, count in rows:
            self.finished.add(owner, status, minute * MINUTE_MS, count)

    def on_change(self, change: StoreChange) -> None:
        if not isinstance(change, Job):
            return
        seen = observe(change)
        if seen is None:
            return
        what, ms = seen
        for observer in self.observers:
            observer(change, what, ms)
        if what is STARTED:
            assert change.started_at is not None and ms is not None
            self.types.waited(change.owner, change.type, change.started_at, ms)
        elif what is not RETRIED:
            assert change.completed_at is not None
            self.finished.add(change.owner, what, change.completed_at)
            if ms is not None:
                self.types.ran(change.owner, change.type, change.completed_at, ms)

    # ---- store reads, shared for `cache_ms` ------------------------------------------------------
    async def _cached(self, what: str, owner: str | None, read: Callable[[], Awaitable[Any]]) -> Any:
        key = (what, owner)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached.at < self.config.cache_ms / 1000:
            return cached.value
        pending = self._reading.get(key)
        if pending is None:  # one read at a time per scope; the callers meanwhile share it
            pending = self._reading[key] = asyncio.ensure_future(read())
            pending.add_done_callback(lambda _: self._reading.pop(key, None))
        value = await asyncio.shield(pending)
        self._cache[key] = _Cached(value, time.monotonic())
        return value

    async def job_counts(self, owner: str | None) -> dict[str, int]:
        return dict(await self._cached("status", owner, lambda: self.store.count_by_status(owner)))

    async def unfinished(self, owner: str | None) -> dict[str, Any]:
        """Pending (due now, and later) and running jobs by priority, and the queue by priority."""
        rows = await self._cached("unfinished", owner, lambda: self.store.count_unfinished(owner, self.clock.now()))
        labels = [p.label for p in Priority]
        by_priority = {label: {"pending": 0, "running": 0} for label in labels}
        queue = dict.fromkeys(labels, 0)
        delayed = waiting = 0
        for status, priority, due, count in rows:
            label = Priority(priority).label
            by_priority[label][status] += count
            if status == "pending":
                if due is None:  # waits for other jobs (`options.after`)
                    waiting += count
                elif due:
                    queue[label] += count
                else:
                    delayed += count
        return {"byPriority": by_priority, "queue": queue, "delayed": delayed, "waiting": waiting}

    # ---- the answer ------------------------------------------------------------------------------
    def recent(self, owner: str | None) -> dict[str, Any]:
        now = self.clock.now()
        self.finished.prune(now)
        out: dict[str, Any] = {}
        for name, since in (("lastHour", now - 3_600_000), ("today", start_of_day(now))):
            counts = self.finished.totals(owner, since)
            out[name] = {**counts, "errorRate": error_rate(counts["completed"], counts["failed"])}
        out["since"] = iso(self.started_at)  # jobs finished before are counted from the store
        return out

    def workers(self) -> dict[str, Any]:
        pool = self.scheduler.pool
        described = pool.describe()
        live = pool.processes()
        usage = self.probe.read([pid for _, pid, _ in live])
        processes = []
        for index, pid, job_id in live:
            cpu_memory = usage.get(pid)
            processes.append({"slot": index, "pid": pid, "jobId": job_id,
                              "cpuPercent": None if cpu_memory is None else cpu_memory[0],
                              "memoryBytes": None if cpu_memory is None else cpu_memory[1]})
        return {**described, "restarts": pool.replaced, "processList": processes}

    def websocket(self) -> dict[str, Any]:
        counts = self.hub.counts
        return {"subscribers": self.hub.subscriber_count, "eventsPublished": self.hub.published,
                "connections": self.connections(), "eventsSent": counts.sent,
                "eventsCoalesced": counts.coalesced, "eventsDropped": counts.dropped}

    async def read(self, owner: str | None) -> dict[str, Any]:
        """The figures `owner` may see (its own jobs), or the whole service's (None: an operator)."""
        now = self.clock.now()
        answer: dict[str, Any] = {"scope": "own" if owner is not None else "all",
                                  "jobs": await self.job_counts(owner), **await self.unfinished(owner),
                                  "recent": self.recent(owner),
                                  "types": self.types.summary(owner, now - int(self.config.window_s * 1000)),
                                  "window": {"seconds": self.config.window_s, "samples": self.config.window_samples}}
        if owner is None:
            scheduler = self.scheduler
            answer["scheduler"] = {**scheduler.describe(), "workers": self.workers()}
            # `jobs` and the queue are the database's, every node's; `recent`, `types` and
            # `scheduler` are this node's. The running jobs of each node sharing the store:
            # Read as the other counts are, at most once per `cache_ms`, however many ask.
            by_node = await self._cached("nodes", None, self.store.running_by_node)
            answer["cluster"] = {"node": scheduler.node, "runningByNode": dict(by_node)}
            answer["websocket"] = self.websocket()
        answer["uptimeSeconds"] = round((now - self.started_at) / 1000, 3)
        answer["version"] = version()
        return answer


class StatsFeed:
    """One WebSocket's `stats` events: the first at once after `{"op": "subscribe", "stats":
    true}`, then one every `interval_s` until `unsubscribe` or the connection's end. They go
    through the connection's outbox like every other message."""

    def __init__(self, stats: Statistics, subscriber: Subscriber, owner: str | None) -> None:
        self.stats, self.subscriber, self.owner = stats, subscriber, owner
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="offload-stats-feed")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                figures = await self.stats.read(self.owner)
            except OffloadError as exc:  # the store did not answer: say so, try again next time
                self.subscriber.send_error(exc.code, f"statistics unavailable: {exc.message}")
            except Exception:
                log.exception("statistics for a WebSocket failed")
                self.subscriber.send_error("internal_error", "statistics unavailable: the service failed to read them")
            else:
                self.subscriber.send_raw(orjson.dumps({"event": "stats", "stats": figures}))
            await asyncio.sleep(self.stats.config.interval_s)
