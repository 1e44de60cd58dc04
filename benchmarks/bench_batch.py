"""Bulk submission against one POST at a time, in the same run on the same server.

Starts `offload serve` as a subprocess (the way a user runs it), then submits N no-op jobs
one POST at a time on one connection and times until the last `completed` event; then the
same N in `POST /api/jobs/batch` requests of B jobs each (sent one after the other, each
one transaction). Both figures print side by side: what a batch saves is the per-request
HTTP and commit cost. Then, in the same run, the ceiling they are measured against:
`bench_throughput.py`'s, the same N jobs stored straight into the store of an in-process
service (no HTTP at all) and run by as many worker processes.

    python benchmarks/bench_batch.py [--jobs 5000] [--batch 500] [--processes 2]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._client import Watcher, with_watcher  # noqa: E402
from tests.server_process import ServerProcess, post  # noqa: E402

#: Measure the service, not its rate limits.
UNLIMITED = {"limits": {"submit_rate": 1e9, "submit_burst": 1_000_000, "max_pending_per_user": 0,
                        "max_batch_jobs": 10_000}}
NOOP = {"type": "bench.noop", "data": {}}
#: Completed/s of each way of submitting, for the comparison with the ceiling.
RESULTS: dict[str, float] = {}


async def one_at_a_time(http: aiohttp.ClientSession, watcher: Watcher, jobs: int) -> tuple[float, float]:
    start = time.perf_counter()
    ids = [await post(http, "bench.noop", {}) for _ in range(jobs)]
    submitted = time.perf_counter()
    await asyncio.gather(*(watcher.wait(job_id, "completed") for job_id in ids))
    return jobs / (submitted - start), jobs / (time.perf_counter() - start)


async def batched(http: aiohttp.ClientSession, watcher: Watcher, jobs: int, size: int) -> tuple[float, float]:
    start = time.perf_counter()
    ids: list[str] = []
    for first in range(0, jobs, size):
        async with http.post("/api/jobs/batch", json={"jobs": [NOOP] * min(size, jobs - first)}) as response:
            body = await response.json()
            assert response.status == 201, body
            ids += [answer["jobId"] for answer in body["jobs"]]
    submitted = time.perf_counter()
    await asyncio.gather(*(watcher.wait(job_id, "completed") for job_id in ids))
    return jobs / (submitted - start), jobs / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="offload-bench-batch-"))
    with ServerProcess(folder, processes=args.processes, lease_ms=30_000, modules=("benchmarks.noop",),
                       log_level="WARNING", sections=UNLIMITED) as server:
        await server.start()

        async def body(http: aiohttp.ClientSession, watcher: Watcher) -> None:
            await batched(http, watcher, 200, 100)  # warm up the workers and the connection
            single = await one_at_a_time(http, watcher, args.jobs)
            bulk = await batched(http, watcher, args.jobs, args.batch)
            print(f"{args.jobs} no-op jobs, {args.processes} worker processes, every change committed:")
            print(f"  one POST at a time:        {single[0]:>7,.0f} submitted/s {single[1]:>7,.0f} completed/s")
            print(f"  batches of {args.batch:<5} (1 POST): {bulk[0]:>7,.0f} submitted/s {bulk[1]:>7,.0f} completed/s "
                  f"({bulk[1] / single[1]:.2f}x)")
            RESULTS.update(single=single[1], bulk=bulk[1])

        await with_watcher(server, body)
    from benchmarks.bench_throughput import one_run

    ceiling = await one_run(args.jobs, args.processes)
    print(f"  stored without HTTP (the ceiling, bench_throughput.py):     {ceiling:>7,.0f} completed/s")
    print(f"  batches reach {RESULTS['bulk'] / ceiling:.2f} of the ceiling, one POST at a time "
          f"{RESULTS['single'] / ceiling:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
