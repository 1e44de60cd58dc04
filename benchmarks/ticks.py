"""A job type that reports progress at a steady rate, each message the worker's monotonic
clock (ns) at the `ctx.progress()` call, so a client can time worker -> WebSocket."""
import time

from offload.workers.registry import job_type


@job_type("bench.ticks")
def ticks(data, ctx):
    """`n` progress events, one every `interval_ms` (on a fixed schedule, not drifting),
    after waiting `delay_ms` for the subscribers to arrive."""
    n, interval = int(data["n"]), float(data["interval_ms"]) / 1000
    due = time.monotonic() + float(data.get("delay_ms", 0)) / 1000
    for i in range(1, n + 1):
        due += interval
        time.sleep(max(0.0, due - time.monotonic()))
        ctx.progress(i * 99 // n, str(time.monotonic_ns()))
    return None
