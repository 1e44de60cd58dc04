"""Idle memory of a running offload: the proportional set size (PSS) of each process.

Starts `offload serve` as a subprocess (the built-in job types only, `--processes` workers),
waits until every worker runs, and reads `/proc/<pid>/smaps_rollup` of the server, of each
worker, and of the helpers (the fork server; under `--start-method spawn`, multiprocessing's
resource tracker).
PSS divides each shared page between the processes that map it, so the figures add up to
what the service costs the machine; RSS counts shared pages again in every process. Then
one invoice per worker, and the same figures again; then `--jobs` no-op jobs (submitted in
batches of 1,000) and the figures once more, to show that memory stays flat as jobs go by.

    .venv/bin/python benchmarks/bench_memory.py [--processes 2] [--items 500] [--jobs 50000 --rounds 4]
                                                [--start-method forkserver]

Linux only (`/proc`).
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.sample import make_invoice  # noqa: E402
from tests.conftest import eventually  # noqa: E402
from tests.server_process import ServerProcess, descendants, parent_of, post, until  # noqa: E402


def rollup(pid: int) -> dict[str, int]:
    """`Pss`, `Rss`... of `/proc/<pid>/smaps_rollup`, in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0])
    return values


def name_of(pid: int, workers: list[int]) -> str:
    """The fork server is the workers' parent (forked from the server, it shares the
    server's command line; started anew, it runs `offload.workers.forkserver`)."""
    if any(parent_of(worker) == pid for worker in workers):
        return "fork server"
    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    if "forkserver" in command:
        return "fork server"
    if "resource_tracker" in command:
        return "resource tracker"
    return command[:40]


def table(server: int, workers: list[int]) -> None:
    rows = [("server", server), *((f"worker {i + 1}", pid) for i, pid in enumerate(workers))]
    rows += [(name_of(pid, workers), pid) for pid in descendants(server) if pid not in workers]
    total = 0
    print(f"  {'process':<18} {'pid':>8} {'PSS':>9} {'RSS':>9}")
    for label, pid in rows:
        try:
            figures = rollup(pid)
        except OSError:
            continue
        total += figures["Pss"]
        print(f"  {label:<18} {pid:>8} {figures['Pss'] / 1024:>7.1f}MB {figures['Rss'] / 1024:>7.1f}MB")
    print(f"  {'total':<18} {'':>8} {total / 1024:>7.1f}MB")


def warm(pid: int) -> bool:
    """Whether the `pdf` warm-up has loaded reportlab (its `_rl_accel` library) into `pid`:
    a spawned worker is listed before it has finished starting."""
    try:
        return "_rl_accel" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


async def worker_pids(http: aiohttp.ClientSession, count: int) -> list[int]:
    """The workers' pids, once there are `count` of them and each has started (is warm)."""
    async def check() -> list[int] | None:
        async with http.get("/api/health") as response:
            pids = (await response.json())["workers"]["pids"]
        return pids if len(pids) == count and all(pids) and all(map(warm, pids)) else None

    return await eventually(check, 30, f"{count} worker processes")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--items", type=int, default=500, help="items of the invoice each worker renders")
    parser.add_argument("--jobs", type=int, default=0, help="no-op jobs to run after the invoices")
    parser.add_argument("--rounds", type=int, default=1, help="times to run --jobs, with the figures after each")
    parser.add_argument("--start-method", default="forkserver", choices=("forkserver", "spawn", "fork"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, ServerProcess(
            Path(folder), processes=args.processes, modules=("benchmarks.noop",), log_level="WARNING",
            env={"OFFLOAD_WORKERS_START_METHOD": args.start_method},
            sections={"limits": {"submit_rate": 1e9, "submit_burst": 10**9, "max_pending_per_user": 0}}) as server:
        await server.start()
        async with server.session() as http:
            workers = await worker_pids(http, args.processes)
            print(f"idle, after start-up ({args.processes} workers, {args.start_method}):")
            table(server.pid, workers)
            jobs = [await post(http, "pdf", make_invoice(args.items)) for _ in workers]
            for job_id in jobs:
                await until(http, job_id, lambda job: job["status"] == "completed", "completed", timeout=60)
            print(f"\nidle again, after {len(jobs)} invoices of {args.items} items:")
            table(server.pid, await worker_pids(http, args.processes))
            for done in range(1, args.rounds + 1 if args.jobs else 1):
                await run_noops(http, args.jobs)
                print(f"\nidle again, after {done * args.jobs:,} more jobs:")
                table(server.pid, await worker_pids(http, args.processes))


async def run_noops(http: aiohttp.ClientSession, count: int) -> None:
    """Submit `count` no-op jobs in batches, and wait until the store counts them completed."""
    async def completed() -> int:
        async with http.get("/api/stats") as response:
            return int((await response.json())["jobs"]["completed"])

    before, sent = await completed(), 0
    while sent < count:
        size = min(1000, count - sent)
        async with http.post("/api/jobs/batch", json={"jobs": [{"type": "bench.noop", "data": {}}] * size}) as response:
            assert response.status == 201, await response.text()
        sent += size
        if sent % 10_000 == 0:  # keep the backlog short, as an application's steady load would
            await eventually(functools.partial(_at_least, completed, before + sent - 5000), 120, "the backlog to drain")
    await eventually(functools.partial(_at_least, completed, before + count), 300, f"{count:,} jobs completed")


async def _at_least(read, target: int) -> bool:  # type: ignore[no-untyped-def]
    return await read() >= target


if __name__ == "__main__":
    asyncio.run(main())
