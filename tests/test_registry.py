"""The job-type registry is an instance each app owns: `@job_type` marks functions, loading
a module collects them, and two apps in one process know only the types of their own
config."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from offload.workers.registry import BUILTIN_MODULES, ModuleLoadError, Registry
from tests.conftest import submit, wait_status


def test_each_registry_knows_the_builtins_and_its_own_modules_only() -> None:
    plain = Registry.from_modules()
    with_tests = Registry.from_modules(["tests.jobtypes"])
    assert "pdf" in plain.names() and "test.echo" not in plain.names()
    assert {"pdf", "test.echo", "test.async_steps"} <= set(with_tests.names())
    assert Registry.from_modules().names() == plain.names()  # loading tests.jobtypes changed nothing else
    with_tests.load(["tests.jobtypes"])  # loaded once, registered once
    assert with_tests.modules == (*BUILTIN_MODULES, "tests.jobtypes")
    assert with_tests.get("test.async_steps").is_async and not with_tests.get("test.echo").is_async


def test_a_name_declared_by_two_modules_is_an_error_naming_the_first(tmp_path: Path, monkeypatch) -> None:
    for name in ("regdup_one", "regdup_two"):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
            from offload import job_type

            @job_type("dup.same")
            def handler(data, ctx):
                return data
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert Registry.from_modules(["regdup_one"]).get("dup.same") is not None
    with pytest.raises(ModuleLoadError) as caught:
        Registry.from_modules(["regdup_one", "regdup_two"])
    assert str(caught.value) == (f"cannot import 'regdup_two' ({tmp_path / 'regdup_two.py'}, line 4): "
                                 "ValueError: job type 'dup.same' is already registered by regdup_one")
    assert Registry.from_modules(["regdup_two"]).get("dup.same").handler.__module__ == "regdup_two"


async def test_two_apps_in_one_process_know_their_own_types(start_server, tmp_path: Path) -> None:
    with_tests = await start_server()
    builtins_only = await start_server(workers={"processes": 1, "modules": []},
                                       store={"url": f"sqlite:///{tmp_path / 'other.db'}"})
    job_id = await submit(with_tests, "test.echo", {"x": 1})
    assert (await wait_status(with_tests, job_id, "completed"))["result"] == {"value": {"x": 1}}

    response = await builtins_only.post("/api/jobs", json={"type": "test.echo", "data": {}})
    assert response.status == 422
    assert "unknown job type 'test.echo'" in (await response.json())["error"]["message"]
    spec = await (await builtins_only.get("/api/openapi.json")).json()
    assert "test.echo" not in str(spec["components"]["schemas"]["Submission"])
