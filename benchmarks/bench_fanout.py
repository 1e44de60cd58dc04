"""Fan-out: one job's progress to 1,000 WebSocket subscribers, beside a bare broadcast.

In one run, side by side:
  - offload: a real `offload serve` (2 worker processes); a `bench.ticks` job reports
    progress at a fixed rate, each message the worker's monotonic ns at `ctx.progress()`;
    every subscriber times worker -> receipt;
  - bare: a bare aiohttp server (same event loop as `offload serve`) that, at the same rate,
    builds a message of the same size and shape once and `send_str`s it to every socket,
    the simplest correct broadcast; the stamp is taken when the message is built (with
    --bare-stamp-due: when it was due, so that its latency, like offload's, includes the
    wait for a loop still busy with the previous broadcast).
The clients of both run in a process of their own (the servers in theirs) and read alike.
A first row with one subscriber gives each path's floor. The systems alternate within
each repetition; p50/p99 are over every (event, subscriber)
pair once all subscribers are in, and the ratio is offload / bare.

    python benchmarks/bench_fanout.py [--subscribers 1000] [--rates 20,100] [--seconds 10] [--reps 2]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.server_process import ServerProcess, free_port  # noqa: E402

SETTINGS = {"limits": {"submit_rate": 1e9, "submit_burst": 1_000_000, "max_pending_per_user": 0,
                       "max_websockets_per_user": 100_000}}
#: Worker clock digits, as offload's message carries them.
STAMP_DIGITS = len(str(time.monotonic_ns()))
#: Before the first event, for every subscriber to connect and get its snapshot.
DELAY_MS = 3000


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


# ---- the bare broadcast server (a process of its own) --------------------------------------
def bare_server(port: int, stamp_due: bool) -> None:
    sockets: set[web.WebSocketResponse] = set()

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sockets.add(ws)
        try:
            async for _ in ws:
                pass
        finally:
            sockets.discard(ws)
        return ws

    async def broadcast(text: str) -> None:
        for ws in list(sockets):
            try:
                await ws.send_str(text)
            except ConnectionError:
                pass

    async def run(n: int, interval: float, job_id: str) -> None:
        # The same fields and sizes as offload's progress event. The stamp: when the message
        # is built (the loop free to send it), or with `stamp_due` when it was due, as the
        # worker's clock, which never waits for the server's loop, stamps offload's.
        due = time.monotonic_ns() + DELAY_MS * 1_000_000
        for i in range(1, n + 1):
            due += int(interval * 1e9)
            await asyncio.sleep(max(0.0, (due - time.monotonic_ns()) / 1e9))
            stamp = due if stamp_due else time.monotonic_ns()
            await broadcast(json.dumps({"event": "progress", "jobId": job_id, "progress": i * 99 // n,
                                        "message": str(stamp), "seq": i + 1}, separators=(",", ":")))
        await broadcast(json.dumps({"event": "status", "jobId": job_id, "status": "completed", "seq": n + 2}))

    async def start(request: web.Request) -> web.Response:
        body = await request.json()
        request.app["runs"].add(asyncio.get_running_loop().create_task(
            run(int(body["n"]), float(body["interval_ms"]) / 1000, body["jobId"])))
        return web.json_response({"sockets": len(sockets)})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app["runs"] = set()
    app.router.add_get("/ws", ws_handler)
    app.router.add_post("/start", start)
    app.router.add_get("/api/health", health)
    web.run_app(app, host="127.0.0.1", port=port, print=None, loop=_loop(), backlog=4096)


# ---- the clients (a process of their own) ---------------------------------------------------
async def clients(mode: str, url: str, subscribers: int, rate: float, seconds: float) -> dict[str, Any]:
    n = max(1, int(rate * seconds))
    interval_ms = 1000 / rate
    latencies: list[float] = []
    ready = asyncio.Event()
    first_ns = [0]  # stamps before this are not counted: not every subscriber was in yet
    snapshots = 0
    finished = 0
    size = [0]
    first: dict[int, int] = {}  # each event's stamp -> its earliest receipt
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        path = "/api/ws" if mode == "offload" else "/ws"
        gate = asyncio.Semaphore(32)  # not a thousand SYNs at once: the listen backlog is finite

        async def connect() -> aiohttp.ClientWebSocketResponse:
            async with gate:
                return await http.ws_connect(url + path, max_msg_size=0)

        sockets = await asyncio.gather(*(connect() for _ in range(subscribers)))
        if mode == "offload":
            job = {"type": "bench.ticks", "data": {"n": n, "interval_ms": interval_ms, "delay_ms": DELAY_MS}}
            async with http.post(url + "/api/jobs", json=job) as r:
                assert r.status == 201, await r.text()
                job_id = (await r.json())["jobId"]
        else:
            job_id = "job_" + "0" * 24

        async def read(ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal snapshots, finished
            async for message in ws:
                now = time.monotonic_ns()
                event = orjson.loads(message.data)
                kind = event.get("event")
                if kind == "progress":
                    size[0] = len(message.data)
                    stamp = int(event["message"])
                    if stamp >= first_ns[0] and ready.is_set():
                        if not latencies:
                            print("ready", flush=True)  # the server's CPU is counted from here
                        latencies.append((now - stamp) / 1e6)
                        first[stamp] = min(first.get(stamp, now), now)
                elif kind == "snapshot":
                    snapshots += 1
                    if snapshots == subscribers:
                        first_ns[0] = time.monotonic_ns()
                        ready.set()
                    if event["job"]["status"] == "completed":
                        break
                elif kind == "status" and event["status"] == "completed":
                    break
            finished += 1

        readers = [asyncio.create_task(read(ws)) for ws in sockets]
        if mode == "offload":
            for ws in sockets:
                await ws.send_str(json.dumps({"op": "subscribe", "jobId": job_id}))
        else:
            first_ns[0] = time.monotonic_ns()
            ready.set()
            async with http.post(url + "/start", json={"n": n, "interval_ms": interval_ms, "jobId": job_id}) as r:
                assert (await r.json())["sockets"] == subscribers
        await asyncio.wait_for(asyncio.gather(*readers), timeout=seconds * 3 + 60)
        print("done", flush=True)
        for ws in sockets:
            await ws.close()
    expected = subscribers * n
    firsts = [(receipt - stamp) / 1e6 for stamp, receipt in first.items()]
    return {"mode": mode, "subscribers": subscribers, "rate": rate, "samples": len(latencies),
            "per_socket_events": n, "message_bytes": size[0], "complete": finished == subscribers,
            "p50_ms": pct(latencies, 0.5), "p99_ms": pct(latencies, 0.99), "max_ms": max(latencies),
            "received_share": len(latencies) / expected,
            "first_p50_ms": pct(firsts, 0.5), "first_p99_ms": pct(firsts, 0.99)}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds `pid` has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_clients(mode: str, url: str, subscribers: int, rate: float, seconds: float, pid: int) -> dict[str, Any]:
    """The clients' figures, and the CPU the server process used per event while the events
    flowed (from every subscriber in to the last event received)."""
    clients = subprocess.Popen([sys.executable, __file__, "--clients", mode, "--url", url, "--subscribers",
                                str(subscribers), "--rate", str(rate), "--seconds", str(seconds)],
                               stdout=subprocess.PIPE, text=True)
    assert clients.stdout is not None
    marks = {}
    for line in clients.stdout:
        if line.strip() in ("ready", "done"):
            marks[line.strip()] = (time.monotonic(), cpu_s(pid))
        else:
            last = line
    if clients.wait() or len(marks) != 2:
        raise RuntimeError(f"{mode} clients failed")
    result: dict[str, Any] = json.loads(last)
    (start, cpu_start), (end, cpu_end) = marks["ready"], marks["done"]
    result["server_cpu_ms_per_event"] = (cpu_end - cpu_start) * 1000 / (rate * (end - start))
    return result


async def wait_http(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            try:
                async with http.get(url + "/api/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not start")


async def main(args: argparse.Namespace) -> None:
    rates = [float(r) for r in args.rates.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="offload-fanout-"))
    bare_port = free_port()
    bare = subprocess.Popen([sys.executable, __file__, "--bare-server", str(bare_port),
                             *(["--bare-stamp-due"] if args.bare_stamp_due else [])], start_new_session=True)
    bare_url = f"http://127.0.0.1:{bare_port}"
    try:
        with ServerProcess(folder, processes=2, lease_ms=60_000, modules=("benchmarks.ticks",),
                           log_level="WARNING", sections=SETTINGS) as server:
            await server.start()
            await wait_http(bare_url)
            if args.pid_file:
                Path(args.pid_file).write_text(str(server.pid))
            print(f"{args.subscribers} subscribers, {args.seconds:g} s per measurement, {args.reps} repetitions; "
                  f"latency from the message's stamp to its receipt, ms")
            print(f"{'subs':>5} {'rate/s':>6} {'rep':>3} | {'offload p50':>11} {'p99':>7} {'max':>7} | "
                  f"{'bare p50':>8} {'p99':>7} {'max':>7} | {'p99 ratio':>9} | server CPU ms/event: offload, bare "
                  f"| first receipt p50 p99: offload, bare")
            # First one subscriber: the floor of each path (offload's includes the worker's
            # pipe and the store's commit of the progress, which come before any fan-out).
            runs = [(1, rates[0], 0), *((args.subscribers, rate, rep) for rate in rates for rep in range(args.reps))]
            for subscribers, rate, rep in runs:
                try:
                    mine = run_clients("offload", server.url, subscribers, rate, args.seconds, server.pid)
                except RuntimeError:
                    print(f"offload's clients failed; the end of its log:\n{server.tail(10)}")
                    raise
                base = run_clients("bare", bare_url, subscribers, rate, args.seconds, bare.pid)
                for result in (mine, base):
                    if not result["complete"] or result["received_share"] < 0.5:
                        print(f"  ({result['mode']}: complete={result['complete']}, "
                              f"received {result['received_share']:.0%} of the events: some were coalesced)")
                if subscribers == 1:
                    print(f"  (progress message: offload {mine['message_bytes']} bytes, "
                          f"bare {base['message_bytes']} bytes)")
                print(f"{subscribers:>5} {rate:>6g} {rep + 1:>3} | {mine['p50_ms']:>11.2f} {mine['p99_ms']:>7.2f} "
                      f"{mine['max_ms']:>7.1f} | {base['p50_ms']:>8.2f} {base['p99_ms']:>7.2f} "
                      f"{base['max_ms']:>7.1f} | {mine['p99_ms'] / base['p99_ms']:>9.2f} | "
                      f"{mine['server_cpu_ms_per_event']:>6.2f} {base['server_cpu_ms_per_event']:>6.2f} | "
                      f"{mine['first_p50_ms']:>5.1f} {mine['first_p99_ms']:>5.1f}  {base['first_p50_ms']:>5.1f} "
                      f"{base['first_p99_ms']:>5.1f}", flush=True)
    finally:
        os.killpg(bare.pid, signal.SIGTERM)
        bare.wait(10)


def cli() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rates", default="20,100")
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--pid-file", help="write offload's server pid here (to attach a profiler)")
    parser.add_argument("--clients", choices=("offload", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--bare-stamp-due", action="store_true",
                        help="stamp the bare broadcast's message with the time it was due, not the time it is "
                             "built: its latency then includes waiting for its own busy loop, as offload's does")
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        bare_server(args.bare_server, args.bare_stamp_due)
    elif args.clients:
        result = _loop().run_until_complete(clients(args.clients, args.url, args.subscribers, args.rate, args.seconds))
        print(json.dumps(result))
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    cli()
