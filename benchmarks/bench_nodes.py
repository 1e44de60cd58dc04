"""Several `offload serve` nodes on one PostgreSQL schema, beside one node on SQLite, in one run.

Starts real server processes (1, 2 and 3 nodes on a fresh PostgreSQL schema each, and the
same service on an SQLite file as the baseline), each node with `--processes` worker
processes (1: the nodes share the machine's cores), and from this one client process,
over HTTP, submitting to the nodes in turn (as a load balancer would):
  - throughput: N no-op jobs and N 500-item invoices (`pdf`), one POST at a time and 16 in
    flight; submitted/s, and completed/s = N / (first POST -> the last `completedAt`);
  - latency: no-op jobs at a fixed rate, POST -> the job's body starting in its worker
    (the job sends the monotonic clock on a Unix socket, as the peers benchmark's jobs do);
  - rescue: `kill -9` of the node (server and workers) running a long job, until the job
    runs again on another node and until it completed (lease `--lease-ms`, poll
    `--rescue-poll-ms`); on SQLite the baseline is a restart of the one node on its file;
  - claim: 1,000,000 pending jobs inserted straight into the schema with SQL (many owners,
    mixed priorities and due times), then `PostgresStore.claim` of 1 and of 8 jobs through
    the Python API, and `EXPLAIN (ANALYZE, BUFFERS)` of the claim statement; beside it the
    same rows in an SQLite file and `SQLiteStore.claim`.

    .venv/bin/python benchmarks/bench_nodes.py                  # the full run (quiet machine)
    .venv/bin/python benchmarks/bench_nodes.py --quick          # a small run, to try it
    .venv/bin/python benchmarks/bench_nodes.py --only claim --claim-rows 1000000

`--postgres URL` (default `OFFLOAD_TEST_POSTGRES` or postgresql://postgres@127.0.0.1/test)
names the database; each configuration gets a schema of its own, dropped at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import secrets
import socket
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.sample import make_invoice  # noqa: E402
from tests.conftest import eventually  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

POSTGRES_URL = os.environ.get("OFFLOAD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1/test")
MODULES = ("benchmarks.nodejobs",)
#: Measure the service, not its rate limits; job counts read fresh (the stats cache off).
SECTIONS = {"limits": {"submit_rate": 1e9, "submit_burst": 1_000_000, "max_pending_per_user": 0},
            "stats": {"cache_ms": 0}}


# ---- the jobs' reports ---------------------------------------------------------------------------
class Reports:
    """The datagrams the jobs of `nodejobs.py` send: when each (key, attempt) started, where."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.seen: dict[tuple[str, int], dict[str, Any]] = {}
        self._waiting: dict[tuple[str, int], list[asyncio.Future[dict[str, Any]]]] = defaultdict(list)
        self._transport: asyncio.BaseTransport | None = None

    async def open(self) -> Reports:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind(self.path)
        reports = self

        class Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                reports._arrived(json.loads(data))

        self._transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Protocol, sock=sock)
        return self

    def _arrived(self, message: dict[str, Any]) -> None:
        key = (message["key"], message["attempt"])
        self.seen[key] = message
        for future in self._waiting.pop(key, ()):
            if not future.done():
                future.set_result(message)

    async def wait(self, key: str, attempt: int = 1, timeout: float = 120) -> dict[str, Any]:
        if (key, attempt) in self.seen:
            return self.seen[(key, attempt)]
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[(key, attempt)].append(future)
        return await asyncio.wait_for(future, timeout)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


