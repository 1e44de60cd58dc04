"""The SQLite store: one file, WAL, one writer connection with group commit and one reader.

Writes never wait for each other's commit: whatever arrives while a transaction is in
flight goes into the next one, so a burst of submissions, claims and progress updates
costs one commit per batch, not one per change. Every write is durable (committed) before
its awaitable returns, so a 201 is only sent for a committed job.

With `synchronous = NORMAL` a commit in WAL mode appends to the log and syncs nothing, so a
batch costs tens of microseconds of SQLite's own work: it runs on the event loop's thread.
Handing it to a connection thread instead cost more than the work (two thread switches and
a contended GIL, measured at 0.5-1 ms of CPU per job). What could block is moved off the loop:
the checkpoints, which sync the file, run on their own connection in its thread
(`_checkpoint`), and a lock held by another process is waited out with the loop free
(`_begin`). With `synchronous = FULL` every commit syncs the log, so batches run in the
writer connection's thread, as do the reads (on the reader connection) in both modes.
"""
from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import logging
import sqlite3
import time
from operator import itemgetter
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from offload.service.errors import StoreUnavailable
from offload.service.models import Job, JobStatus, Priority, now_ms
from offload.service.models import WAITING_DUE
from offload.service.store.base import (
    BUMP, JOB_COLUMNS, Change, Decide, decode_cursor, encode_cursor, Fence, IdempotencyMismatch, Page, ProgressChange, Purged, ResultFile, SlotRecord, Store,
    StoreChange, UnknownParent, WithParents, arm_change, batch_refs, fail_all, follow_change, settle,
)
from offload.service.store.fairness import Served, round_robin

log = logging.getLogger("offload.store")

#: 1: the first release; 2: `cancel_requested` (added by `_migrate` to older files);
#: 3: `auto_vacuum = INCREMENTAL`, so that retention's deletions shrink the file (`compact`),
#: and the `jobs_ended` index retention walks; 4: jobs that follow jobs (`after`,
#: `after_failed`, `waiting_for` and the `job_deps` table); also `checkpoint`
#: (what an attempt saved with `ctx.save`, read by the next one); 5: the `job_data` table,
#: for data over `INLINE_DATA`.
SCHEMA_VERSION = 5
_JOB_COLUMNS = JOB_COLUMNS
_COLS = ", ".join(_JOB_COLUMNS)
#: Data longer than this (its JSON, in characters) is kept in `job_data`, apart from the job's
#: row; shorter data stays in the row, where it costs no statement of its own (schema.sql).
INLINE_DATA = 1024
#: A job's data, as a column of a statement on `jobs`: from `job_data`, or in the row itself.
_DATA = "COALESCE((SELECT data FROM job_data WHERE job_data.pos = jobs.pos), jobs.data) AS data"
_JSON_COLUMNS = frozenset({"error", "result", "data", "checkpoint"})
#: Lists of job ids, stored as JSON arrays; an empty one as NULL, as most jobs follow none.
_IDS_COLUMNS = frozenset({"after", "waiting_for"})

WriteOp = Callable[[sqlite3.Connection], Any]


def _encode(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in _IDS_COLUMNS:
        return orjson.dumps(list(value)).decode() if value else None
    if column == "after_failed":
        return None if value == "cancel" else value
    if column in _JSON_COLUMNS:
        return orjson.dumps(value).decode()
    if isinstance(value, JobStatus):
        return value.value
    if isinstance(value, Priority):
        return int(value)
    return value


class CorruptRow(ValueError):
    """A stored row that cannot be turned into a `Job` (a damaged or hand-edited file).

    `repairs` are the values that make the row readable again once it is failed as
    `CorruptJob`; `data` is never repaired: it is read only to run a pending job."""

    def __init__(self, job_id: str, problems: list[str], repairs: Change) -> None:
        super().__init__(f"job {job_id}: " + "; ".join(problems))
        self.job_id = job_id
        self.problems = problems
        self.repairs = repairs


#: What an unreadable number becomes in a row failed as corrupt (`_NOW`: the time of the repair).
_NOW = object()
_INT_REPAIRS: dict[str, Any] = {
    "progress": 0, "attempts": 0, "max_retries": 0, "retry_delay_ms": 1000, "timeout_ms": None,
    "seq": 0, "created_at": _NOW, "started_at": None, "completed_at": None, "due_at": _NOW, "lease_until": None,
}


def _job(row: sqlite3.Row) -> Job:
    """Decode a row; raises `CorruptRow` naming every field that cannot be read.

    A job is decoded at each of its transitions, so the readable row takes a short path:
    columns by position (a name lookup in `sqlite3.Row` compares it with every column name)
    and a handful of type checks; anything that fails one is decoded again by
    `_checked_job`, which names every problem."""
    columns, data_at, checkpoint_at = _layout(tuple(row.keys()))
    values = list(itemgetter(*columns)(row))
    status, priority = _STATUSES.get(values[_STATUS_AT]), _PRIORITIES.get(values[_PRIORITY_AT])
    if status is None or priority is None or values[_CANCEL_AT] not in (0, 1) \
            or type(values[_CANCEL_AT]) is not int \
            or not _INT <= set(map(type, _whole(values))) <= _INT \
            or not set(map(type, _optional_whole(values))) <= _INT_OR_NONE:
        return _checked_job(row)
    try:
        error = None if values[_ERROR_AT] is None else orjson.loads(values[_ERROR_AT])
        result = None if values[_RESULT_AT] is None else orjson.loads(values[_RESULT_AT])
        data = None if data_at is None or row[data_at] is None else orjson.loads(row[data_at])
        checkpoint = None if checkpoint_at is None or row[checkpoint_at] is None else orjson.loads(row[checkpoint_at])
        after, waiting = _ids(values[_AFTER_AT]), _ids(values[_WAITING_AT])
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return _checked_job(row)
    if (error is not None and type(error) is not dict) or (result is not None and type(result) is not dict) \
            or values[_AFTER_FAILED_AT] not in (None, "run"):
        return _checked_job(row)
    values[_STATUS_AT], values[_PRIORITY_AT], values[_CANCEL_AT] = status, priority, bool(values[_CANCEL_AT])
    values[_ERROR_AT], values[_RESULT_AT] = error, result
    values[_AFTER_AT], values[_WAITING_AT] = after, waiting
    values[_AFTER_FAILED_AT] = values[_AFTER_FAILED_AT] or "cancel"
    values += (data, checkpoint)
    return Job(*_in_field_order(values))


def _ids(raw: Any) -> tuple[str, ...]:
    """A stored list of job ids (NULL: none); ValueError when it is not one."""
    if raw is None:
        return ()
    ids = orjson.loads(raw)
    if type(ids) is not list or any(type(i) is not str for i in ids):
        raise ValueError("not a list of job ids")
    return tuple(ids)


_STATUSES = {status.value: status for status in JobStatus}
_PRIORITIES: dict[Any, Priority] = {int(priority): priority for priority in Priority}
_STATUS_AT, _PRIORITY_AT, _CANCEL_AT, _ERROR_AT, _RESULT_AT = (
    _JOB_COLUMNS.index(c) for c in ("status", "priority", "cancel_requested", "error", "result"))
_AFTER_AT, _AFTER_FAILED_AT, _WAITING_AT = (_JOB_COLUMNS.index(c) for c in ("after", "after_failed", "waiting_for"))
_WHOLE_AT = tuple(_JOB_COLUMNS.index(c) for c, repair in _INT_REPAIRS.items() if repair is not None)
_OPTIONAL_WHOLE_AT = tuple(_JOB_COLUMNS.index(c) for c, repair in _INT_REPAIRS.items() if repair is None)
#: The checks and the construction of `_job` in C (`itemgetter`, `map`), not a loop per column.
_whole, _optional_whole = itemgetter(*_WHOLE_AT), itemgetter(*_OPTIONAL_WHOLE_AT)
_INT, _INT_OR_NONE = frozenset({int}), frozenset({int, type(None)})
#: A decoded row (the job columns, then data and checkpoint) in the order of `Job`'s fields.
_in_field_order = itemgetter(*((*_JOB_COLUMNS, "data", "checkpoint").index(f.name) for f in dataclasses.fields(Job)))


@functools.lru_cache(maxsize=64)
def _layout(keys: tuple[str, ...]) -> tuple[tuple[int, ...], int | None, int | None]:
    """Where each job column, `data` and `checkpoint` sit in a row with these column names."""
    at = {key: i for i, key in enumerate(keys)}
    return tuple(at[c] for c in _JOB_COLUMNS), at.get("data"), at.get("checkpoint")


def _checked_job(row: sqlite3.Row) -> Job:
    values = {k: row[k] for k in row.keys() if k in _JOB_COLUMNS or k in ("data", "checkpoint")}
    problems: list[str] = []
    repairs: Change = {}
    try:
        values["status"] = JobStatus(values["status"])
    except ValueError:
        problems.append(f"status {values['status']!r} is not a job status")
    try:
        values["priority"] = Priority(values["priority"])
    except (ValueError, TypeError):
        problems.append(f"priority {values['priority']!r} is not a priority")
        repairs["priority"] = Priority.MEDIUM
    for column in ("error", "result", "data", "checkpoint"):
        raw = values.get(column)
        if raw is None:
            continue
        problem = None
        try:
            values[column] = orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError):
            problem = f"{column} is not valid JSON"
        else:
            if column in ("error", "result") and not isinstance(values[column], dict):
                problem = f"{column} is not a JSON object"
        if problem is not None:
            problems.append(problem)
            if column in ("result", "checkpoint"):
                repairs[column] = None
    for column, repair in _INT_REPAIRS.items():
        value = values.get(column)
        if not (type(value) is int or (value is None and repair is None)):
            problems.append(f"{column} {value!r} is not a whole number")
            repairs[column] = repair
    for column in _IDS_COLUMNS:
        try:
            values[column] = _ids(values.get(column))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            problems.append(f"{column} is not a list of job ids")
            repairs[column] = ()
    if values.get("after_failed") not in (None, "run"):
        problems.append(f"after_failed {values['after_failed']!r} is not run or null")
        repairs["after_failed"] = "cancel"
    values["after_failed"] = values.get("after_failed") or "cancel"
    flag = values.get("cancel_requested", 0)
    if flag not in (0, 1) or type(flag) is not int:
        problems.append(f"cancel_requested {flag!r} is not 0 or 1")
        repairs["cancel_requested"] = 0
    values["cancel_requested"] = bool(flag)
    if problems:
        raise CorruptRow(str(values["id"]), problems, repairs)
    values.setdefault("data", None)
    return Job(**values)


