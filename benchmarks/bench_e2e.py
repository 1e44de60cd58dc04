"""End to end through a running offload: POST an invoice, wait for its terminal WebSocket event.

Starts `offload serve` as a subprocess on a temporary SQLite file (the way a user runs it),
then for each invoice size measures, as the median of several runs:
  - submit: POST /api/jobs until the 201,
  - e2e: POST until the `status: completed` event arrives on an open WebSocket.
Then, with a no-op job type: the latency from POST to the job's `running` event on an idle
service, and a burst of no-op jobs submitted at once (submitted/s and completed/s, the
figures PERFORMANCE.md gives for the peers).

    python benchmarks/bench_e2e.py [--sizes 10,100,500,5000] [--runs 7] [--burst 5000]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.sample import make_invoice  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(session: aiohttp.ClientSession, base: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{base}/api/health") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("the service did not start")


class Watcher:
    """One WebSocket subscribed to everything; resolves a future per job on its terminal event."""

    def __init__(self) -> None:
        self.waiting: dict[tuple[str, str], asyncio.Future[float]] = {}
        self.early: dict[tuple[str, str], float] = {}

    async def run(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            event = message.json()
            if event.get("event") != "status":
                continue
            stage = "started" if event["status"] == "running" else \
                "done" if event["status"] in ("completed", "failed", "cancelled") else None
            if stage is None:
                continue
            now = time.perf_counter()
            future = self.waiting.pop((event["jobId"], stage), None)
            if future is not None:
                future.set_result(now)
            else:
                self.early[(event["jobId"], stage)] = now

    def _when(self, job_id: str, stage: str) -> asyncio.Future[float]:
        future = asyncio.get_running_loop().create_future()
        if (job_id, stage) in self.early:
            future.set_result(self.early.pop((job_id, stage)))
        else:
            self.waiting[(job_id, stage)] = future
        return future

    def done(self, job_id: str) -> asyncio.Future[float]:
        return self._when(job_id, "done")

    def started(self, job_id: str) -> asyncio.Future[float]:
        return self._when(job_id, "started")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,100,500,5000")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument("--latency-runs", type=int, default=500)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    folder = Path(tempfile.mkdtemp(prefix="offload-bench-"))
    (folder / "config.toml").write_text(
        '[store]\nurl = "sqlite:///bench.db"\n[workers]\nmodules = ["benchmarks.noop"]\n'
        "[limits]\nsubmit_rate = 1000000.0\nsubmit_burst = 1000000\n")  # measure the service, not its rate limit
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    server = subprocess.Popen([sys.executable, "-m", "service", "serve", "--config", str(folder / "config.toml"),
                               "--port", str(port), "--log-level", "WARNING"], env=env)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base)
            watcher = Watcher()
            ws = await session.ws_connect(f"{base}/api/ws")
            await ws.send_json({"op": "subscribe", "all": True})
            reader = asyncio.create_task(watcher.run(ws))

            print(f"{'items':>6} {'submit p50':>11} {'e2e p50':>9} {'e2e min':>9} {'e2e max':>9}")
            for n in sizes:
                body = {"type": "pdf", "data": make_invoice(n), "options": {"priority": "high"}}
                submits, totals = [], []
                for run in range(args.runs + 1):
                    start = time.perf_counter()
                    async with session.post(f"{base}/api/jobs", json=body) as r:
                        job_id = (await r.json())["jobId"]
                    accepted = time.perf_counter()
                    finished = await watcher.done(job_id)
                    if run:  # the first run warms the worker processes
                        submits.append((accepted - start) * 1000)
                        totals.append((finished - start) * 1000)
                print(f"{n:>6} {statistics.median(submits):>9.1f}ms {statistics.median(totals):>7.1f}ms "
                      f"{min(totals):>7.1f}ms {max(totals):>7.1f}ms")

            noop = {"type": "bench.noop", "data": {}}
            latencies = []
            for run in range(args.latency_runs + 20):  # one at a time, on an idle service
                sent = time.perf_counter()
                job_id = await _submit(session, base, noop)
                started = await watcher.started(job_id)
                await watcher.done(job_id)
                if run >= 20:
                    latencies.append((started - sent) * 1000)
            latencies.sort()
            print(f"\nsubmit -> running event, idle service ({args.latency_runs} jobs one at a time): "
                  f"p50 {statistics.median(latencies):.2f} ms, p99 {latencies[int(len(latencies) * 0.99) - 1]:.2f} ms")

            gate = asyncio.Semaphore(64)

            async def submit_one() -> str:
                async with gate:
                    return await _submit(session, base, noop)

            start = time.perf_counter()
            ids = await asyncio.gather(*(submit_one() for _ in range(args.burst)))
            submitted = time.perf_counter()
            await asyncio.gather(*(watcher.done(i) for i in ids))
            finished = time.perf_counter()
            print(f"{args.burst} no-op jobs submitted at once (64 requests in flight), 2 worker processes: "
                  f"{args.burst / (submitted - start):,.0f} submitted/s, "
                  f"{args.burst / (finished - start):,.0f} completed/s")
            reader.cancel()
            await ws.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


async def _submit(session: aiohttp.ClientSession, base: str, body: dict) -> str:
    async with session.post(f"{base}/api/jobs", json=body) as r:
        return (await r.json())["jobId"]


if __name__ == "__main__":
    asyncio.run(main())
