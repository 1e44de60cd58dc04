"""Job types of the several-nodes benchmark (`bench_nodes.py`). Each reports itself with one
datagram on the Unix socket its data names, as the shared peers benchmark's jobs do: the
monotonic clock (ns, comparable across processes) when its body started, with the node it
runs on (`BENCH_NODE`, set per `offload serve` process) and its attempt."""
import json
import os
import socket
import time
from pathlib import Path

from offload.workers.registry import job_type

_sock = None


def report(data, ctx, **extra):
    global _sock
    started = time.monotonic_ns()
    if _sock is None:
        _sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    message = {"key": data.get("key"), "t_sent": data.get("t"), "t_started": started,
               "node": os.environ.get("BENCH_NODE", "?"), "attempt": ctx.attempt, **extra}
    _sock.sendto(json.dumps(message).encode(), data["sock"])


@job_type("bench.stamp")
def stamp(data, ctx):
    """A no-op that says when it started."""
    report(data, ctx)


@job_type("bench.hold")
def hold(data, ctx):
    """Says when it started, then runs until the file `gate` exists (at most `max_s`)."""
    report(data, ctx)
    gate, deadline = Path(data["gate"]), time.monotonic() + float(data.get("max_s", 120))
    while not gate.exists() and time.monotonic() < deadline:
        ctx.check_cancelled()
        time.sleep(0.005)
    return {"node": os.environ.get("BENCH_NODE", "?"), "attempt": ctx.attempt}
