"""Limits: body size, nesting depth, per-user submission rate and pending cap, and fields a
client must not be able to set."""
from __future__ import annotations

from typing import Any

import io

import orjson
import pytest

from tests.conftest import SAMPLE_INVOICE, invoice
from tests.conftest import both_backends as store_backend  # noqa: F401  (each test on SQLite and on PostgreSQL)
from tests.users import TOKENS, A, B, job_as, submit_as


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


async def _post(client: Any, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Any]:
    response = await client.post("/api/jobs", data=io.BytesIO(body), headers={"Content-Type": "application/json", **(headers or {})})
    return response.status, await response.json(), response.headers


async def test_body_over_the_limit_is_413(start_server):
    client = await start_server(limits={"max_body_bytes": 4096})
    body = orjson.dumps({"type": "test.echo", "data": {"pad": "x" * 5000}})
    status, answer, headers = await _post(client, body)
    assert status == 413 and answer["error"]["code"] == "payload_too_large"
    assert "4096" in answer["error"]["message"] and headers["X-Request-Id"]
    ok = orjson.dumps({"type": "test.echo", "data": {"pad": "x" * 3000}})
    assert (await _post(client, ok))[0] == 201


async def test_default_body_limit_is_16_mib(start_server):
    client = await start_server()
    status, answer, _ = await _post(client, b'{"type": "test.echo", "data": "' + b"x" * (16 * 1024 * 1024) + b'"}')
    assert status == 413


async def test_data_nested_deeper_than_the_limit_is_422(start_server):
    client = await start_server()
    status, answer, _ = await _post(client, orjson.dumps({"type": "test.echo", "data": nested(33)}))
    assert status == 422 and answer["error"]["message"].startswith("data:") and "32" in answer["error"]["message"]
    assert (await _post(client, orjson.dumps({"type": "test.echo", "data": nested(32)})))[0] == 201
    status, answer, _ = await _post(client, b"[" * 5000 + b"]" * 5000)  # past the JSON parser's own limit
    assert status == 400 and answer["error"]["code"] == "malformed_json"


async def test_invoice_with_too_many_items_is_422_naming_the_limit(start_server):
    client = await start_server()
    status, answer, _ = await _post(client, orjson.dumps({"type": "pdf", "data": invoice(10_001)}))
    assert status == 422 and answer["error"]["message"].startswith("data.items") and "10,000" in answer["error"]["message"]


async def test_submission_rate_is_limited_per_user_with_retry_after(start_server):
    client = await start_server(limits={"submit_rate": 0.5, "submit_burst": 3}, **TOKENS)
    for i in range(3):
        await submit_as(client, A, "test.echo", {"i": i})
    response = await client.post("/api/jobs", headers=A, json={"type": "test.echo", "data": {}})
    assert response.status == 429
    assert (await response.json())["error"]["code"] == "too_many_requests"
    assert int(response.headers["Retry-After"]) == 2
    await submit_as(client, B, "test.echo", {"b": True})  # another user has their own allowance


async def test_pending_jobs_are_capped_per_user_with_retry_after(start_server):
    client = await start_server(limits={"max_pending_per_user": 2}, **TOKENS)
    first = await submit_as(client, A, "test.echo", {}, delay=3_600_000)
    await submit_as(client, A, "test.echo", {}, delay=3_600_000)
    response = await client.post("/api/jobs", headers=A, json={"type": "test.echo", "data": {}})
    assert response.status == 429 and int(response.headers["Retry-After"]) >= 1
    assert "2 pending" in (await response.json())["error"]["message"]
    await submit_as(client, B, "test.echo", {}, delay=3_600_000)
    assert (await client.delete(f"/api/jobs/{first}", headers=A)).status == 200
    await submit_as(client, A, "test.echo", {}, delay=3_600_000)


async def test_client_cannot_set_status_owner_attempts_or_id(start_server):
    client = await start_server(**TOKENS)
    body = {"type": "test.echo", "data": {"x": 1}, "options": {"delay": 3_600_000},
            "status": "completed", "owner": "alice", "attempts": 7, "id": "job_aaaaaaaaaaaaaaaaaaaaaaaa",
            "seq": 99, "result": {"file": "../../etc/passwd"}, "progress": 100}
    response = await client.post("/api/jobs", headers=B, json=body)
    assert response.status == 201
    job_id = (await response.json())["jobId"]
    assert job_id != body["id"]
    status, job = await job_as(client, B, job_id)
    assert status == 200
    assert (job["status"], job["attempts"], job["progress"], job["result"]) == ("pending", 0, 0, None)
    assert (await job_as(client, A, job_id))[0] == 404  # "owner": "alice" did not make it Alice's
    assert (await client.get(f"/api/jobs/{job_id}/download", headers=B)).status == 409


@pytest.mark.parametrize("options, field", [
    ({"maxRetries": -1}, "options.maxRetries"), ({"maxRetries": True}, "options.maxRetries"),
    ({"timeout": 0}, "options.timeout"), ({"delay": -5}, "options.delay"), ({"delay": 1e30}, "options.delay"),
    ({"retryDelay": "soon"}, "options.retryDelay"), ({"runAt": "yesterday"}, "options.runAt"),
    ({"idempotencyKey": ""}, "options.idempotencyKey"), ({"idempotencyKey": "k" * 256}, "options.idempotencyKey"),
    ({"owner": "alice"}, "options.owner"), ({"priority": None, "status": "completed"}, "options.status"),
])
async def test_bad_options_are_422_naming_the_field(start_server, options, field):
    client = await start_server()
    status, answer, _ = await _post(client, orjson.dumps({"type": "pdf", "data": SAMPLE_INVOICE, "options": options}))
    assert status == 422 and answer["error"]["message"].startswith(field), answer
