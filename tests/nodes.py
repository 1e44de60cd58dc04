"""Several real `offload serve` nodes sharing one store, for the multi-node tests.

Each node is a `ServerProcess` (its own folder, config.toml, loopback port and log) whose
`[store]` is the shared one: a PostgreSQL schema of the test's own (`pg_schema`), or, to
try the harness on one node alone, an SQLite file. The nodes share one results folder and
run `tests.nodetypes`, whose jobs name the node that ran them (`TEST_NODE_NAME`) and wait
on files the test creates, so a test controls timing without sleeping.

    async def test_x(pg_schema, cluster):
        nodes = cluster(pg_schema.store(), processes=1, lease_ms=2000)
        a, b = nodes.add("a"), nodes.add("b", store={"poll_ms": 60000})
        await nodes.start()                 # all at once; returns when every /api/health is 200
        async with a.session() as http:
            job_id = await post(http, "node.work", {"marks": str(nodes.marks)})
        mark = await nodes.started(job_id)  # {"node": "a" | "b", "pid": …, "attempt": 1}
        b.kill()                            # SIGKILL (a crash); b.pause() / b.resume(): SIGSTOP / SIGCONT
        await b.restart()

At the end of the test the fixture kills whatever still runs (each node's process group).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import POSTGRES_URL, eventually
from tests.server_process import TERMINAL, ServerProcess



# ---- the shared database ----------------------------------------------------------------------
@dataclass(frozen=True)
class PgSchema:
    """A schema of one test's own in the test database; dropped (CASCADE) after the test."""

    url: str
    name: str

    def store(self, **keys: Any) -> dict[str, Any]:
        """The `[store]` section of a node on this schema (`keys`: poll_ms, pool sizes…)."""
        return {"url": self.url, "schema": self.name, **keys}

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        """Rows of `query`, run with this schema first on the search path."""
        import asyncpg

        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            await conn.execute(f'SET search_path TO "{self.name}"')
            return [dict(row) for row in await conn.fetch(query, *args)]
        finally:
            await conn.close()


@pytest.fixture
def pg_schema(pg_schema: str) -> PgSchema:
    """conftest's `pg_schema` (a unique name, dropped after the test; a skip naming the reason
    when PostgreSQL does not answer, a failure in CI), with the URL and a way to query it."""
    return PgSchema(POSTGRES_URL, pg_schema)


# ---- the nodes -----------------------------------------------------------------------------------
class Node(ServerProcess):
    """One `offload serve` process of a cluster. `node_id` is its scheduler's name (the
    lease owner of the jobs it runs), new at each start."""

    def __init__(self, folder: Path, name: str, **options: Any) -> None:
        env = {"TEST_NODE_NAME": name, **options.pop("env", {})}
        super().__init__(folder, env=env, **options)
        self.name = name
        self.node_id: str | None = None
        self.paused = False
        #: Started and answering, not killed since (`running` is only the process).
        self.up = False

    async def start(self, timeout: float = 30) -> dict[str, Any]:
        health = await super().start(timeout)
        self.node_id = (await self.stats())["scheduler"]["node"]
        self.up = True
        return health

    async def restart(self, timeout: float = 30) -> dict[str, Any]:
        """Start again after a kill or a stop: same folder, port and store."""
        return await self.start(timeout)

    def kill(self, sig: int = signal.SIGKILL, *, group: bool = False) -> list[int]:  # type: ignore[override]
        """Send `sig` to the server (with `group`, to its worker processes as well) and wait
        for it to end; returns the processes it had started. SIGKILL: a crash."""
        assert self.process is not None
        from tests.server_process import descendants

        children = descendants(self.process.pid)
        self.up = False
        if group:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)
        self.wait()
        self.node_id = None
        return children

    def pause(self) -> None:
        """SIGSTOP the whole node (server and workers), as a frozen machine."""
        os.killpg(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        os.killpg(self.pid, signal.SIGCONT)
        self.paused = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def close(self) -> None:
        if self.paused and self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGCONT)  # so the kill below is acted on at once
            except ProcessLookupError:
                pass
        super().close()

    async def stats(self) -> dict[str, Any]:
        async with self.session() as http, http.get("/api/stats") as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def running_here(self) -> int:
        """How many attempts this node's scheduler runs now."""
        return int((await self.stats())["scheduler"]["running"])


