"""End to end through a running offload: POST an invoice, wait for its terminal WebSocket event.

Starts `offload serve` as a subprocess on a temporary SQLite file (the way a user runs it),
then for each invoice size measures, as the median of several runs:
  - submit: POST /api/jobs until the 201,
  - e2e: POST until the `status: completed` event arrives on an open WebSocket.
Then, with a no-op job type: the latency from POST to the job's `running` event on an idle
service, and a burst of no-op jobs submitted at once (submitted/s and completed/s, the
figures PERFORMANCE.md gives for the peers).

    python benchmarks/bench_e2e.py [--sizes 10,100,500,5000] [--runs 7] [--burst 5000] [--processes 2]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._client import Watcher, with_watcher  # noqa: E402
from benchmarks.sample import make_invoice  # noqa: E402
from tests.server_process import ServerProcess, post  # noqa: E402

#: Measure the service, not its rate limits.
UNLIMITED = {"limits": {"submit_rate": 1e9, "submit_burst": 1_000_000, "max_pending_per_user": 0}}


async def invoices(http: aiohttp.ClientSession, watcher: Watcher, sizes: list[int], runs: int) -> None:
    print(f"{'items':>6} {'submit p50':>11} {'e2e p50':>9} {'e2e min':>9} {'e2e max':>9}")
    for n in sizes:
        data = make_invoice(n)
        submits, totals = [], []
        for run in range(runs + 1):
            start = time.perf_counter()
            job_id = await post(http, "pdf", data, priority="high")
            accepted = time.perf_counter()
            finished = (await watcher.wait(job_id, "completed"))[0]
            if run:  # the first run warms the worker processes
                submits.append((accepted - start) * 1000)
                totals.append((finished - start) * 1000)
        print(f"{n:>6} {statistics.median(submits):>9.1f}ms {statistics.median(totals):>7.1f}ms "
              f"{min(totals):>7.1f}ms {max(totals):>7.1f}ms")


async def latency(http: aiohttp.ClientSession, watcher: Watcher, runs: int) -> None:
    latencies = []
    for run in range(runs + 20):  # one at a time, on an idle service; the first 20 warm up
        sent = time.perf_counter()
        job_id = await post(http, "bench.noop", {})
        started = (await watcher.wait(job_id, "running"))[0]
        await watcher.wait(job_id, "completed")
        if run >= 20:
            latencies.append((started - sent) * 1000)
    latencies.sort()
    print(f"\nsubmit -> running event, idle service ({runs} jobs one at a time): "
          f"p50 {statistics.median(latencies):.2f} ms, p99 {latencies[int(len(latencies) * 0.99) - 1]:.2f} ms")


async def burst(http: aiohttp.ClientSession, watcher: Watcher, jobs: int, processes: int) -> None:
    gate = asyncio.Semaphore(64)

    async def submit_one() -> str:
        async with gate:
            return await post(http, "bench.noop", {})

    start = time.perf_counter()
    ids = await asyncio.gather(*(submit_one() for _ in range(jobs)))
    submitted = time.perf_counter()
    await asyncio.gather(*(watcher.wait(job_id, "completed") for job_id in ids))
    finished = time.perf_counter()
    print(f"{jobs} no-op jobs submitted at once (64 requests in flight), {processes} worker processes: "
          f"{jobs / (submitted - start):,.0f} submitted/s, {jobs / (finished - start):,.0f} completed/s")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,100,500,5000")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument("--latency-runs", type=int, default=500)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    folder = Path(tempfile.mkdtemp(prefix="offload-bench-"))
    with ServerProcess(folder, processes=args.processes, lease_ms=30_000, modules=("benchmarks.noop",),
                       log_level="WARNING", sections=UNLIMITED) as server:
        await server.start()

        async def body(http: aiohttp.ClientSession, watcher: Watcher) -> None:
            await invoices(http, watcher, sizes, args.runs)
            await latency(http, watcher, args.latency_runs)
            await burst(http, watcher, args.burst, args.processes)

        await with_watcher(server, body)


if __name__ == "__main__":
    asyncio.run(main())
