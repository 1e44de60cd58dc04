"""The cost of the job lifecycle log on the thread that commits: `python benchmarks/bench_logging.py [--jobs 20000]`.

Feeds `JobLog.on_change` the committed changes of `--jobs` jobs (submitted, started,
completed: three lines a job) and prints, per change, the time spent by the caller (the
event loop, in the service) in the same run. Times are the CPU time of the thread that
does the work (`time.thread_time`: on a shared machine, time spent waiting for a core is not
counted), the best of 5 rounds for the first ones:

- baseline: no lifecycle log at all (the changes are only iterated over);
- off: the listener subscribed, INFO off for `offload.jobs`;
- queued, not yet written: the caller's share of `offload serve`'s setup (`service/logs.py`):
  the record is made and handed to the queue (beside it, the same through a plain
  `logger.info(..., extra=...)`, which `JobLog` avoids);
- format + write: the writer thread's share, per line (CPU that shares the GIL with the loop,
  but never makes the loop wait for a write);
- live text / json: both at once, as in the service (the caller's CPU time, and the wall
  time until the thread wrote every line);
- direct json: formatting and writing (and a flush a line) on the caller's thread, for
  comparison: what the queue saves the loop.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import queue
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from offload.service.joblog import JobLog  # noqa: E402
from offload.service.logs import JsonFormatter, _Handoff, formatter, setup_logging  # noqa: E402
from offload.service.models import Job, JobStatus, new_job_id, now_ms  # noqa: E402


def changes(jobs: int) -> list[Job]:
    out = []
    now = now_ms()
    for i in range(jobs):
        job = Job(id=new_job_id(), type="pdf", owner=f"user{i % 7}", data={}, seq=1, created_at=now)
        running = dataclasses.replace(job, status=JobStatus.RUNNING, attempts=1, seq=2, started_at=now + 3)
        done = dataclasses.replace(running, status=JobStatus.COMPLETED, seq=3, progress=100, completed_at=now + 40)
        out += [job, running, done]
    return out


ROUNDS = 5


class _Discard(queue.SimpleQueue):  # type: ignore[type-arg]
    def put_nowait(self, item: object) -> None:
        pass


def feed(all_changes: list[Job], listener, rounds: int = 1) -> float:  # type: ignore[no-untyped-def]
    """CPU seconds per change of this thread calling `listener` on every change: the best of
    `rounds` (the machine may be shared: the best round is the one least disturbed)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        for change in all_changes:
            listener(change)
        best = min(best, (time.thread_time() - start) / len(all_changes))
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    args = parser.parse_args()
    root = logging.getLogger()
    results: dict[str, float] = {}
    drained: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["baseline (no lifecycle log)"] = feed(changes(args.jobs), lambda change: None, ROUNDS)

        logs = setup_logging("WARNING", "text", open(Path(tmp) / "off.log", "w"))
        results["off (INFO disabled)"] = feed(changes(args.jobs), JobLog().on_change, ROUNDS)
        logs.close()

        # The loop's share alone: records made and handed to the queue (which drops them here).
        logs = setup_logging("INFO", "json", open(Path(tmp) / "unread.log", "w"))
        handoff = next(h for h in root.handlers if isinstance(h, _Handoff))
        root.removeHandler(handoff)
        unread = _Handoff(_Discard())  # kept records would make the garbage collector the cost
        log = JobLog()
        root.addHandler(unread)
        results["queued, not yet written"] = feed(changes(args.jobs), lambda c: log.on_change(c), ROUNDS)
        plain = logging.getLogger("offload.jobs")
        fields = {"event": "completed", "jobId": "job_x", "type": "pdf", "user": "u", "attempt": 1,
                  "durationMs": 37}
        results["  for comparison: logger.info(extra=)"] = feed(
            changes(args.jobs), lambda c: plain.info("job %s %s: type=%s", c.id, "completed", c.type, extra=fields),
            ROUNDS)
        root.removeHandler(unread)
        root.addHandler(handoff)
        logs.close()

        for log_format in ("text", "json"):
            # The writer thread's share alone: format and write records made beforehand.
            records: list[logging.LogRecord] = []
            collect = logging.Handler()
            collect.emit = records.append  # type: ignore[method-assign]
            root.handlers[:] = [collect]
            feed(changes(args.jobs), JobLog().on_change)
            with open(Path(tmp) / f"write-{log_format}.log", "w") as out:
                writer = logging.StreamHandler(out)
                writer.setFormatter(formatter(log_format))
                writer.flush = lambda: None  # type: ignore[method-assign]  # one flush a batch, as the thread does
                best = float("inf")
                for _ in range(ROUNDS):
                    start = time.thread_time()
                    for record in records:
                        writer.handle(record)
                    out.flush()
                    best = min(best, (time.thread_time() - start) / len(records))
                results[f"format + write {log_format} (thread)"] = best
            root.handlers[:] = []

            # Both at once, as in the service: the thread competes with the caller for the GIL.
            with open(Path(tmp) / f"{log_format}.log", "w") as out:
                logs = setup_logging("INFO", log_format, out)
                batch = changes(args.jobs)
                start = time.perf_counter()
                results[f"live {log_format}"] = feed(batch, JobLog().on_change)
                logs.close()  # returns once the thread wrote every queued line
                drained[f"live {log_format}"] = (time.perf_counter() - start) / len(batch)
            lines = sum(1 for _ in open(Path(tmp) / f"{log_format}.log"))
            assert lines == len(batch), (lines, len(batch))
            root.handlers[:] = []

        with open(Path(tmp) / "direct.log", "w") as out:
            direct = logging.StreamHandler(out)
            direct.setFormatter(JsonFormatter())
            root.handlers[:] = [direct]
            root.setLevel("INFO")
            results["direct json (no queue, flush a line)"] = feed(changes(args.jobs), JobLog().on_change)
            root.handlers[:] = []
    print(f"{args.jobs:,} jobs, {3 * args.jobs:,} lifecycle changes; time per change:")
    for name, seconds in results.items():
        extra = f"  (until all written: {drained[name] * 1e6:.2f} us)" if name in drained else ""
        print(f"  {name:38s} {seconds * 1e6:6.2f} us{extra}")


if __name__ == "__main__":
    main()