# ---- nodes -----------------------------------------------------------------------------------------
class Cluster:
    """`count` nodes on one store: a PostgreSQL schema of its own, or (count 1) an SQLite file."""

    def __init__(self, folder: Path, count: int, *, postgres: str | None, processes: int, lease_ms: int = 30_000,
                 store: dict[str, Any] | None = None) -> None:
        self.schema = f"bench_{secrets.token_hex(5)}" if postgres else None
        self.postgres = postgres
        self.label = f"PostgreSQL, {count} node{'s' if count > 1 else ''}" if postgres else "SQLite, 1 node"
        results = folder / "results"
        self.nodes: list[ServerProcess] = []
        for i in range(count):
            keys = {"url": postgres, "schema": self.schema, **(store or {})} if postgres else None
            node = ServerProcess(folder / f"node{i}", processes=processes, lease_ms=lease_ms, modules=MODULES,
                                 log_level="WARNING", sections=SECTIONS, env={"BENCH_NODE": f"node{i}"},
                                 store=keys, results_dir=str(results))
            self.nodes.append(node)
        self.sessions: list[aiohttp.ClientSession] = []
        self._turn = itertools.count()

    async def start(self) -> None:
        for node in self.nodes:
            node.spawn()  # all at once, as a deployment would start them
        for node in self.nodes:
            await node.wait_ready(60)
        self.sessions = [node.session() for node in self.nodes]

    def next(self) -> aiohttp.ClientSession:
        """The session of the next node in turn (round robin)."""
        return self.sessions[next(self._turn) % len(self.sessions)]

    async def close(self) -> None:
        for session in self.sessions:
            await session.close()
        for node in self.nodes:
            node.close()
        if self.schema:
            await drop_schema(self.postgres or POSTGRES_URL, self.schema)


