"""Jobs that follow jobs (`options.after`), end to end through a real server: waiting,
inputs, failure and cancel cascades, batches, refusals, restarts and the events clients see."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from offload import AsyncClient
from offload.service.models import Job, JobStatus, new_job_id, now_ms
from offload.service.store import open_store
from offload.service.store.sqlite import SCHEMA_VERSION
from tests.conftest import eventually
from tests.conftest import both_backends as store_backend  # noqa: F401  (each test on SQLite and on PostgreSQL)
from tests.server_process import ServerProcess
from tests.users import A, B, TOKENS

MODULES = ["tests.jobtypes", "tests.aftertypes"]
FINISHED = ("completed", "failed", "cancelled")


@pytest.fixture
async def server(start_server, tmp_path: Path):
    return await start_server(workers={"processes": 2, "modules": MODULES})


async def submit(client: Any, type: str, data: Any, headers: dict[str, str] | None = None, **options: Any) -> dict:
    response = await client.post("/api/jobs", json={"type": type, "data": data, "options": options},
                                 headers=headers or {})
    body = await response.json()
    assert response.status == 201, body
    return body


async def job(client: Any, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = await client.get(f"/api/jobs/{job_id}", headers=headers or {})
    assert response.status == 200
    return await response.json()


async def finished(client: Any, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        found = await job(client, job_id, headers)
        return found if found["status"] in FINISHED else None

    return await eventually(check, 30, f"job {job_id} finished")


async def test_a_chain_runs_in_order_and_each_job_sees_its_parents_result(server, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    a = (await submit(server, "test.steps", {"n": 2, "gate": str(gate)}))["jobId"]
    b = (await submit(server, "after.inputs", {"tag": "b"}, after=[a]))["jobId"]
    c = (await submit(server, "after.inputs", {"tag": "c"}, after=[b, b]))["jobId"]  # named twice: once
    waiting = await job(server, b)
    assert waiting["status"] == "pending" and waiting["waitingFor"] == [a] and waiting["after"] == [a]
    assert waiting["runAt"] is None  # no time to wait for: it waits for a job
    assert (await job(server, c))["after"] == [b]
    listed = await (await server.get("/api/jobs", params={"status": "waiting"})).json()
    assert {j["id"] for j in listed["jobs"]} == {b, c}
    scheduled = await (await server.get("/api/jobs", params={"status": "scheduled"})).json()
    assert scheduled["jobs"] == []  # waiting is not scheduled
    stats = await (await server.get("/api/stats")).json()
    assert stats["waiting"] == 2 and stats["delayed"] == 0
    gate.touch()
    done_a, done_b, done_c = [await finished(server, j) for j in (a, b, c)]
    assert [done_a["status"], done_b["status"], done_c["status"]] == ["completed"] * 3
    assert done_b["startedAt"] >= done_a["completedAt"] and done_c["startedAt"] >= done_b["completedAt"]
    assert done_b["result"]["value"]["inputs"] == [
        {"id": a, "type": "test.steps", "status": "completed", "value": done_a["result"]["value"], "error": None,
         "filename": None}]
    assert done_c["result"]["value"]["inputs"][0]["value"]["tag"] == "b"
    assert done_c["waitingFor"] == []


async def test_a_file_result_is_read_through_input_open(server) -> None:
    parent = (await submit(server, "after.file", {"name": "invoice.txt", "text": "INV-1001 total 139.00"}))["jobId"]
    child = (await submit(server, "after.inputs", {}, after=[parent]))["jobId"]
    done = await finished(server, child)
    assert done["status"] == "completed", done
    download = await (await server.get(f"/api/jobs/{parent}/download")).read()
    seen = done["result"]["value"]["inputs"][0]
    assert seen["filename"] == "invoice.txt" and seen["absolute"] is True
    assert seen["size"] == len(download) and seen["sha256"] == hashlib.sha256(download).hexdigest()


async def test_a_failed_parent_cancels_its_children_naming_it_down_the_chain(server, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    a = (await submit(server, "after.fail", {"gate": str(gate)}, maxRetries=0))["jobId"]
    b = (await submit(server, "after.inputs", {}, after=[a]))["jobId"]
    c = (await submit(server, "after.inputs", {}, after=[b]))["jobId"]
    gate.touch()
    assert (await finished(server, a))["status"] == "failed"
    done_b, done_c = await finished(server, b), await finished(server, c)
    assert done_b["status"] == "cancelled" and done_b["error"]["type"] == "DependencyFailed"
    assert done_b["error"]["message"] == f"job {a} failed: the parent broke on purpose"
    assert done_c["status"] == "cancelled"  # the first job that failed, however long the chain
    assert done_c["error"]["message"] == f"job {b} cancelled: job {a} failed: the parent broke on purpose"
    assert done_b["startedAt"] is None and done_b["waitingFor"] == []
    # A job that follows a job that failed already is cancelled at once, in its answer.
    late = await submit(server, "after.inputs", {}, after=[a])
    assert late["status"] == "cancelled"
    assert (await job(server, late["jobId"]))["error"]["message"].startswith(f"job {a} failed")


async def test_after_failed_run_runs_anyway_and_sees_the_failure(server, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    a = (await submit(server, "after.fail", {"gate": str(gate)}, maxRetries=0))["jobId"]
    ok = (await submit(server, "test.echo", {"x": 1}))["jobId"]
    b = (await submit(server, "after.inputs", {}, after=[a, ok], afterFailed="run"))["jobId"]
    assert (await job(server, b))["afterFailed"] == "run"
    gate.touch()
    done = await finished(server, b)
    assert done["status"] == "completed", done
    failed, completed = done["result"]["value"]["inputs"]
    assert failed["id"] == a and failed["status"] == "failed" and failed["value"] is None
    assert failed["error"]["message"] == "the parent broke on purpose"
    assert completed == {"id": ok, "type": "test.echo", "status": "completed", "value": {"x": 1}, "error": None,
                         "filename": None}


async def test_cancelling_a_waiting_job_or_its_parent(server) -> None:
    parent = (await submit(server, "test.echo", {}, delay=3_600_000))["jobId"]
    first = (await submit(server, "after.inputs", {}, after=[parent]))["jobId"]
    second = (await submit(server, "after.inputs", {}, after=[parent]))["jobId"]
    grandchild = (await submit(server, "after.inputs", {}, after=[second]))["jobId"]
    response = await server.delete(f"/api/jobs/{first}")
    assert response.status == 200 and (await response.json())["status"] == "cancelled"
    assert (await job(server, parent))["status"] == "pending"  # a child's cancel leaves its parent alone
    response = await server.delete(f"/api/jobs/{parent}")
    assert response.status == 200
    # The cancel's own transaction took the children along: they are cancelled when it answers.
    after = await job(server, second)
    assert after["status"] == "cancelled" and after["error"]["message"] == f"job {parent} cancelled"
    assert (await job(server, grandchild))["error"]["message"] == f"job {second} cancelled: job {parent} cancelled"
    assert (await job(server, first))["error"] is None  # cancelled by its own DELETE, not by the parent


async def test_retry_follows_the_parents_again(server, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    a = (await submit(server, "test.fail", {"succeed_after": 1, "counter": str(counter)}, maxRetries=0))["jobId"]
    b = (await submit(server, "after.inputs", {}, after=[a]))["jobId"]
    assert (await finished(server, a))["status"] == "failed"
    assert (await finished(server, b))["status"] == "cancelled"
    again = await (await server.post(f"/api/jobs/{b}/retry")).json()
    assert again["status"] == "cancelled" and again["error"]["type"] == "DependencyFailed"  # its parent still failed
    await server.post(f"/api/jobs/{a}/retry")
    assert (await finished(server, a))["status"] == "completed"
    retried = await (await server.post(f"/api/jobs/{b}/retry")).json()
    assert retried["status"] == "pending"
    done = await finished(server, b)
    assert done["status"] == "completed" and done["result"]["value"]["inputs"][0]["value"] == {"attempt": 1}


async def test_a_batch_job_follows_earlier_jobs_of_the_batch(server) -> None:
    async def batch(jobs: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        response = await server.post("/api/jobs/batch", json={"jobs": jobs})
        return response.status, await response.json()

    status, body = await batch([
        {"type": "after.file", "data": {"text": "invoice"}},
        {"type": "after.inputs", "data": {"tag": "mail"}, "options": {"after": ["#0"]}},
        {"type": "after.inputs", "data": {}, "options": {"after": ["#1", "#0"]}},
    ])
    assert status == 201, body
    ids = [answer["jobId"] for answer in body["jobs"]]
    last = await finished(server, ids[2])
    assert (await job(server, ids[2]))["after"] == [ids[1], ids[0]]
    assert [i["id"] for i in last["result"]["value"]["inputs"]] == [ids[1], ids[0]]
    assert last["result"]["value"]["inputs"][1]["filename"] == "report.txt"
    before = len((await (await server.get("/api/jobs")).json())["jobs"])
    for refs, where in ((["#1"], "jobs[0].options.after[0]"), (["#0"], "jobs[0].options.after[0]")):
        status, body = await batch([{"type": "test.echo", "data": {}, "options": {"after": refs}},
                                    {"type": "test.echo", "data": {}}])
        assert status == 422 and body["error"]["message"].startswith(f"{where}: "), body
    status, body = await batch([{"type": "test.echo", "data": {}},
                                {"type": "test.echo", "data": {}, "options": {"after": ["#0", new_job_id()]}}])
    assert status == 422 and body["error"]["message"].startswith("jobs[1].options.after[1]: "), body
    assert len((await (await server.get("/api/jobs")).json())["jobs"]) == before  # nothing of them stored
    response = await server.post("/api/jobs", json={"type": "test.echo", "data": {}, "options": {"after": ["#0"]}})
    assert response.status == 422 and "batch" in (await response.json())["error"]["message"]


async def test_unknown_and_foreign_ids_answer_alike(start_server) -> None:
    client = await start_server(workers={"processes": 1, "modules": MODULES}, **TOKENS)
    alices = (await submit(client, "test.echo", {}, headers=A))["jobId"]
    unknown = new_job_id()
    answers = []
    for job_id in (alices, unknown):
        response = await client.post("/api/jobs", headers=B, json={
            "type": "test.echo", "data": {}, "options": {"after": [new_job_id(), job_id][1:]}})
        answers.append((response.status, (await response.json())["error"]["message"].replace(job_id, "ID")))
    assert answers[0] == answers[1] == (422, "options.after[0]: there is no job ID of yours to follow")
    bad = [(["not-a-job"], "options.after[0]"), ("job_x", "options.after"), ([1], "options.after[0]")]
    for after, field in bad:
        response = await client.post("/api/jobs", headers=B,
                                     json={"type": "test.echo", "data": {}, "options": {"after": after}})
        assert response.status == 422 and (await response.json())["error"]["message"].startswith(f"{field}: ")
    response = await client.post("/api/jobs", headers=B, json={
        "type": "test.echo", "data": {}, "options": {"afterFailed": "ignore"}})
    assert response.status == 422 and (await response.json())["error"]["message"].startswith("options.afterFailed: ")
    listed = await (await client.get("/api/jobs", headers=B)).json()
    assert listed["jobs"] == []  # nothing stored for bob


async def test_a_job_follows_at_most_max_after_jobs(start_server) -> None:
    client = await start_server(workers={"processes": 1, "modules": MODULES}, limits={"max_after": 2})
    ids = [(await submit(client, "test.echo", {"i": i}))["jobId"] for i in range(3)]
    response = await client.post("/api/jobs", json={"type": "test.echo", "data": {}, "options": {"after": ids}})
    body = await response.json()
    assert response.status == 422 and body["error"]["message"].startswith("options.after: ") \
        and "max_after" in body["error"]["message"]
    assert (await submit(client, "test.echo", {}, after=ids[:2] + ids[:1]))["status"] == "pending"


async def test_a_subscriber_sees_the_child_go_from_waiting_to_done_in_seq_order(server, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    a = (await submit(server, "test.steps", {"n": 1, "gate": str(gate)}))["jobId"]
    events: list[dict[str, Any]] = []
    async with server.ws_connect("/api/ws") as ws:
        await ws.send_json({"op": "subscribe", "all": True})
        b = (await submit(server, "after.inputs", {}, after=[a]))["jobId"]
        gate.touch()
        async for message in ws:
            event = message.json()
            if (event.get("jobId") or event.get("job", {}).get("id")) == b:
                events.append(event)
                if event["event"] == "status" and event["status"] in FINISHED:
                    break
    statuses = [(e["event"], e["job"]["status"], e["job"]["waitingFor"]) for e in events if "job" in e]
    assert statuses[0] == ("status", "pending", [a]) or statuses[0] == ("snapshot", "pending", [a])
    assert ("status", "pending", []) in statuses  # it stopped waiting, as its own change
    assert [s[1] for s in statuses][-2:] == ["running", "completed"]
    seqs = [e["seq"] if e["event"] != "snapshot" else e["job"]["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_a_waiting_job_survives_a_kill_and_runs_after_its_parent(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with ServerProcess(tmp_path / "srv", modules=tuple(MODULES), lease_ms=1000) as server:
        await server.start()
        async with server.session() as http:
            a = (await submit(http, "test.steps", {"n": 1, "gate": str(gate)}))["jobId"]
            b = (await submit(http, "after.inputs", {}, after=[a]))["jobId"]
            await eventually(lambda: _status(http, a, "running"), 20, "the parent running")
        server.kill()  # SIGKILL: nothing is flushed or handed back
        await server.start()
        async with server.session() as http:
            kept = await job(http, b)
            assert kept["status"] == "pending" and kept["waitingFor"] == [a]
            gate.touch()
            done = await finished(http, b)
            assert done["status"] == "completed" and done["result"]["value"]["inputs"][0]["id"] == a
            assert done["startedAt"] >= (await job(http, a))["completedAt"]
        assert server.stop(signal.SIGTERM) == 0
        assert server.integrity() == "ok"


async def _status(http: aiohttp.ClientSession, job_id: str, status: str) -> bool:
    return (await job(http, job_id))["status"] == status


# ---- the store's part: retention and the schema ----------------------------------------------------
async def test_retention_keeps_a_parent_while_a_job_that_follows_it_is_unfinished(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    await store.open()
    try:
        parent, _ = await store.create(Job(id=new_job_id(), type="t", owner="u", data={}))
        now = now_ms() + 1  # the parent is due
        [running] = await store.claim("n", now, 10_000)
        await store.complete(running, {"value": 1}, now)
        child, _ = await store.create(Job(id=new_job_id(), type="t", owner="u", data={}, after=(parent.id,),
                                          due_at=now + 3_600_000))
        assert child.status is JobStatus.PENDING and child.waiting_for == ()  # its parent completed already
        assert await store.purge_finished(JobStatus.COMPLETED, now + 1, 10) == []  # the child will read it
        await store.cancel_pending(child.id, None, now)
        assert [p.job_id for p in await store.purge_finished(JobStatus.COMPLETED, now + 1, 10)] == [parent.id]
    finally:
        await store.close()


async def test_a_schema_3_file_gains_the_dependency_columns(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    schema = (Path(__file__).parent.parent / "service/store/schema.sql").read_text()
    old = schema.split("-- Jobs that follow jobs: a row per parent")[0]
    old = old.replace(",\n    -- Jobs that follow jobs: the parents (JSON array of ids, in order), what a parent's\n"
                      "    -- failure does ('run', or NULL: cancel), and the parents still waited for.\n"
                      "    after           TEXT,\n    after_failed    TEXT,\n    waiting_for     TEXT", "")
    assert "waiting_for" not in old and "job_deps" not in old
    with sqlite3.connect(path) as conn:
        conn.executescript(old)
        conn.execute("INSERT INTO jobs (id, owner, type, status, priority, data, max_retries, retry_delay_ms, "
                     "created_at, due_at) VALUES ('job_old', 'u', 't', 'pending', 1, '{}', 3, 1000, 1, 1)")
        conn.execute("PRAGMA user_version=3")
    conn.close()
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        old_job = await store.get("job_old")
        assert old_job is not None and old_job.after == () and old_job.after_failed == "cancel"
        child, _ = await store.create(Job(id=new_job_id(), type="t", owner="u", data={}, after=("job_old",)))
        assert child.waiting_for == ("job_old",)
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


# ---- the clients ------------------------------------------------------------------------------------
async def test_the_python_client_and_the_cli_pass_after(server, tmp_path: Path) -> None:
    url = str(server.make_url("")).rstrip("/")
    gate = tmp_path / "gate"
    async with AsyncClient(url) as offload:
        parent = await offload.submit("test.steps", {"n": 1, "gate": str(gate)})
        child = await offload.submit("after.inputs", {"tag": "client"}, after=[parent.id], after_failed="run")
        assert child.waiting_for == (parent.id,) and child.after_failed == "run"
        data = tmp_path / "x.json"
        data.write_text('{"tag": "cli"}')
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "offload", "submit", "after.inputs", "--url", url, "--data", f"@{data}",
            "--after", f"{parent.id},{child.id}", "--wait", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")})
        await eventually(lambda: _waiting(offload), 30, "the CLI's job waiting")
        gate.touch()
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, stderr
        seen = json.loads(stdout)
        assert [i["id"] for i in seen["inputs"]] == [parent.id, child.id] and seen["tag"] == "cli"


async def _waiting(offload: Any) -> bool:
    jobs = [job async for job in offload.jobs()]
    return any(job.after and len(job.after) == 2 and job.waiting_for for job in jobs)
