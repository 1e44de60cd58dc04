"""Job types for the streamed-result tests: results far larger than a chunk, written as a
generator of chunks or into `ctx.file`, and ones that break off while writing."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from offload.workers.registry import FileOutput, job_type

CHUNK = 1 << 20


def chunk_of(i: int) -> bytes:
    """The i-th MiB of a test result: different for every i, so a misplaced range shows."""
    seed = hashlib.sha256(str(i).encode()).digest()
    return (seed * (CHUNK // len(seed)))[:CHUNK]


def expected(size: int) -> bytes:
    """The whole result of `size` bytes (for the test side; the worker never builds it)."""
    return b"".join(chunk_of(i) for i in range(-(-size // CHUNK)))[:size]


def chunks(size: int, ctx=None):
    sent = 0
    for i in range(-(-size // CHUNK)):
        piece = chunk_of(i)[:size - sent]
        sent += len(piece)
        if ctx is not None:
            ctx.progress(sent * 100 // size, f"{sent} bytes")
        yield piece


@job_type("test.stream_chunks")
def stream_chunks(data, ctx):
    """`size` bytes as a generator of 1 MiB chunks."""
    return FileOutput(data.get("filename", "big.bin"), "application/octet-stream", chunks(int(data["size"]), ctx))


@job_type("test.stream_file")
def stream_file(data, ctx):
    """`size` bytes written into `ctx.file`; `via_path` has a "library" write the second
    half itself at `out.path`. `fail_after` bytes: raise; `gate`: wait there (until cancelled
    or the file exists); `exit`: end the process after writing half."""
    size = int(data["size"])
    out = ctx.file(data.get("filename", "big.bin"), "application/octet-stream")
    pieces = list(chunks(size)) if size <= 8 * CHUNK else None
    source = pieces if pieces is not None else chunks(size)
    written = 0
    for piece in source:
        if data.get("via_path") and written >= size // 2:
            out.flush()
            with open(out.path, "r+b") as library:  # a library that writes the file itself
                library.seek(written)
                library.write(piece)
                library.flush()
            out.raw.seek(written + len(piece))
        else:
            out.write(piece)
        written += len(piece)
        if "fail_after" in data and written >= data["fail_after"]:
            raise RuntimeError("broke off mid-file")
        if data.get("exit") and written >= size // 2:
            out.flush()
            os._exit(3)
        if data.get("gate"):
            out.flush()
            while not Path(data["gate"]).exists():
                ctx.progress(50, "waiting at the gate")
                time.sleep(0.01)
    return out


@job_type("test.stream_async")
async def stream_async(data, ctx):
    """An `async def` type's file result, written off the loop."""
    return FileOutput("async.bin", "application/octet-stream", chunks(int(data["size"])))