async def drop_schema(url: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def post(http: aiohttp.ClientSession, type: str, data: Any, **options: Any) -> str:
    async with http.post("/api/jobs", json={"type": type, "data": data, "options": options}) as response:
        body = await response.json()
        if response.status != 201:
            raise RuntimeError(f"POST /api/jobs answered {response.status}: {body}")
        return body["jobId"]


async def counts(http: aiohttp.ClientSession) -> dict[str, int]:
    async with http.get("/api/stats") as response:
        return (await response.json())["jobs"]


async def finished(cluster: Cluster, ids: set[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Wait until `ids` are all completed (any failure stops the run), then their jobs."""
    async def done() -> bool:
        figures = await counts(cluster.sessions[0])
        if figures["failed"] or figures["cancelled"]:
            raise RuntimeError(f"jobs failed during the benchmark: {figures}")
        return figures["pending"] == 0 and figures["running"] == 0

    await eventually(done, timeout, "every job to complete")
    found: dict[str, dict[str, Any]] = {}
    cursor = None
    while len(found) < len(ids):  # newest first: this phase's jobs come first
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        async with cluster.sessions[0].get("/api/jobs", params=params) as response:
            page = await response.json()
        found.update((job["id"], job) for job in page["jobs"] if job["id"] in ids)
        cursor = page["nextCursor"]
        if not cursor:
            break
    missing = ids - found.keys()
    assert not missing, f"{len(missing)} jobs missing from the listing"
    return found


def epoch_ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


# ---- measurements ------------------------------------------------------------------------------------
async def throughput(cluster: Cluster, reports: Reports, what: str, n: int, in_flight: int, items: int) -> tuple[float, float]:
    """(submitted/s, completed/s) of `n` jobs of `what` ("noop" or "invoice")."""
    invoice = make_invoice(items)
    run = secrets.token_hex(3)

    def body(i: int) -> tuple[str, Any]:
        if what == "noop":
            return "bench.stamp", {"key": f"{run}-{i}", "t": time.monotonic_ns(), "sock": reports.path}
        return "pdf", invoice

    start_wall, start = time.time() * 1000, time.perf_counter()
    if in_flight == 1:
        ids = [await post(cluster.next(), *body(i)) for i in range(n)]
    else:
        gate = asyncio.Semaphore(in_flight)

        async def one(i: int) -> str:
            async with gate:
                return await post(cluster.next(), *body(i))

        ids = await asyncio.gather(*(one(i) for i in range(n)))
    submitted = time.perf_counter() - start
    jobs = await finished(cluster, set(ids), timeout=max(120, n))
    last = max(epoch_ms(job["completedAt"]) for job in jobs.values())
    return n / submitted, n / ((last - start_wall) / 1000)


async def latency(cluster: Cluster, reports: Reports, n: int, rate: float) -> list[float]:
    """POST -> the job's body starting, ms, for `n` no-op jobs sent `rate` per second."""
    run = secrets.token_hex(3)
    start = time.monotonic()
    sends = []
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))  # pacing, not a wait for anything
        data = {"key": f"{run}-{i}", "t": time.monotonic_ns(), "sock": reports.path}
        sends.append(asyncio.ensure_future(post(cluster.next(), "bench.stamp", data)))
    await asyncio.gather(*sends)
    found = [await reports.wait(f"{run}-{i}") for i in range(n)]
    return sorted((m["t_started"] - m["t_sent"]) / 1e6 for m in found)


async def warm_up(cluster: Cluster, reports: Reports, processes: int, items: int) -> None:
    """Each worker renders an invoice once (its first loads fonts) and runs no-op jobs."""
    workers = processes * len(cluster.nodes)
    ids = {await post(cluster.next(), "pdf", make_invoice(items)) for _ in range(2 * workers)}
    for i in range(20 * len(cluster.nodes)):
        ids.add(await post(cluster.next(), "bench.stamp", {"key": f"warm-{i}", "sock": reports.path}))
    await finished(cluster, ids, timeout=120)


async def rescue(cluster: Cluster, reports: Reports, folder: Path, runs: int) -> tuple[list[float], list[float]]:
    """kill -9 -> running again, kill -9 -> completed (ms), for `runs` long jobs."""
    to_running, to_completed = [], []
    for run in range(runs):
        key, gate = f"hold-{secrets.token_hex(3)}", folder / f"gate-{run}"
        job_id = await post(cluster.sessions[0], "bench.hold", {"key": key, "gate": str(gate), "sock": reports.path})
        first = await reports.wait(key, 1)
        victim = next(i for i, node in enumerate(cluster.nodes) if node.env["BENCH_NODE"] == first["node"])
        killed = time.monotonic_ns()
        cluster.nodes[victim].close()  # SIGKILL to its process group: the server and its workers
        gate.write_text("go")  # the next attempt finishes at once
        if len(cluster.nodes) == 1:  # SQLite: the one node restarts on its file, as a supervisor would
            cluster.nodes[victim].spawn()
        again = await reports.wait(key, 2, timeout=120)
        assert again["node"] != first["node"] or len(cluster.nodes) == 1, (first, again)
        if len(cluster.nodes) == 1:
            await cluster.nodes[victim].wait_ready(60)
            await cluster.sessions[victim].close()
            cluster.sessions[victim] = cluster.nodes[victim].session()
        survivor = cluster.sessions[(victim + 1) % len(cluster.sessions)]

        async def completed(survivor: aiohttp.ClientSession = survivor, job_id: str = job_id) -> float | None:
            async with survivor.get(f"/api/jobs/{job_id}") as response:
                job = await response.json()
            return time.monotonic_ns() if job["status"] == "completed" else None

        done = await eventually(completed, 60, f"job {job_id} to complete after the kill")
        to_running.append((again["t_started"] - killed) / 1e6)
        to_completed.append((done - killed) / 1e6)
        if len(cluster.nodes) > 1:  # back to full strength for the next run
            await cluster.nodes[victim].start(60)
            await cluster.sessions[victim].close()
            cluster.sessions[victim] = cluster.nodes[victim].session()
    return to_running, to_completed


# ---- the claim on a million pending jobs ------------------------------------------------------------
#: A value in [0, 1) per row, spread evenly (`i` times a prime, modulo a prime).
_SPREAD = "(((i * 7919) % 100003) / 100003.0)"


def pending_rows(rows: int, now: int, owners: int) -> dict[str, str]:
    """SQL expressions (of `i`, 1..rows) for a realistic backlog: owners user0 .. user<owners - 1>,
    skewed (the cube of an even spread: of 1,000 owners, user0 has a tenth of the jobs and
    the last one a few dozen); 5 % high, 20 % low priority; created over the last hour, one in
    ten delayed into the next hour; no-op and invoice types."""
    return {
        "id": "'bench' || lpad(i::text, 10, '0')",
        "owner": f"'user' || floor({_SPREAD} * {_SPREAD} * {_SPREAD} * {owners})::int",
        "type": "CASE WHEN i % 4 = 0 THEN 'pdf' ELSE 'bench.stamp' END",
        "status": "'pending'",
        "priority": "CASE WHEN i % 20 = 0 THEN 0 WHEN i % 5 = 0 THEN 2 ELSE 1 END",
        "data": "'{}'",
        "max_retries": "3", "retry_delay_ms": "1000", "attempts": "0", "progress": "0", "seq": "0",
        "created_at": f"{now - 3_600_000} + i * 3600000::bigint / {rows}",
        "due_at": f"CASE WHEN i % 10 = 0 THEN {now} + (i % 3600) * 1000 "
                  f"ELSE {now - 3_600_000} + i * 3600000::bigint / {rows} END",
        "cancel_requested": "false",
    }


async def fill_postgres(url: str, schema: str, rows: int, now: int, owners: int) -> int:
    """`rows` pending jobs in `schema`'s jobs table, with one INSERT ... SELECT of generate_series;
    columns this does not know take their defaults (a NOT NULL one without is named).
    Returns how many owners have pending jobs."""
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        columns = await conn.fetch("SELECT column_name, data_type, udt_name, is_nullable, column_default "
                                   "FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'jobs'",
                                   schema)
        values = pending_rows(rows, now, owners)
        names, exprs = [], []
        for column in columns:
            name = column["column_name"]
            if name in values:
                names.append(name)
                cast = column["udt_name"] if column["data_type"] != "ARRAY" else column["udt_name"].lstrip("_") + "[]"
                exprs.append(f"({values[name]})::{cast}")
            elif column["is_nullable"] == "NO" and column["column_default"] is None:
                raise RuntimeError(f"bench_nodes does not know how to fill {schema}.jobs.{name} "
                                   f"({column['data_type']}, NOT NULL, no default): add it to pending_rows")
        await conn.execute(f'INSERT INTO "{schema}".jobs ({", ".join(names)}) '
                           f'SELECT {", ".join(exprs)} FROM generate_series(1::bigint, {rows}) AS i')
        await conn.execute(f'ANALYZE "{schema}".jobs')
        return await conn.fetchval(f'SELECT count(DISTINCT owner) FROM "{schema}".jobs')
    finally:
        await conn.close()


def fill_sqlite(path: Path, rows: int, now: int, owners: int) -> None:
    """The same backlog in an SQLite store's file (a recursive CTE for generate_series)."""
    import sqlite3

    values = pending_rows(rows, now, owners)
    values["cancel_requested"] = "0"
    values["owner"] = f"'user' || CAST({_SPREAD} * {_SPREAD} * {_SPREAD} * {owners} AS INTEGER)"
    values["id"] = "'bench' || substr('0000000000' || i, -10, 10)"
    values = {k: v.replace("::bigint", "").replace("false", "0") for k, v in values.items()}
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows}) "
                   f"INSERT INTO jobs ({', '.join(values)}) SELECT {', '.join(values.values())} FROM s")
        db.execute("ANALYZE")


