"""The `offload` client commands as real subprocesses (`python -m offload …`) against a real
server: exit codes, results written with `-o`, `--data` from a file and from stdin, plain
output when not on a terminal, the job table, `watch`, one-line errors, Ctrl-C; and on a
pseudo-terminal, the live progress bar and the question whether to cancel."""
from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import signal
import struct
import sys
import termios
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from offload import __version__
from tests.conftest import eventually, submit, wait_status
from tests.server_process import free_port
from tests.users import ALICE, TOKENS

ESCAPE = "\x1b"
ID = re.compile(r"job_[a-z0-9]+")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def cli_env(**extra: str) -> dict[str, str]:
    """The test's environment without anything that would steer the command: no OFFLOAD_*
    (each test passes --url), nothing that forces colour or a terminal width."""
    steering = ("OFFLOAD_", "FORCE_COLOR", "NO_COLOR", "TTY_", "CLICOLOR", "COLUMNS", "LINES")
    env = {k: v for k, v in os.environ.items() if not k.startswith(steering)}
    return {**env, **extra}


def url_of(server: TestClient) -> str:
    return str(server.make_url("")).rstrip("/")


#: Commands a test started; the `reaped` fixture ends those still running when it is over.
_started: list[asyncio.subprocess.Process] = []


@pytest.fixture(autouse=True)
async def reaped() -> Any:
    yield
    while _started:
        process = _started.pop()
        if process.returncode is None:
            process.kill()
        await process.communicate()


