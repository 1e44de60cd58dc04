"""Retention on a real server whose clock the test moves (`create_app(config, clock=...)`):
each pass deletes exactly the finished jobs older than their status's age, with their result
files; an expired result file answers 410 while its job stays; the file gives the space back."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from offload.service.app import create_app
from offload.service.config import ConfigError, load_config, parse_duration
from offload.service.keys import RETENTION
from offload.service.models import Clock, now_ms
from tests.conftest import eventually, submit, wait_status

MINUTE, DAY = 60_000, 86_400_000


class Wall:
    """The machine's wall clock moved forward by `ahead_ms`: days pass in a statement."""

    def __init__(self) -> None:
        self.ahead_ms = 0

    def __call__(self) -> int:
        return now_ms() + self.ahead_ms


@contextlib.asynccontextmanager
async def serve(make_config: Any, wall: Wall, **retention: Any) -> AsyncIterator[TestClient]:
    # A pass every hour of real time: within a test, only the test's own `run_once()` runs.
    config = make_config(retention={"interval": "1h", **retention})
    async with TestClient(TestServer(create_app(config, clock=Clock(wall)), host="127.0.0.1")) as client:
        yield client


async def finished(client: TestClient, type: str, data: Any, status: str, **options: Any) -> dict[str, Any]:
    job_id = await submit(client, type, data, **options)
    job = await wait_status(client, job_id, "completed", "failed")
    assert job["status"] == status, job
    return job


async def cancelled(client: TestClient) -> dict[str, Any]:
    job_id = await submit(client, "test.echo", {}, delay=DAY * 365)
    response = await client.delete(f"/api/jobs/{job_id}")
    job = await response.json()
    assert job["status"] == "cancelled", job
    return job


def result_file(results: Path, job: dict[str, Any]) -> Path:
    (path,) = results.glob(f"{job['id']}-*")
    return path


async def exists(client: TestClient, job: dict[str, Any]) -> bool:
    response = await client.get(f"/api/jobs/{job['id']}")
    assert response.status in (200, 404), await response.text()
    return response.status == 200


async def test_each_pass_deletes_exactly_the_jobs_past_their_statuss_age_with_their_files(make_config, tmp_path):
    wall = Wall()
    results = tmp_path / "results"
    async with serve(make_config, wall) as client:  # the defaults: completed 7d, failed 30d, cancelled 1d
        retention = client.app[RETENTION]  # type: ignore[union-attr]
        old_done = [await finished(client, "test.file", {"filename": f"{i}.txt"}, "completed") for i in range(2)]
        old_failed = await finished(client, "test.fail", {"permanent": True}, "failed")
        old_cancelled = await cancelled(client)
        pending = await submit(client, "test.echo", {}, delay=DAY * 365)  # never finished: never deleted
        files = [result_file(results, job) for job in old_done]

        wall.ahead_ms = DAY - MINUTE  # not a day yet: nothing is due
        assert (await retention.run_once()).jobs == {"completed": 0, "failed": 0, "cancelled": 0}

        wall.ahead_ms = DAY + MINUTE
        cleaned = await retention.run_once()
        assert cleaned.jobs == {"completed": 0, "failed": 0, "cancelled": 1}
        assert not await exists(client, old_cancelled)
        assert all([await exists(client, j) for j in (*old_done, old_failed)])
        young_done = await finished(client, "test.file", {"filename": "young.txt"}, "completed")  # a day later
        young_file = result_file(results, young_done)

        wall.ahead_ms = 7 * DAY + MINUTE  # the first ones are a week old, the young one six days
        cleaned = await retention.run_once()
        assert (cleaned.jobs, cleaned.files) == ({"completed": 2, "failed": 0, "cancelled": 0}, 2)
        assert not any(path.exists() for path in files)
        assert [await exists(client, j) for j in old_done] == [False, False]
        assert await exists(client, young_done) and young_file.exists()
        assert await exists(client, old_failed)

        wall.ahead_ms = 30 * DAY + MINUTE
        cleaned = await retention.run_once()
        assert cleaned.jobs == {"completed": 1, "failed": 1, "cancelled": 0}
        assert not await exists(client, old_failed) and not young_file.exists()
        assert (await wait_status(client, pending, "pending"))["runAt"] is not None

        stats = retention.stats()
        assert stats["total"] == {"jobs": {"completed": 3, "failed": 1, "cancelled": 1}, "results": 0, "files": 3}
        assert stats["runs"] == 4 and stats["lastRun"] is not None
        shown = await (await client.get("/api/stats")).json()  # the operator's figures show it too
        assert shown["retention"]["total"] == stats["total"]


