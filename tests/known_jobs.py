"""A known set of jobs for the statistics and metrics tests, and a wall clock they can step.

`run_known_jobs` leaves, once it returns: three `test.echo` jobs completed, one `test.fail`
failed at once (permanent), one `test.fail` failed after one retry, one `test.echo`
cancelled while it waited, and (unless `delayed=False`) one `test.echo` pending for two days.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp.test_utils import TestClient

from offload.service.models import now_ms
from tests.conftest import wait_status

TWO_DAYS_MS = 2 * 86_400_000


def ms(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


class Wall:
    """A wall clock that starts at `start` (ISO-8601) and runs at the machine's pace; `step_ms`
    moves it forward."""

    def __init__(self, start: str) -> None:
        self.offset = ms(start) - now_ms()
        self.step_ms = 0

    def __call__(self) -> int:
        return now_ms() + self.offset + self.step_ms


async def submit(client: TestClient, type: str, data: Any, headers: dict[str, str] | None = None,
                 **options: Any) -> str:
    response = await client.post("/api/jobs", json={"type": type, "data": data, "options": options}, headers=headers)
    body = await response.json()
    assert response.status == 201, body
    return body["jobId"]


async def run_known_jobs(client: TestClient, *, delayed: bool = True) -> dict[str, list[str]]:
    jobs: dict[str, list[str]] = {"completed": [], "failed": [], "cancelled": [], "pending": []}
    for i in range(3):
        jobs["completed"].append(await submit(client, "test.echo", {"i": i}))
    jobs["failed"].append(await submit(client, "test.fail", {"permanent": True}))
    jobs["failed"].append(await submit(client, "test.fail", {}, maxRetries=1))  # one retry, then failed
    waiting = await submit(client, "test.echo", {"cancel": "me"}, delay=TWO_DAYS_MS)
    response = await client.delete(f"/api/jobs/{waiting}")
    assert response.status == 200, await response.json()
    jobs["cancelled"].append(waiting)
    if delayed:
        jobs["pending"].append(await submit(client, "test.echo", {"later": True}, delay=TWO_DAYS_MS, priority="low"))
    for status in ("completed", "failed"):
        for job_id in jobs[status]:
            assert (await wait_status(client, job_id, "completed", "failed"))["status"] == status
    return jobs
