"""The Python clients against real servers: every method of `AsyncClient` and `Client`,
`wait` and `watch` over the WebSocket (across a `kill -9` and restart), retries after 429
and 503 that make one job, and `generate_invoice` through the service and without it."""
from __future__ import annotations

import asyncio
import io
import logging
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from offload import (AsyncClient, Client, Conflict, InvalidRequest, Job, JobCancelled, JobFailed, JobStatus, NotFound,
                     OffloadClientError, ServiceUnreachable, Snapshot, Status, TooManyRequests, Unauthorized,
                     Unavailable, agenerate_invoice, generate_invoice)
from offload.service.config import load_config
from tests.conftest import SAMPLE_INVOICE, eventually
from tests.conftest import both_backends as store_backend  # noqa: F401  (each test on SQLite and on PostgreSQL)
from tests.server_process import ServerProcess, free_port
from tests.users import ALICE, TOKENS

ORDER, ITEMS = SAMPLE_INVOICE["order"], SAMPLE_INVOICE["items"]


def url_of(server: Any) -> str:
    return str(server.make_url(""))


def text_of(pdf: bytes) -> list[str]:
    return [page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages]


def db_of(server: Any) -> Path:
    from offload.service.keys import CONFIG

    return Path(server.server.app[CONFIG].store_url.removeprefix("sqlite:///"))


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


