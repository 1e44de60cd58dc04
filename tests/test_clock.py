"""A wall clock stepped back (an NTP step, a VM resumed) never stalls the queue: the
service's `Clock` never goes back, and due times are compared with it alone.

The wall clock is the one thing injected (`create_app(config, clock=Clock(wall))`); the
server, the store, the scheduler and the worker processes are the real ones."""
from __future__ import annotations

from datetime import datetime

from aiohttp.test_utils import TestClient, TestServer

from offload.service.app import create_app
from offload.service.models import Clock, Job, new_job_id, now_ms
from offload.service.store.sqlite import SQLiteStore
from tests.conftest import submit, wait_status

HOUR_MS = 3_600_000


class SteppedWall:
    """The machine's wall clock, moved by `step_ms` (negative: stepped back)."""

    def __init__(self) -> None:
        self.step_ms = 0

    def __call__(self) -> int:
        return now_ms() + self.step_ms


def ms(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


def test_clock_never_goes_back_and_follows_a_step_forward():
    wall = SteppedWall()
    clock = Clock(wall)
    before = clock.now()
    wall.step_ms = -HOUR_MS
    readings = [clock.now() for _ in range(1000)]
    assert before <= readings[0] and readings == sorted(readings)
    assert readings[0] > wall()  # it kept its own time, an hour ahead of the stepped wall
    wall.step_ms = HOUR_MS
    seen = wall()
    assert clock.now() >= seen  # a step forward is followed at once
    clock.not_before(seen + 10 * HOUR_MS)
    assert clock.now() >= seen + 10 * HOUR_MS


async def test_wall_clock_stepped_back_an_hour_leaves_due_jobs_due(make_config, tmp_path):
    wall = SteppedWall()
    app = create_app(make_config(workers={"processes": 1}), clock=Clock(wall))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        gate = tmp_path / "gate"
        busy = await submit(client, "test.steps", {"n": 1, "gate": str(gate)})
        await wait_status(client, busy, "running")
        # Due now, behind the one busy slot: the first is set aside as that worker's next job,
        # the second waits for a claim, which compares its due time with the clock.
        queued = [await submit(client, "test.echo", {"queued": i}) for i in range(2)]
        for job_id in queued:
            assert (await wait_status(client, job_id, "pending"))["runAt"] is None

        wall.step_ms = -HOUR_MS  # the NTP step
        gate.write_text("go")  # the slot frees up an hour "earlier" than the queued jobs were due
        after = await submit(client, "test.echo", {"after": "step"})
        jobs = [busy, *queued, after]
        for job_id in jobs:
            done = await wait_status(client, job_id, "completed", "failed", timeout=20)
            assert done["status"] == "completed", done
        created = [ms((await wait_status(client, j, "completed"))["createdAt"]) for j in jobs]
        assert created == sorted(created)  # the service's time did not go back


async def test_restart_after_the_wall_clock_went_back_runs_stored_jobs_at_once(make_config):
    """Jobs stored an hour "ahead" (before the wall clock was stepped back), then a restart:
    the new run's clock starts no earlier than the latest stored time."""
    config = make_config(workers={"processes": 1})
    store = SQLiteStore(config.store_url.removeprefix("sqlite:///"))
    await store.open()
    ahead = now_ms() + HOUR_MS
    stored = [(await store.create(Job(new_job_id(), "test.echo", "local", {"i": i}, created_at=ahead + i)))[0]
              for i in range(3)]
    await store.close()

    async with TestClient(TestServer(create_app(config), host="127.0.0.1")) as client:
        for job in stored:
            done = await wait_status(client, job.id, "completed", "failed", timeout=20)
            assert done["status"] == "completed", done
        later = await submit(client, "test.echo", {"later": True})
        done = await wait_status(client, later, "completed", timeout=20)
        assert ms(done["createdAt"]) > ahead  # FIFO after the stored jobs, not an hour before them
