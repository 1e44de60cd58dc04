"""offload's own fork server (`workers/forkserver.py`): the service starts it and no other
helper (multiprocessing's resource tracker, some 7 MB, is never started); its workers share
a cancel flag with the service; a fork server killed under a running job is replaced, and
the worker it leaves behind is stopped rather than left running. Also what the service
process no longer imports at start-up (the client, `importlib.metadata`, psutil)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from offload import __version__
from offload.workers.forkserver import CancelFlag
from tests.conftest import eventually
from tests.server_process import (ROOT, ServerProcess, alive, descendants, get, libraries, parent_of, polled, post,
                                  until, worker_pids)


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def fork_servers(server_pid: int) -> list[int]:
    """The service's children: its fork server (forked by `offload serve` at its start, or
    started anew as `offload.workers.forkserver`), which forks the workers."""
    return [pid for pid in descendants(server_pid) if parent_of(pid) == server_pid]


async def test_the_service_starts_its_fork_server_and_workers_and_no_resource_tracker(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, processes=2) as server:
        await server.start()
        async with server.session() as http:
            workers = await worker_pids(http, 2)
            job = await until(http, await post(http, "test.echo", {"x": 1}), lambda j: j["status"] == "completed",
                              "completed")
            assert job["result"]["value"] == {"x": 1}
        (fork_server,) = fork_servers(server.pid)
        assert sorted(descendants(server.pid)) == sorted([fork_server, *workers])
        for pid in workers:  # forked by the fork server, not by the service
            assert parent_of(pid) == fork_server
        assert not [pid for pid in descendants(server.pid) if "resource_tracker" in command_line(pid)]


async def test_offload_serve_forks_its_fork_server_from_itself_before_the_http_side(tmp_path: Path) -> None:
    """asyncio's accelerator is loaded by the service's command line, and by no job type: a
    worker maps it because it is a copy of the service made at its start, sharing those
    pages. aiohttp's HTTP parser, imported by the service after that copy was made, is the
    service's alone."""
    with ServerProcess(tmp_path, processes=2) as server:
        await server.start()
        async with server.session() as http:
            workers = await worker_pids(http, 2)
        (fork_server,) = fork_servers(server.pid)
        assert command_line(fork_server) == command_line(server.pid)
        assert "_http_parser" in libraries(server.pid)
        for pid in (fork_server, *workers):
            assert "_asyncio" in libraries(pid), pid
            assert "_http_parser" not in libraries(pid), pid
        assert "_rl_accel" not in libraries(server.pid)  # the service renders nothing


async def test_with_another_start_method_the_early_fork_server_ends_unused(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, processes=1, env={"OFFLOAD_WORKERS_START_METHOD": "spawn"}) as server:
        await server.start()
        async with server.session() as http:
            await worker_pids(http, 1)
        copies = [pid for pid in descendants(server.pid) if command_line(pid) == command_line(server.pid)]
        assert copies == []


def test_a_cancel_flag_set_by_one_process_is_read_by_the_other() -> None:
    flag, fd = CancelFlag.new()
    reply_r, reply_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child maps the flag from the descriptor, as a worker does
        child_flag = CancelFlag(fd)
        os.read(go_r, 1)
        os.write(reply_w, bytes([child_flag.value]))
        child_flag.value = 7
        os._exit(0)
    try:
        os.close(fd)  # the mapping holds a descriptor of its own
        assert flag.value == 0
        flag.value = 1
        os.write(go_w, b"x")
        assert os.read(reply_r, 1) == b"\x01"
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert flag.value == 7
    for end in (reply_r, reply_w, go_r, go_w):
        os.close(end)


async def test_a_killed_fork_server_is_replaced_and_its_running_worker_stopped(tmp_path: Path) -> None:
    started = tmp_path / "started"
    with ServerProcess(tmp_path / "server", processes=1, retry_delay_ms=10) as server:
        await server.start()
        async with server.session() as http:
            (old_worker,) = await worker_pids(http, 1)
            (old_fork_server,) = fork_servers(server.pid)
            spinning = await post(http, "test.spin", {"started": str(started)}, maxRetries=0)
            await until(http, spinning, lambda j: j["status"] == "running", "to run")
            await eventually(polled(started.exists), 20, "the spinning job to start")
            os.kill(old_fork_server, signal.SIGKILL)

            failed = await until(http, spinning, lambda j: j["status"] == "failed", "to fail")
            assert failed["error"]["type"] == "WorkerCrashed", failed["error"]
            # The worker the dead fork server left behind is stopped, not left spinning.
            await eventually(polled(lambda: not alive(old_worker)), 20, "the orphaned worker to be stopped")

            job = await until(http, await post(http, "test.echo", {"after": True}),
                              lambda j: j["status"] == "completed", "a new job to complete")
            assert job["result"]["value"] == {"after": True}
            (new_worker,) = await worker_pids(http, 1)
            assert new_worker != old_worker
            (new_fork_server,) = fork_servers(server.pid)
            assert new_fork_server != old_fork_server
            # The service has threads by now: the replacement starts in a new interpreter.
            assert "offload.workers.forkserver" in command_line(new_fork_server)
            assert (await get(http, spinning))["attempts"] == 1


@pytest.mark.parametrize("module", ["offload.client", "importlib.metadata", "psutil"])
def test_the_service_does_not_import_at_start_up_what_only_other_commands_use(module: str) -> None:
    """`offload serve` builds its whole application without the client (the other commands'),
    `importlib.metadata` (the version is the package's own), or psutil (loaded by the first
    statistics read)."""
    code = ("import sys\n"
            "from offload.service import cli\n"
            "from offload.service.app import create_app\n"
            "from offload.service.config import Config\n"
            "create_app(Config())\n"
            f"print({module!r} in sys.modules)\n")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "False"


def test_the_package_version_is_the_installed_one() -> None:
    """The statistics and `offload --version` read the package's `__version__`: it must be the
    version the project declares."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert __version__ == declared


def test_a_worker_sentinel_numbered_above_1024_is_read() -> None:
    """A busy service (a thousand WebSockets) gives a replacement worker's status pipe a
    number above `select`'s limit: its end must still be noticed."""
    import resource

    from offload.service.forks import ForkedProcess

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"at most {hard} open files here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held: list[int] = []
    try:
        while True:
            status_r, status_w = os.pipe()
            if status_r > 1024:
                break
            held += [status_r, status_w]
        process = ForkedProcess(os.getpid(), status_r)
        assert process.exitcode is None  # nothing written yet: still running
        os.write(status_w, (-9).to_bytes(4, "big", signed=True))
        process.join(5)
        assert process.exitcode == -9
        os.close(status_w)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
