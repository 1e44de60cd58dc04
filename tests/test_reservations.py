"""Reservations: while every worker is busy, the scheduler sets the next jobs aside so a
freed worker starts one at once. They must never change what runs, or in which order."""
from __future__ import annotations

from offload.service.keys import SCHEDULER
from offload.service.models import Job, JobStatus, Priority, new_job_id, now_ms
from offload.service.store.sqlite import SQLiteStore
from tests.conftest import eventually, submit, wait_status, ws_events_until


async def reserved(client, job_id: str) -> bool:  # type: ignore[no-untyped-def]
    """Whether `job_id` is exactly what the scheduler holds reserved."""
    return [job.id for job in client.server.app[SCHEDULER].reserved] == [job_id]


async def test_reserved_job_cancelled_before_it_starts_never_runs(start_server, tmp_path):
    client = await start_server(workers={"processes": 1})
    gate = tmp_path / "gate"
    blocker = await submit(client, "test.steps", {"n": 1, "gate": str(gate)})
    await wait_status(client, blocker, "running")
    doomed = await submit(client, "test.clock", {"doomed": True})
    await eventually(lambda: reserved(client, doomed), what="the waiting job to be reserved")
    response = await client.delete(f"/api/jobs/{doomed}")
    assert response.status == 200 and (await response.json())["status"] == "cancelled"
    after = await submit(client, "test.clock", {"after": True})
    gate.write_text("go")
    await wait_status(client, after, "completed")
    job = await (await client.get(f"/api/jobs/{doomed}")).json()
    assert (job["status"], job["attempts"], job["startedAt"]) == ("cancelled", 0, None)


async def test_better_submission_takes_the_place_of_a_reserved_job(start_server, tmp_path):
    client = await start_server(workers={"processes": 1})
    gate = tmp_path / "gate"
    blocker = await submit(client, "test.steps", {"n": 1, "gate": str(gate)})
    await wait_status(client, blocker, "running")
    low = await submit(client, "test.clock", {"p": "low"}, priority="low")
    await eventually(lambda: reserved(client, low), what="the low job to be reserved")
    high = await submit(client, "test.clock", {"p": "high"}, priority="high")
    await eventually(lambda: reserved(client, high), what="the high job to take the reservation")
    gate.write_text("go")
    done = [await wait_status(client, j, "completed") for j in (high, low)]
    assert done[0]["result"]["value"]["ns"] < done[1]["result"]["value"]["ns"]
    assert [j["attempts"] for j in done] == [1, 1]


async def test_store_reservations_are_skipped_by_claims_and_lapse_with_the_lease(tmp_path):
    store = SQLiteStore(tmp_path / "r.db")
    await store.open()
    try:
        base = now_ms() - 1000
        first, second = [(await store.create(Job(id=new_job_id(), type="t", owner="u", data={}, created_at=base + i,
                                                 priority=Priority.MEDIUM)))[0] for i in range(2)]
        [held] = await store.reserve("n1", now_ms(), 30_000, ["t"], 1)
        assert held.id == first.id and held.status is JobStatus.PENDING and held.attempts == 0
        assert held.seq == first.seq  # not an event
        [claimed] = await store.claim("n2", now_ms(), 30_000, ["t"], limit=5)
        assert claimed.id == second.id  # the reserved job is not another node's to take
        started = await store.start_reserved(held, now_ms(), 30_000)
        assert started is not None and (started.status, started.attempts) == (JobStatus.RUNNING, 1)
        assert await store.start_reserved(held, now_ms(), 30_000) is None  # only once

        third = (await store.create(Job(id=new_job_id(), type="t", owner="u", data={})))[0]
        await store.reserve("n1", now_ms(), 1_000, ["t"], 1)
        assert await store.claim("n2", now_ms(), 30_000, ["t"]) == []
        await store.rescue_expired(now_ms() + 5_000, {"type": "WorkerLost", "message": "gone"})
        [taken] = await store.claim("n2", now_ms() + 5_000, 30_000, ["t"])
        assert taken.id == third.id and taken.attempts == 1
    finally:
        await store.close()


async def test_a_reserved_jobs_progress_reaches_its_subscriber(start_server, tmp_path):
    """The progress a job reports right after it starts from a reservation is kept and sent:
    its start is written before the progress the attempt queued after it."""
    client = await start_server(workers={"processes": 1})
    gate = tmp_path / "gate"
    blocker = await submit(client, "test.steps", {"n": 1, "gate": str(gate)})
    await wait_status(client, blocker, "running")
    steps = await submit(client, "test.steps", {"n": 4})
    await eventually(lambda: reserved(client, steps), what="the waiting job to be reserved")
    async with client.ws_connect("/api/ws") as ws:
        await ws.send_json({"op": "subscribe", "jobId": steps})
        assert (await ws.receive_json())["job"]["status"] == "pending"
        gate.write_text("go")
        events = await ws_events_until(ws, steps)
    assert events[-1]["status"] == "completed"
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["progress"] == 100, events
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
