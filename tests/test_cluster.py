"""Two nodes in one process on one PostgreSQL schema: what several nodes share through the
database (schedule slots, idempotency keys, pending caps, the retention lock, the cluster
view of the statistics). Each node is a whole service (`create_app`) with its own store,
scheduler and worker process, on its own loopback port; the test's schema is theirs alone.
The process-level tests (kills, pauses, events across nodes) are in test_nodes.py."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from offload.service.app import create_app
from offload.service.config import Config, ScheduleConfig
from offload.service.keys import RETENTION, SCHEDULES, STORE
from offload.service.models import Clock, now_ms
from tests.conftest import eventually, submit, wait_status

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def store_backend() -> str:
    return "postgres"


class Wall:
    """A wall clock the test moves forward, shared by both nodes."""

    def __init__(self, at: str | None = None) -> None:
        self.ms = now_ms() if at is None else int(datetime.fromisoformat(at).timestamp() * 1000)

    def __call__(self) -> int:
        return self.ms


@asynccontextmanager
async def nodes(config: Config, wall: Wall | None = None, count: int = 2) -> AsyncIterator[list[TestClient]]:
    """`count` services on `config` (one store), started one after the other."""
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(count):
            app = create_app(config, clock=None if wall is None else Clock(wall))
            clients.append(await stack.enter_async_context(TestClient(TestServer(app, host="127.0.0.1"))))
        yield clients


async def test_a_schedule_slot_fires_once_when_every_node_carries_the_schedule(make_config: Callable[..., Config]):
    wall = Wall("2026-06-01T05:59:00+00:00")
    config = make_config(workers={"processes": 1}).replace(schedules=(
        ScheduleConfig(name="daily", cron="0 6 * * *", type="test.echo", data={"from": "daily"}),))
    async with nodes(config, wall) as (a, b):
        wall.ms += 60_500  # 06:00:00.5, the slot is due on both
        await asyncio.gather(*(client.app[SCHEDULES].run_once() for client in (a, b) for _ in range(3)))
        listing = await (await a.get("/api/jobs", params={"type": "test.echo"})).json()
        (job,) = listing["jobs"]
        await wait_status(b, job["id"], "completed")
        for client in (a, b):
            (entry,) = (await (await client.get("/api/schedules")).json())["schedules"]
            assert entry["lastJobId"] == job["id"]


async def test_an_idempotency_key_is_one_job_across_nodes_even_when_two_submissions_race(
        make_config: Callable[..., Config]):
    body = {"type": "test.echo", "data": {"x": 1}}
    async with nodes(make_config(workers={"processes": 1})) as (a, b):
        for round in range(5):
            headers = {"Idempotency-Key": f"order-{round}"}
            answers = await asyncio.gather(*(client.post("/api/jobs", json=body, headers=headers)
                                             for client in (a, b, a, b)))
            bodies = [await answer.json() for answer in answers]
            assert sorted(answer.status for answer in answers) == [200, 200, 200, 201], bodies
            assert len({body["jobId"] for body in bodies}) == 1
        other = await b.post("/api/jobs", json={**body, "data": {"x": 2}}, headers={"Idempotency-Key": "order-0"})
        assert other.status == 422  # the same key with another request, on the other node


async def test_the_pending_cap_of_a_user_counts_the_jobs_on_every_node(make_config: Callable[..., Config]):
    config = make_config(workers={"processes": 1}, limits={"max_pending_per_user": 2})
    async with nodes(config) as (a, b):
        for _ in range(2):  # delayed: they stay pending
            await submit(a, "test.echo", {}, delay=3600)
        refused = await b.post("/api/jobs", json={"type": "test.echo", "data": {}, "options": {"delay": 3600}})
        assert refused.status == 429, await refused.text()
        assert "2 pending jobs at most" in (await refused.json())["error"]["message"]
        assert refused.headers["Retry-After"].isdigit()


async def test_retention_runs_on_one_node_at_a_time(make_config: Callable[..., Config]):
    wall = Wall()
    config = make_config(workers={"processes": 1}, retention={"completed": "1d", "interval": "1h"})
    async with nodes(config, wall) as (a, b):
        job_id = await submit(a, "test.echo", {"old": True})
        await wait_status(a, job_id, "completed")
        wall.ms += 2 * 86_400_000
        async with b.app[STORE].alone("retention") as mine:  # node B is at it
            assert mine
            skipped = await a.app[RETENTION].run_once()
            assert sum(skipped.jobs.values()) == 0
            assert (await a.get(f"/api/jobs/{job_id}")).status == 200
        cleaned = await a.app[RETENTION].run_once()  # B is done: A's pass deletes it
        assert cleaned.jobs["completed"] == 1
        assert (await b.get(f"/api/jobs/{job_id}")).status == 404


async def test_the_statistics_show_every_nodes_running_jobs(make_config: Callable[..., Config], tmp_path: Path):
    gate = tmp_path / "gate"
    async with nodes(make_config(workers={"processes": 1})) as (a, b):
        held = [await submit(client, "test.steps", {"n": 1, "gate": str(gate)}) for client in (a, b)]
        for job_id in held:
            await wait_status(a, job_id, "running")

        async def two_nodes() -> dict[str, Any] | None:
            cluster = (await (await b.get("/api/stats")).json())["cluster"]
            return cluster if sorted(cluster["runningByNode"].values()) == [1, 1] else None

        cluster = await eventually(two_nodes, what="each node running one job")
        nodes_seen = {(await (await c.get("/api/stats")).json())["scheduler"]["node"] for c in (a, b)}
        assert set(cluster["runningByNode"]) == nodes_seen and len(nodes_seen) == 2
        gate.write_text("go")
        for job_id in held:
            await wait_status(b, job_id, "completed")
