"""Job types for the multi-node tests (`tests/nodes.py`): they say which node ran them and
let a test hold them at fixed points, with files instead of sleeps.

Each node's processes carry `TEST_NODE_NAME` (the harness sets it), so a job's markers and
result name the node whose worker ran the attempt.

`node.work` data (all optional):
- `marks`: a folder; the attempt writes `<job id>-<attempt>.started` there as it begins
  (JSON: node, pid, attempt) and `<job id>-<attempt>.finished` once its gate opened;
- `hold`: a file path; the attempt waits for it before its first progress report;
- `n`: progress reports to make (default 3), after `hold`;
- `gate`: a file path; the attempt waits for it after its progress, before it returns;
- `file`: return a file result (`size` bytes, derived from `seed`, after a first line that
  names the node and the attempt) instead of JSON.
While it waits, the attempt looks for a cancel every few milliseconds, so a stop request
ends it at once.
"""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

from offload.workers.registry import FileOutput, job_type

#: How long an attempt waits for a file before it gives up waiting (and goes on): longer than
#: any test, short enough that a forgotten gate does not leave a process behind for long.
WAIT_S = 120


def node_name() -> str:
    return os.environ.get("TEST_NODE_NAME", "?")


def payload(seed: int, size: int) -> bytes:
    """The deterministic part of a `file` result: the test computes it too."""
    return random.Random(seed).randbytes(size)


def _mark(marks: str | None, job_id: str, attempt: int, what: str) -> None:
    if not marks:
        return
    path = Path(marks) / f"{job_id}-{attempt}.{what}"
    part = path.with_name("." + path.name + ".part")
    part.write_text(json.dumps({"node": node_name(), "pid": os.getpid(), "attempt": attempt}))
    part.rename(path)  # whole or not at all: a test that sees the marker can read it


def _wait_for(path: str | None, ctx: Any) -> None:
    if not path:
        return
    deadline = time.monotonic() + WAIT_S
    while not os.path.exists(path) and time.monotonic() < deadline:
        ctx.check_cancelled()
        time.sleep(0.005)


@job_type("node.work")
def work(data: dict[str, Any], ctx: Any) -> Any:
    marks = data.get("marks")
    _mark(marks, ctx.job_id, ctx.attempt, "started")
    _wait_for(data.get("hold"), ctx)
    n = int(data.get("n", 3))
    for i in range(1, n + 1):
        ctx.progress(i * 100 // n, f"step {i} of {n}")
    _wait_for(data.get("gate"), ctx)
    _mark(marks, ctx.job_id, ctx.attempt, "finished")
    if data.get("file"):
        head = f"{node_name()} attempt {ctx.attempt}\n".encode()
        return FileOutput(f"{ctx.job_id}.bin", "application/octet-stream",
                          head + payload(int(data.get("seed", 0)), int(data.get("size", 1000))))
    return {"node": node_name(), "pid": os.getpid(), "attempt": ctx.attempt}
