"""Cancel recorded in the store: `DELETE` of a job running on another node records the
request, answers 202 with it, and the attempt's ending becomes cancelled wherever it ends."""
from __future__ import annotations

from offload.service.keys import STORE
from offload.service.models import Job, JobStatus, new_job_id, now_ms
from tests.conftest import ws_events_until
from tests.conftest import both_backends as store_backend  # noqa: F401  (each test on SQLite and on PostgreSQL)


async def test_delete_of_a_job_running_on_another_node_answers_202_and_its_retry_becomes_cancelled(start_server):
    client = await start_server(workers={"processes": 1})
    store = client.server.app[STORE]
    # A job of a type only the other node runs, claimed by that node (same database).
    await store.create(Job(new_job_id(), "elsewhere.render", "local", {}, max_retries=3))
    (remote,) = await store.claim("node_elsewhere", now_ms(), 60_000, types=["elsewhere.render"])
    async with client.ws_connect("/api/ws") as ws:
        await ws.send_json({"op": "subscribe", "jobId": remote.id})
        assert (await ws.receive_json())["job"]["status"] == "running"
        response = await client.delete(f"/api/jobs/{remote.id}")
        assert response.status == 202
        body = await response.json()
        assert (body["status"], body["cancelRequested"], body["seq"]) == ("running", True, remote.seq + 1)
        event = await ws.receive_json()  # the recorded request is an event of its own
        assert (event["status"], event["job"]["cancelRequested"], event["seq"]) == ("running", True, body["seq"])
        # The other node's attempt ends with an error while it has retries left: cancelled, not retried.
        final = await store.fail(remote, {"type": "Stopped", "message": "stopped"}, now_ms(), now_ms() + 10)
        assert final is not None and final.status is JobStatus.CANCELLED
        (last,) = await ws_events_until(ws, remote.id)
        assert (last["status"], last["seq"]) == ("cancelled", final.seq)
    again = await client.delete(f"/api/jobs/{remote.id}")
    assert again.status == 409 and (await again.json())["error"]["code"] == "conflict"
