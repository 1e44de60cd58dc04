"""Two users on one real server: neither sees, cancels, downloads or watches the other's jobs."""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from offload.service.events import EventHub, Subscriber, progress_event

from tests.conftest import invoice, wait_status
from tests.conftest import both_backends as store_backend  # noqa: F401  (each test on SQLite and on PostgreSQL)
from tests.users import TOKENS, A, B, job_as, submit_as

UNKNOWN = "job_aaaaaaaaaaaaaaaaaaaaaaaa"


async def _not_found_like_unknown(response: Any, job_id: str) -> None:
    """Another user's job answers exactly like a job that does not exist."""
    assert response.status == 404
    assert await response.json() == {"error": {"code": "not_found", "message": f"no job with id {job_id!r}"}}


async def test_other_users_job_is_404_on_get_delete_and_download(start_server):
    client = await start_server(**TOKENS)
    done = await submit_as(client, A, "pdf", invoice(3, "INV-A1"))
    waiting = await submit_as(client, A, "test.echo", {"secret": "a"}, delay=3_600_000)
    await wait_status(client, done, "completed", headers=A)

    for job_id in (done, waiting):
        await _not_found_like_unknown(await client.get(f"/api/jobs/{job_id}", headers=B), job_id)
        await _not_found_like_unknown(await client.delete(f"/api/jobs/{job_id}", headers=B), job_id)
        await _not_found_like_unknown(await client.get(f"/api/jobs/{job_id}/download", headers=B), job_id)
    # ... and A still has both, untouched
    assert (await job_as(client, A, waiting))[1]["status"] == "pending"
    download = await client.get(f"/api/jobs/{done}/download", headers=A)
    assert download.status == 200 and (await download.read()).startswith(b"%PDF")


async def test_running_job_of_another_user_cannot_be_cancelled(start_server, tmp_path):
    client = await start_server(**TOKENS)
    gate = tmp_path / "gate"
    running = await submit_as(client, A, "test.steps", {"n": 1, "gate": str(gate)})
    await wait_status(client, running, "running", headers=A)
    await _not_found_like_unknown(await client.delete(f"/api/jobs/{running}", headers=B), running)
    gate.write_text("go")
    await wait_status(client, running, "completed", headers=A)


async def test_each_user_lists_only_their_own_jobs(start_server):
    client = await start_server(**TOKENS)
    a_ids = [await submit_as(client, A, "test.echo", {"i": i}, delay=3_600_000) for i in range(3)]
    b_ids = [await submit_as(client, B, "test.echo", {"i": i}, delay=3_600_000) for i in range(2)]
    for headers, own in ((A, a_ids), (B, b_ids)):
        seen: list[str] = []
        params = {"limit": "1"}
        while True:
            page = await (await client.get("/api/jobs", params=params, headers=headers)).json()
            seen += [j["id"] for j in page["jobs"]]
            if not page["nextCursor"]:
                break
            params = {"limit": "1", "cursor": page["nextCursor"]}
        assert seen == own[::-1]
        listed = await (await client.get("/api/jobs", params={"status": "pending"}, headers=headers)).json()
        assert {j["id"] for j in listed["jobs"]} == set(own)  # every own job is pending; nobody else's


async def test_stats_show_a_user_their_own_counts_and_an_admin_the_whole_service(start_server):
    client = await start_server(auth={**TOKENS["auth"], "admins": ["alice"]})
    for i in range(2):
        await submit_as(client, A, "test.echo", {"i": i}, delay=3_600_000)
    done = await submit_as(client, B, "test.echo", {"b": 1})
    await submit_as(client, B, "test.echo", {"b": 2}, delay=3_600_000)
    await wait_status(client, done, "completed", headers=B)

    response = await client.get("/api/stats", headers=B)
    assert response.status == 200
    mine = await response.json()
    assert (mine["scope"], mine["jobs"]) == ("own", {"pending": 1, "running": 0, "completed": 1, "failed": 0,
                                                      "cancelled": 0})
    assert "scheduler" not in mine and "websocket" not in mine
    health = await (await client.get("/api/health", headers=B)).json()
    assert set(health) == {"status", "accepting"}  # no worker pids for a user

    everything = await (await client.get("/api/stats", headers=A)).json()
    assert everything["scope"] == "all"
    assert everything["jobs"]["pending"] == 3 and everything["jobs"]["completed"] == 1
    assert everything["scheduler"]["node"].startswith("node_")
    pids = everything["scheduler"]["workers"]["pids"]
    assert pids and all(isinstance(pid, int) for pid in pids)
    assert (await (await client.get("/api/health", headers=A)).json())["workers"]["pids"] == pids
    text = await (await client.get("/api/stats", headers=B)).text()
    assert everything["scheduler"]["node"] not in text and not any(str(pid) in text for pid in pids)


async def test_without_admins_every_user_sees_their_own_stats_only(start_server):
    client = await start_server(**TOKENS)
    await submit_as(client, A, "test.echo", {"a": 1}, delay=3_600_000)
    for headers, pending in ((A, 1), (B, 0)):
        stats = await (await client.get("/api/stats", headers=headers)).json()
        assert stats["scope"] == "own" and stats["jobs"]["pending"] == pending and "scheduler" not in stats


