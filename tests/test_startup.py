"""`offload serve` as a real process: a start-up that cannot succeed (a read-only database
or folder, a taken port) exits at once with one line naming the problem and leaves nothing
running; what the environment holds for others does not stop it."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from pypdf import PdfReader

from tests.conftest import SAMPLE_INVOICE, eventually
from tests.server_process import ServerProcess, free_port, post, until

#: A start-up that fails does so in well under this; a hanging one is caught by it.
DEADLINE = 20


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """Make `paths` unwritable even for root (`chattr +i`), as a read-only mount would."""
    if subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs root and a file system that has it)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


def last_run(server: ServerProcess) -> list[str]:
    """The output of the server's latest start, line by line."""
    return server.log.read_text().rpartition("=====\n")[2].splitlines()


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


async def assert_fails_to_start(server: ServerProcess, *words: str) -> str:
    """Start `server`, expect a prompt exit with one line naming the problem; returns it."""
    process = server.spawn()
    assert server.wait(DEADLINE) != 0, server.tail()
    lines = last_run(server)
    failures = [line for line in lines if "offload: cannot start:" in line]
    assert len(failures) == 1, lines
    assert all(word in failures[0] for word in words), failures[0]
    text = "\n".join(lines)
    assert "serving on" not in text and "Traceback" not in text, text
    # Nothing it started is left behind: no worker process, no thread keeping it alive.
    async def gone() -> bool:
        return group_gone(process.pid)

    await eventually(gone, 10, "its processes to end")
    return failures[0]


def in_data_folder(folder: Path, **keys: object) -> ServerProcess:
    """A server whose database is `data/offload.db`, so that folder can be made read-only
    while the server's own config and log stay writable."""
    (folder / "data").mkdir(parents=True)
    server = ServerProcess(folder, env={"OFFLOAD_STORE_URL": "sqlite:///data/offload.db"}, **keys)  # type: ignore[arg-type]
    server.db = folder / "data" / "offload.db"
    return server


async def make_database(server: ServerProcess) -> None:
    """Create the server's database (and its lock file) with one clean start and stop."""
    await server.start()
    assert server.stop(signal.SIGTERM) == 0, server.tail()
    assert server.db.is_file()


async def test_read_only_folder_for_a_new_database_stops_start_up_with_one_line(tmp_path: Path):
    with in_data_folder(tmp_path / "server") as server, immutable(server.db.parent):
        line = await assert_fails_to_start(server, str(server.db))
    assert "not permitted" in line


async def test_read_only_folder_of_an_existing_database_stops_start_up_with_one_line(tmp_path: Path):
    with in_data_folder(tmp_path / "server") as server:
        await make_database(server)
        with immutable(server.db.parent):
            line = await assert_fails_to_start(server, str(server.db))
        assert "cannot be opened" in line
        await server.start()  # the same folder, writable again: it starts
        assert server.stop(signal.SIGTERM) == 0, server.tail()


async def test_read_only_database_file_stops_start_up_with_one_line(tmp_path: Path):
    with ServerProcess(tmp_path / "server") as server:
        await make_database(server)
        with immutable(server.db):
            await assert_fails_to_start(server, str(server.db), "read-only")
        await server.start()
        assert server.stop(signal.SIGTERM) == 0, server.tail()


async def test_unwritable_results_folder_stops_start_up_and_closes_the_store(tmp_path: Path):
    locked = tmp_path / "locked"
    locked.mkdir()
    with ServerProcess(tmp_path / "server", results_dir=str(locked / "results")) as server, immutable(locked):
        await assert_fails_to_start(server, "results folder", str(locked / "results"))


async def test_a_taken_port_stops_start_up_and_stops_the_worker_processes(tmp_path: Path):
    with ServerProcess(tmp_path / "server", processes=2) as server, socket.socket() as taken:
        taken.bind(("127.0.0.1", server.port))
        taken.listen()
        await assert_fails_to_start(server, "address already in use")
        assert any("worker processes" in line for line in last_run(server))  # it had started them


