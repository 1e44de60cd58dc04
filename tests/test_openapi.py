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
                                                  "max_notes_length": 200,
                                                  "report": {"max_sections": 3, "max_paragraphs": 3,
                                                             "max_paragraph_length": 40, "max_text_length": 20,
                                                             "max_columns": 3, "max_table_rows": 4,
                                                             "max_series": 2, "max_points": 4}},
                                          # the same for email; its jobs go nowhere (nothing listens on port 9)
                                          "email": {"host": "127.0.0.1", "port": 9, "from": "fuzz@example.com",
                                                    "max_recipients": 3, "max_body_length": 40,
                                                    "max_attachments": 2, "timeout_s": 1.0}}}, **TOKENS)



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
    body is refused (a rule over the server's state). tests/test_api.py checks both. And an
    `image` job's upload must be an image within the pixel limit, which its outputs must fit
    (rules over the file's content; tests/test_image.py checks them)."""
    if isinstance(case.body, dict) and case.body.get("type") == "image":
        return True
    header, key = _idempotency_keys(case)
    if header is not None and key is not None and key != header:
        return True
    keys = {k for k in (header, key) if isinstance(k, str)}
    reused = bool(keys & used_keys)
    used_keys.update(keys)
    return reused


def _report_breaks_a_rule_in_prose(submission: Any) -> bool:
    """A report's rules across fields, which its schema states in prose (workers/report_schema.py):
    a row has at most one cell per column, `align` at most one entry per column, a series one
    value per category."""
    data = submission.get("data") if isinstance(submission, dict) else None
    if not isinstance(data, dict) or data.get("type") != "report" or not isinstance(data.get("sections"), list):
        return False
    for section in data["sections"]:
        table = section.get("table") if isinstance(section, dict) else None
        if isinstance(table, dict) and isinstance(table.get("columns"), list):
            width = len(table["columns"])
            if any(isinstance(row, list) and len(row) > width for row in table.get("rows") or ()) or \
                    len(table.get("align") or ()) > width:
                return True
        chart = section.get("chart") if isinstance(section, dict) else None
        if isinstance(chart, dict) and isinstance(chart.get("categories"), list):
            if any(isinstance(series, dict) and isinstance(series.get("values"), list)
                   and len(series["values"]) != len(chart["categories"]) for series in chart.get("series") or ()):
                return True
    return False


def _batch_reuses_keys(case: Any, used_keys: set[str]) -> bool:
    """The batch's form of the same rule: a job's key used before (in this batch or an
    earlier request) with another body is refused, and nothing of the batch is stored. A batch
    holding an `image` job is refused too: an upload is submitted alone."""
    jobs = case.body.get("jobs") if isinstance(case.body, dict) else None
    if any(isinstance(job, dict) and job.get("type") == "image" for job in (jobs if isinstance(jobs, list) else ())):
        return True
    keys = []
    for job in jobs if isinstance(jobs, list) else []:
        options = job.get("options") if isinstance(job, dict) else None
        key = options.get("idempotencyKey") if isinstance(options, dict) else None
        if isinstance(key, str):
            keys.append(key)
    reused = len(set(keys)) < len(keys) or bool(set(keys) & used_keys)
    used_keys.update(keys)
    return reused


def _follows(job: Any) -> bool:
    """options.after must name the caller's existing jobs (a rule over the server's state,
    and `#i` within a batch one over its order): tests/test_after.py checks it."""
    options = job.get("options") if isinstance(job, dict) else None
    data = job.get("data") if isinstance(job, dict) else None
    # An email's attachments name jobs too (its type's `needs`): the same rule over state.
    return (isinstance(options, dict) and bool(options.get("after"))) or \
        (isinstance(data, dict) and bool(data.get("attachments")))


# Fuzzing every operation for every job type's schema is CPU work that grows with the types
# (about a minute of CPU on a quiet 2-core machine): it gets its own, longer timeout.
@pytest.mark.timeout(300)
def test_schemathesis_finds_no_server_errors_and_no_schema_violations(live_server, live_config):
    # The schema is the one the server serves (fetched with a token), built from its config.
    served = requests.get(f"{live_server}/api/openapi.json", headers=A, timeout=10).json()
    assert served == orjson.loads(orjson.dumps(build_spec(live_config, Registry.from_modules(live_config.workers.modules))))
    (pdf,) = [s for s in served["components"]["schemas"]["Submission"]["oneOf"] if s["properties"]["type"].get("enum") == ["pdf"]]
    assert pdf["properties"]["data"]["oneOf"][0]["properties"][
        "items"]["maxItems"] == 5  # the configured limit, not the default
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
                beyond = (_rules_beyond_the_schema(case, used_keys) | _report_breaks_a_rule_in_prose(case.body)
                          | _follows(case.body))
            elif operation.label == "POST /api/jobs/batch":  # noqa: B023
                jobs = case.body.get("jobs") if isinstance(case.body, dict) else None
                listed = jobs if isinstance(jobs, list) else ()
                beyond = _batch_reuses_keys(case, used_keys) | any(
                    _report_breaks_a_rule_in_prose(job) or _follows(job) for job in listed)
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
