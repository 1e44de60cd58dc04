"""Logs people can use: a line per job transition (parsed back from `--log-format json`), a
failed handler's traceback kept with the job and logged, the request id echoed and on the
lines of its request, and an access log that leaves out health probes and stats polling."""
from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import signal
from pathlib import Path
from typing import Any

import pytest

from offload.service.config import ConfigError, load_config
from offload.service.joblog import JobLog
from offload.service.logs import REQUEST_ID, setup_logging
from offload.service.models import Job, JobStatus
from offload.service.scheduler import LEASE_LOST
from offload.workers.tracebacks import CUT, MAX_CHARS, handler_traceback
from tests.conftest import eventually
from tests.server_process import ServerProcess, get, post, until

MODULES = ("tests.jobtypes", "tests.logtypes")
JSON = {"OFFLOAD_SERVER_LOG_FORMAT": "json"}


def json_lines(server: ServerProcess, start: int | None = None) -> list[dict[str, Any]]:
    """The server's JSON log lines (of its `start`-th start only, when given)."""
    text = server.log.read_text(errors="replace")
    if start is not None:
        text = text.split(f"===== start {start} =====", 1)[1].split(f"===== start {start + 1} =====", 1)[0]
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def lifecycle(lines: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["logger"] == "offload.jobs" and line.get("jobId") == job_id]


async def lines_until(server: ServerProcess, job_id: str, last_event: str, start: int | None = None,
                      count: int = 1) -> list[dict[str, Any]]:
    """The lifecycle lines of `job_id`, once `count` lines of `last_event` were written."""
    async def check() -> list[dict[str, Any]] | None:
        lines = lifecycle(json_lines(server, start), job_id)
        return lines if sum(line["event"] == last_event for line in lines) >= count else None

    return await eventually(check, 15, f"the {last_event!r} line of {job_id} in the log")


# ---- the lifecycle lines of a real server -------------------------------------------------------
async def test_json_lines_follow_a_completed_a_retried_and_a_cancelled_job(tmp_path: Path):
    gate = tmp_path / "gate"
    with ServerProcess(tmp_path / "server", modules=MODULES, retry_delay_ms=10, env=JSON) as server:
        await server.start()
        async with server.session() as http:
            done = await post(http, "test.echo", {"hello": 1})
            retried = await post(http, "log.crash", {"total": "x", "counter": str(tmp_path / "count"),
                                                     "succeed_after": 1}, maxRetries=2)
            running = await post(http, "test.steps", {"n": 1, "gate": str(gate)})
            await until(http, running, lambda j: j["status"] == "running", "to run")
            delayed = await post(http, "test.echo", {}, delay=3600)
            for job_id in (running, delayed):
                async with http.delete(f"/api/jobs/{job_id}") as response:
                    assert response.status in (200, 202), await response.text()

            lines = await lines_until(server, done, "completed")
            assert [line["event"] for line in lines] == ["submitted", "started", "completed"]
            submitted, started, completed = lines
            for line in lines:
                assert line["level"] == "INFO" and line["type"] == "test.echo" and line["user"] == "local"
                assert line["time"].endswith("Z") and line["message"].startswith(f"job {done} {line['event']}")
            assert submitted["attempt"] == 0 and "durationMs" not in submitted
            assert started["attempt"] == 1 and started["durationMs"] >= 0  # its wait in the queue
            assert completed["attempt"] == 1 and completed["durationMs"] >= 0 and "errorType" not in completed
            job = await get(http, done)
            assert completed["status"] == "completed" and job["status"] == "completed"

            lines = await lines_until(server, retried, "completed")
            assert [(line["event"], line["attempt"]) for line in lines] == [
                ("submitted", 0), ("started", 1), ("retried", 1), ("started", 2), ("completed", 2)]
            retry = lines[2]
            assert retry["status"] == "pending" and retry["errorType"] == "ValueError" and retry["durationMs"] >= 0
            assert "invalid literal for int()" in retry["message"]
            assert "in _parse_total" in retry["traceback"]

            lines = await lines_until(server, running, "cancelled")
            assert [line["event"] for line in lines] == ["submitted", "started", "cancel_requested", "cancelled"]
            assert lines[-1]["status"] == "cancelled" and lines[-1]["durationMs"] >= 0  # it ran
            lines = await lines_until(server, delayed, "cancelled")
            assert [line["event"] for line in lines] == ["submitted", "cancelled"]
            assert "durationMs" not in lines[-1]  # it never ran


