"""Job types from the application's own folder: the README's example, run as written by a
real `offload serve --config` started from another folder, with no PYTHONPATH for it; and
a module that cannot be imported stopping start-up with one line."""
from __future__ import annotations

import re
import signal
import tomllib
from pathlib import Path

import pytest

from tests.server_process import ROOT, ServerProcess, post, until
from tests.test_startup import assert_fails_to_start


def readme_block(language: str, first_line: str) -> str:
    """The README's fenced `language` block that starts with `first_line`."""
    text = (ROOT / "README.md").read_text()
    for block in re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"README.md has no {language} block starting with {first_line!r}")


def application(folder: Path) -> tuple[Path, tuple[str, ...]]:
    """`folder/myapp/jobs.py` as the README writes it; returns the folder for the config and
    the README config's modules."""
    (folder / "myapp").mkdir(parents=True)
    (folder / "myapp" / "jobs.py").write_text(readme_block("python", "# myapp/jobs.py"))
    config = tomllib.loads(readme_block("toml", "# config.toml, beside the myapp/ folder"))
    return folder, tuple(config["workers"]["modules"])


@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
async def test_the_readme_job_type_beside_config_toml_runs_with_no_pythonpath(tmp_path: Path, start_method: str):
    folder, modules = application(tmp_path / "app")
    elsewhere = tmp_path / "elsewhere"  # started from another folder: its cwd is no help
    elsewhere.mkdir()
    env = {"PYTHONPATH": "", "OFFLOAD_WORKERS_START_METHOD": start_method}  # the checkout is installed
    with ServerProcess(folder, modules=modules, cwd=elsewhere, env=env) as server:
        await server.start()
        async with server.session() as http:
            async with http.post("/api/jobs", json={"type": "report", "data": {"rows": "nope"}}) as response:
                assert response.status == 422, await response.text()
                assert (await response.json())["error"]["message"] == "data.rows: must be a list"
            job_id = await post(http, "report", {"rows": [[1, 2], [3, 4], [5, 6]]})
            done = await until(http, job_id, lambda j: j["status"] in ("completed", "failed"), "to finish")
            assert done["status"] == "completed", (done, server.tail())
            assert done["result"]["filename"] == "report.csv"
            async with http.get(done["result"]["url"]) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/csv")
                assert await response.read() == b"..."
        assert server.stop(signal.SIGTERM) == 0, server.tail()


async def test_a_job_module_missing_from_the_config_folder_names_the_folder(tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with ServerProcess(tmp_path / "app", modules=("myapp.jobs",), cwd=elsewhere) as server:
        line = await assert_fails_to_start(server, "[workers] modules", "'myapp.jobs'",
                                           "ModuleNotFoundError: No module named 'myapp'")
    assert str(tmp_path / "app") in line


@pytest.mark.parametrize("source, error, line_no", [
    ("from offload import job_type\n\n@job_type('broken')\ndef broken(data, ctx):\n    return 1\n\nx = 1 +\n",
     "SyntaxError: invalid syntax", 7),
    ("from offload import job_type\n\nraise RuntimeError('no database for the jobs')\n",
     "RuntimeError: no database for the jobs", 3),
    ("import no_such_dependency_of_myapp\n",
     "ModuleNotFoundError: No module named 'no_such_dependency_of_myapp'", 1),
    ("from offload import job_type\n\n@job_type('pdf')\ndef pdf(data, ctx):\n    return 1\n",
     "ValueError: job type 'pdf' is already registered by offload.workers.pdf", 3),
])
async def test_a_broken_job_module_stops_start_up_with_one_line_naming_module_file_and_error(
        tmp_path: Path, source: str, error: str, line_no: int):
    folder = tmp_path / "app"
    (folder / "myapp").mkdir(parents=True)
    jobs = folder / "myapp" / "jobs.py"
    jobs.write_text(source)
    with ServerProcess(folder, modules=("myapp.jobs",), cwd=tmp_path) as server:
        line = await assert_fails_to_start(server, "[workers] modules", "cannot import 'myapp.jobs'",
                                           f"({jobs}, line {line_no})", error)
    assert "looked in" not in line  # found, and broken: not a path problem