async def test_a_status_whose_age_is_off_is_kept_forever(make_config):
    wall = Wall()
    async with serve(make_config, wall, cancelled="off", failed="0") as client:
        retention = client.app[RETENTION]  # type: ignore[union-attr]
        kept = [await cancelled(client), await finished(client, "test.fail", {"permanent": True}, "failed")]
        wall.ahead_ms = 3650 * DAY
        assert (await retention.run_once()).jobs == {"completed": 0, "failed": 0, "cancelled": 0}
        assert all([await exists(client, job) for job in kept])


async def test_an_expired_result_answers_410_naming_when_while_the_job_stays(make_config, tmp_path):
    wall = Wall()
    async with serve(make_config, wall, results="24h") as client:
        retention = client.app[RETENTION]  # type: ignore[union-attr]
        job = await finished(client, "test.file", {"filename": "report.txt"}, "completed")
        path = result_file(tmp_path / "results", job)
        assert (await client.get(job["result"]["url"])).status == 200

        wall.ahead_ms = DAY - MINUTE
        assert (await client.get(job["result"]["url"])).status == 200
        assert (await retention.run_once()).results == 0 and path.exists()

        wall.ahead_ms = DAY + MINUTE
        response = await client.get(job["result"]["url"])
        body = await response.json()
        assert response.status == 410, body
        assert body["error"]["code"] == "gone"
        expired_at = job["completedAt"]  # completed + 24h: the same time of day, the next day
        day, time_of_day = expired_at.split("T")
        assert time_of_day in body["error"]["message"] and "expired at" in body["error"]["message"]
        assert "24h" in body["error"]["message"] and "[retention] results" in body["error"]["message"]

        cleaned = await retention.run_once()
        assert (cleaned.results, cleaned.jobs["completed"]) == (1, 0)
        assert not path.exists()
        kept = await wait_status(client, job["id"], "completed")  # the job stays, with its result's metadata
        assert kept["result"]["filename"] == "report.txt"
        assert (await client.get(job["result"]["url"])).status == 410
        assert (await retention.run_once()).results == 0  # each file once: the walk goes on from where it was


async def test_the_file_shrinks_after_a_cleanup(make_config, tmp_path):
    import sqlite3

    wall = Wall()
    async with serve(make_config, wall, completed="1h") as client:
        retention = client.app[RETENTION]  # type: ignore[union-attr]
        blob = "x" * 2000
        for batch in range(4):
            response = await client.post("/api/jobs/batch", json={"jobs": [
                {"type": "test.echo", "data": {"blob": blob, "i": i}} for i in range(250 * batch, 250 * batch + 250)]})
            assert response.status == 201

        async def all_completed() -> bool:
            return (await (await client.get("/api/stats")).json())["jobs"]["completed"] == 1000

        await eventually(all_completed, what="1000 jobs to complete")
        db = tmp_path / "offload.db"

        def pages() -> tuple[int, int, int]:
            with contextlib.closing(sqlite3.connect(db)) as conn:
                return tuple(conn.execute(f"PRAGMA {p}").fetchone()[0]  # type: ignore[return-value]
                             for p in ("auto_vacuum", "page_count", "freelist_count"))

        mode, before, _ = pages()
        assert mode == 2  # INCREMENTAL, set when the file was made
        wall.ahead_ms = 2 * 3_600_000
        assert (await retention.run_once()).jobs["completed"] == 1000
        _, after, free = pages()
        assert free == 0 and after < before / 2, (before, after, free)


def test_durations_are_written_with_a_unit_and_a_bad_one_is_named():
    assert [parse_duration(t) for t in ("90s", "15m", "24h", "7d", "1h30m", "500ms", "2w")] == [
        90_000, 900_000, 86_400_000, 604_800_000, 5_400_000, 500, 1_209_600_000]
    assert [parse_duration(t) for t in ("0", "off", "", " OFF ")] == [None] * 4
    for bad in ("30", "7 days", "-1d", "1.5h", "d"):
        with pytest.raises(ConfigError, match="is not a duration"):
            parse_duration(bad, "[retention] completed")
    with pytest.raises(ConfigError, match=r"\[retention\] failed: '3x' is not a duration"):
        load_config(None, environ={"OFFLOAD_RETENTION_FAILED": "3x"})
    with pytest.raises(ConfigError, match=r"\[retention\] interval must be at least 1s"):
        load_config(None, environ={}, overrides={"retention": {"interval": "off"}})
    assert load_config(None, environ={"OFFLOAD_RETENTION_RESULTS": "24h"}).retention.ms("results") == DAY