def _mark_corrupt(db: sqlite3.Connection, corrupt: CorruptRow, marked: list[StoreChange]) -> Job:
    """Fail a corrupt job in place, as a transition (`seq` bumped), so it hurts only itself:
    its error says what could not be read, and the row reads cleanly from now on."""
    now = now_ms()
    error = {"type": "CorruptJob", "message": f"the stored job could not be read ({'; '.join(corrupt.problems)}); "
             "it was failed so that the other jobs go on"}
    change: Change = {k: now if v is _NOW else v for k, v in corrupt.repairs.items() if k != "seq"}
    change.update(status=JobStatus.FAILED, error=error, completed_at=now, lease_owner=None, lease_until=None)
    sets, params = _assignments(change)
    row = db.execute(f"UPDATE jobs SET {sets}, seq = CASE WHEN typeof(seq) = 'integer' THEN seq + 1 ELSE 1 END "
                     f"WHERE id = ? RETURNING {_COLS}", (*params, corrupt.job_id)).fetchone()
    log.error("job %s: stored row is corrupt (%s); failed it as CorruptJob", corrupt.job_id,
              "; ".join(corrupt.problems))
    job = _job(row)  # every field `_job` checks was repaired above
    marked.append(job)
    _follow(db, job, marked)
    return job


#: Whether this thread's batch runs each guarded statement in a savepoint (`_guarded`).
_CAREFUL: contextvars.ContextVar[bool] = contextvars.ContextVar("offload_store_careful", default=False)


class _Recheck(Exception):
    """A batch met a corrupt row with no savepoint to undo its statement: it is rolled back
    and run again, carefully."""


def _guarded(db: sqlite3.Connection, statement: Callable[[], list[sqlite3.Row]],
             marked: list[StoreChange]) -> list[Job] | None:
    """Run `statement` (a write that returns rows) and decode what it returns. When a row is
    corrupt, the statement is undone, each corrupt job is failed instead (into `marked`),
    and None is returned: the caller runs it again, which no longer finds them. So one bad
    row never takes the clean ones of its batch down with it.

    A savepoint around every statement cost a fifth of a job's statements, for rows that
    are corrupt only in a damaged or hand-edited file; so a batch first runs without them,
    and one that meets a corrupt row is rolled back and run again with them (`_Recheck`)."""
    if not _CAREFUL.get():
        try:
            return [_job(row) for row in statement()]
        except CorruptRow:
            raise _Recheck from None
    db.execute("SAVEPOINT decode")
    try:
        decoded: list[Job | CorruptRow] = []
        for row in statement():
            try:
                decoded.append(_job(row))
            except CorruptRow as exc:
                decoded.append(exc)
    except BaseException:
        db.execute("ROLLBACK TO decode")
        db.execute("RELEASE decode")
        raise
    corrupt = [d for d in decoded if isinstance(d, CorruptRow)]
    if corrupt:
        db.execute("ROLLBACK TO decode")
    db.execute("RELEASE decode")
    if not corrupt:
        return [d for d in decoded if isinstance(d, Job)]
    for bad in corrupt:
        _mark_corrupt(db, bad, marked)
    return None


def _decode_all(rows: Iterable[sqlite3.Row]) -> tuple[list[Job], list[CorruptRow]]:
    jobs: list[Job] = []
    corrupt: list[CorruptRow] = []
    for row in rows:
        try:
            jobs.append(_job(row))
        except CorruptRow as exc:
            corrupt.append(exc)
    return jobs, corrupt


def _decode_or_mark(db: sqlite3.Connection, row: sqlite3.Row, marked: list[StoreChange]) -> Job:
    """The job in `row`; a corrupt one is failed first and returned as it is now."""
    try:
        return _job(row)
    except CorruptRow as exc:
        return _mark_corrupt(db, exc, marked)


#: Why a write or a read failed, by SQLite's primary result code (`sqlite_errorname`, the
#: extended name's prefix: SQLITE_BUSY_SNAPSHOT is SQLITE_BUSY).
_REASONS = {
    "SQLITE_BUSY": "the database is locked by another process",
    "SQLITE_LOCKED": "the database is locked by another process",
    "SQLITE_READONLY": "the database is read-only",
    "SQLITE_FULL": "the disk holding the database is full",
    "SQLITE_IOERR": "the database file cannot be written (read-only or failing storage)",
}


