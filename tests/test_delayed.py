"""Delayed jobs (`options.delay`, `options.runAt`) are stored jobs like any other: they
survive a restart of the server process, are listed as pending with their `runAt`, and
`GET /api/jobs?status=scheduled` lists the pending ones not due yet."""
from __future__ import annotations

import signal
from datetime import datetime

from aiohttp.test_utils import TestClient, TestServer

from offload.service.app import create_app
from offload.service.models import Clock, now_ms
from tests.conftest import submit, wait_status
from tests.conftest import both_backends as store_backend  # noqa: F401  (each test on SQLite and on PostgreSQL)
from tests.server_process import ServerProcess, get, post, until

HOUR = 3_600_000


def ms(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


async def listed(http, status: str) -> list[dict]:
    async with http.get("/api/jobs", params={"status": status}) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["jobs"]


async def test_a_delayed_job_survives_a_restart_and_runs_when_due(tmp_path):
    with ServerProcess(tmp_path, processes=1) as server:
        await server.start()
        async with server.session() as http:
            soon = await post(http, "test.echo", {"soon": True}, delay=4000)
            later = await post(http, "test.echo", {"later": True}, runAt="2099-01-01T00:00:00Z")
            before = {job_id: await get(http, job_id) for job_id in (soon, later)}
            assert all(job["status"] == "pending" and job["runAt"] for job in before.values()), before
            assert before[later]["runAt"] == "2099-01-01T00:00:00.000Z"
            assert {j["id"] for j in await listed(http, "scheduled")} == {soon, later}
        assert server.stop(signal.SIGTERM) == 0

        await server.start()
        async with server.session() as http:
            job = await get(http, later)  # the same job, still waiting, for the same time
            assert (job["status"], job["runAt"], job["attempts"]) == ("pending", before[later]["runAt"], 0), job
            job = await get(http, soon)  # on a slow machine the restart can outlast its 4 s
            if job["status"] == "pending":
                assert (job["runAt"], job["attempts"]) == (before[soon]["runAt"], 0), job
            pending = {j["id"]: j for j in await listed(http, "pending")}
            assert pending[later]["runAt"] == before[later]["runAt"]
            done = await until(http, soon, lambda j: j["status"] in ("completed", "failed"), "to run", timeout=30)
            assert (done["status"], done["attempts"]) == ("completed", 1), done
            assert ms(done["startedAt"]) >= ms(before[soon]["runAt"])  # not before its time
            assert [j["id"] for j in await listed(http, "scheduled")] == [later]
            assert (await get(http, later))["status"] == "pending"


class Wall:
    def __init__(self) -> None:
        self.ahead_ms = 0

    def __call__(self) -> int:
        return now_ms() + self.ahead_ms


async def test_the_scheduled_filter_lists_the_pending_jobs_not_due_yet(make_config):
    wall = Wall()
    app = create_app(make_config(workers={"processes": 1}), clock=Clock(wall))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        due = await submit(client, "test.echo", {"due": True})
        await wait_status(client, due, "completed")
        in_an_hour = await submit(client, "test.echo", {"n": 1}, delay=HOUR)
        in_two = await submit(client, "test.echo", {"n": 2}, delay=2 * HOUR)
        other_type = await submit(client, "test.clock", {}, delay=HOUR)

        async def ids(**params: str) -> list[str]:
            response = await client.get("/api/jobs", params=params)
            body = await response.json()
            assert response.status == 200, body
            assert all(j["status"] == "pending" and j["runAt"] for j in body["jobs"])
            return [j["id"] for j in body["jobs"]]

        assert await ids(status="scheduled") == [other_type, in_two, in_an_hour]  # newest first
        assert await ids(status="scheduled", type="test.echo") == [in_two, in_an_hour]
        first = await client.get("/api/jobs", params={"status": "scheduled", "limit": "2"})
        page = await first.json()
        assert [j["id"] for j in page["jobs"]] == [other_type, in_two] and page["nextCursor"]
        assert await ids(status="scheduled", cursor=page["nextCursor"]) == [in_an_hour]

        wall.ahead_ms = HOUR + 60_000  # an hour later: two are due (pending until a worker takes them)
        assert await ids(status="scheduled") == [in_two]

        bad = await client.get("/api/jobs", params={"status": "delayed"})
        assert bad.status == 422 and "scheduled" in (await bad.json())["error"]["message"]
