"""`offload serve` as a real subprocess, for tests that kill, stop and restart the server.

A `ServerProcess` owns one folder: its `config.toml`, the SQLite file and the server's
output (`server.log`, appended across restarts, shown when something goes wrong). It keeps
its port across restarts, so clients reconnect to the same address.

    with ServerProcess(tmp_path, processes=2, lease_ms=2000) as server:
        await server.start()            # returns once /api/health answers 200
        server.kill()                   # SIGKILL, as a crash
        await server.start()            # same folder, same database, same port
        code = server.stop(signal.SIGTERM)
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import eventually

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A free loopback port below the ephemeral range: while a killed server is down, no
    outgoing connection on this machine can take its port, so the restart can bind it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        low = 32768
    pick = random.SystemRandom()
    for _ in range(100):
        port = pick.randint(max(1024, low - 12_000), low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # pragma: no cover - a crowded machine
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover - not Linux
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc), children first."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.append(child)
                    todo.append(child)
    return found


def parent_of(pid: int) -> int:
    """The pid of `pid`'s parent (Linux /proc)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def libraries(pid: int) -> set[str]:
    """The shared libraries `pid` maps, by name up to the first dot (`_ssl`, `_http_parser`):
    an extension module shows there once it is imported."""
    with open(f"/proc/{pid}/maps") as fh:
        return {Path(line.split()[-1]).name.split(".")[0] for line in fh if ".so" in line}


async def worker_pids(http: aiohttp.ClientSession, count: int) -> list[int]:
    """The workers' pids from /api/health (as the operator: single-user mode), once there
    are `count` of them."""
    async def check() -> list[int] | None:
        async with http.get("/api/health") as response:
            pids = (await response.json())["workers"]["pids"]
        return pids if len(pids) == count and all(pids) else None

    return await eventually(check, 30, f"{count} worker processes")


def polled(check: Any, *args: Any) -> Any:
    """`check(*args)` as the coroutine `eventually` polls."""
    async def poll() -> Any:
        return check(*args)

    return poll