def _error_name(exc: sqlite3.Error) -> str:
    """SQLite's primary result code name (SQLITE_IOERR for SQLITE_IOERR_WRITE), or ""."""
    name = getattr(exc, "sqlite_errorname", None) or ""
    for primary in _REASONS:
        if name == primary or name.startswith(primary + "_"):
            return primary
    return name


def _translate(exc: sqlite3.Error) -> StoreUnavailable:
    reason = _REASONS.get(_error_name(exc), "the database failed")
    log.error("store unavailable: %s (%s)", reason, exc)
    return StoreUnavailable(f"job store unavailable: {reason}; try again shortly")


class SQLiteStore(Store):
    #: Commits between two checkpoints of the log (SQLite's own default is 1,000 pages).
    checkpoint_every = 128

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", busy_timeout_ms: int = 2000) -> None:
        super().__init__()
        self.path = str(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout_ms = busy_timeout_ms
        #: Batches run on the loop's thread (see the module docstring); not for an in-memory
        #: database, whose one connection also serves the reads in its own thread.
        self._on_loop = self.synchronous != "FULL" and self.path != ":memory:"
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._checkpointer: aiosqlite.Connection | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._commits = 0
        self._ops: list[tuple[WriteOp, asyncio.Future[Any]]] = []
        #: The latest progress of each job, with the number of writes queued before it (its
        #: place among them: it is applied after those, before the ones queued after it).
        self._progress: dict[str, tuple[int, str | None, str, Fence, int, Callable[[int], None] | None]] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._lock: Any = None
        self._task: asyncio.Task[None] | None = None
        #: The changes of the batch in flight, in the order its writes made them (transitions,
        #: corrupt jobs failed by `_mark_corrupt`, progress), emitted once it committed.
        self._changes: list[StoreChange] = []
        #: Who had a job started when: fair claims between owners (used in the writer thread only).
        self._served = Served()
        #: The write probe in flight, shared by every `writable()` caller meanwhile.
        self._probe: asyncio.Future[Any] | None = None
        #: Whether `job_deps` may hold a row (read at open, set by every link): until then no
        #: job follows another, and an ending looks for no children (`_follow`).
        self._linked = True

    # ---- life cycle ---------------------------------------------------------------------
    #: One service owns a SQLite file: jobs left running in it belong to a previous run of
    #: this service, so they can be taken back at start without waiting for their leases.
    exclusive = True
    backend = "sqlite"

    async def open(self) -> None:
        """Open (or create) the database. A file or folder that cannot be written stops here
        with `StoreUnavailable` naming the file and the problem, and whatever was opened
        before the failure (the lock file, the connections and their threads) is closed."""
        try:
            await self._open()
        except BaseException as exc:
            await self.close()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise StoreUnavailable(f"cannot open the job store {self.path}: {_open_failure(exc)}") from None
            raise

    async def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._lock = _lock_file(Path(self.path + ".lock"))
        self._writer = await self._connect()
        version = list(await self._writer.execute_fetchall("PRAGMA user_version"))[0][0]
        if not version:  # a new file: only before its first table (and before WAL) does this take
            await self._writer.execute("PRAGMA auto_vacuum=INCREMENTAL")
        await self._writer.execute("PRAGMA journal_mode=WAL")
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} was written by a newer offload (schema {version} > {SCHEMA_VERSION})")
        if version:
            await _migrate(self._writer, version)
        await self._writer.executescript(resources.files("offload.service.store").joinpath("schema.sql").read_text())
        await self._writer.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._linked = bool(list(await self._writer.execute_fetchall("SELECT EXISTS (SELECT 1 FROM job_deps)"))[0][0])
        self._reader = self._writer if self.path == ":memory:" else await self._connect()
        if self._on_loop:
            # The loop never waits inside SQLite: no busy wait (`_begin` retries instead),
            # and no checkpoint at commit (`_checkpoint` runs them on their own connection).
            await self._writer.execute("PRAGMA busy_timeout=0")
            await self._writer.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = await self._connect()
        self._task = asyncio.get_running_loop().create_task(self._write_loop(), name="offload-store-writer")

    async def _connect(self) -> aiosqlite.Connection:
        # Not tied to its thread: the writer's batches run on the loop's thread (module docstring).
        db = await aiosqlite.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.row_factory = sqlite3.Row
            await db.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
            await db.execute(f"PRAGMA synchronous={self.synchronous}")
        except BaseException:
            await db.close()
            raise
        return db

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._checkpoint_task is not None:
            await self._checkpoint_task
        for db in {self._reader, self._writer, self._checkpointer}:
            if db is not None:
                await db.close()
        self._reader = self._writer = self._checkpointer = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def reader(self) -> aiosqlite.Connection:
        """The connection every read goes through. A test hook: a test sets its trace and
        progress handlers to hold a read at a chosen point while a write commits (the
        subscribe-versus-completion race). Nothing in the service uses it."""
        assert self._reader is not None, "store is not open"
        return self._reader

    async def ping(self) -> None:
        await self._read("SELECT 1")

    async def writable(self) -> None:
        """Commit a write through the writer queue, as a job's write would: BEGIN IMMEDIATE
        meets another process's lock, and the commit writes a WAL frame (rewriting the
        schema version), which a read-only file or a full disk refuses."""
        if self._probe is None or self._probe.done():
            self._probe = self._enqueue(_probe_write)
        await asyncio.shield(self._probe)

    # ---- group commit ----------------------------------------------------------------------
    async def _write(self, op: WriteOp) -> Any:
        """Run `op(connection)` in the next write transaction; returns once it committed."""
        return await self._enqueue(op)

    def _enqueue(self, op: WriteOp) -> asyncio.Future[Any]:
        """Queue `op` now, in order with every other write; the future resolves at commit."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._closing:
            future.set_exception(StoreUnavailable("job store is closing"))
            return future
        self._ops.append((op, future))
        self._wake.set()
        return future

    async def _write_loop(self) -> None:
        db = self._writer
        assert db is not None
        while (taken := await self._next_batch()) is not None:
            ops, rows = taken
            changes: list[StoreChange] = []
            self._changes = changes
            try:
                batch = [op for op, _ in ops]
                started = time.perf_counter()
                try:
                    seqs, outcomes = await self._commit_batch(db, rows, batch, changes)
                except _Recheck:  # a corrupt row: the batch again, each statement in a savepoint
                    changes = self._changes = []
                    seqs, outcomes = await self._commit_batch(db, rows, batch, changes, careful=True)
            except Exception as exc:  # the batch rolled back: each of its writes fails, the writer goes on
                self._changes = []  # nothing changed after all
                if isinstance(exc, sqlite3.Error):
                    error: Exception = _translate(exc)
                else:
                    log.exception("store write batch failed")
                    error = exc
                fail_all((future for _, future in ops), error)
                continue
            self._changes = []
            if self.on_commit is not None:
                self.on_commit(time.perf_counter() - started, len(ops) + len(rows))
            # Emitted before any awaitable resolves: a caller that awaited a write finds its
            # change (and every change committed before it) already heard by the listeners.
            self.changes.emit(changes)
            settle([future for _, future in ops], outcomes, rows, seqs)

    async def _commit_batch(self, db: aiosqlite.Connection, rows: list[tuple[Any, ...]], ops: list[WriteOp],
                         changes: list[StoreChange], careful: bool = False,
                         ) -> tuple[list[int | None], list[tuple[bool, Any]]]:
        if self._on_loop:
            await self._begin(db._conn)
            done = _run_batch(db._conn, rows, ops, changes, begun=True, careful=careful)
            self._committed()
            return done
        # One hop to the connection's thread for the whole batch: a statement per hop would
        # cost ~120 us each and cap the store near a thousand jobs/s.
        return await db._execute(_run_batch, db._conn, rows, ops, changes, careful=careful)

    async def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting out another process's write lock for up to `busy_timeout_ms`
        with the loop free (SQLite's own busy wait would hold the loop's thread); then the
        error is raised as a busy wait's would be."""
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + self.busy_timeout_ms / 1000, 0.00025
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if _error_name(exc) != "SQLITE_BUSY" or loop.time() >= deadline:
                    raise
            await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
            pause = min(pause * 2, 0.01)

    def _committed(self) -> None:
        self._commits += 1
        if self._commits >= self.checkpoint_every and (self._checkpoint_task is None or self._checkpoint_task.done()):
            self._commits = 0
            self._checkpoint_task = asyncio.get_running_loop().create_task(self._checkpoint())

    async def _checkpoint(self) -> None:
        """Copy the log into the database file, in the checkpointer connection's thread, so
        that the log starts over instead of growing. First PASSIVE, which takes no lock that
        the writer needs: writes go on while most of the log is copied and synced. Then
        RESTART, which holds writes back (`_begin` waits with the loop free) only while it
        copies what was committed meanwhile, so the next write can start the log over: with
        writes never pausing, a passive checkpoint alone never catches up with the log's end."""
        assert self._checkpointer is not None
        try:
            await self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            await self._checkpointer.execute("PRAGMA wal_checkpoint(RESTART)")
        except sqlite3.Error as exc:  # the next commits try again; the log only grows meanwhile
            log.warning("store checkpoint failed: %s", exc)

    async def _read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        assert self._reader is not None, "store is not open"
        try:
            return list(await self._reader.execute_fetchall(sql, tuple(params)))
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    # ---- reads --------------------------------------------------------------------------------
    async def _read_jobs(self, sql: str, params: Iterable[Any] = ()) -> tuple[list[sqlite3.Row], list[Job]]:
        """Read rows and decode them. A corrupt row is failed as `CorruptJob` (a write) and
        the read made again, so it shows as failed among the others; one that still cannot
        be read (the store takes no writes just now) is left out, with a log line."""
        params = tuple(params)
        rows = await self._read(sql, params)
        jobs, corrupt = _decode_all(rows)
        if not corrupt:
            return rows, jobs
        try:
            await self._repair([exc.job_id for exc in corrupt])
            rows = await self._read(sql, params)
            jobs, corrupt = _decode_all(rows)
        except (StoreUnavailable, CorruptRow):  # no writes just now, or a row beyond repair
            pass
        for exc in corrupt:
            log.error("job %s: left out of a read, its stored row cannot be read (%s)", exc.job_id,
                      "; ".join(exc.problems))
        return rows, jobs

    async def _repair(self, job_ids: list[str]) -> None:
        def op(db: sqlite3.Connection) -> None:
            for job_id in job_ids:
                row = db.execute(f"SELECT {_COLS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    continue
                try:
                    _job(row)
                except CorruptRow as exc:  # still corrupt: nobody repaired it meanwhile
                    _mark_corrupt(db, exc, self._changes)

        await self._write(op)

    async def get(self, job_id: str, owner: str | None = None) -> Job | None:
        sql = f"SELECT {_COLS} FROM jobs WHERE id = ?"
        params: list[Any] = [job_id]
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        _, jobs = await self._read_jobs(sql, params)
        return jobs[0] if jobs else None

    async def get_many(self, job_ids: Iterable[str], owner: str | None = None) -> dict[str, Job]:
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return {}
        sql = f"SELECT {_COLS} FROM jobs WHERE id IN ({', '.join('?' * len(ids))})"
        if owner is not None:
            sql += " AND owner = ?"
        _, jobs = await self._read_jobs(sql, [*ids, *([] if owner is None else [owner])])
        return {job.id: job for job in jobs}

    async def list_jobs(self, owner: str | None, *, status: JobStatus | None = None, type: str | None = None,
                   limit: int = 50, cursor: str | None = None) -> Page:
        where, params = _filters([], [], cursor, owner=owner, status=status and status.value, type=type)
        sql = f"SELECT pos, {_COLS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY pos DESC LIMIT ?"
        rows, jobs = await self._read_jobs(sql, [*params, limit + 1])
        more = len(rows) > limit
        kept = {r["id"] for r in rows[:limit]}
        return Page([j for j in jobs if j.id in kept], encode_cursor(rows[limit - 1]["pos"]) if more else None)

    async def count_by_status(self, owner: str | None = None) -> dict[str, int]:
        if owner is None:
            rows = await self._read("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        else:
            rows = await self._read("SELECT status, COUNT(*) AS n FROM jobs INDEXED BY jobs_owner WHERE owner = ? "
                                    "GROUP BY status", (owner,))
        counts = {s.value: 0 for s in JobStatus}
        counts.update({r["status"]: r["n"] for r in rows})
        return counts

    async def count_unfinished(self, owner: str | None, now: int) -> list[tuple[str, int, bool | None, int]]:
        mine, params = ("", ()) if owner is None else (" AND owner = ?", (owner,))
        pending = "jobs_due" if owner is None else "jobs_fair"
        rows = await self._read(
            f"SELECT 'pending', priority, CASE WHEN due_at >= {WAITING_DUE} THEN NULL ELSE due_at <= ? END, "
            f"COUNT(*) FROM jobs INDEXED BY {pending} "
            f"WHERE status = 'pending'{mine} GROUP BY 1, 2, 3 UNION ALL "
            f"SELECT 'running', priority, 1, COUNT(*) FROM jobs INDEXED BY jobs_lease "
            f"WHERE status = 'running'{mine} GROUP BY 1, 2, 3", (now, *params, *params))
        return [(r[0], int(r[1]), None if r[2] is None else bool(r[2]), int(r[3])) for r in rows]

    async def finished_since(self, since: int) -> list[tuple[str, str, str, int, int]]:
        rows = await self._read("SELECT owner, type, status, completed_at / 60000, COUNT(*) FROM jobs "
                                "WHERE status IN ('completed', 'failed', 'cancelled') AND completed_at >= ? "
                                "GROUP BY 1, 2, 3, 4", (since,))
        return [(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in rows]

    async def running_by_node(self) -> dict[str, int]:
        rows = await self._read("SELECT lease_owner, COUNT(*) FROM jobs INDEXED BY jobs_lease "
                                "WHERE status = 'running' GROUP BY 1")
        return {str(r[0]): int(r[1]) for r in rows if r[0] is not None}

    async def count_pending(self) -> int:
        rows = await self._read("SELECT COUNT(*) AS n FROM jobs INDEXED BY jobs_due WHERE status = 'pending'")
        return rows[0]["n"]

    async def count_pending_of(self, owner: str) -> int:
        rows = await self._read("SELECT COUNT(*) AS n FROM jobs INDEXED BY jobs_fair "
                                "WHERE owner = ? AND status = 'pending'", (owner,))
        return rows[0]["n"]

    async def next_due(self, now: int) -> int | None:
        # One index seek per priority rather than a walk over every pending job.
        per_priority = " UNION ALL ".join(
            f"SELECT MIN(due_at) AS due FROM jobs INDEXED BY jobs_due WHERE status = 'pending' "
            f"AND priority = {int(p)} AND due_at > ? AND due_at < {WAITING_DUE}" for p in Priority)
        rows = await self._read(f"SELECT MIN(due) AS due FROM ({per_priority})", (now,) * len(Priority))
        return rows[0]["due"]

    async def latest_time(self) -> int | None:
        rows = await self._read("SELECT created_at FROM jobs ORDER BY pos DESC LIMIT 1")  # a seek on the key
        value = rows[0]["created_at"] if rows else None
        return value if type(value) is int else None

    async def unfinished_page(self, owner: str | None, *, limit: int, cursor: str | None = None) -> Page:
        # One ordered walk of the (status, pos) index per status, each stopping after
        # `limit` rows, so a page costs the same however many jobs come after it.
        after = 0 if cursor is None else decode_cursor(cursor)
        mine, params = ("", ()) if owner is None else (" AND owner = ?", (owner,))
        walks = [f"SELECT * FROM (SELECT pos, {_COLS} FROM jobs INDEXED BY jobs_status WHERE status = '{status}' "
                 f"AND pos > ?{mine} ORDER BY pos LIMIT ?)" for status in ("pending", "running")]
        rows, jobs = await self._read_jobs(" UNION ALL ".join(walks) + " ORDER BY pos LIMIT ?",
                                           [*((after, *params, limit + 1) * 2), limit + 1])
        more = len(rows) > limit
        kept = {r["id"] for r in rows[:limit]}
        return Page([j for j in jobs if j.id in kept], encode_cursor(rows[limit - 1]["pos"]) if more else None)

    # ---- write hooks ----------------------------------------------------------------------------
    async def _insert(self, job: Job, request_hash: str | None) -> tuple[Job, bool]:
        return await self._write(lambda db: self._insert_row(db, job, request_hash))

    async def _insert_many(self, jobs: list[tuple[Job, str | None]]) -> list[tuple[Job, bool]]:
        def op(db: sqlite3.Connection) -> list[tuple[Job, bool]]:
            # A savepoint: a clash undoes this op's rows alone, not the other writes of its batch.
            emitted = len(self._changes)
            db.execute("SAVEPOINT create_many")
            try:
                answers: list[tuple[Job, bool]] = []
                for index, (job, request_hash) in enumerate(jobs):
                    try:
                        answers.append(self._insert_row(db, batch_refs(job, [a.id for a, _ in answers]),
                                                        request_hash))
                    except IdempotencyMismatch as exc:
                        raise IdempotencyMismatch(exc.job, index) from None
                    except UnknownParent as exc:
                        raise UnknownParent(exc.job_id, exc.position, index) from None
            except BaseException:
                db.execute("ROLLBACK TO create_many")
                db.execute("RELEASE create_many")
                del self._changes[emitted:]
                raise
            db.execute("RELEASE create_many")
            return answers

        return await self._write(op)

    def _insert_row(self, db: sqlite3.Connection, job: Job, request_hash: str | None) -> tuple[Job, bool]:
        """In the writer's transaction: insert `job`, or find the owner's job with its key. A
        job that follows others is stored as `arm_change` makes it, with its parents as they
        are now (`UnknownParent` when one is not the owner's)."""
        parents: dict[str, Job] = {}
        if job.after:
            self._linked = True
            parents = _parents(db, job, self._changes)
            fields = {k: v for k, v in arm_change(job, parents, job.created_at, new=True).items()}
            job = dataclasses.replace(job, **fields)
        data = _encode("data", job.data)
        apart = len(data) > INLINE_DATA
        rows = db.execute(_INSERT_SQL, (*_row_values(job), "" if apart else data, request_hash)).fetchall()
        if rows:
            if apart:
                db.execute("INSERT INTO job_data (pos, data) VALUES (?, ?)", (rows[0]["pos"], data))
            created = _job(rows[0])
            self._changes.append(created)
            _link(db, created, parents)
            return created, True
        existing = db.execute(
            f"SELECT {_COLS}, request_hash FROM jobs WHERE owner = ? AND idempotency_key = ?",
            (job.owner, job.idempotency_key)).fetchall()
        found = _decode_or_mark(db, existing[0], self._changes)
        if existing[0]["request_hash"] != request_hash:
            raise IdempotencyMismatch(found)
        return found, False

    async def _claim(self, node: str, now: int, lease_ms: int, types: tuple[str, ...] | None,
                     change: Change, limit: int, per_owner: int) -> list[Job]:
        sets, params = _assignments(change)
        if types is not None and not types:
            return []
        # A claim is a change of each job it takes (it sets `seq`); a reservation only marks the rows.
        is_change = "seq" in change

        def op(db: sqlite3.Connection) -> list[Job]:
            while True:  # until a pick holds no corrupt job: each pass fails the ones it found
                chosen = _fair_pick(db, now, types, limit, self._served, per_owner)
                if not chosen:
                    return []
                order = {pos: i for i, pos in enumerate(chosen)}

                def update(chosen: list[int] = chosen, order: dict[int, int] = order) -> list[sqlite3.Row]:
                    rows = db.execute(f"UPDATE jobs SET {sets} "
                                      f"WHERE pos IN ({', '.join('?' * len(chosen))}) RETURNING pos, {_COLS}, {_DATA}, checkpoint",
                                      (*params, *chosen)).fetchall()
                    return sorted(rows, key=lambda r: order[r["pos"]])

                jobs = _guarded(db, update, self._changes)
                if jobs is not None:
                    if is_change:
                        self._changes.extend(jobs)
                    return jobs

        return await self._write(op)

    def _begin_transition(self, job_id: str, fence: Fence,
                          change: Change | Decide | WithParents) -> Awaitable[Job | None]:
        where, fence_params = _fence_sql(fence)

        def op(db: sqlite3.Connection) -> Job | None:
            concrete = change
            parents: dict[str, Job] = {}
            if callable(concrete) or isinstance(concrete, WithParents):  # decided on the row as it is now
                found = _guarded(db, lambda: db.execute(f"SELECT {_COLS} FROM jobs WHERE id = ? AND {where}",
                                                        (job_id, *fence_params)).fetchall(), self._changes)
                if not found:
                    return None  # None also when the row was corrupt: it is failed now
                if isinstance(concrete, WithParents):
                    parents = _parents(db, found[0], self._changes)
                    concrete = concrete.decide(found[0], parents)
                else:
                    concrete = concrete(found[0])
            if parents:
                self._linked = True
            job = _apply(db, job_id, where, fence_params, {**concrete, "seq": BUMP}, self._changes,
                         follow=self._linked)
            if job is not None and parents:
                _link(db, job, parents)
            return job

        return self._enqueue(op)

    async def _save_checkpoint(self, job_id: str, fence: Fence, value: Any) -> bool:
        encoded = _encode("checkpoint", value)  # a TypeError here, not inside the batch
        where, params = _fence_sql(fence)

        def op(db: sqlite3.Connection) -> bool:
            return db.execute(f"UPDATE jobs SET checkpoint = ? WHERE id = ? AND {where}",
                              (encoded, job_id, *params)).rowcount == 1

        return await self._write(op)

    async def _renew(self, node: str, until: int) -> int:
        def op(db: sqlite3.Connection) -> int:
            return db.execute("UPDATE jobs SET lease_until = ? WHERE status IN ('running', 'pending') "
                              "AND lease_owner = ?", (until, node)).rowcount

        return await self._write(op)

    async def _rescue(self, expired_before: int, decide: Decide) -> list[Job]:
        where, fence_params = _fence_sql(Fence(frozenset({JobStatus.RUNNING})))

        def op(db: sqlite3.Connection) -> list[Job]:
            db.execute("UPDATE jobs SET lease_owner = NULL, lease_until = NULL "
                       "WHERE status = 'pending' AND lease_owner IS NOT NULL AND lease_until < ?", (expired_before,))
            while True:  # until the expired rows decode: each pass fails the corrupt ones it found
                expired = _guarded(db, lambda: db.execute(f"SELECT {_COLS} FROM jobs INDEXED BY jobs_lease "
                                                          "WHERE status = 'running' AND lease_until < ?",
                                                          (expired_before,)).fetchall(), self._changes)
                if expired is not None:
                    break
            rescued = [_apply(db, job.id, where, fence_params, {**decide(job), "seq": BUMP}, self._changes,
                              follow=self._linked) for job in expired]
            return [job for job in rescued if job is not None]

        return await self._write(op)

    async def _unreserve(self, node: str, job_ids: list[str]) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.executemany("UPDATE jobs SET lease_owner = NULL, lease_until = NULL "
                           "WHERE id = ? AND status = 'pending' AND lease_owner = ?", [(i, node) for i in job_ids])

        await self._write(op)

    # ---- schedules ------------------------------------------------------------------------------
    async def last_slots(self) -> dict[str, SlotRecord]:
        rows = await self._read("SELECT schedule, MAX(slot) AS slot, job_id FROM schedule_slots GROUP BY schedule")
        return {r["schedule"]: SlotRecord(r["schedule"], r["slot"], r["job_id"]) for r in rows}

    async def _fire_slot(self, schedule: str, slot: int, job: Job | None,
                         request_hash: str | None) -> tuple[Job | None, bool] | None:
        def op(db: sqlite3.Connection) -> tuple[Job | None, bool] | None:
            latest = db.execute("SELECT MAX(slot) FROM schedule_slots WHERE schedule = ?", (schedule,)).fetchone()[0]
            if latest is not None and latest >= slot:
                return None
            emitted = len(self._changes)
            db.execute("SAVEPOINT fire_slot")  # the job and its slot, or neither
            try:
                answer: tuple[Job | None, bool] = (None, False) if job is None \
                    else self._insert_row(db, job, request_hash)
                db.execute("INSERT INTO schedule_slots (schedule, slot, job_id) VALUES (?, ?, ?)",
                           (schedule, slot, None if answer[0] is None else answer[0].id))
                db.execute("DELETE FROM schedule_slots WHERE schedule = ? AND slot < ?", (schedule, slot))
            except BaseException as exc:
                db.execute("ROLLBACK TO fire_slot")
                db.execute("RELEASE fire_slot")
                del self._changes[emitted:]
                if isinstance(exc, sqlite3.IntegrityError):  # recorded meanwhile: fired elsewhere
                    return None
                raise
            db.execute("RELEASE fire_slot")
            return answer

        return await self._write(op)


    # ---- retention (its own methods: the write path above is not touched) ---------------------
    async def _purge(self, status: JobStatus, ended_before: int, limit: int) -> list[Purged]:
        def op(db: sqlite3.Connection) -> list[Purged]:
            # A job an unfinished job follows is kept: its result is that job's input (`job_deps`).
            rows = db.execute("DELETE FROM jobs WHERE pos IN (SELECT pos FROM jobs INDEXED BY jobs_ended "
                              "WHERE status = ? AND completed_at < ? "
                              "AND NOT EXISTS (SELECT 1 FROM job_deps WHERE parent = jobs.id) "
                              "ORDER BY completed_at LIMIT ?) "
                              "RETURNING id, owner, result", (status.value, ended_before, limit)).fetchall()
            return [Purged(str(row[0]), str(row[1]), status, _result_file(row[2])) for row in rows]

        return await self._write(op)

    async def result_files(self, ended_before: int, *, limit: int,
                           after: str | None = None) -> tuple[list[ResultFile], str | None]:
        since, pos = (-1, 0) if after is None else _decode_marker(after)
        rows = await self._read(
            "SELECT pos, id, completed_at, CASE WHEN json_valid(result) THEN json_extract(result, '$.file') END "
            "FROM jobs INDEXED BY jobs_ended WHERE status = 'completed' AND completed_at < ? "
            "AND (completed_at, pos) > (?, ?) ORDER BY completed_at, pos LIMIT ?", (ended_before, since, pos, limit))
        files = [ResultFile(str(r[1]), r[3], int(r[2])) for r in rows if isinstance(r[3], str)]
        return files, (_encode_marker(rows[-1][2], rows[-1][0]) if rows else after)

    async def list_scheduled(self, owner: str | None, now: int, *, type: str | None = None, limit: int = 50,
                             cursor: str | None = None, waiting: bool = False) -> Page:
        due = ["due_at >= ?"] if waiting else ["due_at > ?", "due_at < ?"]
        bounds = [WAITING_DUE] if waiting else [now, WAITING_DUE]
        where, params = _filters(["status = 'pending'", *due], bounds, cursor, owner=owner, type=type)
        rows, jobs = await self._read_jobs(f"SELECT pos, {_COLS} FROM jobs WHERE {' AND '.join(where)} "
                                           "ORDER BY pos DESC LIMIT ?", [*params, limit + 1])
        more = len(rows) > limit
        kept = {r["id"] for r in rows[:limit]}
        return Page([j for j in jobs if j.id in kept], encode_cursor(rows[limit - 1]["pos"]) if more else None)

    async def compact(self, pages: int) -> int:
        """`PRAGMA incremental_vacuum` of up to `pages` pages, on a connection of its own in its
        own thread (moving pages costs ~0.1 ms each: never on the loop's thread, and never
        beside a checkpoint on the checkpointer's). The writer waits out its lock with the
        loop free (`_begin`), so keep `pages` small. The file shrinks on disk at the next
        checkpoint. Where the writer works in its own thread (FULL, `:memory:`), it runs there."""
        assert self._writer is not None, "store is not open"
        own = self._on_loop
        try:
            db = await self._connect() if own else self._writer
            try:
                mode = list(await db.execute_fetchall("PRAGMA auto_vacuum"))[0][0]
                if mode != 2:  # not INCREMENTAL: a file whose one-time VACUUM failed (`_migrate`)
                    return 0
                if list(await db.execute_fetchall("PRAGMA freelist_count"))[0][0]:
                    # executescript: `execute` would step the pragma once, which frees one page
                    await db.executescript(f"PRAGMA incremental_vacuum({int(pages)})")
                return int(list(await db.execute_fetchall("PRAGMA freelist_count"))[0][0])
            finally:
                if own:
                    await db.close()
        except sqlite3.Error as exc:
            raise _translate(exc) from exc


def _result_file(raw: Any) -> str | None:
    """The `file` of a stored result, if it has one (a result that cannot be read has none)."""
    try:
        result = orjson.loads(raw) if raw is not None else None
    except (orjson.JSONDecodeError, TypeError):
        return None
    file = result.get("file") if isinstance(result, dict) else None
    return file if isinstance(file, str) else None


def _encode_marker(completed_at: int, pos: int) -> str:
    return f"{completed_at}.{pos}"


def _decode_marker(marker: str) -> tuple[int, int]:
    completed_at, _, pos = marker.partition(".")
    return int(completed_at), int(pos)


_INSERT_COLUMNS = (*_JOB_COLUMNS, "data", "request_hash")
_INSERT_SQL = (f"INSERT INTO jobs ({', '.join(_INSERT_COLUMNS)}) VALUES ({', '.join('?' * len(_INSERT_COLUMNS))}) "
               "ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
               f"RETURNING {_COLS}, pos")


def _row_values(job: Job) -> tuple[Any, ...]:
    """`_encode` of each of `job`'s columns, in `_JOB_COLUMNS` order, written out: an insert
    a job, it cost a call and four lookups a column."""
    error, result = job.error, job.result
    return (job.id, job.owner, job.type, job.status.value, int(job.priority), job.progress, job.message,
            job.attempts, job.max_retries, job.retry_delay_ms, job.timeout_ms, job.seq, job.created_at,
            job.started_at, job.completed_at, job.due_at,
            None if error is None else orjson.dumps(error).decode(),
            None if result is None else orjson.dumps(result).decode(),
            job.idempotency_key, job.lease_owner, job.lease_until, job.cancel_requested,
            _encode("after", job.after), None if job.after_failed == "cancel" else job.after_failed,
            _encode("waiting_for", job.waiting_for))


def _fair_pick(db: sqlite3.Connection, now: int, types: tuple[str, ...] | None, limit: int,
               served: Served, cap: int = 0) -> list[int]:
    """The `pos` of the due jobs to claim, shared between owners (`fairness.round_robin`).
    Every query here is an index seek, so a backlog of any size costs the same; the cost
    grows with the number of owners that have pending jobs (two seeks each)."""
    type_filter = f" AND type IN ({', '.join('?' * len(types))})" if types else ""
    type_params = types or ()
    if not cap:
        # No more due jobs than room: every one of them starts now, so nobody waits and there
        # is nobody to be fair to (the usual case of a service that keeps up: one statement).
        # INDEXED BY: left to itself the planner walks the status index and sorts, ~60x slower.
        # One seek per priority: a walk in (priority, due_at) order would read every job not
        # due yet at a better priority first (delayed ones, and jobs waiting for others).
        per_priority = " UNION ALL ".join(
            f"SELECT * FROM (SELECT pos, owner, priority, due_at FROM jobs INDEXED BY jobs_due "
            f"WHERE status = 'pending' AND priority = {int(p)} AND due_at <= ? AND lease_owner IS NULL{type_filter} "
            "ORDER BY due_at, pos LIMIT ?)" for p in Priority)
        # One more than there is room for: as many as the room, or fewer, and every due job
        # fits; one more, and there is a choice to make between owners.
        plain = db.execute(f"SELECT pos, owner FROM ({per_priority}) ORDER BY priority, due_at, pos LIMIT ?",
                           (*((now, *type_params, limit + 1) * len(Priority)), limit + 1)).fetchall()
        if len(plain) <= limit:
            for _, owner in plain:
                served.mark(owner)
            return [pos for pos, _ in plain]
        del plain[limit:]
    owners: list[str] = []
    row = db.execute("SELECT MIN(owner) FROM jobs INDEXED BY jobs_fair WHERE status = 'pending'").fetchone()
    while row[0] is not None:  # one seek per owner on (owner, …), not a scan of the backlog
        owners.append(row[0])
        row = db.execute("SELECT MIN(owner) FROM jobs INDEXED BY jobs_fair WHERE status = 'pending' AND owner > ?",
                         (row[0],)).fetchone()
    if len(owners) <= 1 and not cap:  # nobody to share with (single-user mode): plain priority order
        if plain:
            served.mark(owners[0])
        return [pos for pos, _ in plain]
    top = db.execute("SELECT MIN(priority) FROM (" + " UNION ALL ".join(
        f"SELECT * FROM (SELECT priority FROM jobs INDEXED BY jobs_due WHERE status = 'pending' AND priority = {int(p)} "
        f"AND due_at <= ? AND lease_owner IS NULL{type_filter} LIMIT 1)" for p in Priority) + ")",
        (now, *type_params) * len(Priority)).fetchone()
    if top[0] is None:
        return []
    running = dict(db.execute("SELECT owner, COUNT(*) FROM jobs INDEXED BY jobs_lease WHERE status = 'running' "
                              "GROUP BY owner").fetchall())
    heads_sql = ("SELECT due_at, pos FROM jobs INDEXED BY jobs_fair WHERE status = 'pending' AND owner = ? "
                 f"AND priority = ? AND due_at <= ? AND lease_owner IS NULL{type_filter} ORDER BY due_at, pos LIMIT ?")
    chosen: list[int] = []
    for priority in range(top[0], max(Priority) + 1):
        want = limit - len(chosen)
        if want <= 0:
            break
        heads = {owner: db.execute(heads_sql, (owner, priority, now, *type_params, want)).fetchall()
                 for owner in owners}
        chosen += round_robin(running, served, heads, want, cap)
    return chosen


def _run_batch(conn: sqlite3.Connection, progress: list[tuple[Any, ...]], ops: list[WriteOp],
               changes: list[StoreChange], begun: bool = False,
               careful: bool = False) -> tuple[list[int | None], list[tuple[bool, Any]]]:
    """Runs in the connection's thread: one transaction for everything that arrived together.
    Returns the new `seq` of each progress row (None when its fence no longer matches) and
    the outcome of each op; every change goes into `changes` in the order it was made.
    Progress and ops are applied in the order they were queued: a reserved job's start
    queued before its attempt's first progress is running when that progress is applied,
    and progress queued before an ending is written before it. An op that fails on its own
    (a constraint, an idempotency clash) fails alone; a database error rolls the whole batch
    back. `begun`: the caller has opened the transaction already; `careful`: see `_guarded`."""
    outcomes: list[tuple[bool, Any]] = []
    seqs: list[int | None] = []
    if not begun:
        conn.execute("BEGIN IMMEDIATE")
    token = _CAREFUL.set(careful)
    try:
        waiting = iter(progress)
        row = next(waiting, None)
        for index in range(len(ops) + 1):
            while row is not None and row[4] <= index:  # the progress queued before op `index`
                seqs.append(_write_progress(conn, row, changes))
                row = next(waiting, None)
            if index == len(ops):
                break
            try:
                outcomes.append((True, ops[index](conn)))
            except (sqlite3.IntegrityError, IdempotencyMismatch, ValueError) as exc:
                outcomes.append((False, exc))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        _CAREFUL.reset(token)
    return seqs, outcomes


def _write_progress(conn: sqlite3.Connection, row: tuple[Any, ...], changes: list[StoreChange]) -> int | None:
    value, message, job_id, fence = row[:4]
    where, params = _fence_sql(fence)
    found = conn.execute(f"UPDATE jobs SET progress = ?, message = ?, seq = seq + 1 WHERE id = ? AND {where} "
                         "RETURNING seq, owner", (value, message, job_id, *params)).fetchone()
    if found is None:
        return None
    changes.append(ProgressChange(job_id, found[1], fence.attempt or 0, value, message, found[0]))
    return int(found[0])


def _fence_sql(fence: Fence) -> tuple[str, list[Any]]:
    """The WHERE clause (without WHERE) that matches the rows `fence` admits."""
    where = [f"status IN ({', '.join('?' * len(fence.statuses))})"]
    params: list[Any] = sorted(s.value for s in fence.statuses)
    for column, value in (("attempts", fence.attempt), ("lease_owner", fence.lease_owner), ("owner", fence.owner)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    return " AND ".join(where), params


def _apply(db: sqlite3.Connection, job_id: str, where: str, where_params: list[Any], change: Change,
           changes: list[StoreChange], *, follow: bool = True) -> Job | None:
    """Write `change` to the job if its row matches `where`; the new job (a change, recorded
    in `changes`), or None. A corrupt row is failed instead (also a change) and None returned.
    A job that ends takes its children along (`_follow`; `follow=False`: the caller does, or
    no job follows another)."""
    sets, params = _assignments(change)
    jobs = _guarded(db, lambda: db.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND {where} RETURNING {_COLS}",
                                           (*params, job_id, *where_params)).fetchall(), changes)
    if not jobs:
        return None
    changes.append(jobs[0])
    if follow and jobs[0].status.terminal:
        _follow(db, jobs[0], changes)
    return jobs[0]


def _follow(db: sqlite3.Connection, ended: Job, changes: list[StoreChange]) -> None:
    """In the transaction that ended `ended`: it stops holding its parents (its rows in
    `job_deps` go), and each child waiting for it follows (`follow_change`), level by level,
    so a cancel reaches every descendant however long the chain, each change recorded in
    `changes` after the one that caused it."""
    queue = [ended]
    while queue:
        job = queue.pop(0)
        if job.after:
            db.execute("DELETE FROM job_deps WHERE child = ?", (job.id,))
        children: list[Job] | None = None
        while children is None:  # until the children decode: each pass fails the corrupt ones it found
            children = _guarded(db, functools.partial(_children_of, db, job.id), changes)
        for child in children:
            change = follow_change(child, job)
            if change is None:
                continue
            followed = _apply(db, child.id, "status = 'pending'", [], {**change, "seq": BUMP}, changes, follow=False)
            if followed is not None and followed.status.terminal:
                queue.append(followed)


def _children_of(db: sqlite3.Connection, job_id: str) -> list[sqlite3.Row]:
    # CROSS JOIN fixes the order: the seek on job_deps first (most jobs have no child), not a
    # walk of every pending job that the planner would otherwise pick for `status = 'pending'`.
    return db.execute(f"SELECT {_COLS} FROM job_deps CROSS JOIN jobs ON jobs.id = job_deps.child "
                      "WHERE job_deps.parent = ? AND jobs.status = 'pending'", (job_id,)).fetchall()


def _parents(db: sqlite3.Connection, job: Job, marked: list[StoreChange]) -> dict[str, Job]:
    """The jobs `job` follows that exist and are its owner's, as they are in this transaction."""
    if not job.after:
        return {}
    rows = db.execute(f"SELECT {_COLS} FROM jobs WHERE owner = ? AND id IN ({', '.join('?' * len(job.after))})",
                      (job.owner, *job.after)).fetchall()
    return {parent.id: parent for parent in (_decode_or_mark(db, row, marked) for row in rows)}


def _link(db: sqlite3.Connection, job: Job, parents: dict[str, Job]) -> None:
    """While `job` is unfinished, its parents are kept (retention) and find it (`_follow`)."""
    if job.status is JobStatus.PENDING and parents:
        db.executemany("INSERT OR IGNORE INTO job_deps (parent, child) VALUES (?, ?)",
                       [(parent, job.id) for parent in parents])


async def _migrate(db: aiosqlite.Connection, version: int) -> None:
    """Bring a file written by an older offload up to `SCHEMA_VERSION`, step by step."""
    if version < 2:
        await db.execute("ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0")
    if version < 3:
        await _enable_incremental_vacuum(db)
    if version < 4:  # `job_deps` comes with schema.sql
        present = {row[1] for row in await db.execute_fetchall("PRAGMA table_info(jobs)")}
        for column in ("after", "after_failed", "waiting_for"):
            if column not in present:
                await db.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")
    # 4: the checkpoint of `ctx.save`. Its own step, and it looks before it adds the column,
    # so it stays correct whatever number it ends up with beside other version-4 changes.
    if version < 4 and "checkpoint" not in {row[1] for row in await db.execute_fetchall("PRAGMA table_info(jobs)")}:
        await db.execute("ALTER TABLE jobs ADD COLUMN checkpoint TEXT")
    # 5: `job_data` comes with schema.sql; the jobs stored before keep their data in their row,
    # where the claim finds short data anyway (`_DATA`), so nothing is copied.


async def _enable_incremental_vacuum(db: aiosqlite.Connection) -> None:
    """`auto_vacuum` of an existing file changes only with a VACUUM, which rewrites the whole
    file once (it needs as much free disk as the file's size, and time in proportion: 0.4 s
    for a 26 MB file of 100,000 jobs). It runs at the start of the first version that needs
    it, before the service takes any request. When it fails (a full disk) the file keeps working as it
    was: space freed by deleted jobs is reused for new ones, but the file does not shrink
    (`compact` has nothing to do); the log says so, and the next start does not try again."""
    size = sum(row[0] for row in await db.execute_fetchall(
        "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"))
    log.warning("converting the job store to incremental vacuum (a one-time VACUUM of %.1f MB); "
                "start-up waits for it", size / 1e6)
    try:
        await db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        await db.execute("VACUUM")
    except sqlite3.Error as exc:
        log.error("could not convert the job store to incremental vacuum (%s); it keeps working, but its file "
                  "will not shrink after old jobs are deleted (run `VACUUM` on it by hand to fix that)", exc)
        return
    log.warning("job store converted: deleted jobs now give their space back to the file system")


def _probe_write(db: sqlite3.Connection) -> None:
    """A write that changes no job but always dirties a page, so its commit really writes."""
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _lock_file(path: Path) -> Any:
    """Hold an exclusive lock on `path` for as long as the store is open; a second service
    on the same database file stops at start instead of taking the first one's jobs."""
    import fcntl

    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise RuntimeError(f"another offload service is using {path.with_suffix('')}; "
                           "stop it first, or give this one its own [store] url") from None
    return handle


def _open_failure(exc: sqlite3.Error | OSError) -> str:
    """Why a database could not be opened, in words for the person starting the service."""
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    text = str(exc).lower()
    if "readonly" in text or "read-only" in text:
        return "the database file is read-only"
    if "unable to open" in text:
        return "the database file cannot be opened or created (is it, and its folder, writable?)"
    if "locked" in text or "busy" in text:
        return "the database is locked by another process"
    if "not a database" in text or "malformed" in text:
        return f"the file is not a usable SQLite database ({exc})"
    return str(exc)


def _filters(where: list[str], params: list[Any], cursor: str | None,
             **columns: Any) -> tuple[list[str], list[Any]]:
    """`where` and `params` with `column = ?` for each column given (not None), and the page
    `cursor`'s bound; a cursor this store did not make raises ValueError."""
    for column, value in columns.items():
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if cursor is not None:
        where.append("pos < ?")
        params.append(decode_cursor(cursor))
    return where, params


def _assignments(change: Change) -> tuple[str, list[Any]]:
    """SET clauses and their parameters; `BUMP` adds one to the stored value."""
    shape = tuple((c, v is BUMP) for c, v in change.items())
    sets = _SETS.get(shape)
    if sets is None:
        if len(_SETS) >= 256:  # changes come in a handful of shapes; never grow without bound
            _SETS.clear()
        sets = _SETS[shape] = ", ".join(f"{c} = {c} + 1" if v is BUMP else f"{c} = ?" for c, v in change.items())
    return sets, [_encode(c, v) for c, v in change.items() if v is not BUMP]


#: The SET clauses of each shape of change seen (its columns, and which of them it bumps).
_SETS: dict[tuple[tuple[str, bool], ...], str] = {}