class Cluster:
    """Nodes on one store, one results folder (`results`) and one markers folder (`marks`)."""

    def __init__(self, folder: Path, store: dict[str, Any], **defaults: Any) -> None:
        self.folder = folder
        self.store = store
        self.results = folder / "results"
        self.marks = folder / "marks"
        self.results.mkdir(parents=True, exist_ok=True)
        self.marks.mkdir(parents=True, exist_ok=True)
        self.defaults = {"processes": 1, "lease_ms": 2000, "retry_delay_ms": 10, "modules": ("tests.nodetypes",),
                         **defaults}
        self.nodes: list[Node] = []

    def add(self, name: str, *, store: dict[str, Any] | None = None, **options: Any) -> Node:
        """A node (not started yet); `store` keys are added to the shared `[store]` (e.g.
        `poll_ms`), `options` are `ServerProcess`'s (processes, lease_ms, sections, …)."""
        node = Node(self.folder / name, name, store={**self.store, **(store or {})}, results_dir=str(self.results),
                    **{**self.defaults, **options})
        self.nodes.append(node)
        return node

    async def start(self, *nodes: Node) -> None:
        """Start `nodes` (default: every node not running) at once; returns when each answers."""
        todo = [node for node in (nodes or self.nodes) if not node.running]
        for node in todo:
            node.spawn()
        await asyncio.gather(*(node.start() for node in todo))

    async def pair(self) -> dict[str, Node]:
        """Nodes "a" and "b", added and started, by name."""
        by_name = {name: self.add(name) for name in ("a", "b")}
        await self.start()
        return by_name

    def by_id(self) -> dict[str, Node]:
        return {node.node_id: node for node in self.nodes if node.node_id}

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def logs(self) -> str:
        return "\n".join(f"----- node {node.name} -----\n{node.tail(40)}" for node in self.nodes)

    # ---- the markers of `node.work` -------------------------------------------------------------
    def mark(self, job_id: str, attempt: int = 1, what: str = "started") -> dict[str, Any] | None:
        try:
            return json.loads((self.marks / f"{job_id}-{attempt}.{what}").read_text())
        except FileNotFoundError:
            return None

    async def started(self, job_id: str, attempt: int = 1, timeout: float = 20) -> dict[str, Any]:
        """The `started` marker of the job's attempt, once it is there."""
        async def check() -> dict[str, Any] | None:
            return self.mark(job_id, attempt)

        return await eventually(check, timeout, f"attempt {attempt} of job {job_id} to start")

    def gate(self, name: str) -> Path:
        """A path in the markers folder for `hold`/`gate`: the job waits until `open_gate`."""
        return self.marks / f"{name}.gate"

    def open_gate(self, name: str) -> None:
        self.gate(name).write_text("open")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """`cluster(store, **defaults)`: a `Cluster` in tmp_path; every node is killed at the end."""
    made: list[Cluster] = []

    def make(store: dict[str, Any], **defaults: Any) -> Cluster:
        made.append(Cluster(tmp_path / f"cluster{len(made)}", store, **defaults))
        return made[-1]

    yield make
    for each in made:
        each.close()


async def holds(test: Callable[[], bool], timeout: float, what: str) -> None:
    """`eventually` for a condition on the test's own state (no I/O of its own)."""
    async def check() -> bool:
        return test()

    await eventually(check, timeout, what)


# ---- a WebSocket client that stays connected ---------------------------------------------------
def job_of(event: dict[str, Any]) -> str | None:
    return event.get("jobId") or (event.get("job") or {}).get("id")


def seq_of(event: dict[str, Any]) -> int:
    return event["job"]["seq"] if event["event"] == "snapshot" else event["seq"]


def status_of(event: dict[str, Any]) -> str | None:
    if event["event"] == "snapshot":
        return event["job"]["status"]
    return event.get("status") if event["event"] == "status" else None


class Watcher:
    """Every event one WebSocket on one node receives, collected in the background."""

    def __init__(self, node: ServerProcess) -> None:
        self.node = node
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.other: list[dict[str, Any]] = []
        self.closed: str | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watcher:
        self._http = self.node.session()
        self._ws = await self._http.ws_connect("/api/ws")
        self._task = asyncio.get_running_loop().create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._http is not None and self._ws is not None
        self._task.cancel()
        await self._ws.close()
        await self._http.close()

    async def send(self, message: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send_json(message)

    async def subscribe(self, job_id: str | None = None) -> None:
        """`subscribe all`, or one job; once the server answered the `ping` sent after it,
        the subscription holds (the answer follows the snapshots)."""
        pongs = sum(1 for event in self.other if event["event"] == "pong")
        await self.send({"op": "subscribe", **({"jobId": job_id} if job_id else {"all": True})})
        await self.send({"op": "ping"})

        async def answered() -> bool:
            return sum(1 for event in self.other if event["event"] == "pong") > pongs

        await eventually(answered, 10, f"the subscription on node {getattr(self.node, 'name', '?')}")

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            event = message.json()
            job_id = job_of(event)
            (self.events[job_id] if job_id else self.other).append(event)
        self.closed = f"closed ({self._ws.close_code})"

    def terminal(self, job_id: str) -> str | None:
        for event in self.events.get(job_id, ()):
            if status_of(event) in TERMINAL:
                return status_of(event)
        return None

    async def until_terminal(self, job_id: str, timeout: float = 30) -> list[dict[str, Any]]:
        async def check() -> bool:
            return self.terminal(job_id) is not None

        await eventually(check, timeout, f"a final status event of job {job_id} on the WebSocket")
        return self.events[job_id]

    def problems(self, job_id: str, first_seq: int | None = None) -> list[str]:
        """What is wrong with the job's events: each one exactly one `seq` after the one
        before (a snapshot may repeat the seq it reflects), nothing after the final status,
        which must be there. `first_seq`: the seq the first event must have."""
        events = self.events.get(job_id, [])
        found: list[str] = []
        if not events:
            return [f"{job_id}: no events"]
        seqs = [seq_of(event) for event in events]
        if first_seq is not None and seqs[0] != first_seq:
            found.append(f"{job_id}: first event has seq {seqs[0]}, not {first_seq}")
        for i in range(1, len(events)):
            before, seq, event = seqs[i - 1], seqs[i], events[i]
            if seq != before + 1 and not (event["event"] == "snapshot" and seq >= before):
                found.append(f"{job_id}: seq {before} then {seq} ({event['event']})")
        ends = [i for i, event in enumerate(events) if status_of(event) in TERMINAL and event["event"] == "status"]
        if not ends:
            found.append(f"{job_id}: no final status event (last: {events[-1]['event']} {status_of(events[-1])})")
        elif ends[0] != len(events) - 1:
            found.append(f"{job_id}: events after the final status: {events[ends[0] + 1:]}")
        return found
