"""The OpenAPI document, and schemathesis fuzzing a real server against it, both halves: no
5xx, every answer conforms (status documented, body schema, content type, X-Request-Id),
every request the document allows is accepted and every one it forbids is refused."""
from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis import checks as st_checks
from schemathesis.config import SchemathesisConfig

from offload.service.app import create_app
from offload.service.config import Config
from offload.service.openapi import build_spec
from offload.workers.registry import Registry
from tests.users import ALICE, TOKENS, A

EXAMPLES_PER_OPERATION = 50


@pytest.fixture
def live_config(make_config) -> Config:  # type: ignore[no-untyped-def]
    # Small invoice limits, so that the fuzzer reaches them (and the bodies beyond them) often.
    return make_config(workers={"processes": 1, "modules": ()}, limits={"submit_burst": 100_000},
                       jobs={"settings": {"pdf": {"currency": "EUR", "max_items": 5, "max_text_length": 40,
                                                  "max_notes_length": 200}}}, **TOKENS)


@pytest.fixture
def live_server(live_config: Config) -> Iterator[str]:
    """The real service on a loopback port, on its own event loop in a thread, so that
    synchronous clients (requests, schemathesis) can call it."""
    config = live_config
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, Any] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(create_app(config))
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        box["port"] = runner.addresses[0][1]
        box["runner"] = runner
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, name="offload-live-server")
    thread.start()
    assert started.wait(30), "the server did not start"
    yield f"http://127.0.0.1:{box['port']}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)


async def test_openapi_json_is_served_and_lists_every_route(start_server):
    client = await start_server()
    response = await client.get("/api/openapi.json")
    assert response.status == 200
    spec = await response.json()
    assert spec["openapi"].startswith("3.")
    routes = {(r.method, r.resource.canonical) for r in client.app.router.routes()  # type: ignore[union-attr]
              if r.resource is not None and r.resource.canonical.startswith("/api") and r.method != "HEAD"}
    documented = {(method.upper(), path.replace("{jobId}", "{job_id}"))
                  for path, item in spec["paths"].items() for method in item if method != "parameters"}
    assert routes == documented


async def test_the_document_says_which_fields_may_be_null(start_server):
    """null is "not given" where the document says nullable, and a 422 naming the field
    everywhere else: checked field by field, which random fuzzing may miss."""
    client = await start_server()
    schemas = (await (await client.get("/api/openapi.json")).json())["components"]["schemas"]
    branch = next(b for b in schemas["Submission"]["oneOf"] if "test.echo" in b["properties"]["type"]["enum"])
    bodies = {f"options.{key}": ({"options": {key: None}}, schema.get("nullable", False))
              for key, schema in schemas["Options"]["properties"].items()}
    bodies["options"] = ({"options": None}, schemas["Options"].get("nullable", False))
    for key in ("type", "data"):
        bodies[key] = ({key: None}, key not in branch["required"] or branch["properties"][key].get("nullable", False))
    for field, (change, nullable) in bodies.items():
        response = await client.post("/api/jobs", json={"type": "test.echo", "data": {}, **change})
        answer = await response.json()
        if nullable:
            assert response.status == 201, (field, answer)
        else:
            assert response.status == 422 and answer["error"]["message"].startswith(f"{field}: "), (field, answer)


def _idempotency_keys(case: Any) -> tuple[str | None, str | None]:
    header = (case.headers or {}).get("Idempotency-Key")
    body = case.body if isinstance(case.body, dict) else {}
    options = body.get("options") if isinstance(body.get("options"), dict) else {}
    return header, options.get("idempotencyKey")


