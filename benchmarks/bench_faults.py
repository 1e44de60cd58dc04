"""How fast offload gets over faults, through a running service (`offload serve` subprocess).

Prints the median of several runs of:
  - cancel: DELETE of a running CPU-bound job (`test.spin`, which never checks for
    cancellation, so its process must be killed) until its `cancelled` WebSocket event,
    and until the freed slot's next job is `running` (one worker process, one job waiting);
  - timeout: from a job's deadline (its `startedAt` + `timeout`) until the slot's next
    job is `running`;
  - recovery: `kill -9` of the server with 1,000 pending no-op jobs, then a new server
    process on the same database: from its start until /api/health answers, until the
    first job runs, and until all 1,000 are completed.

    python benchmarks/bench_faults.py [--runs 7] [--recovery-runs 3] [--jobs 1000] [--processes 2]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._client import Watcher, with_watcher  # noqa: E402
from tests.conftest import eventually  # noqa: E402
from tests.server_process import ServerProcess, all_jobs, until  # noqa: E402
from tests.server_process import post as submit  # noqa: E402

MODULES = ("tests.jobtypes", "benchmarks.noop")


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def bench_cancel(folder: Path, runs: int) -> tuple[list[float], list[float]]:
    to_cancelled, to_next = [], []
    with ServerProcess(folder, processes=1, modules=MODULES, log_level="WARNING") as server:
        await server.start()

        async def body(http: aiohttp.ClientSession, watcher: Watcher) -> None:
            for run in range(runs + 1):
                spin = await submit(http, "test.spin", {})
                await watcher.wait(spin, "running")
                following = await submit(http, "bench.noop", {})
                start = time.perf_counter()
                async with http.delete(f"/api/jobs/{spin}") as response:
                    assert response.status == 200, await response.text()
                cancelled = (await watcher.wait(spin, "cancelled"))[0]
                running = (await watcher.wait(following, "running"))[0]
                await watcher.wait(following, "completed")
                if run:  # the first run warms up
                    to_cancelled.append((cancelled - start) * 1000)
                    to_next.append((running - start) * 1000)

        await with_watcher(server, body)
    return to_cancelled, to_next


async def bench_timeout(folder: Path, runs: int, timeout_ms: int = 300) -> list[float]:
    freed = []
    with ServerProcess(folder, processes=1, modules=MODULES, log_level="WARNING") as server:
        await server.start()

        async def body(http: aiohttp.ClientSession, watcher: Watcher) -> None:
            for run in range(runs + 1):
                spin = await submit(http, "test.spin", {}, timeout=timeout_ms, maxRetries=0)
                job = (await watcher.wait(spin, "running"))[2]
                following = await submit(http, "bench.noop", {})
                deadline = epoch(job["startedAt"]) + timeout_ms / 1000
                failed = (await watcher.wait(spin, "failed"))[2]
                assert failed["error"]["type"] == "Timeout", failed
                running = (await watcher.wait(following, "running"))[1]
                await watcher.wait(following, "completed")
                if run:
                    freed.append((running - deadline) * 1000)

        await with_watcher(server, body)
    return freed


async def bench_recovery(folder: Path, jobs: int, processes: int) -> tuple[float, float, float]:
    unlimited = {"limits": {"submit_rate": 1e9, "submit_burst": 1_000_000, "max_pending_per_user": 0}}
    with ServerProcess(folder, processes=processes, modules=MODULES, log_level="WARNING", sections=unlimited) as server:
        await server.start()
        async with server.session() as http:
            # Blockers hold every slot, so the no-op jobs are all pending when the server dies;
            # with no retries left they fail at the restart instead of holding the slots again.
            blockers = [await submit(http, "test.spin", {}, maxRetries=0) for _ in range(processes)]
            for job_id in blockers:
                await until(http, job_id, lambda job: job["status"] == "running", "running")
            limit = asyncio.Semaphore(32)

            async def one() -> str:
                async with limit:
                    return await submit(http, "bench.noop", {})

            ids = set(await asyncio.gather(*(one() for _ in range(jobs))))
        server.kill()

        started = time.time()
        server.spawn()
        await server.wait_ready()
        healthy = time.time()
        async with server.session() as http:
            async def all_completed() -> bool:
                async with http.get("/api/stats") as response:
                    return (await response.json())["jobs"]["completed"] >= jobs

            await eventually(all_completed, 120, "every job to complete")
            first, last = float("inf"), 0.0
            for job in (await all_jobs(http)).values():
                if job["id"] in ids:
                    assert job["status"] == "completed" and job["attempts"] == 1, job
                    first = min(first, epoch(job["startedAt"]))
                    last = max(last, epoch(job["completedAt"]))
    return (healthy - started) * 1000, (first - started) * 1000, (last - started) * 1000


def row(name: str, values: list[float]) -> str:
    return (f"{name:<52} {statistics.median(values):>8.1f} ms   (min {min(values):.1f}, "
            f"max {max(values):.1f}, n={len(values)})")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--recovery-runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="offload-faults-"))

    to_cancelled, to_next = await bench_cancel(folder / "cancel", args.runs)
    print(row("cancel: DELETE -> `cancelled` event", to_cancelled))
    print(row("cancel: DELETE -> next job `running`", to_next))
    print(row("timeout: deadline -> next job `running`", await bench_timeout(folder / "timeout", args.runs)))

    recoveries = [await bench_recovery(folder / f"recovery-{i}", args.jobs, args.processes)
                  for i in range(args.recovery_runs)]
    health, first, done = zip(*recoveries, strict=True)
    print(row(f"kill -9, {args.jobs} pending: start -> /api/health 200", list(health)))
    print(row(f"kill -9, {args.jobs} pending: start -> first job running", list(first)))
    print(row(f"kill -9, {args.jobs} pending: start -> all completed", list(done)))
    print(f"({args.processes} worker processes for the recovery runs; one for cancel and timeout)")


if __name__ == "__main__":
    asyncio.run(main())
