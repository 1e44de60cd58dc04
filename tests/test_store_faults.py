"""Store faults and backpressure: a locked or read-only database answers 503
store_unavailable without half-written jobs, and the service heals when the fault clears;
a corrupt row fails its own job and no other."""
from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from offload.service.models import Job, new_job_id
from tests.conftest import eventually, submit, wait_status
from tests.test_faults import watch


def db_path(client) -> Path:
    from offload.service.keys import CONFIG

    return Path(client.server.app[CONFIG].store_url.removeprefix("sqlite:///"))


async def post(client, data):
    response = await client.post("/api/jobs", json={"type": "test.echo", "data": data})
    return response.status, await response.json()


def retry_after(response) -> int:
    """The answer's Retry-After, which must be a whole number of seconds."""
    value = response.headers["Retry-After"]
    assert value.isdigit() and int(value) >= 1, value
    return int(value)


async def unavailable(client, path: str, headers=None) -> str:
    """`path` answers 503 store_unavailable with an integer Retry-After; returns the reason."""
    response = await client.get(path, headers=headers)
    body = await response.json()
    assert response.status == 503, body
    assert body["error"]["code"] == "store_unavailable"
    retry_after(response)
    return body["error"]["message"]


async def ready(client) -> bool:
    return (await client.get("/api/health/ready")).status == 200