async def test_a_job_running_when_the_server_was_killed_is_logged_as_rescued(tmp_path: Path):
    gate = tmp_path / "gate"
    # A long lease: the restart takes the job back because the database is its own, at once.
    with ServerProcess(tmp_path / "server", modules=MODULES, lease_ms=20_000, env=JSON) as server:
        await server.start()
        async with server.session() as http:
            job_id = await post(http, "test.steps", {"n": 1, "gate": str(gate)})
            await until(http, job_id, lambda j: j["status"] == "running", "to run")
        server.kill()
        await server.start()
        lines = await lines_until(server, job_id, "started", start=2)
        assert [(line["event"], line["attempt"]) for line in lines] == [("rescued", 1), ("started", 2)]
        rescued = lines[0]
        assert rescued["status"] == "pending" and rescued["errorType"] == LEASE_LOST["type"]
        assert rescued["type"] == "test.steps" and rescued["user"] == "local" and rescued["durationMs"] >= 0
        gate.write_text("go")
        lines = await lines_until(server, job_id, "completed", start=2)
        assert lines[-1]["attempt"] == 2


# ---- a failed handler's traceback -----------------------------------------------------------------
@pytest.mark.parametrize("job_type", ["log.crash", "log.async_crash"])
async def test_a_handler_bug_keeps_its_traceback_in_the_job_and_the_log(tmp_path: Path, job_type: str):
    with ServerProcess(tmp_path / "server", modules=MODULES, env=JSON) as server:
        await server.start()
        async with server.session() as http:
            job_id = await post(http, job_type, {}, maxRetries=0)
            job = await until(http, job_id, lambda j: j["status"] == "failed", "to fail")
            async with http.get("/api/jobs", params={"status": "failed"}) as response:
                listed = (await response.json())["jobs"]
        error = job["error"]
        assert error["type"] == "KeyError" and error["message"] == "'total'"
        trace = error["traceback"]
        assert trace.startswith("Traceback (most recent call last):") and trace.rstrip().endswith("KeyError: 'total'")
        assert "in _parse_total" in trace and "logtypes.py" in trace
        assert "runtime.py" not in trace and "runners.py" not in trace  # it starts at the handler
        assert [j["error"]["traceback"] for j in listed if j["id"] == job_id] == [trace]
        failed = (await lines_until(server, job_id, "failed"))[-1]
        assert failed["level"] == "INFO" and failed["errorType"] == "KeyError" and failed["traceback"] == trace


async def test_a_deliberate_job_error_has_no_traceback(tmp_path: Path):
    with ServerProcess(tmp_path / "server", modules=MODULES, env=JSON) as server:
        await server.start()
        async with server.session() as http:
            job_id = await post(http, "test.fail", {"permanent": True})
            job = await until(http, job_id, lambda j: j["status"] == "failed", "to fail")
        assert "traceback" not in job["error"]
        failed = (await lines_until(server, job_id, "failed"))[-1]
        assert failed["errorType"] == "PermanentError" and "traceback" not in failed


def _recurse(n: int, message: str) -> None:
    if n == 0:
        raise RuntimeError(message)
    _recurse(n - 1, message)


def _raised(depth: int, message: str = "deep") -> BaseException:
    try:
        _recurse(depth, message)
    except RuntimeError as exc:
        return exc
    raise AssertionError("no exception")


def test_a_long_traceback_keeps_its_end_within_the_bound():
    deep = handler_traceback(_raised(300))
    lines = deep.splitlines()
    assert lines[0] == "Traceback (most recent call last):" and lines[-1] == "RuntimeError: deep"
    shown = sum(line.strip().startswith('File "') for line in lines)
    repeated = sum(int(line.split()[-3]) for line in lines if "Previous line repeated" in line)
    assert shown + repeated == 50  # the innermost 50 frames
    long = handler_traceback(_raised(2, "y" * 20_000))
    assert len(long) == MAX_CHARS and long.startswith(CUT) and long.endswith("y" * 100 + "\n")
    short = handler_traceback(_raised(1))
    assert not short.startswith(CUT)
    assert "in _recurse" in short.splitlines()[1]  # the frame that called it is left out


