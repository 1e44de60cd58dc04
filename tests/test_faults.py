"""One bad job never hurts the others: retries, timeouts, cancelling running jobs, worker
crashes, the memory limit, idempotent submission and fencing of stale attempts.

Everything runs on a real server with real worker processes and real WebSocket clients;
the jobs in `tests/jobtypes.py` misbehave for real (CPU loops, `os._exit`, segfaults,
SIGKILL, runaway allocation).
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from offload.service.models import Job, JobStatus, now_ms
from offload.service.pool import WorkerPool
from offload.service.scheduler import LEASE_LOST, Scheduler
from offload.service.store.sqlite import SQLiteStore
from tests.conftest import eventually, invoice, submit, wait_status, workers


# ---- helpers ------------------------------------------------------------------------------
def ms(stamp: str) -> int:
    """Milliseconds since the epoch, exactly (no float rounding: the bounds below are exact)."""
    return (datetime.fromisoformat(stamp) - EPOCH) // timedelta(milliseconds=1)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Events:
    """Every event of a `subscribe all` WebSocket, collected in the background."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.all: list[dict[str, Any]] = []
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is WSMsgType.TEXT:
                event = orjson.loads(message.data)
                event["receivedAt"] = now_ms()  # on the server's clock: the same machine
                self.all.append(event)

    def of(self, job_id: str) -> list[dict[str, Any]]:
        return [e for e in self.all if e.get("jobId", e.get("job", {}).get("id")) == job_id]

    def statuses(self, job_id: str) -> list[dict[str, Any]]:
        """The job as each `status` event showed it."""
        return [e["job"] for e in self.of(job_id) if e["event"] == "status"]

    async def until(self, job_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
        """The job of the first `status` event with one of `statuses`."""

        async def seen() -> dict[str, Any] | None:
            return next((job for job in self.statuses(job_id) if job["status"] in statuses), None)

        return await eventually(seen, timeout, f"a {'/'.join(statuses)} event for {job_id}")

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def watch(client: TestClient) -> AsyncIterator[Events]:
    """A WebSocket subscribed to every job; ready (subscription in force) on entry."""
    async with client.ws_connect("/api/ws") as ws:
        await ws.send_json({"op": "subscribe", "all": True})
        await ws.send_json({"op": "ping"})
        while (await ws.receive_json())["event"] != "pong":
            pass
        events = Events(ws)
        try:
            yield events
        finally:
            await events.close()


async def job(client: TestClient, job_id: str) -> dict[str, Any]:
    return await (await client.get(f"/api/jobs/{job_id}")).json()


@contextlib.asynccontextmanager
async def health_throughout(client: TestClient) -> AsyncIterator[list[int]]:
    """Polls /api/health in the background; every answer must be 200."""
    answers: list[int] = []

    async def poll() -> None:
        while True:
            response = await client.get("/api/health")
            answers.append(response.status)
            await asyncio.sleep(0.02)

    task = asyncio.get_running_loop().create_task(poll())
    try:
        yield answers
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert answers and set(answers) == {200}, answers


async def bystander(client: TestClient, gate: Path) -> str:
    """A cooperative job that keeps a slot busy until `gate` exists; running on return."""
    job_id = await submit(client, "test.steps", {"n": 2, "gate": str(gate)})
    await wait_status(client, job_id, "running")
    return job_id


async def finish_bystander(client: TestClient, job_id: str, gate: Path, pid: int) -> None:
    """The bystander ran exactly once, on the process it started on, with its own result."""
    gate.write_text("go")
    done = await wait_status(client, job_id, "completed", "failed", "cancelled")
    assert done["status"] == "completed", done
    assert done["attempts"] == 1 and done["error"] is None
    assert done["result"]["value"] == {"steps": 2, "pid": pid}


async def started_pid(path: Path) -> int:
    """The pid a job wrote to `path` once it started working."""

    async def written() -> int | None:
        text = path.read_text() if path.exists() else ""
        return int(text) if text else None

    return await eventually(written, what=f"{path.name} to be written")


# ---- 1. retries ----------------------------------------------------------------------------------
async def test_failing_job_retries_with_backoff_then_fails(start_server):
    client = await start_server()
    async with watch(client) as events:
        job_id = await submit(client, "test.fail", {}, maxRetries=3, retryDelay=100)
        final = await events.until(job_id, "failed")
        seen = [e for e in events.of(job_id) if e["event"] == "status"]
    assert [e["status"] for e in seen] == ["pending", *["running", "pending"] * 3, "running", "failed"]
    assert [e["job"]["attempts"] for e in seen] == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert final["error"] == {"type": "Broken", "message": "it broke"}
    assert final["attempts"] == 4 and final["completedAt"] is not None
    assert seen[0]["job"]["runAt"] is None

    # Retry n waits retryDelay * 2^(n-1) * (1 .. 1.25) from the moment attempt n failed,
    # announced as runAt. That moment lies between the attempt's start and the arrival of
    # its `pending` event, which bounds the wait from both sides.
    for n, (ran, retry, rerun) in enumerate(zip(seen[1::2], seen[2::2], seen[3::2], strict=False), start=1):
        assert retry["job"]["error"] == {"type": "Broken", "message": "it broke"}
        base = 100 * 2 ** (n - 1)
        run_at = ms(retry["job"]["runAt"])
        assert run_at - ms(ran["job"]["startedAt"]) >= base, (n, retry)
        assert run_at - retry["receivedAt"] <= base * 1.25, (n, run_at - retry["receivedAt"])
        assert ms(rerun["job"]["startedAt"]) >= run_at
    assert (await job(client, job_id))["status"] == "failed"


async def test_job_that_fails_twice_then_succeeds_completes(start_server, tmp_path):
    client = await start_server()
    counter = tmp_path / "count"
    job_id = await submit(client, "test.fail", {"succeed_after": 2, "counter": str(counter)},
                          maxRetries=3, retryDelay=10)
    done = await wait_status(client, job_id, "completed", "failed")
    assert done["status"] == "completed", done
    assert done["attempts"] == 3
    assert done["result"] == {"value": {"attempt": 3}}
    assert done["error"] is None
    assert counter.read_text() == "3"  # the handler ran exactly three times


async def test_permanent_error_fails_at_once_without_retries(start_server):
    client = await start_server()
    async with watch(client) as events:
        job_id = await submit(client, "test.fail", {"permanent": True}, maxRetries=5, retryDelay=10)
        final = await events.until(job_id, "failed")
        seen = [j["status"] for j in events.statuses(job_id)]
    assert seen == ["pending", "running", "failed"]
    assert final["attempts"] == 1
    assert final["error"] == {"type": "PermanentError", "message": "this input can never work"}


async def test_run_at_is_shown_while_waiting_and_cleared_once_the_job_runs(start_server, tmp_path):
    """`runAt` says when a waiting job becomes due; a job that is running or finished is
    not waiting for anything, after a delay or a retry alike."""
    client = await start_server()
    counter = tmp_path / "count"
    async with watch(client) as events:
        delayed = await submit(client, "test.echo", {"delayed": True}, delay=200)
        retried = await submit(client, "test.fail", {"succeed_after": 1, "counter": str(counter)},
                               maxRetries=1, retryDelay=50)
        for job_id in (delayed, retried):
            await events.until(job_id, "completed")
        delayed_seen, retried_seen = events.statuses(delayed), events.statuses(retried)
    assert [j["status"] for j in delayed_seen] == ["pending", "running", "completed"]
    assert delayed_seen[0]["runAt"] is not None
    assert [j["status"] for j in retried_seen] == ["pending", "running", "pending", "running", "completed"]
    assert retried_seen[2]["runAt"] is not None  # waiting for its retry
    for seen in (delayed_seen, retried_seen):
        ran = [j for j in seen if j["status"] != "pending"]
        assert ran and [j["runAt"] for j in ran] == [None] * len(ran), ran
    for job_id in (delayed, retried):
        assert (await job(client, job_id))["runAt"] is None
    listed = (await (await client.get("/api/jobs")).json())["jobs"]
    assert [j["runAt"] for j in listed if j["id"] in (delayed, retried)] == [None, None]


async def test_event_seq_is_gap_free_and_increasing_across_retries(start_server, tmp_path):
    client = await start_server()
    counter = tmp_path / "count"
    async with watch(client) as events:
        job_id = await submit(client, "test.fail", {"succeed_after": 2, "counter": str(counter)},
                              maxRetries=3, retryDelay=10)
        final = await events.until(job_id, "completed", "failed")
        mine = events.of(job_id)
    assert final["status"] == "completed"
    seqs = [e["seq"] for e in mine]
    assert seqs == list(range(len(seqs))), seqs
    assert seqs[-1] == final["seq"] == (await job(client, job_id))["seq"]
    assert all(e["job"]["seq"] == e["seq"] for e in mine if e["event"] == "status")


async def test_event_seq_is_gap_free_with_progress_and_retries(start_server, tmp_path):
    """Progress that the store coalesces still takes one seq per write it makes."""
    client = await start_server(workers={"processes": 1})
    async with watch(client) as events:
        job_id = await submit(client, "test.steps", {"n": 50, "gate": str(tmp_path / "never")},
                              timeout=300, maxRetries=2, retryDelay=10)
        final = await events.until(job_id, "failed")
        mine = events.of(job_id)
    assert final["error"]["type"] == "Timeout" and final["attempts"] == 3
    seqs = [e["seq"] for e in mine]
    assert seqs == list(range(len(seqs))), seqs
    assert seqs[-1] == final["seq"] == (await job(client, job_id))["seq"]
    statuses = [e["status"] for e in mine if e["event"] == "status"]
    assert statuses == ["pending", "running", "pending", "running", "pending", "running", "failed"]
    attempt_progress: list[list[int]] = []
    for e in mine:
        if e["event"] == "status" and e["status"] == "running":
            attempt_progress.append([])
        elif e["event"] == "progress":
            attempt_progress[-1].append(e["progress"])
    assert len(attempt_progress) == 3
    for values in attempt_progress:  # each attempt reports its own progress, never decreasing
        assert values and values == sorted(values) and values[-1] == 100, values


async def spin_beside_bystander(client: TestClient, tmp_path: Any, gate: Any, queued_data: dict[str, Any],
                                **spin_options: Any) -> tuple[str, str, int, int, str]:
    """On two worker processes: a bystander held at `gate`, a `test.spin` beside it, and an
    echo job queued behind them. Returns (bystander, spin, spin pid, bystander pid, queued)."""
    pids = set((await workers(client))["pids"])
    started = tmp_path / "spin-started"
    other = await bystander(client, gate)
    spin = await submit(client, "test.spin", {"started": str(started)}, **spin_options)
    spin_pid = await started_pid(started)
    (other_pid,) = pids - {spin_pid}
    queued = await submit(client, "test.echo", queued_data)
    return other, spin, spin_pid, other_pid, queued


# ---- 2. timeouts ------------------------------------------------------------------------------
async def test_cpu_loop_past_timeout_fails_frees_slot_and_spares_other_job(start_server, tmp_path):
    client = await start_server(workers={"processes": 2})
    gate = tmp_path / "gate"
    async with watch(client) as events:
        other, spin, spin_pid, other_pid, queued = await spin_beside_bystander(
            client, tmp_path, gate, {"after": "timeout"}, timeout=700, maxRetries=0)

        failed = await events.until(spin, "failed")
        assert failed["error"]["type"] == "Timeout"
        assert "700 ms" in failed["error"]["message"]
        assert failed["attempts"] == 1

        # The freed slot takes the queued job: it runs and completes while the other slot
        # is still busy with the bystander.
        done = await wait_status(client, queued, "completed")
        assert done["result"] == {"value": {"after": "timeout"}}
        assert ms(done["startedAt"]) - ms(failed["startedAt"]) < 700 + 3000
        assert (await job(client, other))["status"] == "running"
        await finish_bystander(client, other, gate, other_pid)
        assert [j["status"] for j in events.statuses(other)] == ["pending", "running", "completed"]

    stats = await workers(client)
    assert stats["replaced"] == 1
    assert spin_pid not in stats["pids"] and other_pid in stats["pids"]


async def test_timeout_retries_then_fails_with_timeout(start_server, tmp_path):
    client = await start_server(workers={"processes": 1})
    async with watch(client) as events:
        job_id = await submit(client, "test.spin", {}, timeout=300, maxRetries=1, retryDelay=10)
        final = await events.until(job_id, "failed")
        seen = events.statuses(job_id)
    assert [j["status"] for j in seen] == ["pending", "running", "pending", "running", "failed"]
    assert seen[2]["error"]["type"] == "Timeout" and seen[2]["runAt"] is not None
    assert final["error"]["type"] == "Timeout" and final["attempts"] == 2
    after = await submit(client, "test.echo", {"n": 1})
    assert (await wait_status(client, after, "completed"))["result"] == {"value": {"n": 1}}


async def test_cooperative_job_past_timeout_retries_on_the_same_process(start_server, tmp_path):
    """A handler that checks ctx stops by itself at the deadline: its process lives on, and
    the retry that follows on that process is not taken for the stopped attempt."""
    client = await start_server(workers={"processes": 1})
    (pid,) = (await workers(client))["pids"]
    never = tmp_path / "never"
    async with watch(client) as events:
        job_id = await submit(client, "test.steps", {"n": 1, "gate": str(never)},
                              timeout=800, maxRetries=1, retryDelay=10)
        final = await events.until(job_id, "failed")
        seen = events.statuses(job_id)
    assert [j["status"] for j in seen] == ["pending", "running", "pending", "running", "failed"]
    assert [j["error"]["type"] for j in seen[2::2]] == ["Timeout", "Timeout"]
    assert final["attempts"] == 2
    after = await submit(client, "test.steps", {"n": 1})
    assert (await wait_status(client, after, "completed"))["result"]["value"] == {"steps": 1, "pid": pid}
    stats = await workers(client)
    assert stats["replaced"] == 0 and stats["pids"] == [pid]


# ---- 3. cancelling running jobs ------------------------------------------------------------------
async def test_cancel_running_cpu_loop_frees_slot_and_spares_other_job(start_server, tmp_path):
    client = await start_server(workers={"processes": 2})
    gate = tmp_path / "gate"
    async with watch(client) as events:
        other, spin, spin_pid, other_pid, queued = await spin_beside_bystander(
            client, tmp_path, gate, {"after": "cancel"})

        response = await client.delete(f"/api/jobs/{spin}")
        assert response.status == 200
        answer = await response.json()
        assert answer["status"] == "cancelled" and answer["completedAt"] is not None
        event = await events.until(spin, "cancelled")
        assert event["seq"] == answer["seq"]

        done = await wait_status(client, queued, "completed")
        assert done["result"] == {"value": {"after": "cancel"}}
        assert (await job(client, other))["status"] == "running"
        await finish_bystander(client, other, gate, other_pid)
        # The recorded request is a change of its own (the job still running), then the ending.
        shown = [(j["status"], j["cancelRequested"]) for j in events.statuses(spin)]
        assert shown == [("pending", False), ("running", False), ("running", True), ("cancelled", True)], shown
    assert (await job(client, spin))["status"] == "cancelled"
    stats = await workers(client)
    assert stats["replaced"] == 1 and spin_pid not in stats["pids"] and other_pid in stats["pids"]


async def test_cancel_cooperative_job_keeps_its_process(start_server, tmp_path):
    client = await start_server(workers={"processes": 1})
    (pid,) = (await workers(client))["pids"]
    never = tmp_path / "never"
    async with watch(client) as events:
        job_id = await submit(client, "test.steps", {"n": 2, "gate": str(never)})
        await events.until(job_id, "running")
        response = await client.delete(f"/api/jobs/{job_id}")
        assert response.status == 200
        assert (await response.json())["status"] == "cancelled"
        await events.until(job_id, "cancelled")
        after = await submit(client, "test.steps", {"n": 1})
        done = await wait_status(client, after, "completed")
    assert done["result"]["value"] == {"steps": 1, "pid": pid}
    assert done["attempts"] == 1
    stats = await workers(client)
    assert stats["replaced"] == 0 and stats["pids"] == [pid]
    assert (await job(client, job_id))["status"] == "cancelled"


async def test_cancel_racing_completion_is_cancelled_or_409(start_server, tmp_path):
    """The job finishes while the DELETE is on its way: the answer is either 200 with the
    job cancelled or 409 with it completed, never 200 with a completed job."""
    client = await start_server(workers={"processes": 1})
    for i in range(6):
        gate = tmp_path / f"gate-{i}"
        job_id = await submit(client, "test.steps", {"n": 1, "gate": str(gate)})
        await wait_status(client, job_id, "running")
        gate.write_text("go")
        response = await client.delete(f"/api/jobs/{job_id}")
        body = await response.json()
        final = await wait_status(client, job_id, "completed", "cancelled")
        if response.status == 200:
            assert body["status"] == "cancelled" == final["status"], body
        else:
            assert response.status == 409 and body["error"]["code"] == "conflict", body
            assert final["status"] == "completed" and final["result"]["value"]["steps"] == 1


async def test_cancel_finished_job_is_409(start_server):
    client = await start_server()
    done = await submit(client, "test.echo", {"x": 1})
    failed = await submit(client, "test.fail", {"permanent": True})
    await wait_status(client, done, "completed")
    await wait_status(client, failed, "failed")
    for job_id, status in ((done, "completed"), (failed, "failed")):
        response = await client.delete(f"/api/jobs/{job_id}")
        assert response.status == 409
        assert (await response.json())["error"]["code"] == "conflict"
        assert (await job(client, job_id))["status"] == status
    cancelled = await submit(client, "test.echo", {}, delay=3_600_000)
    assert (await client.delete(f"/api/jobs/{cancelled}")).status == 200
    assert (await client.delete(f"/api/jobs/{cancelled}")).status == 409


# ---- 4. crash isolation -------------------------------------------------------------------------
@pytest.mark.parametrize("type, data, retries, description", [
    ("test.exit", {"code": 3}, 0, "exit code 3"),
    ("test.segfault", {}, 0, "SIGSEGV"),
    ("test.kill_self", {}, 1, "SIGKILL"),
])
async def test_worker_crash_fails_the_job_only(start_server, tmp_path, type, data, retries, description):
    client = await start_server(workers={"processes": 2})
    before = await workers(client)
    gate = tmp_path / "gate"
    async with health_throughout(client), watch(client) as events:
        other = await bystander(client, gate)
        crash = await submit(client, type, data, maxRetries=retries, retryDelay=10)
        final = await events.until(crash, "failed")
        after = await submit(client, "test.echo", {"after": type})
        assert (await wait_status(client, after, "completed"))["result"] == {"value": {"after": type}}
        assert (await job(client, other))["status"] == "running"
        # The bystander's process is the one of the original two that is still there.
        stats = await workers(client)
        (other_pid,) = set(before["pids"]) & set(stats["pids"])
        await finish_bystander(client, other, gate, other_pid)
        seen = [j["status"] for j in events.statuses(crash)]

    assert final["error"]["type"] == "WorkerCrashed"
    assert "worker process died" in final["error"]["message"]
    assert description in final["error"]["message"], final["error"]
    assert final["attempts"] == retries + 1
    assert seen == ["pending"] + ["running", "pending"] * retries + ["running", "failed"]
    stats = await workers(client)
    assert stats["replaced"] == retries + 1
    assert stats["processes"] == 2


# ---- 5. memory limit ----------------------------------------------------------------------------------
async def test_runaway_allocation_fails_with_memory_limit(start_server, tmp_path):
    client = await start_server(workers={"processes": 2, "memory_limit_mb": 300})
    pids = set((await workers(client))["pids"])
    gate = tmp_path / "gate"
    async with health_throughout(client), watch(client) as events:
        other = await bystander(client, gate)
        hog = await submit(client, "test.alloc", {}, maxRetries=2)
        final = await events.until(hog, "failed")
        after = await submit(client, "test.echo", {"after": "alloc"})
        assert (await wait_status(client, after, "completed"))["result"] == {"value": {"after": "alloc"}}
        pdf = await submit(client, "pdf", invoice(30, "INV-MEM"))
        assert (await wait_status(client, pdf, "completed"))["result"]["size"] > 1000
        assert (await job(client, other))["status"] == "running"
        stats = await workers(client)
        assert set(stats["pids"]) == pids and stats["replaced"] == 0  # MemoryError kept the process
        gate.write_text("go")
        other_done = await wait_status(client, other, "completed")
    assert final["error"]["type"] == "MemoryLimit", final
    assert final["attempts"] == 1  # running out of memory again will not help
    assert other_done["attempts"] == 1 and other_done["result"]["value"]["steps"] == 2
    assert other_done["result"]["value"]["pid"] in pids
    assert (await client.get("/api/health")).status == 200


# ---- 10. idempotency --------------------------------------------------------------------------------
async def post(client: TestClient, body: dict[str, Any], key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Idempotency-Key": key} if key is not None else {}
    response = await client.post("/api/jobs", json=body, headers=headers)
    return response.status, await response.json()


@contextlib.contextmanager
def full_disk(folder: Path) -> Iterator[Path]:
    """A real filesystem with no room left: a 1 MiB tmpfs mounted at `folder` and filled to
    the last page by one file (removed again to make room). Skips when mounting is not
    permitted (not root, no CAP_SYS_ADMIN)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        filler = folder / "filler"
        with open(filler, "wb", buffering=0) as fh:
            with pytest.raises(OSError) as full:
                while True:  # a raw write takes what fits and raises only once nothing does
                    fh.write(b"x" * 4096)
        assert full.value.errno == errno.ENOSPC
        yield filler
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


async def test_full_disk_fails_the_result_write_as_a_job_failure_without_partial_files(start_server, tmp_path):
    results = tmp_path / "results-on-tmpfs"
    with full_disk(results) as filler:
        client = await start_server(workers={"processes": 1}, jobs={"results_dir": str(results), "retry_delay_ms": 10})
        (pid,) = (await workers(client))["pids"]
        async with watch(client) as events:
            job_id = await submit(client, "pdf", invoice(40, "INV-FULL"), maxRetries=1)
            final = await events.until(job_id, "failed", "completed")
            seen = events.statuses(job_id)
        assert final["status"] == "failed", final
        assert final["error"]["type"] == "ResultWriteFailed", final["error"]
        assert "No space left" in final["error"]["message"]
        # an ordinary failure: retried, then failed, on the same worker process
        assert [j["status"] for j in seen] == ["pending", "running", "pending", "running", "failed"]
        assert [j["error"]["type"] for j in seen[2::2]] == ["ResultWriteFailed", "ResultWriteFailed"]
        stats = await workers(client)
        assert stats["pids"] == [pid] and stats["replaced"] == 0, stats
        assert sorted(p.name for p in results.iterdir()) == ["filler"]  # no .part left behind

        filler.unlink()  # room again: the next job writes its file and completes
        after = await submit(client, "pdf", invoice(40, "INV-ROOM"))
        done = await wait_status(client, after, "completed", "failed")
        assert done["status"] == "completed", done
        async with client.get(done["result"]["url"]) as response:
            assert response.status == 200 and (await response.read()).startswith(b"%PDF")
        assert (await workers(client))["pids"] == [pid]
        await client.close()  # before the unmount


async def test_idempotency_key_header_answers_the_first_job(start_server):
    client = await start_server()
    body = {"type": "test.echo", "data": {"order": 1}}
    status, first = await post(client, body, key="order-1")
    assert status == 201
    status, again = await post(client, body, key="order-1")
    assert status == 200 and again["jobId"] == first["jobId"] and again["createdAt"] == first["createdAt"]
    await wait_status(client, first["jobId"], "completed")
    status, later = await post(client, body, key="order-1")  # also once the job finished
    assert status == 200 and later["jobId"] == first["jobId"] and later["status"] == "completed"

    status, other = await post(client, body, key="order-2")
    assert status == 201 and other["jobId"] != first["jobId"]
    listing = await (await client.get("/api/jobs")).json()
    assert sorted(j["id"] for j in listing["jobs"]) == sorted([first["jobId"], other["jobId"]])


async def test_idempotency_key_option_answers_the_first_job(start_server):
    client = await start_server()
    body = {"type": "test.echo", "data": {"order": 2}, "options": {"idempotencyKey": "k-2", "priority": "high"}}
    status, first = await post(client, body)
    assert status == 201
    status, again = await post(client, body)
    assert status == 200 and again["jobId"] == first["jobId"]
    status, both = await post(client, body, key="k-2")  # header and option agree
    assert status == 200 and both["jobId"] == first["jobId"]
    status, clash = await post(client, body, key="k-3")  # header and option disagree
    assert status == 422 and clash["error"]["message"].startswith("options.idempotencyKey")
    done = await wait_status(client, first["jobId"], "completed")
    assert done["attempts"] == 1 and done["result"] == {"value": {"order": 2}}


async def test_racing_posts_with_one_key_make_one_job(start_server):
    client = await start_server()
    body = {"type": "test.echo", "data": {"race": True}}
    answers = await asyncio.gather(*(post(client, body, key="race-1") for _ in range(10)))
    assert sorted(status for status, _ in answers) == [200] * 9 + [201]
    ids = {answer["jobId"] for _, answer in answers}
    assert len(ids) == 1
    (job_id,) = ids
    done = await wait_status(client, job_id, "completed")
    assert done["attempts"] == 1 and done["result"] == {"value": {"race": True}}
    listing = await (await client.get("/api/jobs")).json()
    assert [j["id"] for j in listing["jobs"]] == [job_id]


async def test_same_key_with_different_body_is_422(start_server):
    client = await start_server()
    status, first = await post(client, {"type": "test.echo", "data": {"a": 1}}, key="k")
    assert status == 201
    for body in ({"type": "test.echo", "data": {"a": 2}},
                 {"type": "test.echo", "data": {"a": 1}, "options": {"priority": "high"}},
                 {"type": "test.clock", "data": {"a": 1}}):
        status, answer = await post(client, body, key="k")
        assert status == 422, answer
        assert answer["error"]["code"] == "validation_error"
        assert answer["error"]["message"].startswith("idempotencyKey")  # header or option
        assert first["jobId"] in answer["error"]["message"]
    listing = await (await client.get("/api/jobs")).json()
    assert [j["id"] for j in listing["jobs"]] == [first["jobId"]]


# ---- 11. fencing ----------------------------------------------------------------------------------------
async def lose_lease(store: SQLiteStore, job_id: str, type: str = "test.echo") -> tuple[Job, Job]:
    """Claim `job_id`, let the lease run out, claim it again: (stale attempt 1, attempt 2)."""
    now = now_ms()
    (stale,) = await store.claim("node_a", now, 1000, [type])
    assert stale.id == job_id and stale.attempts == 1
    rescued = await store.rescue_expired(now + 1001, LEASE_LOST)
    assert [(j.id, j.status) for j in rescued] == [(job_id, JobStatus.PENDING)]
    (current,) = await store.claim("node_b", now + 1002, 1000, [type])
    assert current.id == job_id and current.attempts == 2 and current.lease_owner == "node_b"
    return stale, current


async def test_store_only_lets_the_current_attempt_finish(store):
    created, _ = await store.create(Job(id="job_fence", type="test.echo", owner="local", data={"x": 1}))
    stale, current = await lose_lease(store, created.id)
    before = await store.get(created.id)
    published: list[int] = []

    now = now_ms()
    store.set_progress(stale, 90, "stale progress", on_commit=published.append)
    assert await store.complete(stale, {"value": "stale"}, now) is None
    assert await store.fail(stale, {"type": "Broken", "message": "stale"}, now, None) is None
    assert await store.fail(stale, {"type": "Broken", "message": "stale"}, now, now + 10) is None
    assert await store.cancel_running(stale, now) is None
    assert await store.release(stale) is None
    assert await store.get(created.id) == before  # nothing changed, not even seq
    assert published == []  # and no progress event for the stale attempt

    store.set_progress(current, 50, "half way", on_commit=published.append)
    done = await store.complete(current, {"value": "current"}, now)
    assert published == [before.seq + 1]
    assert done is not None and done.status is JobStatus.COMPLETED
    assert done.result == {"value": "current"} and done.attempts == 2 and done.seq == before.seq + 2
    assert await store.complete(stale, {"value": "stale"}, now) is None
    assert await store.complete(current, {"value": "twice"}, now) is None  # one ending only
    assert await store.get(created.id) == done


@pytest.mark.parametrize("stale_ends", ["first", "last"])
async def test_scheduler_discards_the_stale_attempts_result_file(store, make_config, tmp_path, stale_ends):
    """Both attempts render the invoice in a real worker process; only the current one's
    file is kept and recorded, whether the stale attempt ends before the current one or
    comes back after it completed."""
    config = make_config(workers={"processes": 1, "modules": ["tests.jobtypes"]})
    results = config.results_path
    pool = WorkerPool(1, modules=config.workers.modules)
    await pool.start()
    scheduler = Scheduler(config, store, pool)  # its loop is not started: the test drives it
    try:
        created, _ = await store.create(Job(id="job_fencepdf", type="pdf", owner="local",
                                            data=invoice(3, "INV-FENCE")))
        stale, current = await lose_lease(store, created.id, "pdf")

        async def run(attempt: Job) -> Any:
            (slot,) = pool.reserve()
            scheduler._start(attempt, slot)
            entry = scheduler.running[attempt.id]
            await entry.done.wait()
            return entry.final

        if stale_ends == "first":
            assert await run(stale) is None  # the attempt that lost its lease
            assert not (results / f"{created.id}-1.pdf").exists()
            assert (await store.get(created.id)).status is JobStatus.RUNNING
            final = await run(current)
        else:
            final = await run(current)
            assert await run(stale) is None
            assert (await store.get(created.id)) == final
        assert final is not None and final.status is JobStatus.COMPLETED and final.attempts == 2
        assert final.result["file"] == f"{created.id}-2.pdf"
        kept = sorted(p.name for p in results.iterdir())
        assert kept == [f"{created.id}-2.pdf"]
        assert (results / kept[0]).read_bytes().startswith(b"%PDF")
        assert (await store.get(created.id)) == final
    finally:
        await pool.close()