_HOLD_WRITE_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Another process holds the database's write lock until the block ends; reads still work."""
    with subprocess.Popen([sys.executable, "-c", _HOLD_WRITE_LOCK, str(path)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        try:
            assert holder.stdout.readline() == b"locked\n"
            yield
        finally:
            holder.stdin.close()
        assert holder.wait(10) == 0


def stored_ids(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM jobs ORDER BY pos")]


async def test_locked_database_answers_503_then_recovers(start_server):
    client = await start_server(store={"busy_timeout_ms": 200})
    kept = await submit(client, "test.echo", {"before": 1})
    await wait_status(client, kept, "completed")

    other = sqlite3.connect(db_path(client), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        response = await client.post("/api/jobs", json={"type": "test.echo", "data": {"while": "locked"}})
        body = await response.json()
        assert response.status == 503
        assert body["error"]["code"] == "store_unavailable"
        assert "locked" in body["error"]["message"]
        retry_after(response)
    finally:
        other.execute("ROLLBACK")
        other.close()

    assert stored_ids(db_path(client)) == [kept]
    status, body = await post(client, {"after": "unlock"})
    assert status == 201
    assert (await wait_status(client, body["jobId"], "completed"))["result"]["value"] == {"after": "unlock"}
    assert (await (await client.get(f"/api/jobs/{kept}")).json())["status"] == "completed"


def chattr(flag: str, *paths: Path) -> bool:
    try:
        return subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


async def test_unwritable_database_answers_503_and_finishes_running_job_after(start_server, tmp_path):
    client = await start_server()
    gate = tmp_path / "gate"
    running = await submit(client, "test.steps", {"n": 2, "gate": str(gate)})
    await wait_status(client, running, "running")
    path = db_path(client)
    files = [path, path.with_name(path.name + "-wal")]
    if not chattr("+i", *files):
        pytest.skip("chattr +i is not available on this filesystem")
    try:
        status, body = await post(client, {"while": "read-only"})
        assert status == 503 and body["error"]["code"] == "store_unavailable"
        assert "cannot be written" in body["error"]["message"]
        gate.write_text("go")  # the running job ends while its outcome cannot be stored
        for probe in ("/api/health/ready", "/api/health"):  # reads still work: the probe writes
            assert "cannot be written" in await unavailable(client, probe)
    finally:
        chattr("-i", *files)
    await eventually(lambda: ready(client), what="ready once the database is writable again")
    assert (await (await client.get("/api/health")).json())["status"] == "ok"

    # once writable again, the held outcome is recorded and new work is taken
    done = await wait_status(client, running, "completed")
    assert done["attempts"] == 1
    status, body = await post(client, {"after": "writable"})
    assert status == 201
    await wait_status(client, body["jobId"], "completed")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_ready_is_503_while_another_process_holds_the_write_lock_and_200_after(start_server):
    client = await start_server(store={"busy_timeout_ms": 200})
    assert await ready(client)
    with write_locked(db_path(client)):
        assert (await client.get("/api/jobs")).status == 200  # reads go on meanwhile
        for probe in ("/api/health/ready", "/api/health"):
            reason = await unavailable(client, probe)
            assert "locked by another process" in reason, reason
    await eventually(lambda: ready(client), what="ready once the lock is released")
    assert (await (await client.get("/api/health")).json())["status"] == "ok"
    await wait_status(client, await submit(client, "test.echo", {"after": "lock"}), "completed")


async def test_full_queue_answers_429_with_retry_after(start_server):
    client = await start_server(jobs={"max_pending": 3})
    ids = [await submit(client, "test.echo", {"i": i}, delay=3_600_000) for i in range(3)]
    response = await client.post("/api/jobs", json={"type": "test.echo", "data": {}})
    assert response.status == 429
    retry_after(response)
    assert (await response.json())["error"]["code"] == "too_many_requests"

    await client.delete(f"/api/jobs/{ids[0]}")

    async def admitted():
        response = await client.post("/api/jobs", json={"type": "test.echo", "data": {"late": True}})
        return response.status == 201

    await eventually(admitted, what="a submission to be admitted after a cancel")


async def test_second_service_on_the_same_database_refuses_to_start(start_server, make_config):
    config = make_config()
    await start_server(config)
    with pytest.raises(RuntimeError, match="another offload service is using"):
        await start_server(config)


# ---- a corrupt row hurts only itself ------------------------------------------------------------
def tamper(path: Path, *edits: tuple[str, str]) -> None:
    """Edit the live database by hand beside the running service, as an operator (or a bad
    disk) would: a real second connection, waiting out the service's writer like any other.
    Each edit is `(statement, job id)`; all of them commit together."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn, conn:
        for statement, job_id in edits:
            assert conn.execute(statement, (job_id,)).rowcount == 1


async def pong(ws) -> list[dict]:
    """Send a ping and collect what arrives before its pong: the socket is alive."""
    await ws.send_json({"op": "ping"})
    before = []
    while (event := await ws.receive_json(timeout=10))["event"] != "pong":
        before.append(event)
    return before


async def test_corrupt_rows_fail_as_corrupt_job_and_every_other_job_goes_on(start_server, caplog):
    client = await start_server(workers={"processes": 2})
    path = db_path(client)
    async with watch(client) as events:
        done = await submit(client, "test.echo", {"done": 1})
        await wait_status(client, done, "completed")
        # pending for an hour each, until the test makes them due
        bad_data, clean, bad_priority, bad_status = [
            await submit(client, "test.echo", {"i": i}, delay=3_600_000) for i in range(4)]

        tamper(path, ("UPDATE jobs SET result = '{\"value\": ' WHERE id = ?", done),
               ("UPDATE jobs SET priority = 9 WHERE id = ?", bad_priority),
               ("UPDATE jobs SET status = 'bogus' WHERE id = ?", bad_status))
        # Due at once, side by side with a clean job (one commit): whichever claim comes
        # next, with two free slots, takes both in one batch.
        tamper(path, ("UPDATE jobs SET data = 'not json', due_at = 0 WHERE id = ?", bad_data),
               ("UPDATE jobs SET due_at = 0 WHERE id = ?", clean))

        # A new `subscribe all` meets the pending job with a bad priority: it stays open and
        # reports that job failed, after the snapshots of the readable ones.
        async with client.ws_connect("/api/ws") as ws:
            await ws.send_json({"op": "subscribe", "all": True})
            seen = await pong(ws)
            assert {e["job"]["id"] for e in seen if e["event"] == "snapshot"} <= {bad_data, clean}
            (failed,) = [e for e in seen if e["event"] == "status" and e["jobId"] == bad_priority]
            assert failed["status"] == "failed"
            assert failed["job"]["error"]["type"] == "CorruptJob"
            assert "priority 9 is not a priority" in failed["job"]["error"]["message"]
            assert not ws.closed

            response = await client.get("/api/jobs")
            assert response.status == 200, await response.text()
            listed = {j["id"]: j for j in (await response.json())["jobs"]}
            assert set(listed) == {done, bad_data, clean, bad_priority, bad_status}
            for job_id, problem in ((done, "result is not valid JSON"), (bad_status, "status 'bogus'"),
                                    (bad_priority, "priority 9")):
                assert listed[job_id]["status"] == "failed", listed[job_id]
                assert listed[job_id]["error"]["type"] == "CorruptJob" and problem in listed[job_id]["error"]["message"]
                assert listed[job_id]["result"] is None
            assert listed[clean]["status"] in ("pending", "running", "completed")

            wake = await submit(client, "test.echo", {"wake": 1})  # the scheduler looks again
            for job_id in (clean, wake):
                assert (await wait_status(client, job_id, "completed", "failed"))["status"] == "completed"
            corrupt = await wait_status(client, bad_data, "failed")
            assert corrupt["error"]["type"] == "CorruptJob" and "data is not valid JSON" in corrupt["error"]["message"]
            assert corrupt["attempts"] == 0  # it never ran

            # Each corrupt job's failure is one transition, announced with the next seq.
            for job_id in (done, bad_priority, bad_status, bad_data):
                final = await events.until(job_id, "failed")
                assert final["error"]["type"] == "CorruptJob"
                assert final["seq"] == (await (await client.get(f"/api/jobs/{job_id}")).json())["seq"]
            assert [e["seq"] for e in events.of(bad_data)] == [0, 1]
            assert [e["seq"] for e in events.of(done)][-2:] == [2, 3]  # completed at 2, failed as corrupt at 3
            await events.until(clean, "completed")
            reported = seen + await pong(ws)  # still open, and it reported the others as they went
            finals = {e["jobId"]: e["status"] for e in reported if e["event"] == "status" and e["job"]["completedAt"]}
            # (the clean job and the one with bad data may have ended before this socket subscribed)
            after = {done: "failed", bad_status: "failed", bad_priority: "failed", wake: "completed"}
            assert after.items() <= finals.items(), finals
        assert not events.ws.closed and not events._task.done()
    logged = [r.getMessage() for r in caplog.records if r.name == "offload.store"]
    for job_id in (done, bad_priority, bad_status, bad_data):
        assert any(job_id in line and "corrupt" in line for line in logged), logged
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_a_transition_on_a_corrupt_row_fails_that_job_in_one_seq_step(tmp_path):
    """The store's own contract, beside the service: an outcome written to a row that went
    bad while its job ran fails that job as CorruptJob instead (one transition, announced)."""
    from offload.service.models import Job, new_job_id, now_ms
    from offload.service.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'corrupt.db'}")
    announced: list[Job] = []
    store.changes.subscribe(lambda change: announced.append(change) if isinstance(change, Job) and change.error else None)
    await store.open()
    try:
        created = [(await store.create(Job(new_job_id(), "t", "local", {"i": i})))[0] for i in range(2)]
        bad, good = await store.claim("n", now_ms(), 30_000, limit=2)
        assert {bad.id, good.id} == {job.id for job in created}
        tamper(tmp_path / "corrupt.db", ("UPDATE jobs SET max_retries = 'lots' WHERE id = ?", bad.id))
        assert await store.complete(bad, {"value": 1}, now_ms()) is None  # no longer this attempt's to finish
        done = await store.complete(good, {"value": 2}, now_ms())
        assert done is not None and done.status.value == "completed"
        (failed,) = announced
        assert failed.id == bad.id and failed.status.value == "failed" and failed.seq == bad.seq + 1
        assert failed.error is not None and failed.error["type"] == "CorruptJob"
        assert "max_retries 'lots' is not a whole number" in failed.error["message"]
        assert failed.result is None and failed.max_retries == 0
        assert await store.get(bad.id) == failed
    finally:
        await store.close()


async def test_a_write_waiting_for_another_process_lock_leaves_the_loop_free(start_server):
    """The writer runs on the event loop's thread: a lock held elsewhere is waited out
    between retries (up to busy_timeout_ms), so reads and other requests go on meanwhile."""
    client = await start_server(store={"busy_timeout_ms": 20000})
    kept = await submit(client, "test.echo", {"before": 1})
    await wait_status(client, kept, "completed")
    with write_locked(db_path(client)):
        waiting = asyncio.ensure_future(post(client, {"while": "locked"}))
        for _ in range(3):  # answered while the write waits for the lock
            assert (await client.get("/api/health/live")).status == 200
            assert (await (await client.get(f"/api/jobs/{kept}")).json())["status"] == "completed"
        assert not waiting.done()
    status, body = await waiting
    assert status == 201, body
    await wait_status(client, body["jobId"], "completed")


async def test_the_log_is_checkpointed_as_commits_go_by(store):
    """Checkpoints run on their own connection (none at commit), while writes go on; yet the
    log starts over after each, instead of growing with every commit ever made."""
    def create(n: int):
        return store.create(Job(id=new_job_id(), type="t", owner="o", data={"n": n}), None)

    for n in range(store.checkpoint_every):  # the last of these starts a checkpoint
        await create(n)
    checkpoint, every = store._checkpoint_task, store.checkpoint_every
    assert checkpoint is not None
    store.checkpoint_every = 10**9  # no second checkpoint: this one alone must start the log over
    n = 0
    while not checkpoint.done() or n == 0:  # commits go on while it copies the log
        await create(store.checkpoint_every + n)
        n += 1
    await create(-1)  # the first commit after it: the log starts over here
    with sqlite3.connect(store.path) as other:
        _, frames, _ = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    # Each commit wrote a frame at least: a log that never started over holds them all.
    assert 0 < frames < every, frames
