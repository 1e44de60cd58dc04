"""The PostgreSQL store: one database shared by several nodes.

Writes go through one writer connection with group commit, as on SQLite: whatever arrives
while a transaction is in flight goes into the next one, every change of a batch is emitted
to `changes` after its commit, in commit order, before the writes' awaitables resolve.
Transactions are READ COMMITTED with each fence in its UPDATE's WHERE: PostgreSQL checks the
WHERE again on the row version it locked, so a fence holds against another node's
concurrent write. A batch that meets a deadlock or a serialization failure is rolled back
and run again (a few times); a batch locks the rows it is about to change in id order first,
so that two nodes writing the same jobs seldom deadlock at all.

Claims take `FOR UPDATE SKIP LOCKED` rows: another node's claim in flight is passed over,
never waited for. Fairness between owners follows `fairness.round_robin`, with its state in
the `served` table, so every node shares it.

Each batch also sends its changes to the other nodes, in the same transaction:
`pg_notify(<schema>, {"o": origin, "c": [items]})`, in chunks under PostgreSQL's payload
limit. A transition travels as the job's fields without `data` and `checkpoint` (nobody
listening needs them), a progress write as its fields, and a change too big alone (a large
result or error) as `[id, seq]`, which the listener reads from the table. PostgreSQL delivers
one transaction's notifications in order, and transactions in commit order. The listener
(its own connection, `listen_url` or `url`) skips its own origin, emits the others to
`remote`, each job's changes in `seq` order, and reconnects by itself when its connection
drops (a notification sent meanwhile is lost: consumers also poll, every `poll_interval`).

Reads go through a pool. A database that does not answer, refuses connections, is read-only
or has a full disk raises `StoreUnavailable` naming the reason (the API answers 503); the
writer connects again by itself for the next batch.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, AsyncContextManager

import asyncpg
import orjson

from offload.service.errors import StoreUnavailable
from offload.service.models import WAITING_DUE, Job, JobStatus, Priority
from offload.service.store.base import (
    BUMP, JOB_COLUMNS, Change, Decide, decode_cursor, encode_cursor, Fence, IdempotencyMismatch, Page, ProgressChange, Purged, ResultFile, SlotRecord, Store,
    StoreChange, UnknownParent, WithParents, arm_change, batch_refs, fail_all, follow_change, settle,
)
from offload.service.store.fairness import Served, round_robin

log = logging.getLogger("offload.store")

#: This backend's schema version (its own numbering, kept in `meta`): 1, the first one.
SCHEMA_VERSION = 1
_JOB_COLUMNS = JOB_COLUMNS
_N = len(_JOB_COLUMNS)
_COLS = ", ".join(_JOB_COLUMNS)
_JCOLS = ", ".join(f"jobs.{c}" for c in _JOB_COLUMNS)
_JSON_COLUMNS = frozenset({"error", "result", "data", "checkpoint"})
_IDS_COLUMNS = frozenset({"after", "waiting_for"})
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_PRIORITIES = [int(p) for p in Priority]
_FILE = "CASE WHEN json_typeof(result -> 'file') = 'string' THEN result ->> 'file' END"
#: The largest notification payload sent (PostgreSQL refuses 8000 bytes and more).
NOTIFY_LIMIT = 7900
#: Seconds a connection may take to open, and a statement to answer, before the database
#: counts as unavailable (503). A claim on a backlog of a million jobs takes tens of
#: milliseconds; a network that drops every packet (a partition) is told within these.
_CONNECT_TIMEOUT_S = 3.0
_COMMAND_TIMEOUT_S = 3.0
#: Batches run again after a deadlock or a serialization failure, at most.
_RERUNS = 5
#: Jobs whose latest emitted `seq` the listener remembers (the oldest are forgotten).
_HEARD_MAX = 50_000

WriteOp = Callable[[asyncpg.Connection], Awaitable[Any]]


# ---- values in and out ------------------------------------------------------------------------
def _encode(column: str, value: Any) -> Any:
    if column in _IDS_COLUMNS:
        return list(value) if value else None
    if column == "data":
        return orjson.dumps(value).decode()
    if value is None:
        return None
    if column == "after_failed":
        return None if value == "cancel" else value
    if column in _JSON_COLUMNS:
        return orjson.dumps(value).decode()
    if isinstance(value, JobStatus):
        return value.value
    if isinstance(value, Priority):
        return int(value)
    return value


_STATUSES = {status.value: status for status in JobStatus}
_PRIORITY = {int(priority): priority for priority in Priority}
_STATUS_AT, _PRIORITY_AT, _ERROR_AT, _RESULT_AT = (_JOB_COLUMNS.index(c) for c in ("status", "priority", "error",
                                                                                   "result"))
_AFTER_AT, _AFTER_FAILED_AT, _WAITING_AT = (_JOB_COLUMNS.index(c) for c in ("after", "after_failed", "waiting_for"))


def _job(record: Sequence[Any], at: int = 0, full: bool = False) -> Job:
    """The job in `record`'s columns from `at` on (`_JOB_COLUMNS`, then `data` and
    `checkpoint` when `full`). The schema's CHECKs keep every row readable; a value that
    still is not (the constraints dropped by hand) raises ValueError naming it."""
    values = list(record[at:at + _N + (2 if full else 0)])
    status, priority = _STATUSES.get(values[_STATUS_AT]), _PRIORITY.get(values[_PRIORITY_AT])
    if status is None or priority is None:
        raise ValueError(f"job {values[0]}: status {values[_STATUS_AT]!r} or priority {values[_PRIORITY_AT]!r} "
                         "cannot be read")
    values[_STATUS_AT], values[_PRIORITY_AT] = status, priority
    for index in (_ERROR_AT, _RESULT_AT):
        if values[index] is not None:
            values[index] = orjson.loads(values[index])
    values[_AFTER_AT] = tuple(values[_AFTER_AT] or ())
    values[_WAITING_AT] = tuple(values[_WAITING_AT] or ())
    values[_AFTER_FAILED_AT] = values[_AFTER_FAILED_AT] or "cancel"
    fields = dict(zip(_JOB_COLUMNS, values[:_N], strict=True))
    if full:
        fields["data"] = None if values[_N] is None else orjson.loads(values[_N])
        fields["checkpoint"] = None if values[_N + 1] is None else orjson.loads(values[_N + 1])
    else:
        fields["data"] = None
    return Job(**fields)


class _Params:
    """Numbered query parameters: `p(value)` adds one and gives its `$n`."""

    def __init__(self, *values: Any) -> None:
        self.values = list(values)

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _assignments(change: Change, p: _Params) -> str:
    """SET clauses; `BUMP` adds one to the stored value."""
    return ", ".join(f"{c} = {c} + 1" if v is BUMP else f"{c} = {p(_encode(c, v))}" for c, v in change.items())


def _fence_sql(fence: Fence, p: _Params) -> str:
    """The WHERE clause (without WHERE) that matches the rows `fence` admits."""
    statuses = sorted(s.value for s in fence.statuses)
    where = [f"status = {p(statuses[0])}" if len(statuses) == 1 else f"status = ANY({p(statuses)}::text[])"]
    for column, value in (("attempts", fence.attempt), ("lease_owner", fence.lease_owner), ("owner", fence.owner)):
        if value is not None:
            where.append(f"{column} = {p(value)}")
    return " AND ".join(where)


def _types_sql(types: tuple[str, ...] | None, p: _Params, alias: str = "") -> str:
    return f" AND {alias}type = ANY({p(list(types))}::text[])" if types else ""


# ---- notifications ---------------------------------------------------------------------------
def _item(change: StoreChange) -> list[Any]:
    """A change as it travels to the other nodes: a job without `data` and `checkpoint`
    ("j", then `_JOB_COLUMNS`), or a progress write ("p", then its fields)."""
    if isinstance(change, ProgressChange):
        return ["p", change.job_id, change.owner, change.attempt, change.progress, change.message, change.seq]
    return ["j", *(_encode(c, getattr(change, c)) if c not in ("error", "result") else getattr(change, c)
                   for c in _JOB_COLUMNS)]


def payloads(origin: str, changes: Iterable[StoreChange], limit: int = NOTIFY_LIMIT) -> list[str]:
    """The notifications that carry `changes`, in order, each under `limit` bytes; a change
    too big alone goes as a reference `[id, seq]`."""
    head = b'{"o":' + orjson.dumps(origin) + b',"c":['
    room = limit - len(head) - 2
    out: list[str] = []
    chunk: list[bytes] = []
    size = 0
    for change in changes:
        item = orjson.dumps(_item(change))
        if len(item) > room:
            item = orjson.dumps([change.job_id if isinstance(change, ProgressChange) else change.id, change.seq])
        if chunk and size + 1 + len(item) > room:
            out.append((head + b",".join(chunk) + b"]}").decode())
            chunk, size = [], 0
        size += len(item) + (1 if chunk else 0)
        chunk.append(item)
    if chunk:
        out.append((head + b",".join(chunk) + b"]}").decode())
    return out


def _decode_item(item: list[Any]) -> StoreChange | tuple[str, int]:
    """An item back into the change it carries, or a reference `(id, seq)` to read."""
    if len(item) == 2:
        return str(item[0]), int(item[1])
    if item[0] == "p":
        return ProgressChange(*item[1:])
    values = list(item[1:])
    error, result = values[_ERROR_AT], values[_RESULT_AT]
    values[_ERROR_AT] = values[_RESULT_AT] = None
    job = _job(values)
    return dataclasses.replace(job, error=error, result=result)


def _quote(text: str) -> str:
    """A string literal (standard_conforming_strings is on for every connection)."""
    return "'" + text.replace("'", "''") + "'"


# ---- errors ------------------------------------------------------------------------------------
_REASONS = {
    "53300": "too many connections to the database",
    "25006": "the database is read-only",
    "53100": "the disk holding the database is full",
    "53200": "the database is out of memory",
    "57P03": "the database is starting up or shutting down",
    "57P01": "the database server shut the connection down",
    "57P02": "the database server crashed",
    "3D000": "the database does not exist",
    "28000": "the database refused the credentials",
    "28P01": "the database refused the credentials",
    # Only once a batch ran again `_RERUNS` times and still met one:
    "40P01": "the database is busy (the writes of several nodes deadlocked)",
    "40001": "the database is busy (the writes of several nodes conflicted)",
}
_CLASS_REASONS = {
    "08": "the database does not answer",
    "53": "the database is out of resources",
    "57": "the database server is shutting down",
    "58": "the database cannot read or write its files",
}
_RETRY = frozenset({"40P01", "40001"})


def _reason(exc: BaseException) -> str | None:
    """Why the database cannot serve just now, or None for an error of the query itself."""
    if isinstance(exc, asyncpg.PostgresError):
        code = exc.sqlstate or ""
        return _REASONS.get(code) or _CLASS_REASONS.get(code[:2])
    if isinstance(exc, (asyncpg.DataError, asyncpg.exceptions.ClientConfigurationError)):
        return None
    if isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError, asyncpg.InterfaceError,
                        asyncpg.exceptions._base.InternalClientError)):
        return "the database does not answer"
    return None


def _translate(exc: BaseException) -> BaseException:
    """`StoreUnavailable` for a database that cannot serve; any other error as it is."""
    reason = _reason(exc)
    if reason is None:
        return exc
    log.error("store unavailable: %s (%s: %s)", reason, type(exc).__name__, exc)
    return StoreUnavailable(f"job store unavailable: {reason}; try again shortly")


class _Careful(Exception):
    """An op of a batch failed in the database: the batch runs again, each op in a
    savepoint, so that op fails alone."""


# ---- the store ---------------------------------------------------------------------------------
class PostgresStore(Store):
    """`url`: the database (postgresql://user@host/db); `schema`: where offload's tables
    live (created at `open`); `pool_min`..`pool_max` connections for reads; `poll_ms`: how
    often consumers look by themselves (`poll_interval`); `listen_url`: a direct connection
    for LISTEN when `url` goes through a pooler that cannot hold one."""

    exclusive = False
    backend = "postgresql"

    def __init__(self, url: str, *, schema: str = "offload", pool_min: int = 1, pool_max: int = 4,
                 poll_ms: int = 1000, listen_url: str | None = None) -> None:
        super().__init__()
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"schema {schema!r} must be a lower-case SQL name (letters, digits, _), "
                             "at most 63 characters")
        if not 1 <= pool_min <= pool_max:
            raise ValueError(f"pool_min ({pool_min}) must be >= 1 and <= pool_max ({pool_max})")
        self.url = url
        self.schema = schema
        self.pool_min, self.pool_max = pool_min, pool_max
        self.poll_interval = poll_ms / 1000
        self.listen_url = listen_url or url
        #: This store's name in its notifications, so its listener skips its own.
        self.origin = secrets.token_hex(8)
        self._conn: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._ops: list[tuple[WriteOp, asyncio.Future[Any], tuple[str, ...]]] = []
        #: The latest progress of each job, with the number of writes queued before it.
        self._progress: dict[str, tuple[int, str | None, str, Fence, int, Callable[[int], None] | None]] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._changes: list[StoreChange] = []
        self._probe: asyncio.Future[Any] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._listen_stop = asyncio.Event()
        self._notes: asyncio.Queue[str | None] = asyncio.Queue()
        self._note_task: asyncio.Task[None] | None = None
        #: The latest `seq` emitted to `remote` per job (the oldest forgotten first).
        self._heard: collections.OrderedDict[str, int] = collections.OrderedDict()
        #: When a statement last went unanswered past its timeout (`_fail_fast`); None once one is answered.
        self._silent_at: float | None = None
        #: The jobs of the write batch between its COMMIT and its emission, and the other
        #: nodes' changes of them heard meanwhile, emitted right after it (`_emit_remote`).
        self._inflight: set[str] = set()
        self._deferred: list[StoreChange] = []
        #: Set while the listener's LISTEN is in place (tests wait on it).
        self.listening = asyncio.Event()

    # ---- life cycle ---------------------------------------------------------------------------
    async def _connect(self, role: str, url: str | None = None) -> asyncpg.Connection:
        conn = await asyncpg.connect(url or self.url, timeout=_CONNECT_TIMEOUT_S, command_timeout=_COMMAND_TIMEOUT_S,
                                     statement_cache_size=512,
                                     server_settings=self._settings(role))
        try:
            await self._session(conn)
        except BaseException:
            await _close_quietly(conn)
            raise
        return conn

    def _settings(self, role: str) -> dict[str, str]:
        """What the connection's start-up message carries: only what a pooler in between
        (PgBouncer) passes on; the rest is set once connected (`_session`)."""
        return {"application_name": f"offload {role} {self.origin}"}

    async def _session(self, conn: asyncpg.Connection) -> None:
        # The schema's tables by their plain names; and a node paused or cut off in the
        # middle of a transaction must not hold its rows' locks for long (the other nodes
        # skip locked rows, so its jobs would not be rescued): the server ends such a
        # session, and the node's writer connects again when it is back.
        await conn.execute("SELECT set_config('search_path', $1, false), "
                           "set_config('standard_conforming_strings', 'on', false), "
                           "set_config('idle_in_transaction_session_timeout', '5000', false)", self.schema)

    async def open(self) -> None:
        """Create or migrate the schema (under an advisory lock: nodes starting together take
        turns), then open the writer, the read pool and the listener. A database that cannot
        be reached stops here with `StoreUnavailable`, and whatever was opened is closed."""
        try:
            self._conn = await self._connect("writer")
            await self._migrate(self._conn)
            self._conn.add_termination_listener(self._writer_lost)
            self._pool = await asyncpg.create_pool(self.url, min_size=self.pool_min, max_size=self.pool_max,
                                                   timeout=_CONNECT_TIMEOUT_S, command_timeout=_COMMAND_TIMEOUT_S,
                                                   server_settings=self._settings("reader"), init=self._session,
                                                   reset=_keep_session)
            self._note_task = asyncio.get_running_loop().create_task(self._hear(), name="offload-store-notes")
            first = await self._listen()
            self._listen_task = asyncio.get_running_loop().create_task(self._listen_loop(first),
                                                                       name="offload-store-listener")
        except BaseException as exc:
            await self.close()
            reason = _reason(exc)
            if reason is not None:
                raise StoreUnavailable(f"cannot open the job store at {_redacted(self.url)}: {reason} "
                                       f"({exc})") from None
            raise
        self._task = asyncio.get_running_loop().create_task(self._write_loop(), name="offload-store-writer")

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1), hashtext('offload schema'))", self.schema)
            # What the node before committed is looked up with parameters (a statement of its
            # own snapshot, taken after the lock), not left to CREATE ... IF NOT EXISTS: through
            # PgBouncer, that met the schema another node had just created as a clash.
            if not await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", self.schema):
                await conn.execute(f'CREATE SCHEMA "{self.schema}"')
            version = 0
            if await conn.fetchval("SELECT to_regclass($1)", f'"{self.schema}".meta') is not None:
                version = await conn.fetchval("SELECT value FROM meta WHERE key = $1", "version") or 0
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"schema {self.schema} of {_redacted(self.url)} was written by a newer offload "
                                   f"(schema {version} > {SCHEMA_VERSION})")
            if version == SCHEMA_VERSION:
                return  # up to date: another node (or this one's last run) made it
            await conn.execute(resources.files("offload.service.store").joinpath("postgres.sql").read_text())
            await conn.execute("INSERT INTO meta (key, value) VALUES ('version', $1) "
                               "ON CONFLICT (key) DO UPDATE SET value = excluded.value", SCHEMA_VERSION)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        self._listen_stop.set()
        if self._listen_task is not None:
            await self._listen_task
            self._listen_task = None
        if self._note_task is not None:
            self._notes.put_nowait(None)
            await self._note_task
            self._note_task = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._conn is not None:
            await _close_quietly(self._conn)
            self._conn = None

    def _writer_lost(self, conn: asyncpg.Connection) -> None:
        if conn is self._conn:
            self._conn = None

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def writable(self) -> None:
        """Commit a write that changes no job (the version row rewritten) through the writer
        queue: a read-only or full database refuses it, a lost one does not answer."""
        async def probe(conn: asyncpg.Connection) -> None:
            await conn.execute("UPDATE meta SET value = value WHERE key = 'version'")

        if self._probe is None or self._probe.done():
            self._probe = self._enqueue(probe)
        await asyncio.shield(self._probe)

    # ---- group commit ----------------------------------------------------------------------------
    async def _write(self, op: WriteOp, ids: tuple[str, ...] = ()) -> Any:
        return await self._enqueue(op, ids)

    def _enqueue(self, op: WriteOp, ids: tuple[str, ...] = ()) -> asyncio.Future[Any]:
        """Queue `op` now, in order with every other write; the future resolves at commit.
        `ids`: the jobs it changes, locked in id order at the batch's start."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._closing:
            future.set_exception(StoreUnavailable("job store is closing"))
            return future
        self._ops.append((op, future, ids))
        self._wake.set()
        return future

    async def _write_loop(self) -> None:
        while (taken := await self._next_batch()) is not None:
            ops, rows = taken
            started = time.perf_counter()
            try:
                self._fail_fast()
                seqs, outcomes, changes = await self._commit_batch(rows, ops)
                self._silent_at = None
            except Exception as exc:  # rolled back: each of its writes fails, the writer goes on
                error = self._failed(exc)
                if error is exc and not isinstance(exc, StoreUnavailable):
                    log.exception("store write batch failed")
                fail_all((future for _, future, _ in ops), error)
                continue
            if self.on_commit is not None:
                self.on_commit(time.perf_counter() - started, len(ops) + len(rows))
            for change in changes:  # a notification of an older change of these jobs is stale now
                self._mark_heard(change)
            self.changes.emit(changes)  # before any awaitable resolves
            self._release_inflight()
            settle([future for _, future, _ in ops], outcomes, rows, seqs)

    async def _commit_batch(self, rows: list[tuple[Any, ...]], ops: list[tuple[WriteOp, Any, tuple[str, ...]]],
                            ) -> tuple[list[int | None], list[tuple[bool, Any]], list[StoreChange]]:
        careful = False
        reruns = 0
        reconnected = False
        while True:
            conn = self._conn
            if conn is None or conn.is_closed():
                conn = self._conn = await self._connect("writer")
                conn.add_termination_listener(self._writer_lost)
                reconnected = True
            try:
                await conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            except Exception as exc:
                if _reason(exc) is None or reconnected or isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
                    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):  # silent: nothing to say goodbye to
                        conn.terminate()
                        self._conn = None
                    raise
                # A connection lost while idle: nothing of the batch was sent; a new one takes it.
                await _close_quietly(conn)
                self._conn = None
                continue
            changes: list[StoreChange] = []
            self._changes = changes
            try:
                seqs, outcomes = await self._run_batch(conn, rows, ops, careful)
                # From its COMMIT until its changes are emitted here, another node may change
                # these jobs again and its notification arrive first: it waits (`_emit_remote`).
                self._inflight = {c.job_id if isinstance(c, ProgressChange) else c.id for c in changes}
                await conn.execute("".join(f"SELECT pg_notify({_quote(self.schema)}, {_quote(payload)});"
                                           for payload in payloads(self.origin, changes)) + "COMMIT")
                return seqs, outcomes, changes
            except BaseException as exc:
                await self._rollback(conn)
                self._changes = []
                self._release_inflight()
                if isinstance(exc, _Careful):
                    careful = True
                    continue
                if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate in _RETRY and reruns < _RERUNS:
                    reruns += 1
                    log.info("store batch rolled back (%s), running it again", exc.sqlstate)
                    continue
                raise

    async def _rollback(self, conn: asyncpg.Connection) -> None:
        if conn.is_closed():
            self._conn = None
            return
        try:
            await conn.execute("ROLLBACK")
        except Exception as exc:  # the connection is gone: the next batch opens another
            log.warning("store rollback failed (%s); reconnecting", exc)
            await _close_quietly(conn)
            self._conn = None

    async def _run_batch(self, conn: asyncpg.Connection, rows: list[tuple[Any, ...]],
                         ops: list[tuple[WriteOp, Any, tuple[str, ...]]],
                         careful: bool) -> tuple[list[int | None], list[tuple[bool, Any]]]:
        """Everything that arrived together, in the order it was queued: the progress queued
        before op `i` is written (one statement per run) before it. An op that fails on its
        own (an idempotency clash, a constraint) fails alone; a database error that is not
        the op's rolls the whole batch back."""
        ids = sorted({row[2] for row in rows}.union(*(i for *_, i in ops)))
        if len(ids) > 1:  # lock order: two nodes changing the same jobs take them in one order
            await conn.execute("SELECT 1 FROM jobs WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE", ids)
        seqs: list[int | None] = []
        outcomes: list[tuple[bool, Any]] = []
        at = 0
        for index in range(len(ops) + 1):
            run = []
            while at < len(rows) and rows[at][4] <= index:
                run.append(rows[at])
                at += 1
            if run:
                seqs += await self._write_progress(conn, run)
            if index == len(ops):
                break
            op = ops[index][0]
            emitted = len(self._changes)
            if careful:
                await conn.execute("SAVEPOINT op")
            try:
                outcomes.append((True, await op(conn)))
            except (IdempotencyMismatch, UnknownParent, ValueError, TypeError) as exc:
                del self._changes[emitted:]
                if careful:
                    await conn.execute("ROLLBACK TO SAVEPOINT op")
                outcomes.append((False, exc))
            except asyncpg.PostgresError as exc:
                if exc.sqlstate in _RETRY or _reason(exc) is not None:
                    raise
                if not careful:
                    raise _Careful from exc
                del self._changes[emitted:]
                await conn.execute("ROLLBACK TO SAVEPOINT op")
                outcomes.append((False, exc))
            if careful:
                await conn.execute("RELEASE SAVEPOINT op")
        return seqs, outcomes

    async def _write_progress(self, conn: asyncpg.Connection, run: list[tuple[Any, ...]]) -> list[int | None]:
        """One statement for the progress rows of a run: each applied with the next `seq`
        while its attempt still runs (`progress_fence`)."""
        plain = all(f.statuses == {JobStatus.RUNNING} and f.lease_owner is None and f.owner is None
                    and f.attempt is not None for *_, f, _, _ in run)
        found: dict[str, tuple[int, str]] = {}
        if plain:
            records = await conn.fetch(
                "UPDATE jobs SET progress = v.progress, message = v.message, seq = jobs.seq + 1 "
                "FROM unnest($1::text[], $2::int[], $3::text[], $4::int[]) AS v(id, progress, message, attempt) "
                "WHERE jobs.id = v.id AND jobs.status = 'running' AND jobs.attempts = v.attempt "
                "RETURNING jobs.id, jobs.seq, jobs.owner",
                [r[2] for r in run], [r[0] for r in run], [r[1] for r in run], [r[3].attempt for r in run])
            found = {r[0]: (int(r[1]), r[2]) for r in records}
        else:
            for value, message, job_id, fence, *_ in run:
                p = _Params(value, message, job_id)
                record = await conn.fetchrow(f"UPDATE jobs SET progress = $1, message = $2, seq = seq + 1 "
                                             f"WHERE id = $3 AND {_fence_sql(fence, p)} RETURNING id, seq, owner",
                                             *p.values)
                if record is not None:
                    found[job_id] = (int(record[1]), record[2])
        seqs: list[int | None] = []
        for value, message, job_id, fence, *_ in run:
            if job_id in found:
                seq, owner = found[job_id]
                self._changes.append(ProgressChange(job_id, owner, fence.attempt or 0, value, message, seq))
                seqs.append(seq)
            else:
                seqs.append(None)
        return seqs

    # ---- reads ------------------------------------------------------------------------------
    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        if self._pool is None:
            raise StoreUnavailable("job store is not open")
        self._fail_fast()
        try:
            records = await self._pool.fetch(sql, *args)
        except Exception as exc:
            raise self._failed(exc) from exc
        self._silent_at = None
        return records

    def _fail_fast(self) -> None:
        """Refuse at once while the database lately did not answer within the timeout (a
        network dropping every packet): a request then waits one timeout, not one per
        statement it would make, and the next one after the pause tries again."""
        if self._silent_at is not None and time.monotonic() - self._silent_at < _COMMAND_TIMEOUT_S:
            raise StoreUnavailable("job store unavailable: the database does not answer; try again shortly")

    def _failed(self, exc: BaseException) -> BaseException:
        if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
            self._silent_at = time.monotonic()
        return _translate(exc)

    async def _jobs(self, sql: str, *args: Any, at: int = 0) -> list[Job]:
        return [_job(r, at) for r in await self._fetch(sql, *args)]

    async def get(self, job_id: str, owner: str | None = None) -> Job | None:
        if owner is None:
            jobs = await self._jobs(f"SELECT {_COLS} FROM jobs WHERE id = $1", job_id)
        else:
            jobs = await self._jobs(f"SELECT {_COLS} FROM jobs WHERE id = $1 AND owner = $2", job_id, owner)
        return jobs[0] if jobs else None

    async def get_many(self, job_ids: Iterable[str], owner: str | None = None) -> dict[str, Job]:
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return {}
        p = _Params(ids)
        mine = "" if owner is None else f" AND owner = {p(owner)}"
        return {j.id: j for j in await self._jobs(f"SELECT {_COLS} FROM jobs WHERE id = ANY($1::text[]){mine}",
                                                  *p.values)}

    async def _page(self, where: list[str], p: _Params, cursor: str | None, limit: int) -> Page:
        if cursor is not None:
            where.append(f"pos < {p(decode_cursor(cursor))}")
        sql = f"SELECT pos, {_COLS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        records = await self._fetch(sql + f" ORDER BY pos DESC LIMIT {p(limit + 1)}", *p.values)
        more = len(records) > limit
        return Page([_job(r, 1) for r in records[:limit]], encode_cursor(records[limit - 1][0]) if more else None)

    @staticmethod
    def _filters(p: _Params, **columns: Any) -> list[str]:
        return [f"{column} = {p(value)}" for column, value in columns.items() if value is not None]

    async def list_jobs(self, owner: str | None, *, status: JobStatus | None = None, type: str | None = None,
                        limit: int = 50, cursor: str | None = None) -> Page:
        p = _Params()
        where = self._filters(p, owner=owner, status=status and status.value, type=type)
        return await self._page(where, p, cursor, limit)

    async def list_scheduled(self, owner: str | None, now: int, *, type: str | None = None, limit: int = 50,
                             cursor: str | None = None, waiting: bool = False) -> Page:
        p = _Params()
        where = ["status = 'pending'"]
        where += [f"due_at >= {WAITING_DUE}"] if waiting else [f"due_at > {p(now)}", f"due_at < {WAITING_DUE}"]
        where += self._filters(p, owner=owner, type=type)
        return await self._page(where, p, cursor, limit)

    async def count_by_status(self, owner: str | None = None) -> dict[str, int]:
        if owner is None:
            records = await self._fetch("SELECT status, count(*) FROM jobs GROUP BY status")
        else:
            records = await self._fetch("SELECT status, count(*) FROM jobs WHERE owner = $1 GROUP BY status", owner)
        counts = {s.value: 0 for s in JobStatus}
        counts.update({r[0]: int(r[1]) for r in records})
        return counts

    async def count_unfinished(self, owner: str | None, now: int) -> list[tuple[str, int, bool | None, int]]:
        mine = "" if owner is None else " AND owner = $2"
        records = await self._fetch(
            f"SELECT 'pending', priority, CASE WHEN due_at >= {WAITING_DUE} THEN NULL ELSE due_at <= $1 END, "
            f"count(*) FROM jobs WHERE status = 'pending'{mine} GROUP BY 1, 2, 3 UNION ALL "
            f"SELECT 'running', priority, true, count(*) FROM jobs WHERE status = 'running'{mine} "
            "GROUP BY 1, 2, 3", now, *(() if owner is None else (owner,)))
        return [(r[0], int(r[1]), r[2], int(r[3])) for r in records]

    async def finished_since(self, since: int) -> list[tuple[str, str, str, int, int]]:
        records = await self._fetch("SELECT owner, type, status, completed_at / 60000, count(*) FROM jobs "
                                    "WHERE status IN ('completed', 'failed', 'cancelled') AND completed_at >= $1 "
                                    "GROUP BY 1, 2, 3, 4", since)
        return [(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in records]

    async def running_by_node(self) -> dict[str, int]:
        rows = await self._fetch("SELECT lease_owner, count(*) FROM jobs WHERE status = 'running' GROUP BY 1")
        return {str(r[0]): int(r[1]) for r in rows if r[0] is not None}

    async def count_pending(self) -> int:
        return int((await self._fetch("SELECT count(*) FROM jobs WHERE status = 'pending'"))[0][0])

    async def count_pending_of(self, owner: str) -> int:
        return int((await self._fetch("SELECT count(*) FROM jobs WHERE status = 'pending' AND owner = $1",
                                      owner))[0][0])

    async def next_due(self, now: int) -> int | None:
        # One index seek per priority, not a walk over every pending job.
        records = await self._fetch(
            "SELECT min((SELECT due_at FROM jobs WHERE status = 'pending' AND priority = p AND due_at > $1 "
            f"AND due_at < {WAITING_DUE} ORDER BY due_at LIMIT 1)) FROM unnest($2::int[]) AS p", now, _PRIORITIES)
        return records[0][0]

    async def latest_time(self) -> int | None:
        records = await self._fetch("SELECT created_at FROM jobs ORDER BY pos DESC LIMIT 1")
        return int(records[0][0]) if records else None

    async def unfinished_page(self, owner: str | None, *, limit: int, cursor: str | None = None) -> Page:
        after = 0 if cursor is None else decode_cursor(cursor)
        p = _Params(after, limit + 1)
        mine = "" if owner is None else f" AND owner = {p(owner)}"
        walks = " UNION ALL ".join(f"(SELECT pos, {_COLS} FROM jobs WHERE status = '{status}' AND pos > $1{mine} "
                                   "ORDER BY pos LIMIT $2)" for status in ("pending", "running"))
        records = await self._fetch(f"SELECT * FROM ({walks}) AS unfinished ORDER BY pos LIMIT $2", *p.values)
        more = len(records) > limit
        return Page([_job(r, 1) for r in records[:limit]], encode_cursor(records[limit - 1][0]) if more else None)

    async def cancel_requests(self, node: str) -> list[Job]:
        return await self._jobs(f"SELECT {_COLS} FROM jobs WHERE status = 'running' AND lease_owner = $1 "
                                "AND cancel_requested", node)

    async def last_slots(self) -> dict[str, SlotRecord]:
        records = await self._fetch("SELECT DISTINCT ON (schedule) schedule, slot, job_id FROM schedule_slots "
                                    "ORDER BY schedule, slot DESC")
        return {r[0]: SlotRecord(r[0], int(r[1]), r[2]) for r in records}

    async def result_files(self, ended_before: int, *, limit: int,
                           after: str | None = None) -> tuple[list[ResultFile], str | None]:
        since, pos = (-1, 0) if after is None else _decode_marker(after)
        records = await self._fetch(
            f"SELECT pos, id, completed_at, {_FILE} FROM jobs WHERE status = 'completed' AND completed_at < $1 "
            "AND (completed_at, pos) > ($2, $3) ORDER BY completed_at, pos LIMIT $4", ended_before, since, pos, limit)
        files = [ResultFile(r[1], r[3], int(r[2])) for r in records if r[3] is not None]
        return files, (f"{records[-1][2]}.{records[-1][0]}" if records else after)

    @asynccontextmanager
    async def _alone(self, task: str) -> AsyncIterator[bool]:
        try:
            conn = await self._connect("alone", self.listen_url)  # a session of its own, as LISTEN needs
        except Exception as exc:
            raise _translate(exc) from exc
        try:
            mine = bool(await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1), hashtext($2))",
                                            self.schema, task))
            try:
                yield mine
            finally:
                if mine and not conn.is_closed():
                    try:
                        await conn.execute("SELECT pg_advisory_unlock(hashtext($1), hashtext($2))", self.schema, task)
                    except Exception as exc:  # closing the session below releases it too
                        log.warning("could not release the %s lock: %s", task, exc)
        finally:
            await _close_quietly(conn)

    def alone(self, task: str) -> AsyncContextManager[bool]:
        """A session-level advisory lock on a connection of its own (to `listen_url`, which
        PgBouncer does not stand between), held for the block: one node at a time runs
        `task`; the others are told False and skip it."""
        return self._alone(task)

    # ---- write hooks -----------------------------------------------------------------------------
    @staticmethod
    async def _undo(conn: asyncpg.Connection, savepoint: str) -> None:
        """Undo what an op wrote since `SAVEPOINT <savepoint>`; the other writes of its batch
        stand. (The changes it recorded are dropped by `_run_batch` when the op raises.)"""
        await conn.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
        await conn.execute(f"RELEASE SAVEPOINT {savepoint}")

    async def _insert(self, job: Job, request_hash: str | None) -> tuple[Job, bool]:
        async def op(conn: asyncpg.Connection) -> tuple[Job, bool]:
            return await self._insert_row(conn, job, request_hash)

        return await self._write(op)

    async def _insert_many(self, jobs: list[tuple[Job, str | None]]) -> list[tuple[Job, bool]]:
        async def op(conn: asyncpg.Connection) -> list[tuple[Job, bool]]:
            # A savepoint: a clash undoes this op's rows alone, not the other writes of its batch.
            await conn.execute("SAVEPOINT create_many")
            try:
                answers: list[tuple[Job, bool]] = []
                for index, (job, request_hash) in enumerate(jobs):
                    try:
                        answers.append(await self._insert_row(conn, batch_refs(job, [a.id for a, _ in answers]),
                                                              request_hash))
                    except IdempotencyMismatch as exc:
                        raise IdempotencyMismatch(exc.job, index) from None
                    except UnknownParent as exc:
                        raise UnknownParent(exc.job_id, exc.position, index) from None
            except (IdempotencyMismatch, UnknownParent):
                await self._undo(conn, "create_many")
                raise
            await conn.execute("RELEASE SAVEPOINT create_many")
            return answers

        return await self._write(op)

    async def _insert_row(self, conn: asyncpg.Connection, job: Job, request_hash: str | None) -> tuple[Job, bool]:
        """In the writer's transaction: insert `job`, or find the owner's job with its key. A
        job that follows others is stored as `arm_change` makes it, with its parents as they
        are now, held (FOR SHARE) until the commit, so that none ends unseen meanwhile."""
        parents: dict[str, Job] = {}
        if job.after:
            parents = await self._parents(conn, job)
            job = dataclasses.replace(job, **arm_change(job, parents, job.created_at, new=True))
        values = [_encode(c, getattr(job, c)) for c in _JOB_COLUMNS]
        for _ in range(3):
            record = await conn.fetchrow(_INSERT_SQL, *values, _encode("data", job.data), request_hash)
            if record is not None:
                created = _job(record)
                self._changes.append(created)
                await self._link(conn, created, parents)
                return created, True
            existing = await conn.fetchrow(f"SELECT {_COLS}, request_hash FROM jobs "
                                           "WHERE owner = $1 AND idempotency_key = $2", job.owner, job.idempotency_key)
            if existing is None:  # the clashing job was deleted in between: insert again
                continue
            found = _job(existing)
            if existing[_N] != request_hash:
                raise IdempotencyMismatch(found)
            return found, False
        raise RuntimeError(f"job {job.id}: its idempotency key clashes with a job that keeps vanishing")

    async def _parents(self, conn: asyncpg.Connection, job: Job) -> dict[str, Job]:
        """The jobs `job` follows that exist and are its owner's, locked (shared) to the commit."""
        if not job.after:
            return {}
        records = await conn.fetch(f"SELECT {_COLS} FROM jobs WHERE owner = $1 AND id = ANY($2::text[]) "
                                   "ORDER BY id FOR SHARE", job.owner, list(job.after))
        return {parent.id: parent for parent in map(_job, records)}

    @staticmethod
    async def _link(conn: asyncpg.Connection, job: Job, parents: dict[str, Job]) -> None:
        if job.status is JobStatus.PENDING and parents:
            await conn.execute("INSERT INTO job_deps (parent, child) SELECT unnest($1::text[]), $2 "
                               "ON CONFLICT DO NOTHING", list(parents), job.id)

    async def _apply(self, conn: asyncpg.Connection, job_id: str, fence: Fence, change: Change, *,
                     follow: bool = True) -> Job | None:
        """Write `change` to the job if its row matches `fence` (checked again on the locked
        row version); the new job (a change), or None. A job that ends takes its children
        along (`_follow`; `follow=False`: the caller does)."""
        p = _Params(job_id)
        sets = _assignments(change, p)
        record = await conn.fetchrow(f"UPDATE jobs SET {sets} WHERE id = $1 AND {_fence_sql(fence, p)} "
                                     f"RETURNING {_COLS}", *p.values)
        if record is None:
            return None
        job = _job(record)
        self._changes.append(job)
        if follow and job.status.terminal:
            await self._follow(conn, job)
        return job

    async def _follow(self, conn: asyncpg.Connection, ended: Job) -> None:
        """In the transaction that ended `ended`: its rows in `job_deps` go, and each child
        waiting for it follows (`follow_change`), level by level. Its own statement after the
        ending, so that it sees a child another node committed while the ending waited for
        the parent's row."""
        queue = [ended]
        while queue:
            job = queue.pop(0)
            if job.after:
                await conn.execute("DELETE FROM job_deps WHERE child = $1", job.id)
            records = await conn.fetch(f"SELECT {_JCOLS} FROM job_deps JOIN jobs ON jobs.id = job_deps.child "
                                       "WHERE job_deps.parent = $1 AND jobs.status = 'pending' "
                                       "ORDER BY jobs.id FOR UPDATE OF jobs", job.id)
            for child in map(_job, records):
                change = follow_change(child, job)
                if change is None:
                    continue
                followed = await self._apply(conn, child.id, Fence(frozenset({JobStatus.PENDING})),
                                             {**change, "seq": BUMP}, follow=False)
                if followed is not None and followed.status.terminal:
                    queue.append(followed)

    async def _claim(self, node: str, now: int, lease_ms: int, types: tuple[str, ...] | None,
                     change: Change, limit: int, per_owner: int) -> list[Job]:
        if (types is not None and not types) or limit < 1:
            return []
        is_change = "seq" in change  # a claim is a change of each job; a reservation only marks them

        async def op(conn: asyncpg.Connection) -> list[Job]:
            jobs = await self._take(conn, now, types, change, limit, per_owner)
            if is_change:
                self._changes.extend(jobs)
            return jobs

        return await self._write(op)

    async def _take(self, conn: asyncpg.Connection, now: int, types: tuple[str, ...] | None, change: Change,
                    limit: int, cap: int) -> list[Job]:
        """Pick the due jobs (`fairness.round_robin` on the shared `served` state), lock them
        (SKIP LOCKED: another node's claim in flight is passed over) and apply `change`."""
        if not cap:
            # Fewer due jobs than room (a service that keeps up): every one starts now and there
            # is nobody to be fair to, in one statement.
            p = _Params(now, limit)
            sql = _FAST_SQL.format(types=_types_sql(types, p), sets=_assignments(change, p), cols=_JCOLS,
                                   plain=_LOCKED_COLS, before=_BEFORE)
            records = await conn.fetch(sql, *p.values)
            if records[0][0] <= limit:
                taken = [(r[2 + _PRIORITY_AT], r[2 + _JOB_COLUMNS.index("due_at")], r[1], _job(r, 2, full=True))
                         for r in records if r[1] is not None]
                self._before_claim(_job(r, 2 + _N + 2) for r in records if r[1] is not None)
                return [job for *_, job in sorted(taken, key=lambda t: t[:3])]
        taken_jobs: list[Job] = []
        passed: list[int] = []
        for _ in range(3):  # again for the jobs another node took under our feet
            want = limit - len(taken_jobs)
            if want <= 0:
                break
            p = _Params(now, want, _PRIORITIES, passed)
            heads_rows = await conn.fetch(_HEADS_SQL.format(types=_types_sql(types, p, "j.")), *p.values)
            running: dict[str, int] = {}
            last: dict[str, int] = {}
            heads: dict[int, dict[str, list[tuple[int, int]]]] = {}
            for owner, priority, due_at, pos, count, served_last in heads_rows:
                running[owner] = int(count)
                if served_last is not None:
                    last[owner] = int(served_last)
                heads.setdefault(priority, {}).setdefault(owner, []).append((due_at, pos))
            served = Served(last)
            chosen: list[int] = []
            for priority in sorted(heads):
                room = want - len(chosen)
                if room <= 0:
                    break
                chosen += round_robin(running, served, heads[priority], room, cap)
            if not chosen:
                break
            p = _Params(chosen, now)
            records = await conn.fetch(_TAKE_SQL.format(sets=_assignments(change, p), cols=_JCOLS, plain=_LOCKED_COLS,
                                                        before=_BEFORE), *p.values)
            got = {r[0]: _job(r, 1, full=True) for r in records}
            self._before_claim(_job(r, 1 + _N + 2) for r in records)
            taken_jobs += [got[pos] for pos in chosen if pos in got]
            missed = [pos for pos in chosen if pos not in got]
            if not missed:
                break
            passed += missed
        return taken_jobs

    def _begin_transition(self, job_id: str, fence: Fence,
                          change: Change | Decide | WithParents) -> Awaitable[Job | None]:
        async def op(conn: asyncpg.Connection) -> Job | None:
            concrete = change
            parents: dict[str, Job] = {}
            if callable(concrete) or isinstance(concrete, WithParents):  # decided on the row as it is now
                p = _Params(job_id)
                record = await conn.fetchrow(f"SELECT {_COLS} FROM jobs WHERE id = $1 AND {_fence_sql(fence, p)} "
                                             "FOR UPDATE", *p.values)
                if record is None:
                    return None
                row = _job(record)
                if isinstance(concrete, WithParents):
                    parents = await self._parents(conn, row)
                    concrete = concrete.decide(row, parents)
                else:
                    concrete = concrete(row)
            job = await self._apply(conn, job_id, fence, {**concrete, "seq": BUMP})
            if job is not None and parents:
                await self._link(conn, job, parents)
            return job

        return self._enqueue(op, (job_id,))

    async def _save_checkpoint(self, job_id: str, fence: Fence, value: Any) -> bool:
        encoded = _encode("checkpoint", value)  # a TypeError here, not inside the batch

        async def op(conn: asyncpg.Connection) -> bool:
            p = _Params(encoded, job_id)
            status = await conn.execute(f"UPDATE jobs SET checkpoint = $1 WHERE id = $2 AND {_fence_sql(fence, p)}",
                                        *p.values)
            return status == "UPDATE 1"

        return await self._write(op, (job_id,))

    async def _renew(self, node: str, until: int) -> int:
        async def op(conn: asyncpg.Connection) -> int:
            status = await conn.execute("UPDATE jobs SET lease_until = $1 WHERE lease_owner = $2 "
                                        "AND status IN ('running', 'pending')", until, node)
            return int(status.split()[-1])

        return await self._write(op)

    async def _unreserve(self, node: str, job_ids: list[str]) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute("UPDATE jobs SET lease_owner = NULL, lease_until = NULL "
                               "WHERE id = ANY($1::text[]) AND status = 'pending' AND lease_owner = $2",
                               sorted(job_ids), node)

        await self._write(op)

    async def _rescue(self, expired_before: int, decide: Decide) -> list[Job]:
        async def op(conn: asyncpg.Connection) -> list[Job]:
            await conn.execute("UPDATE jobs SET lease_owner = NULL, lease_until = NULL "
                               "WHERE status = 'pending' AND lease_owner IS NOT NULL AND lease_until < $1",
                               expired_before)
            # SKIP LOCKED: a row another node is ending or rescuing right now is theirs.
            records = await conn.fetch(f"SELECT {_COLS} FROM jobs WHERE status = 'running' AND lease_until < $1 "
                                       "ORDER BY id FOR UPDATE SKIP LOCKED", expired_before)
            rescued = []
            for job in map(_job, records):
                done = await self._apply(conn, job.id, Fence(frozenset({JobStatus.RUNNING})),
                                         {**decide(job), "seq": BUMP})
                if done is not None:
                    rescued.append(done)
            return rescued

        return await self._write(op)

    async def _fire_slot(self, schedule: str, slot: int, job: Job | None,
                         request_hash: str | None) -> tuple[Job | None, bool] | None:
        async def op(conn: asyncpg.Connection) -> tuple[Job | None, bool] | None:
            latest = await conn.fetchval("SELECT max(slot) FROM schedule_slots WHERE schedule = $1", schedule)
            if latest is not None and latest >= slot:
                return None
            await conn.execute("SAVEPOINT fire_slot")  # the job and its slot, or neither
            try:
                # The slot first: another node that recorded it meanwhile makes this a no-op.
                if await conn.fetchval("INSERT INTO schedule_slots (schedule, slot) VALUES ($1, $2) "
                                       "ON CONFLICT (schedule, slot) DO NOTHING RETURNING 1", schedule, slot) is None:
                    await self._undo(conn, "fire_slot")
                    return None
                answer: tuple[Job | None, bool] = (None, False) if job is None \
                    else await self._insert_row(conn, job, request_hash)
                if answer[0] is not None:
                    await conn.execute("UPDATE schedule_slots SET job_id = $3 WHERE schedule = $1 AND slot = $2",
                                       schedule, slot, answer[0].id)
                await conn.execute("DELETE FROM schedule_slots WHERE schedule = $1 AND slot < $2", schedule, slot)
            except (IdempotencyMismatch, UnknownParent):
                await self._undo(conn, "fire_slot")
                raise
            await conn.execute("RELEASE SAVEPOINT fire_slot")
            return answer

        return await self._write(op)

    async def _purge(self, status: JobStatus, ended_before: int, limit: int) -> list[Purged]:
        async def op(conn: asyncpg.Connection) -> list[Purged]:
            # A job an unfinished job follows is kept: its result is that job's input (`job_deps`).
            records = await conn.fetch(
                "WITH doomed AS MATERIALIZED (SELECT pos FROM jobs AS j WHERE j.status = $1 AND j.completed_at < $2 "
                "AND NOT EXISTS (SELECT 1 FROM job_deps WHERE parent = j.id) ORDER BY j.completed_at, j.pos LIMIT $3 "
                "FOR UPDATE SKIP LOCKED) "
                "DELETE FROM jobs USING doomed WHERE jobs.pos = doomed.pos AND jobs.status = $1 "
                f"RETURNING jobs.completed_at, jobs.pos, jobs.id, jobs.owner, {_FILE}",
                status.value, ended_before, limit)
            return [Purged(r[2], r[3], status, r[4]) for r in sorted(records, key=lambda r: (r[0], r[1]))]

        return await self._write(op)

    # ---- hearing the other nodes -----------------------------------------------------------------
    async def _listen(self) -> asyncpg.Connection:
        conn = await self._connect("listener", self.listen_url)
        try:
            await conn.add_listener(self.schema, self._notified)
        except BaseException:
            await _close_quietly(conn)
            raise
        self.listening.set()
        return conn

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._notes.put_nowait(payload)

    async def _listen_loop(self, conn: asyncpg.Connection | None) -> None:
        """Hold the LISTEN connection; when it drops, connect again with a growing pause."""
        pause = 0.1
        while not self._listen_stop.is_set():
            if conn is None:
                try:
                    conn = await self._listen()
                    log.warning("store listener connected again")
                    pause = 0.1
                except Exception as exc:
                    log.warning("store listener cannot connect (%s); trying again in %.1f s", exc, pause)
                    await _wait(self._listen_stop, pause)
                    pause = min(pause * 2, 5.0)
                    continue
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _, lost=lost: lost.set())
            if not conn.is_closed():
                stop = asyncio.ensure_future(self._listen_stop.wait())
                gone = asyncio.ensure_future(lost.wait())
                await asyncio.wait({stop, gone}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                gone.cancel()
            self.listening.clear()
            if self._listen_stop.is_set():
                await _close_quietly(conn)
                return
            log.warning("store listener lost its connection; other nodes' changes are heard by polling "
                        "until it is back")
            await _close_quietly(conn)
            conn = None

    async def _hear(self) -> None:
        """Emit the other nodes' changes to `remote`, in the order they were notified; a
        referenced change is read from the table on the way, so the order holds."""
        while (payload := await self._notes.get()) is not None:
            try:
                note = orjson.loads(payload)
                if note.get("o") == self.origin:
                    continue
                for item in note["c"]:
                    change = _decode_item(item)
                    if isinstance(change, tuple):
                        found = await self.get(change[0])
                        if found is None:
                            continue
                        change = found
                    self._emit_remote(change)
            except Exception:
                log.exception("a notification from another node could not be read")

    def _emit_remote(self, change: StoreChange) -> None:
        job_id = change.job_id if isinstance(change, ProgressChange) else change.id
        if job_id in self._inflight:  # after this node's own change of the job, committed but not emitted yet
            self._deferred.append(change)
        elif self._mark_heard(change):
            self.remote.emit([change])

    def _release_inflight(self) -> None:
        """The batch in flight is emitted (or rolled back): what other nodes changed of its
        jobs meanwhile follows now, in the order it came."""
        self._inflight = set()
        deferred, self._deferred = self._deferred, []
        for change in deferred:
            self._emit_remote(change)

    def _mark_heard(self, change: StoreChange) -> bool:
        """Record `change` as the latest of its job emitted here (to `changes` or `remote`);
        False when one as new was emitted already."""
        job_id = change.job_id if isinstance(change, ProgressChange) else change.id
        last = self._heard.get(job_id)
        if last is not None and change.seq <= last:
            return False
        self._heard[job_id] = change.seq
        self._heard.move_to_end(job_id)
        if len(self._heard) > _HEARD_MAX:
            self._heard.popitem(last=False)
        return True

    def _before_claim(self, rows: Iterable[Job]) -> None:
        """A claim may take a job another node stored (or retried) whose notification has
        not arrived yet: its pending state, as the claim read it, is then emitted to `remote`
        now, before the claim's own change, so watchers here see every seq in order. The
        state is another node's committed change (a row this batch changed already is
        left alone: its change is in this batch's own)."""
        rows = list(rows)
        if not rows:
            return
        ours = {c.id for c in self._changes if isinstance(c, Job)}
        for row in rows:
            if row.id not in ours:
                self._emit_remote(row)


_INSERT_SQL = (f"INSERT INTO jobs ({_COLS}, data, request_hash) "
               f"VALUES ({', '.join(f'${i + 1}' for i in range(_N + 2))}) "
               "ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
               f"RETURNING {_COLS}")

#: Served owners get the next ticks of `served_tick` in the order they were served, and are
#: written in owner order (two nodes upserting the same owners take them in one order).
_MARK_SQL = (
    "marked AS (INSERT INTO served AS s (owner, last) "
    "SELECT owner, tick FROM (SELECT owner, nextval('served_tick') AS tick FROM "
    "(SELECT owner, max({at}) AS at FROM claimed GROUP BY owner ORDER BY at) AS ordered) AS ticked ORDER BY owner "
    "ON CONFLICT (owner) DO UPDATE SET last = excluded.last)")

#: Claim when every due job fits: the due jobs (one more than room, to know), taken only when
#: they all fit. $1: now, $2: limit.
#: The claim's rows as they were before it (`locked`), returned after the claimed ones.
_BEFORE = ", ".join(f"locked.b_{c}" for c in _JOB_COLUMNS)
_LOCKED_COLS = ", ".join(f"{c} AS b_{c}" for c in _JOB_COLUMNS)  # apart from the names SET reads
_FAST_SQL = (
    "WITH cand AS MATERIALIZED (SELECT pos FROM jobs WHERE status = 'pending' AND due_at <= $1 "
    "AND lease_owner IS NULL{types} ORDER BY priority, due_at, pos LIMIT $2 + 1), "
    "locked AS (SELECT pos, {plain} FROM jobs WHERE pos IN (SELECT pos FROM cand) AND (SELECT count(*) FROM cand) <= $2 "
    "AND status = 'pending' AND due_at <= $1 AND lease_owner IS NULL ORDER BY pos FOR UPDATE SKIP LOCKED), "
    "claimed AS (UPDATE jobs SET {sets} FROM locked WHERE jobs.pos = locked.pos "
    "RETURNING jobs.pos, {cols}, jobs.data, jobs.checkpoint, {before}), "
    + _MARK_SQL.format(at="pos") +
    " SELECT (SELECT count(*) FROM cand) AS n, claimed.* FROM (SELECT 1) AS one LEFT JOIN claimed ON true")

#: Each owner with pending jobs (a skip scan of `jobs_fair`), its running jobs, when it was
#: last served, and its next due jobs of each priority. $1: now, $2: how many per owner and
#: priority, $3: the priorities, $4: positions to pass over.
_HEADS_SQL = (
    "WITH RECURSIVE owners(owner) AS ("
    "(SELECT owner FROM jobs WHERE status = 'pending' ORDER BY owner LIMIT 1) UNION ALL "
    "SELECT (SELECT j.owner FROM jobs AS j WHERE j.status = 'pending' AND j.owner > o.owner "
    "ORDER BY j.owner LIMIT 1) FROM owners AS o WHERE o.owner IS NOT NULL), "
    "stats AS MATERIALIZED (SELECT o.owner, "
    "(SELECT count(*) FROM jobs AS r WHERE r.status = 'running' AND r.owner = o.owner) AS running, "
    "(SELECT s.last FROM served AS s WHERE s.owner = o.owner) AS last FROM owners AS o WHERE o.owner IS NOT NULL) "
    "SELECT st.owner, h.priority, h.due_at, h.pos, st.running, st.last FROM stats AS st "
    "CROSS JOIN unnest($3::int[]) AS pr(priority) "
    "CROSS JOIN LATERAL (SELECT j.priority, j.due_at, j.pos FROM jobs AS j WHERE j.status = 'pending' "
    "AND j.owner = st.owner AND j.priority = pr.priority AND j.due_at <= $1 AND j.lease_owner IS NULL "
    "AND j.pos <> ALL($4::bigint[]){types} ORDER BY j.due_at, j.pos LIMIT $2) AS h "
    "ORDER BY st.owner, h.priority, h.due_at, h.pos")

#: Take the chosen jobs that are still due and free. $1: their positions, $2: now.
_TAKE_SQL = (
    "WITH locked AS (SELECT pos, {plain} FROM jobs WHERE pos = ANY($1::bigint[]) AND status = 'pending' "
    "AND due_at <= $2 AND lease_owner IS NULL ORDER BY pos FOR UPDATE SKIP LOCKED), "
    "claimed AS (UPDATE jobs SET {sets} FROM locked WHERE jobs.pos = locked.pos "
    "RETURNING jobs.pos, {cols}, jobs.data, jobs.checkpoint, {before}), "
    + _MARK_SQL.format(at="array_position($1::bigint[], pos)") +
    " SELECT * FROM claimed")


async def _wait(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except (TimeoutError, asyncio.TimeoutError):
        pass


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A read connection goes back to the pool as it is: reads change nothing of the session,
    and the pool's default reset (`RESET ALL`) would undo what `_session` set."""


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), 2)
    except Exception:
        conn.terminate()


def _redacted(url: str) -> str:
    """`url` without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _decode_marker(marker: str) -> tuple[int, int]:
    completed_at, _, pos = marker.partition(".")
    return int(completed_at), int(pos)
