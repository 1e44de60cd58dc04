"""Claim latency on a big backlog: `python benchmarks/bench_claim.py [--rows 100000] [--owners 1]
[--waiting 0]`.

Fills a fresh SQLite store with pending jobs (spread over `--owners` users, plus one job of
a latecomer user), then times `claim()` of 1 and of 8 jobs, each followed by finishing the
claimed jobs so the running set stays small, as in the service. With `--waiting N`, it then
adds N high-priority jobs that wait for another job (`options.after`), older than the
backlog, and times the claims again beside the figures without them: a claim must pass
waiting jobs over at no cost.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from offload.service.models import Job, Priority, new_job_id, now_ms  # noqa: E402
from offload.service.store.sqlite import SQLiteStore  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--owners", type=int, default=1)
    parser.add_argument("--claims", type=int, default=300)
    parser.add_argument("--waiting", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "bench.db")
        await store.open()
        start = time.perf_counter()
        base = now_ms() - 10_000
        batch = 5000
        for first in range(0, args.rows, batch):
            await asyncio.gather(*(store.create(Job(id=new_job_id(), type="noop", owner=f"user{i % args.owners}",
                                                    data={}, created_at=base + i))
                                   for i in range(first, min(args.rows, first + batch))))
        await store.create(Job(id=new_job_id(), type="noop", owner="latecomer", data={}, created_at=base + args.rows))
        print(f"{args.rows:,} pending jobs of {args.owners} user(s) in {time.perf_counter() - start:.1f} s")
        await claims(store, args.claims, "")
        if args.waiting:
            parent, _ = await store.create(Job(id=new_job_id(), type="noop", owner="user0", data={},
                                               created_at=base - 2, due_at=now_ms() + 3_600_000))
            for first in range(0, args.waiting, batch):
                await asyncio.gather(*(store.create(Job(id=new_job_id(), type="noop", owner="user0", data={},
                                                        priority=Priority.HIGH, created_at=base - 1,
                                                        after=(parent.id,)))
                                       for _ in range(first, min(args.waiting, first + batch))))
            await claims(store, args.claims, f" with {args.waiting:,} waiting jobs ahead")
        await store.close()


async def claims(store: SQLiteStore, count: int, label: str) -> None:
    for limit in (1, 8):
        times = []
        for _ in range(count):
            t = time.perf_counter()
            jobs = await store.claim("bench", now_ms(), 30_000, ["noop"], limit=limit)
            times.append((time.perf_counter() - t) * 1e6)
            assert all(not job.after for job in jobs), "a claim took a waiting job"
            for job in jobs:
                await store.complete(job, None, now_ms())
        print(f"claim(limit={limit}){label}: median {statistics.median(times):.0f} us, "
              f"p95 {sorted(times)[int(len(times) * .95)]:.0f} us")


if __name__ == "__main__":
    asyncio.run(main())