async def spawn(*args: str, cwd: Path | None = None, stdin: Any = asyncio.subprocess.DEVNULL,
                env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "offload", *args, cwd=cwd, env=env or cli_env(), stdin=stdin,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _started.append(process)
    return process


async def offload(*args: str, input: bytes | None = None, cwd: Path | None = None,
                  env: dict[str, str] | None = None) -> Result:
    """Run one command to its end (on the test's loop, so an in-process server keeps serving)."""
    process = await spawn(*args, cwd=cwd, env=env,
                          stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL)
    stdout, stderr = await asyncio.wait_for(process.communicate(input), 60)
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


async def read_until(stream: asyncio.StreamReader, test: Callable[[str], bool], timeout: float = 30) -> list[str]:
    """Lines of `stream` up to and including the first that passes `test`."""
    lines: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            line = (await stream.readline()).decode()
            assert line, f"the stream ended before the line looked for: {lines}"
            lines.append(line.rstrip("\n"))
            if test(lines[-1]):
                return lines


def plain(result: Result) -> None:
    assert ESCAPE not in result.stdout and ESCAPE not in result.stderr, result
    assert "Traceback" not in result.stderr, result.stderr


def one_line(result: Result, *words: str) -> str:
    """An error: exit 2 and one line on stderr holding `words`."""
    assert result.code == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    plain(result)
    return lines[0]


@pytest.fixture
async def server(start_server: Callable[..., Any]) -> TestClient:
    return await start_server()


async def job_of(server: TestClient, job_id: str) -> dict[str, Any]:
    response = await server.get(f"/api/jobs/{job_id}")
    assert response.status == 200
    return await response.json()


# ---- submit -------------------------------------------------------------------------------------
async def test_submit_wait_prints_the_json_result_with_plain_progress_lines_and_exits_0(server: TestClient):
    result = await offload("submit", "test.steps", "--data", '{"n": 4}', "--wait", "--url", url_of(server))
    assert result.code == 0, result
    plain(result)
    assert orjson.loads(result.stdout)["steps"] == 4  # stdout holds the result alone
    progress = result.stderr.splitlines()
    job_id = progress[0].split()[0]
    assert ID.fullmatch(job_id) and all(line.startswith(job_id + " ") for line in progress), progress
    assert progress[-1].startswith(f"{job_id} completed 100%"), progress
    assert (await job_of(server, job_id))["status"] == "completed"


async def test_submit_without_wait_prints_the_job_id_and_passes_the_options(server: TestClient):
    args = ("submit", "test.echo", "--data", '{"a": 1}', "--priority", "high", "--max-retries", "0",
            "--timeout", "30", "--delay", "3600", "--idempotency-key", "order-1001", "--url", url_of(server))
    result = await offload(*args)
    assert result.code == 0, result
    plain(result)
    job_id = result.stdout.strip()
    assert ID.fullmatch(job_id), result.stdout
    job = await job_of(server, job_id)
    assert (job["status"], job["priority"], job["maxRetries"]) == ("pending", "high", 0)
    assert job["runAt"] is not None  # --delay
    again = await offload(*args)
    assert (again.code, again.stdout.strip()) == (0, job_id)  # the same key answers the first job


async def test_a_failed_job_exits_1_with_its_error(server: TestClient):
    result = await offload("submit", "test.fail", "--data", '{"permanent": true}', "--wait", "--url", url_of(server))
    assert result.code == 1, result
    plain(result)
    assert result.stdout == ""
    assert re.search(r"job job_\w+ failed: PermanentError: this input can never work$", result.stderr.strip())


async def test_a_job_cancelled_while_waited_for_exits_3_and_cancel_cancels(server: TestClient, tmp_path: Path):
    waiting = await spawn("submit", "test.steps", "--data", orjson.dumps({"hold": str(tmp_path / "never")}).decode(),
                          "--wait", "--url", url_of(server))
    assert waiting.stderr is not None
    job_id = (await read_until(waiting.stderr, lambda line: True))[0].split()[0]
    await wait_status(server, job_id, "running")
    cancel = await offload("cancel", job_id, "--url", url_of(server))
    assert cancel.code == 0, cancel
    assert cancel.stdout.startswith(job_id), cancel.stdout
    _, stderr = await asyncio.wait_for(waiting.communicate(), 30)
    assert waiting.returncode == 3, stderr
    assert f"job {job_id} was cancelled" in stderr.decode()
    assert (await job_of(server, job_id))["status"] == "cancelled"
    again = await offload("cancel", job_id, "--url", url_of(server))  # already finished: 409
    one_line(again, job_id, "409")


async def test_output_writes_a_file_result_and_a_json_result(server: TestClient, tmp_path: Path):
    data = orjson.dumps({"filename": "greeting.txt", "text": "hello there"}).decode()
    target = tmp_path / "out" / "hello.txt"
    target.parent.mkdir()
    result = await offload("submit", "test.file", "--data", data, "-o", str(target), "--url", url_of(server))
    assert result.code == 0, result  # -o implies --wait
    assert target.read_text() == "hello there"
    assert result.stdout.strip() == str(target)
    values = tmp_path / "value.json"
    result = await offload("submit", "test.echo", "--data", '{"a": [1, 2]}', "--wait", "-o", str(values),
                           "--url", url_of(server))
    assert result.code == 0, result
    assert orjson.loads(values.read_bytes()) == {"a": [1, 2]}


async def test_a_file_result_without_output_is_saved_under_its_name_never_over_a_file(server: TestClient,
                                                                                      tmp_path: Path):
    (tmp_path / "greeting.txt").write_text("mine")
    data = orjson.dumps({"filename": "greeting.txt", "text": "hello there"}).decode()
    result = await offload("submit", "test.file", "--data", data, "--wait", "--url", url_of(server), cwd=tmp_path)
    assert result.code == 0, result
    assert result.stdout.strip() == "greeting-1.txt"
    assert (tmp_path / "greeting.txt").read_text() == "mine"
    assert (tmp_path / "greeting-1.txt").read_text() == "hello there"


async def test_data_from_standard_input_and_from_a_file(server: TestClient, tmp_path: Path):
    piped = await offload("submit", "test.echo", "--data", "@-", "--wait", "--url", url_of(server),
                          input=b'{"from": "stdin"}')
    assert piped.code == 0, piped
    assert orjson.loads(piped.stdout) == {"from": "stdin"}
    (tmp_path / "job.json").write_text('{"from": "a file"}')
    filed = await offload("submit", "test.echo", "--data", "@job.json", "--wait", "--url", url_of(server),
                          cwd=tmp_path)
    assert filed.code == 0, filed
    assert orjson.loads(filed.stdout) == {"from": "a file"}


async def test_bad_data_and_bad_arguments_are_usage_errors(server: TestClient, tmp_path: Path):
    url = url_of(server)
    one_line(await offload("submit", "test.echo", "--data", "{not json", "--url", url), "--data", "not valid JSON")
    one_line(await offload("submit", "test.echo", "--data", "@missing.json", "--url", url, cwd=tmp_path),
             "missing.json", "No such file")
    one_line(await offload("submit", "no.such.type", "--url", url), "422")
    usage = await offload("submit", "test.echo", "--priority", "urgent", "--url", url)
    assert usage.code == 2 and "invalid choice" in usage.stderr, usage
    response = await server.get("/api/jobs")
    assert (await response.json())["jobs"] == []  # nothing was submitted


# ---- jobs, get, download ------------------------------------------------------------------------
async def test_jobs_lists_a_plain_table_with_the_ids(server: TestClient):
    done = await submit(server, "test.echo", {})
    await wait_status(server, done, "completed")
    later = await submit(server, "test.echo", {}, delay=3_600_000)
    result = await offload("jobs", "--url", url_of(server))
    assert result.code == 0, result
    plain(result)
    header, *rows = [line.split() for line in result.lines]
    assert header == ["ID", "TYPE", "STATUS", "PROGRESS", "AGE", "DURATION"]
    assert [row[:4] for row in rows] == [[later, "test.echo", "pending", "0%"], [done, "test.echo", "completed", "100%"]]
    assert rows[0][5] == "-" and re.fullmatch(r"\d+s", rows[1][5])
    pending = await offload("jobs", "--status", "pending", "--url", url_of(server))
    assert [line.split()[0] for line in pending.lines[1:]] == [later]
    limited = await offload("jobs", "--limit", "1", "--type", "test.echo", "--url", url_of(server))
    assert [line.split()[0] for line in limited.lines[1:]] == [later]


async def test_get_prints_the_job_as_the_service_answers_it(server: TestClient):
    job_id = await submit(server, "test.echo", {"a": 1})
    await wait_status(server, job_id, "completed")
    result = await offload("get", job_id, "--url", url_of(server))
    assert result.code == 0, result
    plain(result)
    assert orjson.loads(result.stdout) == await job_of(server, job_id)


async def test_download_writes_the_result_to_output_or_stdout(server: TestClient, tmp_path: Path):
    job_id = await submit(server, "test.file", {"filename": "report.csv", "text": "a,b\n1,2\n"})
    await wait_status(server, job_id, "completed")
    result = await offload("download", job_id, "-o", str(tmp_path / "r.csv"), "--url", url_of(server))
    assert result.code == 0, result
    assert (tmp_path / "r.csv").read_text() == "a,b\n1,2\n"
    named = await offload("download", job_id, "--url", url_of(server), cwd=tmp_path)
    assert named.stdout.strip() == "report.csv" and (tmp_path / "report.csv").read_text() == "a,b\n1,2\n"
    piped = await offload("download", job_id, "-o", "-", "--url", url_of(server))
    assert piped.stdout == "a,b\n1,2\n"
    pending = await submit(server, "test.echo", {}, delay=3_600_000)
    one_line(await offload("download", pending, "--url", url_of(server)), "409", "pending")


# ---- watch --------------------------------------------------------------------------------------
async def test_watch_one_job_as_json_lines_ends_at_its_final_status(server: TestClient, tmp_path: Path):
    gate = tmp_path / "gate"
    job_id = await submit(server, "test.steps", {"n": 3, "gate": str(gate)})
    watching = await spawn("watch", job_id, "--json", "--url", url_of(server))
    assert watching.stdout is not None
    first = await read_until(watching.stdout, lambda line: True)
    assert orjson.loads(first[0])["event"] == "snapshot"
    gate.touch()
    stdout, stderr = await asyncio.wait_for(watching.communicate(), 30)
    assert watching.returncode == 0, stderr
    events = [orjson.loads(line) for line in [*first, *stdout.decode().splitlines()]]
    assert events[-1]["event"] in ("status", "snapshot") and events[-1]["job"]["status"] == "completed"
    assert all((e.get("jobId") or e["job"]["id"]) == job_id for e in events)
    seqs = [e["job"]["seq"] if e["event"] == "snapshot" else e["seq"] for e in events]
    assert seqs == sorted(set(seqs)), events


async def test_watch_exits_with_the_code_of_the_final_status(server: TestClient):
    failed = await submit(server, "test.fail", {"permanent": True}, maxRetries=0)
    await wait_status(server, failed, "failed")
    result = await offload("watch", failed, "--url", url_of(server))
    assert result.code == 1, result
    plain(result)
    assert result.lines == [f"{failed} snapshot failed 0% PermanentError: this input can never work"]


async def test_watch_every_job_prints_one_plain_line_an_event_until_ctrl_c(server: TestClient):
    waiting = await submit(server, "test.echo", {}, delay=3_600_000)
    watching = await spawn("watch", "--url", url_of(server))
    assert watching.stdout is not None
    lines = await read_until(watching.stdout, lambda line: line.startswith(waiting))  # subscribed: its snapshot
    assert lines == [f"{waiting} snapshot pending 0%"]
    job_id = await submit(server, "test.steps", {"n": 2})
    lines = await read_until(watching.stdout, lambda line: line.startswith(f"{job_id} status completed"))
    assert f"{job_id} status running 0%" in lines, lines
    assert lines[-1] == f'{job_id} status completed 100% {{"steps":2,"pid":{pid_of(lines[-1])}}}'
    assert all(line.startswith(job_id + " ") for line in lines), lines
    watching.send_signal(signal.SIGINT)
    stdout, stderr = await asyncio.wait_for(watching.communicate(), 30)
    assert watching.returncode == 130, stderr
    assert ESCAPE not in "".join(lines) + stdout.decode() and b"Traceback" not in stderr


def pid_of(line: str) -> int:
    return int(line.rpartition('"pid":')[2].rstrip("}"))


# ---- errors -------------------------------------------------------------------------------------
async def test_a_bad_token_is_one_line_and_exit_2(start_server: Callable[..., Any]):
    server = await start_server(**TOKENS)
    for command in (["jobs"], ["get", "job_x"], ["watch"], ["submit", "test.echo", "--wait"]):
        line = one_line(await offload(*command, "--url", url_of(server), "--token", "not-a-token"), "unauthorized")
        assert "--token" in line
    ok = await offload("jobs", "--url", url_of(server), env=cli_env(OFFLOAD_TOKEN=ALICE))
    assert ok.code == 0, ok  # the token from the environment


async def test_a_closed_port_is_not_reachable_in_one_line_and_exit_2():
    url = f"http://127.0.0.1:{free_port()}"
    for command in (["jobs"], ["get", "job_x"], ["watch"], ["submit", "test.echo", "--wait"], ["cancel", "job_x"]):
        one_line(await offload(*command, "--url", url), "server not reachable", url)
    env = cli_env(OFFLOAD_URL=url)  # the address from the environment
    one_line(await offload("jobs", env=env), "server not reachable", url)


async def test_an_unknown_job_is_not_found_in_one_line_and_exit_2(server: TestClient):
    for command in ("get", "cancel", "download", "watch"):
        one_line(await offload(command, "job_nope", "--url", url_of(server)), "not found", "job_nope")


async def test_version_and_help():
    version = await offload("--version")
    assert (version.code, version.stdout.strip()) == (0, f"offload {__version__}")
    help = await offload("submit", "--help")
    assert help.code == 0 and "exit codes:" in help.stdout
    assert re.search(r"^  2 +usage or connection error", help.stdout, flags=re.M), help.stdout


# ---- Ctrl-C -------------------------------------------------------------------------------------
@pytest.mark.parametrize("detach", [True, False])
async def test_ctrl_c_while_waiting_exits_130_and_leaves_the_job_running(server: TestClient, tmp_path: Path,
                                                                         detach: bool):
    gate = tmp_path / "gate"
    waiting = await spawn("submit", "test.steps", "--data", orjson.dumps({"n": 2, "gate": str(gate)}).decode(),
                          "--wait", *(["--detach"] if detach else []), "--url", url_of(server))
    assert waiting.stderr is not None
    lines = await read_until(waiting.stderr, lambda line: "running 100% step 2 of 2" in line)
    job_id = lines[0].split()[0]
    waiting.send_signal(signal.SIGINT)
    stdout, stderr = await asyncio.wait_for(waiting.communicate(), 30)
    assert waiting.returncode == 130, stderr
    said = stderr.decode().strip().splitlines()[-1]
    assert said.startswith(f"offload: job {job_id} left running") and f"offload watch {job_id}" in said
    assert ("no terminal" in said) is not detach
    job = await job_of(server, job_id)
    assert job["status"] == "running" and not job.get("cancelRequested"), job
    gate.touch()
    await wait_status(server, job_id, "completed")


# ---- on a terminal ------------------------------------------------------------------------------
class Terminal:
    """A command on a pseudo-terminal (stdin, stdout and stderr), 120 columns wide."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.screen = ""
        self.process: asyncio.subprocess.Process | None = None
        self._more = asyncio.Event()
        self._ended = False

    async def start(self, *args: str) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "offload", *args, env=cli_env(TERM="xterm-256color"),
            stdin=self.slave, stdout=self.slave, stderr=self.slave)
        os.close(self.slave)
        asyncio.get_running_loop().add_reader(self.master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the command ended and closed the terminal
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
            self._ended = True
        self.screen += data.decode(errors="replace")
        self._more.set()

    async def shows(self, text: str, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while text not in self.screen:
                assert not self._ended, f"the command ended without showing {text!r}:\n{self.screen!r}"
                self._more.clear()
                await self._more.wait()

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    async def exit_code(self) -> int:
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), 30)
        await self.shows_end()
        return code

    async def shows_end(self) -> None:
        async with asyncio.timeout(10):
            while not self._ended:
                self._more.clear()
                await self._more.wait()

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)


async def test_on_a_terminal_a_progress_bar_renders_and_ctrl_c_asks_whether_to_cancel(server: TestClient,
                                                                                       tmp_path: Path):
    gate = tmp_path / "gate"
    terminal = Terminal()
    try:
        await terminal.start("submit", "test.steps", "--data", orjson.dumps({"n": 2, "gate": str(gate)}).decode(),
                             "--wait", "--url", url_of(server))
        await terminal.shows("step 2 of 2")
        assert ESCAPE in terminal.screen and "━" in terminal.screen and "100%" in terminal.screen
        job_id = ID.search(terminal.screen)
        assert job_id is not None
        assert terminal.process is not None
        terminal.process.send_signal(signal.SIGINT)
        await terminal.shows(f"Cancel job {job_id[0]}?")
        terminal.type("y\n")
        assert await terminal.exit_code() == 130, terminal.screen
        await eventually(lambda: _status_is(server, job_id[0], "cancelled"), 20, "the job to be cancelled")
    finally:
        await terminal.close()


async def test_on_a_terminal_detach_leaves_the_job_running_without_asking(server: TestClient, tmp_path: Path):
    gate = tmp_path / "gate"
    terminal = Terminal()
    try:
        await terminal.start("submit", "test.steps", "--data", orjson.dumps({"n": 2, "gate": str(gate)}).decode(),
                             "--wait", "--detach", "--url", url_of(server))
        await terminal.shows("step 2 of 2")
        job_id = ID.search(terminal.screen)
        assert job_id is not None and terminal.process is not None
        terminal.process.send_signal(signal.SIGINT)
        assert await terminal.exit_code() == 130, terminal.screen
        assert f"job {job_id[0]} left running" in terminal.screen and "Cancel job" not in terminal.screen
        job = await job_of(server, job_id[0])
        assert job["status"] == "running" and not job.get("cancelRequested"), job
        gate.touch()
        await wait_status(server, job_id[0], "completed")
    finally:
        await terminal.close()


async def test_on_a_terminal_a_completed_job_shows_the_bar_at_100_and_prints_the_result(server: TestClient):
    terminal = Terminal()
    try:
        await terminal.start("submit", "test.steps", "--data", '{"n": 3}', "--wait", "--url", url_of(server))
        assert await terminal.exit_code() == 0, terminal.screen
        assert "━" in terminal.screen and "100%" in terminal.screen and "completed" in terminal.screen
        assert '"steps": 3' in terminal.screen
    finally:
        await terminal.close()


async def _status_is(server: TestClient, job_id: str, status: str) -> bool:
    return (await job_of(server, job_id))["status"] == status