class Retries(logging.Handler):
    """Counts the client's "retrying" log lines, from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            self.count += 1
            self.seen.set()


@pytest.fixture
def retries():
    handler, logger = Retries(), logging.getLogger("offload.client")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


# ---- REST methods, async ----------------------------------------------------------------------
async def test_async_submit_get_jobs_download_and_typed_job(start_server, tmp_path):
    server = await start_server()
    async with AsyncClient(url_of(server)) as offload:
        job = await offload.submit("pdf", SAMPLE_INVOICE, priority="high", max_retries=1, timeout=60)
        assert isinstance(job, Job) and job.type == "pdf" and job.priority == "high" and job.max_retries == 1
        assert job.status in (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.COMPLETED)
        assert job.created_at.tzinfo is not None

        pdf = await offload.wait(job.id)
        assert pdf.startswith(b"%PDF") and "INV-1001" in text_of(pdf)[0]
        done = await offload.get(job.id)
        assert done.status is JobStatus.COMPLETED and done.status.terminal and done.progress == 100
        assert done.result is not None and done.result.is_file and done.result.filename == "invoice-INV-1001.pdf"
        assert done.result.content_type == "application/pdf" and done.result.size == len(pdf)
        assert done.completed_at is not None and done.started_at is not None and done.completed_at >= done.started_at

        assert await offload.download(job.id) == pdf
        target = tmp_path / "out" / "invoice.pdf"
        target.parent.mkdir()
        assert await offload.download_to(job.id, target) == target
        assert target.read_bytes() == pdf
        assert [p.name for p in target.parent.iterdir()] == ["invoice.pdf"]  # no temporary file left

        echoes = [(await offload.submit("test.echo", {"i": i})).id for i in range(5)]
        listed = [j.id async for j in offload.jobs(type="test.echo", page_size=2)]  # three pages
        assert listed == echoes[::-1]
        for job_id in echoes:
            await offload.wait(job_id)
        assert {j.id async for j in offload.jobs(status="completed", page_size=2)} == {job.id, *echoes}
        assert [j.id async for j in offload.jobs(status=JobStatus.FAILED)] == []


async def test_async_errors_carry_code_message_and_status(start_server):
    server = await start_server()
    async with AsyncClient(url_of(server)) as offload:
        with pytest.raises(NotFound) as missing:
            await offload.get("job_" + "a" * 24)
        assert missing.value.status == 404 and missing.value.code == "not_found" and "job_aaaa" in missing.value.message

        with pytest.raises(InvalidRequest) as invalid:
            await offload.submit("pdf", {**SAMPLE_INVOICE, "items": [{"name": "x", "quantity": -1, "unitPrice": 1}]})
        assert invalid.value.status == 422 and invalid.value.message.startswith("data.items[0].quantity")
        assert isinstance(invalid.value, OffloadClientError)

        job = await offload.submit("test.echo", {"x": 1})
        await offload.wait(job.id)
        with pytest.raises(Conflict) as conflict:
            await offload.cancel(job.id)
        assert conflict.value.status == 409
        with pytest.raises(NotFound):  # a JSON result has no file
            await offload.download(job.id)


async def test_cancel_answers_the_cancelled_job_and_wait_raises_job_cancelled(start_server, tmp_path):
    server = await start_server()
    async with AsyncClient(url_of(server)) as offload:
        later = await offload.submit("test.echo", {}, delay=3600)
        assert later.run_at is not None and later.status is JobStatus.PENDING
        cancelled = await offload.cancel(later.id)
        assert cancelled.id == later.id and cancelled.status is JobStatus.CANCELLED
        with pytest.raises(JobCancelled) as raised:
            await offload.wait(later.id)
        assert raised.value.job.status is JobStatus.CANCELLED

        running = await offload.submit("test.steps", {"n": 1, "gate": str(tmp_path / "never")})
        waiting = asyncio.ensure_future(offload.wait(running.id))
        await eventually(lambda: _is(offload, running.id, JobStatus.RUNNING), what="the job to run")
        answer = await offload.cancel(running.id)
        assert answer.status is JobStatus.CANCELLED or answer.cancel_requested
        with pytest.raises(JobCancelled):
            await waiting


async def _is(offload: AsyncClient, job_id: str, status: JobStatus) -> bool:
    return (await offload.get(job_id)).status is status


# ---- wait and watch ----------------------------------------------------------------------------
async def test_wait_returns_the_json_value_and_reports_progress_as_it_happens(start_server, tmp_path):
    server = await start_server(workers={"processes": 1})
    busy, held = tmp_path / "busy", tmp_path / "held"
    seen: list[tuple[int, str | None]] = []
    subscribed = asyncio.Event()

    def on_progress(percent: int, message: str | None) -> None:
        seen.append((percent, message))
        subscribed.set()
        if percent == 100:
            held.write_text("go")  # the job holds at 100 % until its progress was reported here

    async with AsyncClient(url_of(server)) as offload:
        blocker = await offload.submit("test.steps", {"n": 1, "gate": str(busy)})  # keeps the one worker busy
        job = await offload.submit("test.steps", {"n": 4, "gate": str(held)})
        async with asyncio.timeout(20):
            waiting = asyncio.ensure_future(offload.wait(job.id, on_progress))
            await subscribed.wait()  # the job's snapshot: every progress event comes after it
            busy.write_text("go")
            value = await waiting
        await offload.wait(blocker.id)
    assert value["steps"] == 4
    assert seen[0] == (0, None) and seen[-1] == (100, "step 4 of 4"), seen
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)


async def test_wait_raises_job_failed_with_the_jobs_error(start_server):
    server = await start_server()
    async with AsyncClient(url_of(server)) as offload:
        with pytest.raises(JobFailed) as failed:
            await offload.run("test.fail", {}, max_retries=0)
        assert failed.value.type == "Broken" and failed.value.message == "it broke"
        assert failed.value.job.status is JobStatus.FAILED and failed.value.job.error is not None
        with pytest.raises(JobFailed) as permanent:
            await offload.run("test.fail", {"permanent": True}, max_retries=3)
        assert permanent.value.type == "PermanentError" and permanent.value.job.attempts == 1


async def test_watch_one_job_yields_snapshot_then_newer_events_and_ends_at_its_final_status(start_server, tmp_path):
    server = await start_server()
    gate = tmp_path / "gate"
    async with AsyncClient(url_of(server)) as offload:
        job = await offload.submit("test.steps", {"n": 3, "gate": str(gate)})
        events = []
        async for event in offload.watch(job.id):
            events.append(event)
            if len(events) == 1:
                gate.write_text("go")
        with pytest.raises(NotFound):
            async for _ in offload.watch("job_" + "b" * 24):
                pass
    assert isinstance(events[0], Snapshot) and events[0].job_id == job.id
    assert isinstance(events[-1], Status) and events[-1].status is JobStatus.COMPLETED
    assert events[-1].job.result is not None and events[-1].job.result.value["steps"] == 3
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)), seqs


async def test_watch_all_yields_the_final_status_of_a_job_that_finished_while_the_service_was_down(tmp_path):
    gate = tmp_path / "gate"
    seqs: dict[str, list[int]] = {}

    async def until(watcher: Any, job_id: str, done: Any) -> Any:
        async for event in watcher:
            seqs.setdefault(event.job_id, []).append(event.seq)
            if event.job_id == job_id and isinstance(event, (Snapshot, Status)) and done(event.job):
                return event
        raise AssertionError("the watch ended")

    with ServerProcess(tmp_path / "server", processes=1, lease_ms=1000) as server:
        await server.start()
        async with AsyncClient(server.url) as offload:
            waiting = await offload.submit("test.echo", {}, delay=3600)  # unchanged across the restart
            watcher = offload.watch()
            job = await offload.submit("test.steps", {"n": 2, "gate": str(gate)})
            async with asyncio.timeout(30):
                await until(watcher, job.id, lambda j: j.status is JobStatus.RUNNING)
                # The watcher is not read while the service is killed, restarted and the job
                # finishes, so it only learns of the outcome after its reconnect.
                server.kill()
                gate.write_text("go")
                await server.start()
                await eventually(lambda: _is(offload, job.id, JobStatus.COMPLETED), what="the job to finish")
                final = await until(watcher, job.id, lambda j: j.status.terminal)
                await offload.cancel(waiting.id)
                await until(watcher, waiting.id, lambda j: j.status.terminal)
            await watcher.aclose()
    assert isinstance(final, Snapshot) and final.job.status is JobStatus.COMPLETED
    assert final.job.attempts == 2  # the run interrupted by the kill, then the one after the restart
    # nothing is yielded twice: the snapshots of the reconnect that tell nothing new are dropped
    assert all(s == sorted(set(s)) for s in seqs.values()), seqs
    assert len(seqs[waiting.id]) == 2, seqs  # its first snapshot, then its cancellation


async def test_wait_follows_its_job_across_a_server_restart(tmp_path):
    gate = tmp_path / "gate"
    with ServerProcess(tmp_path / "server", processes=1, lease_ms=1000) as server:
        await server.start()
        async with AsyncClient(server.url) as offload:
            job = await offload.submit("test.steps", {"n": 2, "gate": str(gate)})
            running = asyncio.Event()
            waiting = asyncio.ensure_future(offload.wait(job.id, lambda p, m: running.set() if p == 100 else None))
            async with asyncio.timeout(30):
                await running.wait()
                server.kill()  # the wait keeps reconnecting while nothing listens
                gate.write_text("go")
                await server.start()
                value = await waiting
    assert value["steps"] == 2


# ---- retries ------------------------------------------------------------------------------------
@pytest.mark.parametrize("store_backend", ["sqlite"])  # it reads the keys from the SQLite file
async def test_submit_retries_after_429_and_makes_one_job(start_server, retries):
    server = await start_server(limits={"submit_rate": 1, "submit_burst": 1})
    async with AsyncClient(url_of(server)) as offload:
        first = await offload.submit("test.echo", {"n": 1})
        second = await offload.submit("test.echo", {"n": 2})  # over the rate: 429, Retry-After, again
        assert retries.count >= 1
        assert second.id != first.id
        assert sorted([j.id async for j in offload.jobs()]) == sorted([first.id, second.id])
    with sqlite3.connect(db_of(server)) as conn:  # every submission carried a key, so a retry finds its job
        keys = [row[0] for row in conn.execute("SELECT idempotency_key FROM jobs")]
    assert len(keys) == 2 and all(keys) and len(set(keys)) == 2

    async with AsyncClient(url_of(server), max_attempts=1) as impatient:
        with pytest.raises(TooManyRequests) as limited:
            for i in range(3):
                await impatient.submit("test.echo", {"burst": i})
    assert limited.value.status == 429 and limited.value.code == "too_many_requests"
    assert limited.value.retry_after is not None and limited.value.retry_after >= 1


@pytest.mark.parametrize("store_backend", ["sqlite"])  # it locks the SQLite file
async def test_submit_retries_503_while_the_store_is_locked_and_makes_one_job(start_server, retries):
    server = await start_server(store={"busy_timeout_ms": 100})
    path = db_of(server)
    async with AsyncClient(url_of(server)) as offload:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            submitting = asyncio.ensure_future(offload.submit("test.echo", {"while": "locked"}))
            await eventually(lambda: _true(retries.seen.is_set()), what="a 503 to be retried")
        finally:
            other.execute("ROLLBACK")
            other.close()
        job = await submitting
        assert await offload.wait(job.id) == {"while": "locked"}
        assert [j.id async for j in offload.jobs()] == [job.id]

        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            bounded = AsyncClient(url_of(server), max_attempts=2)
            with pytest.raises(Unavailable) as unavailable:
                await bounded.submit("test.echo", {"locked": "still"})
            await bounded.aclose()
        finally:
            other.execute("ROLLBACK")
            other.close()
    assert unavailable.value.status == 503 and unavailable.value.code == "store_unavailable"


async def _true(value: bool) -> bool:
    return value


async def test_connection_refused_is_service_unreachable_and_no_url_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OFFLOAD_URL", raising=False)
    with pytest.raises(OffloadClientError, match="OFFLOAD_URL"):
        AsyncClient()
    async with AsyncClient(dead_url()) as offload:
        with pytest.raises(ServiceUnreachable, match="cannot be reached") as raised:
            await offload.get("job_" + "c" * 24)
    assert raised.value.status is None and raised.value.code == "unreachable"


async def test_url_and_token_come_from_the_environment_and_the_websocket_sends_the_token(start_server, monkeypatch):
    server = await start_server(**TOKENS)
    monkeypatch.setenv("OFFLOAD_URL", url_of(server))
    monkeypatch.setenv("OFFLOAD_TOKEN", ALICE)
    async with AsyncClient() as offload:
        assert await offload.run("test.echo", {"who": "alice"}) == {"who": "alice"}  # REST and WebSocket
    async with AsyncClient(token="not-a-valid-token-at-all") as stranger:
        with pytest.raises(Unauthorized) as refused:
            await stranger.get("job_" + "d" * 24)
        assert refused.value.status == 401
        with pytest.raises(Unauthorized):
            async for _ in stranger.watch():
                pass


def test_the_service_accepts_the_client_variables_in_its_environment(tmp_path):
    config = load_config(None, environ={"OFFLOAD_URL": "http://127.0.0.1:8080", "OFFLOAD_TOKEN": "x" * 20})
    assert config.server.port == load_config(None, environ={}).server.port


def test_a_job_with_fields_this_client_does_not_know_still_parses():
    job = Job.from_wire({"id": "job_x", "type": "pdf", "status": "running", "priority": "low", "progress": 5,
                         "message": None, "attempts": 1, "maxRetries": 3, "seq": 4,
                         "createdAt": "2026-11-28T15:04:02.123Z", "startedAt": None, "completedAt": None,
                         "runAt": None, "error": None, "result": None, "cancelRequested": True, "node": "n1"})
    assert job.cancel_requested and job.status is JobStatus.RUNNING and job.created_at.microsecond == 123000


# ---- the blocking client, from plain code -------------------------------------------------------
def test_blocking_client_from_plain_sync_code(tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    with ServerProcess(tmp_path / "server", processes=2) as server:
        asyncio.run(server.start())
        monkeypatch.setenv("OFFLOAD_URL", server.url)
        with Client() as offload:
            job = offload.submit("pdf", SAMPLE_INVOICE)
            seen: list[int] = []
            pdf = offload.wait(job.id, on_progress=lambda p, m: seen.append(p))
            assert pdf.startswith(b"%PDF") and seen[-1] == 100
            assert offload.get(job.id).status is JobStatus.COMPLETED
            assert offload.download(job.id) == pdf
            assert offload.download_to(job.id, tmp_path / "i.pdf").read_bytes() == pdf
            assert offload.run("test.echo", {"sync": True}) == {"sync": True}

            with pytest.raises(JobFailed) as failed:
                offload.run("test.fail", {"permanent": True})
            assert failed.value.type == "PermanentError"

            steps = offload.submit("test.steps", {"n": 2, "gate": str(gate)})
            events = []
            for event in offload.watch(steps.id):
                events.append(event)
                if len(events) == 1:
                    gate.write_text("go")
            assert isinstance(events[0], Snapshot) and isinstance(events[-1], Status)
            assert events[-1].status is JobStatus.COMPLETED

            later = offload.submit("test.echo", {}, delay=3600)
            assert offload.cancel(later.id).status is JobStatus.CANCELLED
            with pytest.raises(JobCancelled):
                offload.wait(later.id)
            listed = [j.id for j in offload.jobs(page_size=2)]
            assert set(listed) >= {job.id, steps.id, later.id} and len(listed) == len(set(listed)) == 5
            assert [j.id for j in offload.jobs(status="cancelled")] == [later.id]
            with pytest.raises(NotFound):
                offload.get("job_" + "e" * 24)
            with pytest.raises(TimeoutError):
                offload.wait(offload.submit("test.echo", {}, delay=3600).id, timeout=0.2)

            # the blocking invoice call, through the service
            assert text_of(generate_invoice(ORDER, ITEMS)) == text_of(pdf)


# ---- generate_invoice ---------------------------------------------------------------------------
async def test_generate_invoice_through_the_service_and_falling_back_give_the_same_text(start_server, caplog):
    server = await start_server()
    served = await agenerate_invoice(ORDER, ITEMS, url=url_of(server))
    async with AsyncClient(url_of(server)) as offload:
        jobs = [j async for j in offload.jobs(type="pdf")]
    assert len(jobs) == 1 and jobs[0].status is JobStatus.COMPLETED  # it was rendered by the service

    caplog.set_level(logging.INFO, logger="offload.invoice")
    local = await agenerate_invoice(ORDER, ITEMS, url=dead_url())
    assert text_of(local) == text_of(served)
    assert any(r.levelno == logging.WARNING and "in this process" in r.getMessage() for r in caplog.records)

    with pytest.raises(ServiceUnreachable):
        await agenerate_invoice(ORDER, ITEMS, url=dead_url(), fallback=False)
    with pytest.raises(InvalidRequest, match=r"^data\.order\.customer\.name"):  # same error either way
        await agenerate_invoice({**ORDER, "customer": {}}, ITEMS, url=dead_url())
    with pytest.raises(InvalidRequest, match=r"^data\.order\.customer\.name"):
        await agenerate_invoice({**ORDER, "customer": {}}, ITEMS, url=url_of(server))


def test_generate_invoice_without_a_url_renders_in_process(monkeypatch, caplog):
    monkeypatch.delenv("OFFLOAD_URL", raising=False)
    caplog.set_level(logging.INFO, logger="offload.invoice")
    pdf = generate_invoice(ORDER, ITEMS)
    assert "INV-1001" in text_of(pdf)[0]
    assert any(r.levelno == logging.INFO and "OFFLOAD_URL is not set" in r.getMessage() for r in caplog.records)
    assert text_of(generate_invoice(ORDER, ITEMS, url=dead_url())) == text_of(pdf)  # the blocking fallback
    with pytest.raises(ServiceUnreachable):
        generate_invoice(ORDER, ITEMS, url=dead_url(), fallback=False)


async def test_generate_invoice_falls_back_while_the_service_shuts_down(tmp_path, caplog):
    gate = tmp_path / "gate"
    with ServerProcess(tmp_path / "server", processes=1, shutdown_grace=30) as server:
        await server.start()
        async with AsyncClient(server.url) as offload:
            held = await offload.submit("test.steps", {"n": 1, "gate": str(gate)})  # keeps the drain going
            await eventually(lambda: _is(offload, held.id, JobStatus.RUNNING), what="the job to run")
            server.send(signal.SIGTERM)

            async with AsyncClient(server.url, max_attempts=1) as once:
                async def refusing() -> bool:
                    try:
                        await once.submit("test.echo", {})
                    except Unavailable as exc:
                        return exc.code == "shutting_down"
                    return False

                await eventually(refusing, what="the service to refuse new jobs")
            caplog.set_level(logging.WARNING, logger="offload.invoice")
            pdf = await agenerate_invoice(ORDER, ITEMS, url=server.url, max_attempts=2, max_retry_wait=5)
            assert "INV-1001" in text_of(pdf)[0]
            assert any("shutting down" in r.getMessage() for r in caplog.records), caplog.records
            with pytest.raises(Unavailable):
                await agenerate_invoice(ORDER, ITEMS, url=server.url, fallback=False, max_attempts=1)
        gate.write_text("go")
        assert server.wait() == 0


async def test_a_blocking_client_never_closed_is_closed_at_exit(start_server):
    """A script that drops its client without `close()` exits without aiohttp's "Unclosed
    client session" warning: the client closes itself at interpreter exit."""
    server = await start_server()
    script = ("import sys\nfrom offload import Client\n"
              "client = Client(sys.argv[1])\nprint(len(list(client.jobs())))\n")
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, url_of(server),
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert out.decode().strip() == "0"
    assert "Unclosed" not in err.decode(), err.decode()