# ---- request ids and the access log ---------------------------------------------------------------
async def test_request_id_is_echoed_and_on_the_lines_of_its_request(tmp_path: Path):
    gate = tmp_path / "gate"
    with ServerProcess(tmp_path / "server", modules=MODULES, shutdown_grace=30, env=JSON) as server:
        await server.start()
        async with server.session() as http:
            async with http.get("/api/jobs", headers={"X-Request-Id": "req-1.a:b"}) as response:
                assert response.headers["X-Request-Id"] == "req-1.a:b"  # a tame one is kept
            for wild in ("with space", "x" * 65, "tab\there", "ünï"):
                async with http.get("/api/jobs", headers={"X-Request-Id": wild}) as response:
                    made = response.headers["X-Request-Id"]
                    assert made != wild and len(made) == 16 and int(made, 16) >= 0
            async with http.get("/api/jobs") as response:
                assert len(response.headers["X-Request-Id"]) == 16
            job_id = await post(http, "test.steps", {"n": 1, "gate": str(gate)})
            await until(http, job_id, lambda j: j["status"] == "running", "to run")
            server.send(signal.SIGTERM)  # draining: a submission is refused, and that is logged

            async def refused() -> bool:
                async with http.post("/api/jobs", json={"type": "test.echo", "data": {}},
                                     headers={"X-Request-Id": "drain-42"}) as response:
                    return response.status == 503

            await eventually(refused, 10, "a submission refused while draining")

            async def warned() -> list[dict[str, Any]]:
                return [line for line in json_lines(server) if line.get("requestId") == "drain-42"]

            lines = await eventually(warned, 10, "the refusal's line with its request id")
            assert lines[0]["level"] == "WARNING" and lines[0]["logger"] == "offload.app"
            gate.write_text("go")
        assert server.wait() == 0
        job_lines = lifecycle(json_lines(server), job_id)
        assert all("requestId" not in line for line in job_lines)  # commits are no request's


async def test_access_log_has_request_ids_and_leaves_out_health_and_stats(tmp_path: Path):
    with ServerProcess(tmp_path / "server", modules=MODULES, env={"OFFLOAD_SERVER_ACCESS_LOG": "true"}) as server:
        await server.start()
        async with server.session() as http:
            for path in ("/api/health", "/api/health/live", "/api/health/ready", "/api/stats"):
                async with http.get(path, headers={"X-Request-Id": "quiet"}) as response:
                    assert response.status == 200, path
            async with http.get("/api/jobs?token=secret-token", headers={"X-Request-Id": "loud-1"}) as response:
                assert response.status == 200

        async def access_lines() -> list[str]:
            return [line for line in server.log.read_text().splitlines() if "aiohttp.access" in line]

        lines = await eventually(access_lines, 10, "an access log line")
        assert len(lines) == 1, lines  # only /api/jobs: the probes and the stats are not logged
        line = lines[0]
        assert '"GET /api/jobs?token=*** HTTP/1.1" 200' in line and line.endswith(" request=loud-1")
        assert "secret-token" not in server.log.read_text()
        # text is the default format: a readable line, not JSON
        assert not any(text.startswith("{") for text in server.log.read_text().splitlines())


async def test_json_access_lines_carry_the_request_id_field(tmp_path: Path):
    env = {**JSON, "OFFLOAD_SERVER_ACCESS_LOG": "true"}
    with ServerProcess(tmp_path / "server", modules=MODULES, env=env) as server:
        await server.start()
        async with server.session() as http:
            async with http.get("/api/jobs", headers={"X-Request-Id": "loud-2"}) as response:
                assert response.status == 200

        async def access() -> list[dict[str, Any]]:
            return [line for line in json_lines(server) if line["logger"] == "aiohttp.access"]

        line = (await eventually(access, 10, "an access log line"))[0]
        assert line["requestId"] == "loud-2" and "GET /api/jobs" in line["message"]


# ---- the pieces, without processes ----------------------------------------------------------------
class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def job_lines():  # type: ignore[no-untyped-def]
    logger = logging.getLogger("test.joblog")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    lines = _Lines()
    logger.addHandler(lines)
    yield JobLog(clock=lambda: 10_000, logger=logger), lines.records
    logger.removeHandler(lines)