async def time_claims(store: Any, count: int) -> dict[int, tuple[float, float]]:
    """claim(limit) median and p95 in ms, each claim's jobs completed at once (so the running
    set stays small, as in a service)."""
    from offload.service.models import now_ms

    figures = {}
    for limit in (1, 8):
        times = []
        for _ in range(count):
            t = time.perf_counter()
            jobs = await store.claim("bench", now_ms(), 30_000, ["bench.stamp", "pdf"], limit=limit)
            times.append((time.perf_counter() - t) * 1000)
            assert len(jobs) == limit, f"claim(limit={limit}) took {len(jobs)} jobs from a full backlog"
            for job in jobs:
                await store.complete(job, None, now_ms())
        times.sort()
        figures[limit] = (statistics.median(times), times[int(len(times) * 0.95)])
    return figures


async def claim_postgres(url: str, rows: int, count: int, owners: int,
                         ) -> tuple[dict[int, tuple[float, float]], dict[int, tuple[float, float]], float, list[str], int]:
    from offload.service.models import now_ms
    from offload.service.store.postgres import PostgresStore

    schema = f"bench_{secrets.token_hex(5)}"
    store = PostgresStore(url, schema=schema)
    await store.open()  # creates the schema and its tables
    try:
        start = time.perf_counter()
        with_jobs = await fill_postgres(url, schema, rows, now_ms(), owners)
        filled = time.perf_counter() - start
        figures = await time_claims(store, count)
        plan = await explain_claim(store)
        bare = await bare_claims(url, schema, count)
    finally:
        await store.close()
        await drop_schema(url, schema)
    return figures, bare, filled, plan, with_jobs


