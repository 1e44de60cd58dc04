"""The package as a user gets it: a wheel built from this checkout, installed into a fresh
virtual environment, with nothing of the checkout on the import path."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import SAMPLE_INVOICE, eventually
from tests.server_process import free_port

ROOT = Path(__file__).resolve().parent.parent

APP_WORKERS = '''
from offload import job_type


@job_type("app-hello")
def hello(data, ctx):
    return {"hello": data["name"]}
'''


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a clean copy: setuptools reuses a `build/` folder it finds, and a stale one
    # would hide a file the package no longer declares.
    source = tmp_path_factory.mktemp("source") / "offload"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "data", "*.egg-info", "__pycache__", ".*_cache"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
                   check=True, capture_output=True, timeout=300)
    (built,) = out.glob("offload-*.whl")
    return built


def test_the_wheel_holds_one_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert archive.read(top_level).decode().split() == ["offload"]
    tops = {name.split("/", 1)[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"offload"}, tops
    # the page, the schema and the type marker travel with the code; tests and benchmarks do not
    for needed in ("offload/static/index.html", "offload/static/app.js", "offload/service/store/schema.sql",
                   "offload/py.typed", "offload/__main__.py"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("offload/tests/", "offload/benchmarks/"))]


@pytest.mark.timeout(180)
async def test_installed_wheel_serves_the_page_and_an_application_module_named_workers(wheel: Path,
                                                                                      tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300)
    # The dependencies come from this test run's environment, added as a plain path: its
    # .pth files (the checkout's editable install among them) are not processed there.
    (purelib,) = Path(venv / "lib").glob("python3*/site-packages")
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    app = tmp_path / "app"
    (app / "workers").mkdir(parents=True)
    (app / "workers" / "__init__.py").write_text(APP_WORKERS)
    (app / "service").mkdir()
    (app / "service" / "__init__.py").write_text("raise ImportError('the application service package was imported')\n")
    port = free_port()
    (app / "config.toml").write_text(f'[server]\nport = {port}\n[store]\nurl = "sqlite:///jobs.db"\n'
                                     '[workers]\nprocesses = 1\nmodules = ["workers"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OFFLOAD_", "PYTHON"))}
    env["PYTHONPATH"] = str(app)  # the application's own modules, as a deployment puts them on the path
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([str(venv / "bin" / "offload"), "serve", "--config", str(app / "config.toml")],
                                  cwd=app, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(base_url=url) as http:
            async def health() -> bool | None:
                assert server.poll() is None, log.read_text()
                try:
                    async with http.get("/api/health") as response:
                        return response.status == 200 or None
                except aiohttp.ClientError:
                    return None

            await eventually(health, 60, "the installed server to answer")
            async with http.get("/") as response:
                assert response.status == 200
                assert 'id="submit-form"' in await response.text()
            async with http.get("/static/app.js") as response:
                assert response.status == 200
            ids = {}
            for name, data in (("pdf", SAMPLE_INVOICE), ("app-hello", {"name": "Ada"})):
                async with http.post("/api/jobs", json={"type": name, "data": data}) as response:
                    assert response.status == 201, await response.text()
                    ids[name] = (await response.json())["jobId"]

            async def finished(job_id: str) -> dict | None:
                async with http.get(f"/api/jobs/{job_id}") as response:
                    job = await response.json()
                return job if job["status"] in ("completed", "failed", "cancelled") else None

            invoice = await eventually(lambda: finished(ids["pdf"]), 60, "the invoice to finish")
            assert invoice["status"] == "completed", invoice
            hello = await eventually(lambda: finished(ids["app-hello"]), 60, "the application job to finish")
            assert hello["status"] == "completed" and hello["result"] == {"value": {"hello": "Ada"}}, hello
        # the page came from the installed package, not from a checkout
        code = ("import offload.service.app as a, sys; "
                "print(a.STATIC); print(any(p.rstrip('/') == sys.argv[1] for p in sys.path))")
        where = subprocess.run([str(venv / "bin" / "python"), "-c", code, str(ROOT)], env=env, cwd=app,
                               capture_output=True, text=True, check=True).stdout.split()
        assert where[0].startswith(str(purelib)) and where[1] == "False", where
    finally:
        server.terminate()
        server.wait(30)
