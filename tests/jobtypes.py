"""Job types that misbehave on purpose, for the tests: they run in real worker processes."""
from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import time
from pathlib import Path

from offload.workers.errors import JobError, PermanentError
from offload.workers.registry import FileOutput, job_type


@job_type("test.echo")
def echo(data, ctx):
    return data


@job_type("test.clock")
def clock(data, ctx):
    """Returns when it ran, on the machine-wide monotonic clock (comparable across processes)."""
    return {"ns": time.monotonic_ns(), **data}


@job_type("test.steps")
def steps(data, ctx):
    """Reports `n` progress steps; waits for `hold` (a file path) to exist before the first
    and for `gate` to exist before finishing."""
    n = int(data.get("n", 5))
    _wait_for(data.get("hold"), ctx)
    for i in range(1, n + 1):
        ctx.progress(i * 100 // n, f"step {i} of {n}")
    _wait_for(data.get("gate"), ctx)
    return {"steps": n, "pid": os.getpid()}


def _wait_for(gate: str | None, ctx) -> None:
    if gate:
        deadline = time.monotonic() + 30
        while not Path(gate).exists() and time.monotonic() < deadline:
            ctx.check_cancelled()
            time.sleep(0.005)


@job_type("test.fail")
def fail(data, ctx):
    if data.get("permanent"):
        raise PermanentError("this input can never work")
    marker = data.get("succeed_after")
    if marker is not None:
        count_file = Path(data["counter"])
        count = int(count_file.read_text()) + 1 if count_file.exists() else 1
        count_file.write_text(str(count))
        if count > marker:
            return {"attempt": ctx.attempt}
    raise JobError("it broke", type="Broken")


@job_type("test.spin")
def spin(data, ctx):
    """A CPU loop that never looks at ctx: only killing its process stops it."""
    if data.get("started"):
        Path(data["started"]).write_text(str(os.getpid()))
    while True:
        pass


@job_type("test.exit")
def hard_exit(data, ctx):
    os._exit(int(data.get("code", 1)))


@job_type("test.segfault")
def segfault(data, ctx):
    ctypes.string_at(0)


@job_type("test.kill_self")
def kill_self(data, ctx):
    os.kill(os.getpid(), signal.SIGKILL)


@job_type("test.alloc")
def alloc(data, ctx):
    blocks = []
    while True:
        blocks.append(bytearray(64 * 1024 * 1024))


@job_type("test.async_steps")
async def async_steps(data, ctx):
    n = int(data.get("n", 3))
    for i in range(1, n + 1):
        await asyncio.sleep(0)
        ctx.progress(i * 100 // n, f"async step {i}")
    return {"steps": n}


@job_type("test.file")
def file_output(data, ctx):
    """A file result with whatever filename and content type the test asks for."""
    return FileOutput(data["filename"], data.get("contentType", "text/plain"), data.get("text", "hello").encode())


@job_type("test.chatty")
def chatty(data, ctx):
    """Reports progress with a long message about a thousand times a second until `gate`
    (a file path) exists: a chatty job that fills a slow client's connection (the service
    passes a report on at most every `scheduler.PROGRESS_INTERVAL_S`)."""
    pad = "x" * int(data.get("size", 4000))
    i = 0
    while not Path(data["gate"]).exists():
        i += 1
        ctx.progress(min(99, i // 100), f"{i} {pad}")
        time.sleep(0.001)
    return {"reports": i}


@job_type("test.async_block")
async def async_block(data, ctx):
    """Awaits forever: only a stop from the service (cancel, timeout, shutdown) ends it."""
    ctx.progress(10, "waiting")
    await asyncio.Event().wait()