def _rules_beyond_the_schema(case: Any, used_keys: set[str]) -> bool:
    """The two rules of POST /api/jobs that the document states only in prose, because no
    schema can: the Idempotency-Key header and options.idempotencyKey, when both are given,
    are equal (a rule across two parts of a request), and a key used before with another
    body is refused (a rule over the server's state). tests/test_api.py checks both."""
    header, key = _idempotency_keys(case)
    if header is not None and key is not None and key != header:
        return True
    keys = {k for k in (header, key) if isinstance(k, str)}
    reused = bool(keys & used_keys)
    used_keys.update(keys)
    return reused


def _batch_reuses_keys(case: Any, used_keys: set[str]) -> bool:
    """The batch's form of the same rule: a job's key used before (in this batch or an
    earlier request) with another body is refused, and nothing of the batch is stored."""
    jobs = case.body.get("jobs") if isinstance(case.body, dict) else None
    keys = []
    for job in jobs if isinstance(jobs, list) else []:
        options = job.get("options") if isinstance(job, dict) else None
        key = options.get("idempotencyKey") if isinstance(options, dict) else None
        if isinstance(key, str):
            keys.append(key)
    reused = len(set(keys)) < len(keys) or bool(set(keys) & used_keys)
    used_keys.update(keys)
    return reused


def test_schemathesis_finds_no_server_errors_and_no_schema_violations(live_server, live_config):
    # The schema is the one the server serves (fetched with a token), built from its config.
    served = requests.get(f"{live_server}/api/openapi.json", headers=A, timeout=10).json()
    assert served == orjson.loads(orjson.dumps(build_spec(live_config, Registry.from_modules(live_config.workers.modules))))
    pdf = next(branch for branch in served["components"]["schemas"]["Submission"]["oneOf"]
               if branch["properties"]["type"]["enum"] == ["pdf"])
    assert pdf["properties"]["data"]["properties"]["items"]["maxItems"] == 5  # the configured limit, not the default
    # The token given as the document's bearer scheme, so that schemathesis knows the
    # requests it sends are authenticated (and judges each by what it really sends).
    schema = schemathesis.openapi.from_dict(served, config=SchemathesisConfig.from_dict(
        {"auth": {"openapi": {"bearer": {"bearer": ALICE}}}}))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 15  # with GET /api/schedules and POST /api/jobs/{id}/retry
    session = requests.Session()
    seen: dict[str, set[int]] = {}
    used_keys: set[str] = set()
    for operation, mode in itertools.product(operations, (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):
        if operation.path == "/api/ws":
            continue  # not HTTP: tested with real WebSocket clients in test_ws_safety.py
        if mode is GenerationMode.NEGATIVE and not operation.definition.raw.get("security", True) \
                and not operation.definition.raw.get("parameters"):
            continue  # the probes take no input and no token: there is nothing to make invalid

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        @given(case=operation.as_strategy(mode))
        def check(case: Any) -> None:
            if operation.label == "POST /api/jobs":  # noqa: B023 (called at once, below)
                beyond = _rules_beyond_the_schema(case, used_keys)
            elif operation.label == "POST /api/jobs/batch":  # noqa: B023
                beyond = _batch_reuses_keys(case, used_keys)
            else:  # a cursor is opaque: only one this server gave out is one (tests/test_api.py)
                beyond = bool((case.query or {}).get("cursor"))
            excluded = [st_checks.positive_data_acceptance] if beyond else []
            response = case.call_and_validate(base_url=live_server, session=session, excluded_checks=excluded)
            seen.setdefault(f"{operation.label} {mode.value}", set()).add(response.status_code)  # noqa: B023

        check()
    assert requests.get(f"{live_server}/api/health", headers=A, timeout=10).status_code == 200
    # the fuzzing reached the handlers, not only the error paths, in both modes
    assert 201 in seen["POST /api/jobs positive"] and 422 in seen["POST /api/jobs negative"], seen
    assert 201 in seen["POST /api/jobs/batch positive"] and 422 in seen["POST /api/jobs/batch negative"], seen
    assert 200 in seen["GET /api/jobs positive"] and 404 in seen["GET /api/jobs/{jobId} positive"], seen
