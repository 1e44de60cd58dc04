"""Submission latency while retention deletes a large backlog of old jobs, beside the same
latency with no cleanup running, in the same run on the same server.

The service runs in this process (on uvloop, as `offload serve` does) with an injected clock,
so the cleanup starts exactly when the benchmark says: its store file is seeded with N jobs
that completed eight days ago (every tenth with a result file), then C clients submit no-op
jobs one POST after the other and each POST's latency is recorded, first with no cleanup
running, then while one retention pass (`Retention.run_once`) deletes all N jobs and their
files and gives the space back. The load generator shares the loop and the 2 cores with the
server in both phases alike.

    python benchmarks/bench_retention.py [--old 100000] [--clients 4] [--baseline 3000]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from offload.service.app import create_app  # noqa: E402
from offload.service.config import load_config  # noqa: E402
from offload.service.keys import RETENTION, STORE  # noqa: E402
from offload.service.models import Clock, new_job_id, now_ms  # noqa: E402
from offload.service.store.sqlite import SQLiteStore  # noqa: E402

DAY = 86_400_000
UNLIMITED = {"submit_rate": 1e9, "submit_burst": 1_000_000, "max_pending_per_user": 0}


async def seed(db: Path, results: Path, old: int) -> None:
    store = SQLiteStore(db)  # the schema as the service makes it (auto_vacuum, indexes)
    await store.open()
    await store.close()
    results.mkdir(parents=True, exist_ok=True)
    ended = now_ms() - 8 * DAY
    rows = []
    for i in range(old):
        job_id = new_job_id()
        result = '{"value": null}'
        if i % 10 == 0:
            name = f"{job_id}-1.txt"
            (results / name).write_bytes(b"x" * 512)
            result = f'{{"file": "{name}", "filename": "r.txt", "contentType": "text/plain", "size": 512}}'
        rows.append((job_id, "local", "bench.noop", "completed", 1, '{"n": %d}' % i, 100, 1, 3, 1000, 3,
                     ended - 1000, ended - 10, ended, ended - 1000, result))
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO jobs (id, owner, type, status, priority, data, progress, attempts, "
                         "max_retries, retry_delay_ms, seq, created_at, started_at, completed_at, due_at, result) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.close()


async def client(http: aiohttp.ClientSession, url: str, latencies: list[float], stop: asyncio.Event,
                 count: int | None) -> None:
    body = {"type": "bench.noop", "data": {}}
    done = 0
    while not stop.is_set() and (count is None or done < count):
        start = time.perf_counter()
        async with http.post(url, json=body) as response:
            await response.read()
            assert response.status == 201, response.status
        latencies.append(time.perf_counter() - start)
        done += 1


def summary(latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (f"{len(ms):>6} submits  p50 {statistics.median(ms):6.2f} ms  p99 {p99:6.2f} ms  "
            f"max {ms[-1]:6.1f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", type=int, default=100_000, help="old completed jobs to delete")
    parser.add_argument("--clients", type=int, default=4, help="concurrent submitting clients")
    parser.add_argument("--baseline", type=int, default=3000, help="submissions measured with no cleanup")
    parser.add_argument("--batch", type=int, default=200, help="[retention] batch")
    parser.add_argument("--no-compact", action="store_true", help="leave the space in the file (to compare)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="offload-bench-retention-"))
    db, results = folder / "offload.db", folder / "results"
    started = time.perf_counter()
    await seed(db, results, args.old)
    print(f"seeded {args.old:,} jobs completed 8 days ago ({args.old // 10:,} with files) "
          f"in {time.perf_counter() - started:.1f} s; file {os.path.getsize(db) / 1e6:.1f} MB")

    config = load_config(None, environ={}, overrides={
        "store": {"url": f"sqlite:///{db}"}, "workers": {"processes": 1, "modules": ["benchmarks.noop"]},
        "jobs": {"results_dir": str(results)}, "limits": UNLIMITED,
        "retention": {"interval": "24h", "batch": args.batch}})  # the pass runs when this script says
    app = create_app(config, clock=Clock())
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/api/jobs"))
    try:
        async with aiohttp.ClientSession() as http:
            warm: list[float] = []
            await asyncio.gather(*(client(http, url, warm, asyncio.Event(), 200) for _ in range(args.clients)))

            quiet: list[float] = []  # half before the cleanup, half after it
            per_client = args.baseline // args.clients // 2
            await asyncio.gather(*(client(http, url, quiet, asyncio.Event(), per_client)
                                   for _ in range(args.clients)))

            during: list[float] = []
            stop = asyncio.Event()
            load = [asyncio.create_task(client(http, url, during, stop, None)) for _ in range(args.clients)]
            if args.no_compact:
                async def no_compact(pages: int) -> int:
                    return 0
                app[STORE].compact = no_compact  # type: ignore[method-assign]
            begin = time.perf_counter()
            cleaned = await app[RETENTION].run_once()
            took = time.perf_counter() - begin
            stop.set()
            await asyncio.gather(*load)
            await asyncio.gather(*(client(http, url, quiet, asyncio.Event(), per_client)
                                   for _ in range(args.clients)))
    finally:
        await server.close()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        left = conn.execute("SELECT COUNT(*) FROM jobs WHERE completed_at < ?", (now_ms() - 7 * DAY,)).fetchone()[0]
    conn.close()
    assert cleaned.jobs["completed"] == args.old and left == 0, (cleaned, left)
    print(f"cleanup: {cleaned.jobs['completed']:,} jobs and {cleaned.files:,} files deleted, space given back, "
          f"in {took:.1f} s ({cleaned.jobs['completed'] / took:,.0f} jobs/s, batches of {args.batch}); "
          f"file now {os.path.getsize(db) / 1e6:.1f} MB")
    print(f"{args.clients} clients submitting one POST after the other:")
    print(f"  no cleanup running:    {summary(quiet)}  (before and after it)")
    print(f"  during the cleanup:    {summary(during)}")


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main())
    else:
        uvloop.run(main())
