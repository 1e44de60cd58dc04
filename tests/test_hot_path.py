"""What the submission path does cheaply still holds: ids drawn ahead stay unique across a
fork, request ids are unique without a draw each, the loopback check reads the Host header
as the URL would, and log lines gathered on the loop are all written, in order."""
from __future__ import annotations

import asyncio
import io
import logging
import os
import re
from pathlib import Path

import pytest

from offload.service import logs
from offload.service.auth import loopback_authority
from offload.service.logs import setup_logging
from offload.service.models import JOB_ID_PATTERN, new_job_id
from tests.conftest import submit, wait_status


def test_job_ids_drawn_ahead_are_never_repeated_by_a_forked_process():
    parent = [new_job_id() for _ in range(3)]  # the parent now holds ids drawn ahead
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the ids it makes next
        try:
            os.write(write, " ".join(new_job_id() for _ in range(300)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    later = [new_job_id() for _ in range(300)]
    assert len(child) == 300 and all(re.match(JOB_ID_PATTERN, job_id) for job_id in child + later)
    assert not set(child) & set(parent + later)
    assert len(set(parent + later)) == len(parent + later)


async def test_request_ids_made_for_requests_are_unique_and_tame(start_server):
    client = await start_server()
    ids = [(await client.get("/api/health/live")).headers["X-Request-Id"] for _ in range(50)]
    assert len(set(ids)) == 50
    assert all(re.fullmatch(r"[0-9a-f]{16}", request_id) for request_id in ids)
    blank = await client.get("/api/health/live", headers={"X-Request-Id": ""})
    assert re.fullmatch(r"[0-9a-f]{16}", blank.headers["X-Request-Id"])


@pytest.mark.parametrize("authority, loopback", [
    ("127.0.0.1:8080", True), ("localhost", True), ("LOCALHOST:1", True), ("[::1]:80", True), ("[::1]", True),
    ("app.localhost:3000", True), ("127.9.9.9", True), ("evil.example", False), ("127.0.0.1.nip.io", False),
    ("10.0.0.1:8080", False), ("", False), ("a:b:c", False), ("[zz::1]", False)])
def test_the_host_header_check_reads_the_host_as_a_url_would(authority, loopback):
    assert loopback_authority(authority) is loopback


class _Counted:
    """The writer's queue, with every hand-off to it kept."""

    def __init__(self, lines: object, handed: list[str]) -> None:
        self.lines, self.handed = lines, handed

    def put(self, chunk: str) -> None:
        self.handed.append(chunk)
        self.lines.put(chunk)  # type: ignore[attr-defined]


async def test_lines_logged_on_the_loop_are_handed_over_together_and_all_written_in_order():
    handed: list[str] = []
    out = io.StringIO()
    setup = setup_logging("INFO", "text", out)
    setup._handoff.lines = _Counted(setup._handoff.lines, handed)  # type: ignore[assignment]
    try:
        log = logging.getLogger("offload.test.gather")
        for n in range(10):
            log.info("line %d", n)
        assert handed == []  # gathered, not yet handed over
        deadline = asyncio.get_running_loop().time() + 5
        while not handed and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(logs.FLUSH_S / 4)
        assert len(handed) == 1 and handed[0].count("\n") == 10  # one hand-off for the ten
        for n in range(logs.FLUSH_LINES):  # a full batch goes at once
            log.info("more %d", n)
        assert len(handed) == 2
        log.info("last")
    finally:
        setup.close()  # writes what is still gathered
    written = [line.rsplit(": ", 1)[1] for line in out.getvalue().splitlines()]
    assert written == [f"line {n}" for n in range(10)] + [f"more {n}" for n in range(logs.FLUSH_LINES)] + ["last"]


async def test_progress_reports_closer_than_the_interval_are_held_and_the_latest_passes():
    from offload.service.scheduler import PROGRESS_INTERVAL_S, _Paced

    written: list[tuple[int, str | None]] = []
    paced = _Paced(lambda percent, message: written.append((percent, message)))
    paced(1, "a")
    paced(2, "b")
    paced(3, "c")
    assert written == [(1, "a")]  # the first at once, the next ones held
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while len(written) < 2 and loop.time() < deadline:
        await asyncio.sleep(PROGRESS_INTERVAL_S / 4)
    assert written == [(1, "a"), (3, "c")]  # the latest of the held ones, once
    paced(4, "d")  # within the interval of the last write: held
    assert written[-1] == (3, "c")
    paced.flush()  # the attempt ended: written now, before its ending
    assert written == [(1, "a"), (3, "c"), (4, "d")]
    assert paced._timer is None  # and nothing is left that could write after the ending


async def test_a_quick_attempts_latest_progress_is_stored_before_its_ending(start_server):
    client = await start_server()
    job_id = await submit(client, "test.steps", {"n": 50})  # fifty reports within a millisecond
    job = await wait_status(client, job_id, "completed")
    assert job["message"] == "step 50 of 50" and job["progress"] == 100


async def test_long_data_is_kept_apart_from_the_row_short_data_in_it_and_both_reach_the_job(tmp_path):
    from offload.service.models import Job, JobStatus, now_ms
    from offload.service.store.sqlite import INLINE_DATA, SQLiteStore

    store = SQLiteStore(tmp_path / "store.db")
    await store.open()
    try:
        long_data = {"items": ["x" * 100] * (INLINE_DATA // 50)}
        now = now_ms()
        long_job, _ = await store.create(Job(id=new_job_id(), type="t", owner="u", data=long_data, created_at=now,
                                             due_at=now))
        short_job, _ = await store.create(Job(id=new_job_id(), type="t", owner="u", data={"n": 1}, created_at=now,
                                              due_at=now))
        raw = store.reader._conn
        inline = dict(raw.execute("SELECT id, data FROM jobs").fetchall())
        assert inline == {long_job.id: "", short_job.id: '{"n":1}'}
        assert raw.execute("SELECT COUNT(*) FROM job_data").fetchone()[0] == 1
        claimed = {job.id: job.data for job in await store.claim("node_t", now, 60_000, limit=2)}
        assert claimed == {long_job.id: long_data, short_job.id: {"n": 1}}
        for job in await store.claim("node_t", now, 60_000, limit=2):
            raise AssertionError(f"claimed twice: {job.id}")
        running = (await store.get(long_job.id))
        assert running is not None and running.status is JobStatus.RUNNING
        await store.complete(running, None, now)
        purged = await store.purge_finished(JobStatus.COMPLETED, now + 1, 10)
        assert [p.job_id for p in purged] == [long_job.id]
        assert raw.execute("SELECT COUNT(*) FROM job_data").fetchone()[0] == 0  # went with its job
    finally:
        await store.close()


async def test_a_job_larger_than_a_default_pipe_is_written_at_once_into_its_enlarged_pipe(start_server):
    import fcntl

    from offload.service.keys import SCHEDULER
    from offload.service.pool import INLINE_SEND, JOB_PIPE_BYTES

    client = await start_server()
    data = {"blob": "y" * 200_000}  # over 64 KB, a default pipe's size, under the enlarged one
    job_id = await submit(client, "test.echo", data)
    job = await wait_status(client, job_id, "completed")
    assert job["result"] == {"value": data}  # it crossed the pipe whole
    pool = client.server.app[SCHEDULER].pool
    live = [slot for slot in pool.slots if slot.live]
    assert live
    allowed = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    for slot in live:  # what is written at once always fits in the pipe, header and all
        assert slot.inline_send + 64 <= fcntl.fcntl(slot.jobs.fileno(), fcntl.F_GETPIPE_SZ)
        if allowed >= JOB_PIPE_BYTES:  # and that is the whole job here, no thread needed
            assert slot.inline_send > len(data["blob"]) > INLINE_SEND


def test_an_inserts_values_written_out_are_the_columns_encoded_one_by_one():
    from offload.service.models import JobStatus, Priority
    from offload.service.store import sqlite

    plain = sqlite.Job(id="job_a", type="t", owner="u", data={})
    full = sqlite.Job(id="job_b", type="t", owner="u", data={"x": 1}, status=JobStatus.RUNNING,
                      priority=Priority.HIGH, progress=5, message="m", attempts=2, max_retries=1, retry_delay_ms=7,
                      timeout_ms=9, seq=3, created_at=10, started_at=11, completed_at=12, due_at=13,
                      error={"type": "E", "message": "x"}, result={"a": [1]}, idempotency_key="k", lease_owner="n",
                      lease_until=14, cancel_requested=True, after=("job_x", "job_y"), after_failed="run",
                      waiting_for=("job_y",), checkpoint={"c": 1})
    for job in (plain, full):
        one_by_one = tuple(sqlite._encode(column, getattr(job, column)) for column in sqlite._JOB_COLUMNS)
        assert sqlite._row_values(job) == one_by_one
        assert [type(v) for v in sqlite._row_values(job)] == [type(v) for v in one_by_one]


def test_the_text_format_writes_a_line_as_logging_would():
    from offload.service.logs import TextFormatter

    plain = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    ours = TextFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failure = sys.exc_info()
    records = [logging.makeLogRecord({"name": "offload.x", "levelname": "INFO", "levelno": 20, "msg": "a %s b",
                                      "args": ("x",), "created": created, "msecs": msecs})
               for created, msecs in ((1764590000.25, 250.0), (1764590000.999, 999.0), (1764590001.0, 0.0))]
    records.append(logging.makeLogRecord({"name": "offload.y", "levelname": "ERROR", "levelno": 40, "msg": "failed",
                                          "exc_info": failure, "created": 1764590002.5, "msecs": 500.0}))
    for record in records:
        assert ours.format(record) == plain.format(record)
