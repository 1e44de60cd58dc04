"""Store faults and backpressure: a locked or read-only database answers 503
store_unavailable without half-written jobs, and the service heals when the fault clears."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import eventually, submit, wait_status


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
