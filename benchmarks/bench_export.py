"""The `export` job type on a large named query: time and peak memory, beside a baseline.

Builds a SQLite file of `--rows` orders (default 1,000,000), then runs each measurement in
a fresh process, so that each peak RSS is its own:

- `baseline csv`: a bare `csv.writer` loop over the same cursor (`fetchmany`), the least
  any CSV export can cost;
- `export csv`, `export jsonl`, `export xlsx`: the real handler through the worker runtime
  (`runtime.run`, in process: the code a worker runs), the named query's rows streamed
  into the result file.

Each line gives the seconds, the process's RSS just before the export (imports done, the
database not yet read) and its peak RSS. Each runs at `--small` rows too (default 100,000):
a peak that does not grow with ten times the rows is memory that stays constant.

    .venv/bin/python benchmarks/bench_export.py [--rows 1000000] [--small 100000] [--formats csv,jsonl,xlsx]
"""
from __future__ import annotations

import argparse
import csv
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QUERY = ("select id, customer, total, created, note from orders where id <= :n order by id")


def build(path: Path, rows: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("create table orders (id integer primary key, customer text, total real, created text, note text)")
        db.executemany("insert into orders values (?, ?, ?, ?, ?)", (
            (i, f"customer {i % 5000}", round(i * 0.37, 2), f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}",
             None if i % 3 else f"note {i}") for i in range(1, rows + 1)))


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def child(mode: str, fmt: str, rows: int, database: str, folder: str) -> dict[str, float]:
    """One measurement, in this (fresh) process."""
    if mode == "baseline":
        before = rss_kb()
        start = time.perf_counter()
        db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        cursor = db.execute(QUERY, {"n": rows})
        with open(Path(folder) / "baseline.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow([d[0] for d in cursor.description])
            while chunk := cursor.fetchmany(2000):
                writer.writerows(chunk)
        seconds = time.perf_counter() - start
    else:
        from offload.workers import runtime
        import xlsxwriter  # noqa: F401 (imported before the "RSS before" figure, as a warm worker has it)

        runtime.run("job_warm", 1, "export", {"format": fmt, "rows": [{"a": 1}]}, {}, folder)  # imports, registry
        settings = {"database": database, "queries": {"orders": {"sql": QUERY, "count": "select :n"}}}
        before = rss_kb()
        start = time.perf_counter()
        outcome = runtime.run("job_bench", 1, "export", {"format": fmt, "query": "orders", "params": {"n": rows}},
                              settings, folder)
        seconds = time.perf_counter() - start
        assert outcome["outcome"] == "completed", outcome
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "before_kb": before, "peak_kb": peak}


def measure(mode: str, fmt: str, rows: int, database: Path, folder: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", mode, fmt, str(rows), str(database), str(folder)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--formats", default="csv,jsonl,xlsx")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, fmt, rows, database, folder = args.child
        print(json.dumps(child(mode, fmt, int(rows), database, folder)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "orders.db"
        started = time.perf_counter()
        build(database, args.rows)
        print(f"built {args.rows:,} rows in {time.perf_counter() - started:.1f}s "
              f"({database.stat().st_size / 2**20:.0f} MiB of SQLite)")
        print(f"{'run':<16} {'rows':>10} {'seconds':>8} {'rows/s':>10} {'RSS before':>11} {'peak RSS':>9} "
              f"{'growth':>7} {'file':>9}")
        runs = [("baseline", "csv")] + [("export", fmt) for fmt in args.formats.split(",")]
        for mode, fmt in runs:
            for rows in (args.small, args.rows):
                folder = Path(tmp) / f"{mode}-{fmt}-{rows}"
                folder.mkdir()
                figures = measure(mode, fmt, rows, database, folder)
                size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and "warm" not in p.name)
                print(f"{mode + ' ' + fmt:<16} {rows:>10,} {figures['seconds']:>8.2f} "
                      f"{rows / figures['seconds']:>10,.0f} {figures['before_kb'] / 1024:>9.1f}MB "
                      f"{figures['peak_kb'] / 1024:>7.1f}MB {(figures['peak_kb'] - figures['before_kb']) / 1024:>5.1f}MB "
                      f"{size / 2**20:>7.1f}MB")
                for p in folder.iterdir():
                    p.unlink()


if __name__ == "__main__":
    main()
