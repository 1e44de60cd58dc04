"""Job-type warm-ups run in the worker processes, before their first job, and never in the
service process, which validates invoices without ever loading reportlab.

Each test starts a real `offload serve` (a fresh process, so a fresh fork server) and reads
`/proc/<pid>/maps` of the server and of its workers: a module's shared library shows there
once it is imported. reportlab's accelerator, `_rl_accel`, loads with its font metrics."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import eventually, invoice
from tests.server_process import ROOT, ServerProcess, descendants, polled, post, until, worker_pids

#: Substrings of the paths in /proc/<pid>/maps that mean "reportlab is imported".
REPORTLAB = ("_rl_accel", "/reportlab/")
START_METHODS = ("forkserver", "spawn", "fork")


def maps_reportlab(pid: int) -> list[str]:
    with open(f"/proc/{pid}/maps") as fh:
        return sorted({line.split()[-1] for line in fh if any(marker in line for marker in REPORTLAB)})


def serve(tmp_path: Path, start_method: str) -> ServerProcess:
    return ServerProcess(tmp_path, processes=2, modules=("tests.warmtypes",),
                         env={"OFFLOAD_WORKERS_START_METHOD": start_method})


async def result_of(http: aiohttp.ClientSession, type: str, data: Any) -> Any:
    job = await until(http, await post(http, type, data), lambda job: job["status"] in ("completed", "failed"),
                      "finished")
    assert job["status"] == "completed", job
    return job["result"]["value"]


@pytest.mark.parametrize("start_method", START_METHODS)
async def test_the_service_process_never_loads_reportlab_while_its_workers_do(tmp_path: Path,
                                                                               start_method: str) -> None:
    with serve(tmp_path, start_method) as server:
        await server.start()
        async with server.session() as http:
            workers = await worker_pids(http, 2)
            assert maps_reportlab(server.pid) == []
            for pid in workers:  # by its warm-up, before any job (under spawn, while it starts)
                await eventually(polled(maps_reportlab, pid), 30, f"reportlab loaded in worker {pid}")

            async with http.post("/api/jobs", json={"type": "pdf", "data": {**invoice(), "items": [{}]}}) as response:
                assert response.status == 422  # validated in the service, without reportlab
                assert "items[0].name" in (await response.json())["error"]["message"]
            job = await until(http, await post(http, "pdf", invoice(40)), lambda job: job["status"] == "completed",
                              "completed")
            async with http.get(job["result"]["url"]) as response:
                assert response.status == 200
                assert (await response.read()).startswith(b"%PDF-")
            assert maps_reportlab(server.pid) == []


async def test_warm_up_runs_once_in_the_fork_server_before_the_workers_fork(tmp_path: Path) -> None:
    with serve(tmp_path, "forkserver") as server:
        await server.start()
        async with server.session() as http:
            workers = await worker_pids(http, 2)
            seen = await result_of(http, "test.warm", {})
            fork_server = seen["parent"]
            assert seen["pid"] in workers and fork_server != server.pid
            assert fork_server in descendants(server.pid)
            assert seen["warmedIn"] == fork_server and seen["jobsBeforeWarmUp"] == 0
            assert {"pdf", "test.warm"} <= set(seen["warmed"]) and "test.warm_fails" not in seen["warmed"]
            assert seen["rendererLoaded"]
            assert maps_reportlab(fork_server)
            assert maps_reportlab(server.pid) == []


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
async def test_warm_up_runs_in_each_worker_before_its_first_job(tmp_path: Path, start_method: str) -> None:
    with serve(tmp_path, start_method) as server:
        await server.start()
        async with server.session() as http:
            workers = await worker_pids(http, 2)
            seen = await result_of(http, "test.warm", {})
            assert seen["pid"] in workers and seen["parent"] == server.pid
            assert seen["warmedIn"] == seen["pid"] and seen["jobsBeforeWarmUp"] == 0
            assert {"pdf", "test.warm"} <= set(seen["warmed"]) and "test.warm_fails" not in seen["warmed"]
            assert seen["rendererLoaded"]


async def test_a_failing_warm_up_is_logged_and_the_worker_serves_jobs(tmp_path: Path) -> None:
    with serve(tmp_path, "forkserver") as server:
        await server.start()
        async with server.session() as http:
            assert await result_of(http, "test.warm_fails", {}) == "served"
        assert "the warm-up of job type 'test.warm_fails' failed" in server.tail(200)
        assert "this warm-up always fails" in server.tail(200)


def test_building_the_app_and_validating_an_invoice_imports_no_reportlab(tmp_path: Path) -> None:
    """The service's whole import path in a fresh interpreter: the app with the built-in types,
    an invoice validated and the OpenAPI schema built, then `sys.modules` looked at."""
    script = f"""
import sys
import offload
from offload.service.app import create_app
from offload.service.config import load_config
from offload.service.keys import REGISTRY

config = load_config(None, environ={{}}, overrides={{"store": {{"url": "sqlite:///{tmp_path / 'offload.db'}"}}}})
app = create_app(config)
pdf = app[REGISTRY].get("pdf")
pdf.validate({invoice(3)!r}, {{}})
pdf.schema({{}})
print(",".join(sorted(name for name in sys.modules if name.split(".")[0] in ("reportlab", "_rl_accel"))))
print("offload.workers.invoice_data" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    loaded_reportlab, loaded_data = done.stdout.split("\n")[:2]
    assert loaded_reportlab == ""
    assert loaded_data == "True"
