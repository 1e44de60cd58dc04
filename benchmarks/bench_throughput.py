"""The scheduler's own throughput: no-op jobs from the store through worker processes and back.

Stores N no-op jobs directly (no HTTP), all at once, and times until all are completed,
every state change committed. This is the ceiling the service can reach
when submissions do not compete for the same event loop; `bench_e2e.py` measures the whole
path over HTTP.

    python benchmarks/bench_throughput.py [--jobs 5000] [--processes 2] [--runs 3]
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

from aiohttp.test_utils import TestServer  # noqa: E402

from offload.service.app import create_app  # noqa: E402
from offload.service.config import load_config  # noqa: E402
from offload.service.keys import REGISTRY, STORE  # noqa: E402
from offload.service.validation import parse_submission  # noqa: E402


async def one_run(jobs: int, processes: int) -> float:
    folder = tempfile.mkdtemp(prefix="offload-throughput-")
    config = load_config(None, environ={}, overrides={
        "store": {"url": f"sqlite:///{folder}/bench.db"},
        "workers": {"processes": processes, "modules": ["benchmarks.noop"]},
        "jobs": {"results_dir": folder},
    })
    app = create_app(config)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        store = app[STORE]
        submissions = [parse_submission({"type": "bench.noop", "data": {}}, "local", config, registry=app[REGISTRY])
                       for _ in range(jobs)]
        start = time.perf_counter()  # the scheduler hears of each job from the store as it commits
        await asyncio.gather(*(store.create(s.job, s.request_hash) for s in submissions))
        while (await store.count_by_status())["completed"] < jobs:
            await asyncio.sleep(0.01)
        return jobs / (time.perf_counter() - start)
    finally:
        await server.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rates = [await one_run(args.jobs, args.processes) for _ in range(args.runs)]
    print(f"{args.jobs} no-op jobs, {args.processes} worker processes, every change committed: "
          f"{statistics.median(rates):,.0f} completed/s (median of {args.runs}; "
          f"min {min(rates):,.0f}, max {max(rates):,.0f})")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
