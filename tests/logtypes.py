"""Job types for tests/test_logs.py: handlers that raise an unexpected exception (a bug)."""
from __future__ import annotations

from pathlib import Path

from offload.workers.registry import job_type


def _parse_total(data):
    return int(data["total"])  # a KeyError or a ValueError: the bug the traceback shows


def _count(data) -> int:
    """How many times this job's attempts ran so far (a file counts across processes)."""
    counter = Path(data["counter"])
    count = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(count))
    return count


@job_type("log.crash")
def crash(data, ctx):
    """Raises from a helper until it ran `succeed_after` times (never, without it)."""
    if "counter" in data and _count(data) > data.get("succeed_after", 1_000):
        return {"attempt": ctx.attempt}
    return _parse_total(data)


@job_type("log.async_crash")
async def async_crash(data, ctx):
    return _parse_total(data)