#: The least a claim can be on these rows: the first due jobs in priority order, taken with
#: SKIP LOCKED in one statement (no fairness between owners, no notification, no batch).
_BARE_CLAIM = ("UPDATE jobs SET status = 'running', attempts = attempts + 1, seq = seq + 1, started_at = $1, "
               "lease_owner = 'bare', lease_until = $1 + 30000 WHERE pos IN (SELECT pos FROM jobs "
               "WHERE status = 'pending' AND due_at <= $1 AND lease_owner IS NULL AND type = ANY($3::text[]) "
               "ORDER BY priority, due_at, pos LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING pos")


async def bare_claims(url: str, schema: str, count: int) -> dict[int, tuple[float, float]]:
    """`_BARE_CLAIM` timed as `time_claims` times the store's, on the same backlog."""
    import asyncpg
    from offload.service.models import now_ms

    conn = await asyncpg.connect(url, timeout=10, server_settings={"search_path": schema})
    try:
        figures = {}
        for limit in (1, 8):
            times = []
            for _ in range(count):
                t = time.perf_counter()
                taken = await conn.fetch(_BARE_CLAIM, now_ms(), limit, ["bench.stamp", "pdf"])
                times.append((time.perf_counter() - t) * 1000)
                await conn.execute("UPDATE jobs SET status = 'completed', completed_at = $1, lease_owner = NULL, "
                                   "lease_until = NULL WHERE pos = ANY($2::bigint[])", now_ms(), [r[0] for r in taken])
            times.sort()
            figures[limit] = (statistics.median(times), times[int(len(times) * 0.95)])
        return figures
    finally:
        await conn.close()


async def claim_sqlite(folder: Path, rows: int, count: int, owners: int) -> tuple[dict[int, tuple[float, float]], float]:
    from offload.service.models import now_ms
    from offload.service.store.sqlite import SQLiteStore

    path = folder / "claim.db"
    store = SQLiteStore(path)
    await store.open()
    await store.close()  # the tables exist: fill them with no store holding the file
    start = time.perf_counter()
    fill_sqlite(path, rows, now_ms(), owners)
    filled = time.perf_counter() - start
    store = SQLiteStore(path)
    await store.open()
    try:
        return await time_claims(store, count), filled
    finally:
        await store.close()


async def explain_claim(store: Any) -> list[str]:
    """The plans, with `EXPLAIN (ANALYZE, BUFFERS)`'s figures, of the statements one
    `claim(limit=8)` runs, as the store sends them: PostgreSQL's auto_explain on the store's
    own connections, reporting each plan back as a notice (nothing is run twice, nothing
    rolled back: these are the real claim's plans)."""
    from offload.service.models import now_ms

    notices: list[str] = []

    def heard(conn: Any, message: Any) -> None:
        notices.append(message.message)

    connections = store_connections(store)
    for conn in connections:
        await conn.execute("LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; "
                           "SET auto_explain.log_analyze = on; SET auto_explain.log_buffers = on; "
                           "SET auto_explain.log_level = 'notice'")
        conn.add_log_listener(heard)
    try:
        jobs = await store.claim("bench", now_ms(), 30_000, ["bench.stamp", "pdf"], limit=8)
    finally:
        for conn in connections:
            conn.remove_log_listener(heard)
            await conn.execute("SET auto_explain.log_min_duration = -1")
    for job in jobs:
        await store.complete(job, None, now_ms())
    lines: list[str] = []
    for notice in notices:
        if not notice.startswith("duration:"):
            continue
        head, _, rest = notice.partition("\n")
        lines += ["", head, *("    " + line for line in rest.splitlines())]
    if not lines:
        lines.append("(no plan reported: store_connections() found none of the store's connections, "
                     "or auto_explain is not installed)")
    return lines