async def test_idempotency_keys_are_per_user(start_server):
    client = await start_server(**TOKENS)
    options = {"idempotencyKey": "order-42", "delay": 3_600_000}
    a1 = await submit_as(client, A, "test.echo", {"n": 1}, **options)
    b1 = await submit_as(client, B, "test.echo", {"n": 1}, **options)
    assert a1 != b1
    again = await client.post("/api/jobs", headers=A, json={"type": "test.echo", "data": {"n": 1}, "options": options})
    assert again.status == 200 and (await again.json())["jobId"] == a1
    assert (await job_as(client, B, b1))[0] == 200 and (await job_as(client, B, a1))[0] == 404


async def test_a_retry_with_a_key_another_user_also_used_answers_the_retriers_own_job(start_server):
    """Both users made a job with one key; each one's retry finds that user's own job,
    whoever used the key first (a lookup by key alone would hand Bob Alice's job)."""
    client = await start_server(**TOKENS)
    options = {"idempotencyKey": "order-7", "delay": 3_600_000}
    body = {"type": "test.echo", "data": {"n": 7}, "options": options}
    a1 = await submit_as(client, A, "test.echo", {"n": 7}, **options)
    b1 = await submit_as(client, B, "test.echo", {"n": 7}, **options)
    for headers, own, other in ((B, b1, a1), (A, a1, b1)):
        again = await client.post("/api/jobs", headers=headers, json=body)
        assert again.status == 200, await again.text()
        assert (await again.json())["jobId"] == own
        changed = await client.post("/api/jobs", headers=headers, json={**body, "data": {"n": 8}})
        error = (await changed.json())["error"]
        assert changed.status == 422 and own in error["message"] and other not in error["message"], error
    assert (await job_as(client, B, b1))[0] == 200 and (await job_as(client, B, a1))[0] == 404
    listed = await (await client.get("/api/jobs", headers=B)).json()
    assert [j["id"] for j in listed["jobs"]] == [b1]


async def test_websocket_subscribe_to_another_users_job_gets_not_found_and_no_data(start_server, tmp_path):
    client = await start_server(**TOKENS)
    gate = tmp_path / "gate"
    a_job = await submit_as(client, A, "test.steps", {"n": 5, "gate": str(gate)})
    async with client.ws_connect("/api/ws", headers=B) as ws:
        await ws.send_json({"op": "subscribe", "jobId": a_job})
        error = await ws.receive_json()
        assert error == {"event": "error", "code": "not_found", "message": f"no job with id {a_job!r}"}
        gate.write_text("go")
        await wait_status(client, a_job, "completed", headers=A)
        await ws.send_json({"op": "ping"})
        assert await ws.receive_json() == {"event": "pong"}  # nothing about A's job came in between


async def test_subscribe_all_streams_only_own_jobs(start_server):
    client = await start_server(**TOKENS)
    a_before = await submit_as(client, A, "test.echo", {"who": "a"}, delay=3_600_000)
    b_before = await submit_as(client, B, "test.echo", {"who": "b"}, delay=3_600_000)
    async with client.ws_connect("/api/ws", headers=B) as ws_b, client.ws_connect("/api/ws", headers=A) as ws_a:
        for ws in (ws_b, ws_a):
            await ws.send_json({"op": "subscribe", "all": True})
        snapshot_b = await ws_b.receive_json()
        assert snapshot_b["event"] == "snapshot" and snapshot_b["job"]["id"] == b_before
        snapshot_a = await ws_a.receive_json()
        assert snapshot_a["job"]["id"] == a_before
        a_new = await submit_as(client, A, "test.echo", {"who": "a"})
        b_new = await submit_as(client, B, "test.echo", {"who": "b"})
        b_events = await _until_completed(ws_b, b_new)
        a_events = await _until_completed(ws_a, a_new)
    assert {_job_id(e) for e in b_events} <= {b_before, b_new}
    assert {_job_id(e) for e in a_events} <= {a_before, a_new}
    assert b_events[-1]["job"]["result"] == {"value": {"who": "b"}}


def _job_id(event: dict[str, Any]) -> str:
    return event.get("jobId") or event["job"]["id"]


async def _until_completed(ws: Any, job_id: str) -> list[dict[str, Any]]:
    events = []
    async with asyncio.timeout(20):
        while True:
            event = await ws.receive_json()
            events.append(event)
            if event.get("jobId") == job_id and event.get("status") == "completed":
                return events


def test_hub_never_delivers_another_owners_events_even_to_a_watcher_of_that_id():
    # The WebSocket watches a job id before it has looked the job up (so no event is lost
    # between snapshot and stream): an event of that id published meanwhile must not reach
    # a subscriber of another owner, nor be replayed once the lookup found nothing.
    hub = EventHub()
    mallory = Subscriber("bob")
    mallory.hold("job_x")
    hub.watch_job(mallory, "job_x")
    hub.publish(progress_event("job_x", "alice", 50, "secret", 3))
    hub.unwatch_job(mallory, "job_x")
    mallory.release("job_x", None)
    assert mallory._queue == deque()
    hub.watch_job(mallory, "job_x")  # and even while it watches, nothing of alice's arrives
    hub.publish(progress_event("job_x", "alice", 60, "secret", 4))
    assert mallory._queue == deque()
    admin = Subscriber(None)
    hub.watch_all(admin)
    assert admin.stream is not None
    admin.add_page(admin.stream, [], None)  # no unfinished jobs: the snapshot stream ends at once
    hub.publish(progress_event("job_x", "alice", 70, "fine", 5))
    assert len(admin._queue) == 1