async def test_kubernetes_service_variables_are_warnings_and_job_settings_come_from_the_environment(tmp_path: Path):
    env = {"OFFLOAD_PORT": "tcp://10.0.0.1:8080", "OFFLOAD_SERVICE_HOST": "10.0.0.1",
           "OFFLOAD_PORT_8080_TCP_ADDR": "10.0.0.1", "OFFLOAD_URL": "http://offload:8080",
           "OFFLOAD_TOKEN": "a-client-token", "OFFLOAD_JOBS_SETTINGS_PDF_CURRENCY": "USD"}
    with ServerProcess(tmp_path / "server", env=env) as server:
        await server.start()
        async with server.session() as http:
            order = {k: v for k, v in SAMPLE_INVOICE["order"].items() if k != "currency"}
            job_id = await post(http, "pdf", {**SAMPLE_INVOICE, "order": order})
            done = await until(http, job_id, lambda j: j["status"] == "completed", "to complete")
            async with http.get(done["result"]["url"]) as response:
                text = PdfReader(io.BytesIO(await response.read())).pages[0].extract_text()
        assert "$" in text and "€" not in text and "EUR" not in text  # amounts in the configured USD
        assert server.stop(signal.SIGTERM) == 0, server.tail()
    log = server.log.read_text()
    for name in ("OFFLOAD_PORT", "OFFLOAD_SERVICE_HOST", "OFFLOAD_PORT_8080_TCP_ADDR"):
        assert log.count(f"ignoring environment variable {name}:") == 1, log
    assert "OFFLOAD_URL" not in log and "OFFLOAD_TOKEN" not in log and "OFFLOAD_JOBS_SETTINGS" not in log


async def test_a_job_module_that_cannot_be_imported_stops_start_up_with_one_line(tmp_path: Path):
    with ServerProcess(tmp_path / "server", modules=("tests.jobtypes", "no_such_jobs_module")) as server:
        await assert_fails_to_start(server, "[workers] modules", "no_such_jobs_module")


@pytest.mark.parametrize("level", ["verbose", "loud"])
def test_an_unknown_log_level_is_a_usage_error(tmp_path: Path, level: str):
    result = subprocess.run([sys.executable, "-m", "offload", "serve", "--log-level", level],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"--log-level: invalid choice: '{level.upper()}'" in result.stderr
    assert "DEBUG" in result.stderr and "Traceback" not in result.stderr


def test_the_log_level_is_read_in_any_case(tmp_path: Path):
    (tmp_path / "config.toml").write_text("[server]\nprot = 1\n")  # stops right after the flags are read
    result = subprocess.run([sys.executable, "-m", "offload", "serve", "--log-level", "debug"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and "configuration error" in result.stderr, result.stderr


def private_mb(pid: int) -> float:
    """What `pid` holds alone (its private pages), in MB."""
    values = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return sum(int(values[key].split()[0]) for key in ("Private_Clean", "Private_Dirty")) / 1024


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
async def test_workers_of_the_console_script_hold_no_service_code_of_their_own(tmp_path, start_method):
    """`offload serve` started as the console script. Under spawn its workers do not import
    the script (and through it aiohttp and the whole service). Under the default fork server,
    forked from the service at its start, they map the service's modules but share those
    pages with it: what each worker holds alone stays a few MB (importing the service again
    would cost each one some 20 MB)."""
    script = Path(sys.executable).parent / "offload"
    if not script.exists():
        pytest.skip("no offload console script beside this interpreter")
    port = free_port()
    (tmp_path / "config.toml").write_text(f'[server]\nport = {port}\n[store]\nurl = "sqlite:///offload.db"\n'
                                          f'[workers]\nprocesses = 2\nstart_method = "{start_method}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    with open(tmp_path / "server.log", "wb") as log, subprocess.Popen(
            [str(script), "serve", "--config", str(tmp_path / "config.toml")], cwd=tmp_path, env=env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True) as server:
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
                async def workers() -> list[int] | None:
                    try:
                        async with http.get("/api/health") as response:
                            pids = (await response.json())["workers"]["pids"]
                    except aiohttp.ClientError:
                        return None
                    # Serving: its watch thread runs, which `runtime.serve` starts once the
                    # process is prepared (the main module, had it been imported, is by then).
                    serving = all(pid and len(list(Path(f"/proc/{pid}/task").iterdir())) >= 2 for pid in pids)
                    return pids if len(pids) == 2 and serving else None

                pids = await eventually(workers, 30, "two serving workers")
                assert "aiohttp" in Path(f"/proc/{server.pid}/maps").read_text()  # the service has it...
                for pid in pids:
                    if start_method == "spawn":  # ... its spawned workers do not
                        assert "aiohttp" not in Path(f"/proc/{pid}/maps").read_text(), pid
                    else:  # ... its forked workers share it
                        assert private_mb(pid) < 8, (pid, private_mb(pid))
        finally:
            os.killpg(server.pid, signal.SIGKILL)