def store_connections(store: Any) -> list[Any]:
    """The asyncpg connections a `PostgresStore` holds (its writer, its pool's), found by type,
    so this does not depend on the backend's attribute names."""
    import asyncpg
    from asyncpg.pool import Pool

    found: list[Any] = []
    for value in vars(store).values():
        if isinstance(value, asyncpg.Connection):
            found.append(value)
        elif isinstance(value, Pool):
            found += [holder._con for holder in value._holders if holder._con is not None]
    return found


# ---- printing ---------------------------------------------------------------------------------------
def heading(title: str) -> None:
    print(f"\n{title}\n{'-' * len(title)}")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
            f"load {load:.1f}, Python {platform.python_version()}")


# ---- main -----------------------------------------------------------------------------------------
async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="1,2,3", help="PostgreSQL node counts, comma-separated")
    parser.add_argument("--processes", type=int, default=1, help="worker processes per node")
    parser.add_argument("--jobs", type=int, default=2000, help="no-op jobs per throughput measurement")
    parser.add_argument("--invoices", type=int, default=100, help="invoices per throughput measurement")
    parser.add_argument("--items", type=int, default=500, help="line items per invoice")
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--latency-jobs", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0, help="no-op jobs per second for the latency")
    parser.add_argument("--poll-ms", type=int, default=1000, help="[store] poll_ms of the throughput nodes")
    parser.add_argument("--rescue-runs", type=int, default=3)
    parser.add_argument("--lease-ms", type=int, default=2000, help="[jobs] lease_ms of the rescue nodes")
    parser.add_argument("--rescue-poll-ms", type=int, default=200, help="[store] poll_ms of the rescue nodes")
    parser.add_argument("--claim-rows", type=int, default=1_000_000)
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--owners", type=int, default=1000, help="owners the claim's backlog is spread over (skewed)")
    parser.add_argument("--only", default="throughput,latency,rescue,claim")
    parser.add_argument("--no-sqlite", action="store_true", help="leave the SQLite baseline out")
    parser.add_argument("--no-postgres", action="store_true", help="the SQLite baseline alone (to try the script)")
    parser.add_argument("--postgres", default=POSTGRES_URL)
    parser.add_argument("--quick", action="store_true",
                        help="a small run to try the script (figures are not worth printing)")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.jobs, args.invoices, args.latency_jobs = "1,2", min(args.jobs, 200), min(args.invoices, 6), 60
        args.rescue_runs, args.claim_rows, args.claims = 1, min(args.claim_rows, 50_000), 30
    only = set(args.only.split(","))
    unknown = only - {"throughput", "latency", "rescue", "claim"}
    if unknown:
        parser.error(f"--only: unknown measurement(s) {', '.join(sorted(unknown))} "
                     "(throughput, latency, rescue, claim)")
    try:
        counts_ = [int(n) for n in args.nodes.split(",")]
    except ValueError:
        parser.error(f"--nodes must be comma-separated whole numbers, not {args.nodes!r}")
    if any(n < 1 for n in counts_):
        parser.error("--nodes: every node count must be at least 1")

    folder = Path(tempfile.mkdtemp(prefix="offload-nodes-"))
    print(f"bench_nodes: {machine()}")
    print(f"{args.processes} worker process(es) per node; one client process submitting to the nodes in turn")
    reports = await Reports(folder / "reports.sock").open()
    if args.no_postgres:
        counts_ = []
    configs: list[tuple[int, str | None]] = ([] if args.no_sqlite else [(1, None)]) + [(n, args.postgres) for n in counts_]
    try:
        if only & {"throughput", "latency"}:
            rows: list[list[str]] = []
            for count, postgres in configs:
                cluster = Cluster(folder / f"c{len(rows)}", count, postgres=postgres, processes=args.processes,
                                  store={"poll_ms": args.poll_ms})
                try:
                    await cluster.start()
                    await warm_up(cluster, reports, args.processes, args.items)
                    row = [cluster.label]
                    if "throughput" in only:
                        for what, n in (("noop", args.jobs), ("invoice", args.invoices)):
                            for flight in (1, args.in_flight):
                                submitted, completed = await throughput(cluster, reports, what, n, flight, args.items)
                                row.append(f"{submitted:,.0f} / {completed:,.1f}" if what == "invoice"
                                           else f"{submitted:,.0f} / {completed:,.0f}")
                    if "latency" in only:
                        lat = await latency(cluster, reports, args.latency_jobs, args.rate)
                        row.append(f"{statistics.median(lat):.2f} / {pct(lat, 0.99):.2f}")
                    rows.append(row)
                    print(f"  ({cluster.label}: done)", flush=True)
                finally:
                    await cluster.close()
            heading(f"throughput and latency ({machine()})")
            header = ["store"]
            if "throughput" in only:
                header += [f"{args.jobs} no-op, 1 at a time", f"no-op, {args.in_flight} in flight",
                           f"{args.invoices} invoices ({args.items} items), 1 at a time",
                           f"invoices, {args.in_flight} in flight"]
            if "latency" in only:
                header.append(f"POST->start p50 / p99 ms ({args.latency_jobs} at {args.rate:g}/s)")
            print("throughput cells: submitted/s / completed/s (first POST -> last completedAt)")
            widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
            print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
            print("-|-".join("-" * w for w in widths))
            for row in rows:
                print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))

        if "rescue" in only:
            results = []
            rescue_configs = ([] if args.no_sqlite else [(1, None)]) + ([(max(2, *counts_), args.postgres)] if counts_ else [])
            for count, postgres in rescue_configs:
                cluster = Cluster(folder / f"r{len(results)}", count, postgres=postgres, processes=args.processes,
                                  lease_ms=args.lease_ms, store={"poll_ms": args.rescue_poll_ms})
                try:
                    await cluster.start()
                    to_running, to_completed = await rescue(cluster, reports, folder / f"r{len(results)}",
                                                            args.rescue_runs)
                    results.append((cluster.label, to_running, to_completed))
                finally:
                    await cluster.close()
            heading(f"kill -9 of the node running a job, lease_ms {args.lease_ms}, poll_ms {args.rescue_poll_ms} "
                    f"({machine()})")
            print(f"{'store':<36} {'kill -> running again':>22} {'kill -> completed':>18}   runs")
            for label, to_running, to_completed in results:
                how = " (restarted at once)" if label.startswith("SQLite") else " (another node)"
                print(f"{label + how:<36} {statistics.median(to_running):>19.0f} ms "
                      f"{statistics.median(to_completed):>15.0f} ms   {len(to_running)} "
                      f"(min {min(to_running):.0f}, max {max(to_running):.0f} ms)")

        if "claim" in only:
            pg, bare, filled, plan, owners = (
                (None, None, 0.0, ["(PostgreSQL left out)"], 0) if args.no_postgres
                else await claim_postgres(args.postgres, args.claim_rows, args.claims, args.owners))
            lite, lite_filled = ((None, 0.0) if args.no_sqlite
                                 else await claim_sqlite(folder, args.claim_rows, args.claims, args.owners))
            heading(f"claim on {args.claim_rows:,} pending jobs, {args.claims} claims each ({machine()})")
            fills = ([f"PostgreSQL {filled:.1f} s"] if pg is not None else []) + \
                ([f"SQLite {lite_filled:.1f} s"] if lite is not None else [])
            print(f"rows inserted with SQL: {', '.join(fills)}" + (f"; {owners} owners have pending jobs" if owners else ""))
            print(f"{'claim':<52} {'limit=1 p50 / p95':>22} {'limit=8 p50 / p95':>22}")
            for label, figures in (("PostgresStore.claim", pg), ("SQLiteStore.claim (baseline)", lite),
                                   ("bare SKIP LOCKED UPDATE, no fairness (PostgreSQL floor)", bare)):
                if figures is not None:
                    print(f"{label:<52} {figures[1][0]:>11.2f} / {figures[1][1]:>6.2f} ms "
                          f"{figures[8][0]:>11.2f} / {figures[8][1]:>6.2f} ms")
            print(f"\nEXPLAIN (ANALYZE, BUFFERS) of each statement PostgresStore.claim(limit=8) ran on the "
                  f"{args.claim_rows:,}-row backlog (auto_explain):")
            print("\n".join(plan))
    finally:
        reports.close()


if __name__ == "__main__":
    asyncio.run(main())