def integrity_check(db: Path) -> str:
    """`PRAGMA integrity_check` on a read-only connection, which leaves the WAL for the next
    server to recover. When the WAL index needs a recovery that a read-only connection may
    not run, a writable connection runs it first, as the next server would."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check"))
        finally:
            conn.close()
    except sqlite3.OperationalError:
        conn = sqlite3.connect(db)
        try:
            return "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check"))
        finally:
            conn.close()


class ServerProcess:
    def __init__(self, folder: Path, *, processes: int = 2, lease_ms: int = 2000, shutdown_grace: float = 5.0,
                 modules: tuple[str, ...] = ("tests.jobtypes",), log_level: str = "INFO",
                 sections: dict[str, dict[str, Any]] | None = None, env: dict[str, str] | None = None,
                 cwd: Path | None = None, store: dict[str, Any] | None = None, **jobs: Any) -> None:
        """`jobs` are further `[jobs]` keys (`retry_delay_ms=10`, `timeout_ms=...`); `store` is
        the `[store]` section (default: `offload.db` in `folder`); `sections`
        adds whole sections (`{"limits": {"submit_rate": 1e6}}`); `env` adds environment
        variables (the test's own `OFFLOAD_*` ones are never passed on); `cwd` is the folder
        the server runs in (default: `folder`, where its config is)."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = self.folder / "offload.db"
        self.log = self.folder / "server.log"
        self.log_level = log_level
        self.env = dict(env or {})
        self.cwd = Path(cwd) if cwd is not None else self.folder
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        job_keys = {"lease_ms": lease_ms, "results_dir": "results", **jobs}
        lines = [
            "[server]", f"shutdown_grace = {_toml(shutdown_grace)}",
            "[store]", *(f"{key} = {_toml(value)}" for key, value in (store or {"url": "sqlite:///offload.db"}).items()),
            "[workers]", f"processes = {processes}", f"modules = {_toml(list(modules))}",
            "[jobs]", *(f"{key} = {_toml(value)}" for key, value in job_keys.items()),
        ]
        for name, keys in (sections or {}).items():
            lines += [f"[{name}]", *(f"{key} = {_toml(value)}" for key, value in keys.items())]
        self.config = self.folder / "config.toml"
        self.config.write_text("\n".join(lines) + "\n")

    # ---- life cycle ------------------------------------------------------------------------
    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the server process without waiting for it to answer."""
        assert self.process is None or self.process.poll() is not None, "the server is already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.update(self.env)
        with open(self.log, "ab") as log:
            log.write(f"\n===== start {self.starts + 1} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "offload", "serve", "--config", str(self.config), "--port", str(self.port),
                 "--log-level", self.log_level],
                cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)  # its own process group, as a terminal would give it
        self.starts += 1
        return self.process

    async def start(self, timeout: float = 30) -> dict[str, Any]:
        """Start the server (unless `spawn` did) and wait until /api/health answers 200;
        returns the health answer."""
        if self.process is None or self.process.poll() is not None:
            self.spawn()
        return await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.tail()}")
                try:
                    async with session.get(f"{self.url}/api/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            return await r.json()
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"the server did not answer /api/health within {timeout}s:\n{self.tail()}")
                await asyncio.sleep(0.01)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> list[int]:
        """SIGKILL the server process alone (as a crash would end it); returns the processes
        it had started, which are left to notice on their own."""
        assert self.process is not None
        children = descendants(self.process.pid)
        self.process.kill()
        self.process.wait()
        return children

    def send(self, sig: int, *, group: bool = False) -> None:
        """Send `sig` to the server, or with `group` to its whole process group (worker
        processes included), as Ctrl-C in a terminal does."""
        assert self.process is not None
        if group:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        """Wait for the server to exit; returns its exit code."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server did not exit within {timeout}s:\n{self.tail()}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send `sig` (SIGTERM: a graceful stop) and wait for the exit code."""
        self.send(sig)
        return self.wait(timeout)

    def close(self) -> None:
        """Kill whatever still runs: the server and every process of its group."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- inspection --------------------------------------------------------------------------
    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no server output)"

    def integrity(self) -> str:
        return integrity_check(self.db)

    def session(self, **kwargs: Any) -> aiohttp.ClientSession:
        """A client session on this server's address (paths like `/api/jobs`)."""
        return aiohttp.ClientSession(base_url=self.url, **kwargs)


# ---- talking to it ----------------------------------------------------------------------------
TERMINAL = ("completed", "failed", "cancelled")


async def post(http: aiohttp.ClientSession, type: str, data: Any, **options: Any) -> str:
    async with http.post("/api/jobs", json={"type": type, "data": data, "options": options}) as response:
        body = await response.json()
        assert response.status == 201, body
        return body["jobId"]


async def get(http: aiohttp.ClientSession, job_id: str) -> dict[str, Any]:
    async with http.get(f"/api/jobs/{job_id}") as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def until(http: aiohttp.ClientSession, job_id: str, test: Any, what: str, timeout: float = 20) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        job = await get(http, job_id)
        return job if test(job) else None

    return await eventually(check, timeout, f"job {job_id} {what}")


async def all_jobs(http: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
    """Every job, through the paged listing."""
    jobs: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        async with http.get("/api/jobs", params=params) as response:
            assert response.status == 200, await response.text()
            page = await response.json()
        jobs.update((job["id"], job) for job in page["jobs"])
        cursor = page["nextCursor"]
        if not cursor:
            return jobs


class EventLog:
    """Every event a `subscribe all` WebSocket receives, per job, across reconnects."""

    def __init__(self) -> None:
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)

    async def follow(self, http: aiohttp.ClientSession, jobs: tuple[str, ...] = ()) -> None:
        """Read events until the connection drops (the server died). `subscribe all` sends
        snapshots of unfinished jobs only; `jobs` are subscribed one by one as well."""
        try:
            async with http.ws_connect("/api/ws") as ws:
                await ws.send_json({"op": "subscribe", "all": True})
                for job_id in jobs:
                    await ws.send_json({"op": "subscribe", "jobId": job_id})
                async for message in ws:
                    if message.type is not aiohttp.WSMsgType.TEXT:
                        break
                    event = message.json()
                    job = event.get("job") or {}
                    job_id = event.get("jobId") or job.get("id")
                    if job_id:
                        self.events[job_id].append(event)
        except (aiohttp.ClientError, ConnectionError):
            pass

    def check_seq(self) -> None:
        """Events of one job only move forward: each event is newer than the one before; a
        snapshot (after a reconnect) is never older than what was already seen."""
        for job_id, events in self.events.items():
            last = -1
            for event in events:
                seq = event["job"]["seq"] if event["event"] == "snapshot" else event["seq"]
                if event["event"] == "snapshot":
                    assert seq >= last, (job_id, events)
                else:
                    assert seq > last, (job_id, events)
                last = seq

    def statuses(self, job_id: str) -> list[str]:
        """The statuses seen, from status events and snapshots."""
        return [e["job"]["status"] if e["event"] == "snapshot" else e["status"]
                for e in self.events[job_id] if e["event"] in ("status", "snapshot")]
