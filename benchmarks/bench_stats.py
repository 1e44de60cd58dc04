"""What statistics and metrics cost with a large job table.

Fills an SQLite store with `--jobs` jobs (finished over the last hours, and a pending queue
of `--pending`), then prints medians of several runs of:
  - the store reads the statistics make: `finished_since` (once, at start), and per
    `/api/stats` read (each reused for `[stats] cache_ms`): `count_by_status` (the counts
    `/api/stats` always gave) and `count_unfinished` (pending and running by priority);
  - the change listeners per committed change: the statistics' and the metrics' together,
    beside the events hub's (with no watcher: the cheapest listener there is);
  - `Statistics.read` (everything in memory after its store reads are cached), and
    `Metrics.render` (the text exposition).

    python benchmarks/bench_stats.py [--jobs 100000] [--pending 10000] [--runs 5]
"""
from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from offload.service.config import StatsConfig  # noqa: E402
from offload.service.events import EventHub  # noqa: E402
from offload.service.metrics import Metrics  # noqa: E402
from offload.service.models import Clock, Job, JobStatus, Priority, new_job_id, now_ms  # noqa: E402
from offload.service.stats import Statistics  # noqa: E402
from offload.service.store.sqlite import SQLiteStore  # noqa: E402


def fill(path: Path, jobs: int, pending: int) -> None:
    db = sqlite3.connect(path)
    now = now_ms()
    statuses = ["completed"] * 8 + ["failed", "cancelled"]
    rows = []
    for i in range(jobs + pending):
        status = "pending" if i >= jobs else statuses[i % len(statuses)]
        created = now - 6 * 3_600_000 + i * (6 * 3_600_000 // (jobs + pending))
        done = None if status == "pending" else created + 50
        rows.append((new_job_id(), f"user{i % 5}", "pdf", status, i % 3, "{}", 3, 1000, 1, created, created + 10,
                     done, created))
    db.executemany("INSERT INTO jobs (id, owner, type, status, priority, data, max_retries, retry_delay_ms, seq, "
                   "created_at, started_at, completed_at, due_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.commit()
    db.close()


async def timed(runs: int, call) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def per_change_us(listeners, changes) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for change in changes:
        for listener in listeners:
            listener(change)
    return (time.perf_counter() - started) / len(changes) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "offload.db"
        store = SQLiteStore(path)
        await store.open()  # creates the schema
        await store.close()
        fill(path, args.jobs, args.pending)
        store = SQLiteStore(path)
        await store.open()
        try:
            clock = Clock()
            hub = EventHub()
            stats = Statistics(StatsConfig(cache_ms=0), store, clock, hub)
            metrics = Metrics(stats)
            now = clock.now()
            print(f"{args.jobs:,} finished jobs, {args.pending:,} pending; medians of {args.runs} runs")
            print(f"  store: finished_since (once at start)   {await timed(args.runs, lambda: store.finished_since(now - 86_400_000)):8.1f} ms")
            print(f"  store: count_by_status (all)            {await timed(args.runs, lambda: store.count_by_status()):8.1f} ms")
            print(f"  store: count_by_status (one user)       {await timed(args.runs, lambda: store.count_by_status('user1')):8.1f} ms")
            print(f"  store: count_unfinished (all)           {await timed(args.runs, lambda: store.count_unfinished(None, now)):8.1f} ms")
            print(f"  store: count_unfinished (one user)      {await timed(args.runs, lambda: store.count_unfinished('user1', now)):8.1f} ms")

            base = Job(new_job_id(), "pdf", "user1", {}, priority=Priority.MEDIUM, created_at=now)
            changes = []
            for i in range(20_000):  # a job's life: submitted, started, completed
                job = replace(base, id=new_job_id(), owner=f"user{i % 5}", created_at=now + i)
                changes.append(job)
                changes.append(replace(job, status=JobStatus.RUNNING, attempts=1, started_at=now + i + 2))
                changes.append(replace(job, status=JobStatus.COMPLETED, attempts=1, started_at=now + i + 2,
                                       completed_at=now + i + 40))
            hub_us = per_change_us([hub.on_change], changes)
            stats.observers.append(metrics.observed)
            ours_us = per_change_us([stats.on_change], changes)
            print(f"  per change: events hub (baseline)       {hub_us:8.2f} us")
            print(f"  per change: statistics + metrics        {ours_us:8.2f} us")
            cached = Statistics(StatsConfig(cache_ms=60_000), store, clock, hub)
            for change in changes:
                cached.on_change(change)
            await cached.read('user1')  # fills the cache
            print(f"  Statistics.read, store reads cached     {await timed(args.runs, lambda: cached.read('user1')):8.2f} ms")
            print(f"  Metrics.render                          {await timed(args.runs, metrics.render):8.2f} ms")
        finally:
            await store.close()


if __name__ == "__main__":
    asyncio.run(main())