def test_a_release_a_rescue_to_failed_and_a_restart_after_rescue_are_told_apart(job_lines):
    log, records = job_lines
    job = Job(id="job_a", type="t", owner="ann", data={}, created_at=1000, seq=1)
    running = dataclasses.replace(job, status=JobStatus.RUNNING, attempts=1, started_at=4000)
    steps = [
        job, running,
        dataclasses.replace(running, status=JobStatus.PENDING, attempts=0),  # released at shutdown
        dataclasses.replace(running, status=JobStatus.RUNNING, attempts=1, started_at=6000),
        dataclasses.replace(running, status=JobStatus.PENDING, error=dict(LEASE_LOST), due_at=9000),  # rescued
        dataclasses.replace(running, status=JobStatus.RUNNING, attempts=2, error=dict(LEASE_LOST), started_at=9500),
        # released again: the stale lease-lost error does not make it a second rescue
        dataclasses.replace(running, status=JobStatus.PENDING, attempts=1, error=dict(LEASE_LOST)),
        dataclasses.replace(running, status=JobStatus.RUNNING, attempts=2, started_at=9600),
        dataclasses.replace(running, status=JobStatus.FAILED, attempts=2, error=dict(LEASE_LOST), completed_at=9900),
    ]
    for step in steps:
        log.on_change(step)
    assert [(r.event, r.attempt, r.status) for r in records] == [  # type: ignore[attr-defined]
        ("submitted", 0, "pending"), ("started", 1, "running"), ("released", 0, "pending"),
        ("started", 1, "running"), ("rescued", 1, "pending"), ("started", 2, "running"),
        ("released", 1, "pending"), ("started", 2, "running"), ("rescued", 2, "failed")]
    assert records[1].durationMs == 3000  # type: ignore[attr-defined]  # waited since due (created)
    assert records[2].getMessage() == "job job_a released: type=t user=ann attempt=0 ran=6000ms"
    assert "status=failed" in records[-1].getMessage() and records[-1].errorType == "WorkerLost"  # type: ignore[attr-defined]


def test_progress_writes_and_disabled_info_log_nothing(job_lines):
    from offload.service.store.base import ProgressChange

    log, records = job_lines
    log.on_change(ProgressChange("job_a", "ann", 1, 50, "half", 3))
    assert records == []
    logging.getLogger("test.joblog").setLevel(logging.WARNING)
    log.on_change(Job(id="job_b", type="t", owner="ann", data={}))
    assert records == []


def test_json_format_writes_the_fields_and_the_request_id_from_the_context():
    out = io.StringIO()
    logs = setup_logging("INFO", "json", out)
    try:
        token = REQUEST_ID.set("r-1")
        try:
            logging.getLogger("offload.test").info("hello %s", "there", extra={"jobId": "job_x", "attempt": 2})
        finally:
            REQUEST_ID.reset(token)
        logging.getLogger("offload.test").debug("not at INFO")
    finally:
        logs.close()
    (line,) = [json.loads(text) for text in out.getvalue().splitlines()]
    assert line["message"] == "hello there" and line["level"] == "INFO" and line["logger"] == "offload.test"
    assert line["jobId"] == "job_x" and line["attempt"] == 2 and line["requestId"] == "r-1"
    assert set(line) == {"time", "level", "logger", "message", "jobId", "attempt", "requestId"}


def test_log_format_is_checked_in_the_config(tmp_path: Path):
    assert load_config(None, environ={}).server.log_format == "text"
    assert load_config(None, environ={"OFFLOAD_SERVER_LOG_FORMAT": "json"}).server.log_format == "json"
    with pytest.raises(ConfigError, match=r"\[server\] log_format must be text or json"):
        load_config(None, environ={}, overrides={"server": {"log_format": "xml"}})


async def test_log_format_flag_is_offered(tmp_path: Path):
    import sys

    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "offload", "serve", "--log-format", "xml",
                                                   stderr=asyncio.subprocess.PIPE, cwd=tmp_path)
    _, err = await process.communicate()
    assert process.returncode == 2 and b"--log-format: invalid choice: 'xml'" in err
