"""`POST /api/jobs/{id}/retry`: a failed or cancelled job goes pending again under the same id,
attempts from zero, and runs; anything else is a 409 naming its status; an unknown or
another user's job is a 404, alike."""
from __future__ import annotations

import asyncio

from tests.conftest import submit, wait_status
from tests.conftest import both_backends as store_backend  # noqa: F401  (each test on SQLite and on PostgreSQL)
from tests.users import A, B, TOKENS, submit_as


async def test_a_failed_job_retried_runs_again_and_completes(start_server, tmp_path):
    client = await start_server()
    counter = tmp_path / "count"
    # fails on its first run (no retries left), succeeds on the next one
    job_id = await submit(client, "test.fail", {"succeed_after": 1, "counter": str(counter)}, maxRetries=0)
    failed = await wait_status(client, job_id, "completed", "failed")
    assert (failed["status"], failed["attempts"], failed["error"]["type"]) == ("failed", 1, "Broken"), failed

    async with client.ws_connect("/api/ws") as ws:
        await ws.send_json({"op": "subscribe", "jobId": job_id})
        snapshot = await ws.receive_json()
        assert snapshot["event"] == "snapshot" and snapshot["job"]["seq"] == failed["seq"]
        response = await client.post(f"/api/jobs/{job_id}/retry")
        retried = await response.json()
        assert response.status == 200, retried
        assert retried["id"] == job_id
        assert (retried["status"], retried["attempts"], retried["error"], retried["completedAt"]) == (
            "pending", 0, None, None)
        assert retried["seq"] > failed["seq"]
        statuses = []
        async with asyncio.timeout(30):
            while not statuses or statuses[-1][0] != "completed":
                event = await ws.receive_json()
                if event["event"] == "status":
                    statuses.append((event["status"], event["seq"]))
        assert [s for s, _ in statuses] == ["pending", "running", "completed"]
        assert statuses[0][1] == retried["seq"]  # the same id went pending again, with the next seq
        assert [seq for _, seq in statuses] == sorted(seq for _, seq in statuses)

    done = await wait_status(client, job_id, "completed")
    assert (done["attempts"], done["result"]) == (1, {"value": {"attempt": 1}})
    assert counter.read_text() == "2"  # it really ran a second time


async def test_a_cancelled_job_retried_runs(start_server):
    client = await start_server()
    job_id = await submit(client, "test.echo", {"x": 1}, delay=3_600_000)
    assert (await (await client.delete(f"/api/jobs/{job_id}")).json())["status"] == "cancelled"
    response = await client.post(f"/api/jobs/{job_id}/retry")
    assert response.status == 200, await response.text()
    # due now, not at the hour the first submission asked for
    done = await wait_status(client, job_id, "completed", "failed")
    assert (done["status"], done["result"]) == ("completed", {"value": {"x": 1}}), done


async def test_retry_of_a_pending_running_or_completed_job_is_409_naming_its_status(start_server, tmp_path):
    client = await start_server()
    gate = tmp_path / "gate"
    running = await submit(client, "test.steps", {"n": 1, "gate": str(gate)})
    await wait_status(client, running, "running")
    pending = await submit(client, "test.echo", {}, delay=3_600_000)
    for job_id, status in ((running, "running"), (pending, "pending")):
        response = await client.post(f"/api/jobs/{job_id}/retry")
        body = await response.json()
        assert response.status == 409, body
        assert body["error"]["code"] == "conflict"
        assert f"is {status}" in body["error"]["message"] and "failed or cancelled" in body["error"]["message"]
    gate.write_text("go")
    await wait_status(client, running, "completed")
    response = await client.post(f"/api/jobs/{running}/retry")
    assert response.status == 409 and "is completed" in (await response.json())["error"]["message"]
    assert (await wait_status(client, running, "completed"))["attempts"] == 1  # nothing was re-queued


async def test_retry_of_another_users_job_is_404_exactly_like_an_unknown_one(start_server):
    client = await start_server(**TOKENS)
    job_id = await submit_as(client, A, "test.fail", {"permanent": True})
    await wait_status(client, job_id, "failed", headers=A)
    foreign = await client.post(f"/api/jobs/{job_id}/retry", headers=B)
    unknown_id = "job_" + "a" * 24
    unknown = await client.post(f"/api/jobs/{unknown_id}/retry", headers=B)
    assert foreign.status == unknown.status == 404
    foreign_body, unknown_body = await foreign.json(), await unknown.json()
    assert foreign_body["error"]["message"].replace(job_id, "<id>") == \
        unknown_body["error"]["message"].replace(unknown_id, "<id>")
    assert (await wait_status(client, job_id, "failed", headers=A))["attempts"] == 1  # untouched
    mine = await client.post(f"/api/jobs/{job_id}/retry", headers=A)
    assert mine.status == 200, await mine.text()
