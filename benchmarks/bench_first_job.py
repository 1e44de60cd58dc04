"""A worker's first invoice against its warm ones, through a running offload (1 worker, so
every job meets the same process): `startedAt -> completedAt` of the first invoice with a CJK
customer name (its fallback font is loaded then, not at warm-up), then of the same invoice
again, then of a Latin-only one, in the same run.

    .venv/bin/python benchmarks/bench_first_job.py [--items 10] [--runs 5]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.sample import make_invoice  # noqa: E402
from tests.server_process import ServerProcess, post, until  # noqa: E402


def run_ms(job: dict) -> float:
    started, completed = (datetime.fromisoformat(job[key].replace("Z", "+00:00")) for key in ("startedAt", "completedAt"))
    return (completed - started).total_seconds() * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5, help="warm jobs of each kind (the median is printed)")
    args = parser.parse_args()
    cjk, latin = make_invoice(args.items), make_invoice(args.items)
    cjk["order"]["customer"]["name"] = "株式会社東京商事"

    with tempfile.TemporaryDirectory() as folder, ServerProcess(Path(folder), processes=1, log_level="WARNING") as server:
        await server.start()
        async with server.session() as http:
            async def timed(data: dict) -> float:
                job = await until(http, await post(http, "pdf", data), lambda j: j["status"] == "completed",
                                  "completed", timeout=60)
                return run_ms(job)

            first = await timed(cjk)
            warm = statistics.median([await timed(cjk) for _ in range(args.runs)])
            plain = statistics.median([await timed(latin) for _ in range(args.runs)])
    print(f"invoice of {args.items} items, startedAt -> completedAt (1 worker):")
    print(f"  first job, CJK customer (loads its fallback font)  {first:8.1f} ms")
    print(f"  warm, same CJK invoice (median of {args.runs})          {warm:8.1f} ms")
    print(f"  warm, Latin only (median of {args.runs})                {plain:8.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
