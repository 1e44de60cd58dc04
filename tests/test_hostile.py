"""Errors never leak internals, every answer has a request id, and a barrage of hostile
input leaves every stored job intact and the server answering."""
from __future__ import annotations

import io
import logging

import aiohttp
import orjson
import pytest

from offload.service.keys import STORE
from tests.conftest import invoice, submit, wait_status
from tests.test_limits import nested
from tests.users import TOKENS, A, B, job_as, submit_as


async def test_unexpected_failure_is_a_500_without_internals_logged_with_its_request_id(start_server, caplog):
    client = await start_server()
    store = client.app[STORE]  # type: ignore[index]

    async def broken() -> dict[str, int]:
        raise RuntimeError("/srv/offload/secret/path.db exploded")

    store.count_by_status = broken
    with caplog.at_level(logging.ERROR, logger="offload.app"):
        response = await client.get("/api/stats")
    assert response.status == 500
    body = await response.text()
    request_id = response.headers["X-Request-Id"]
    assert orjson.loads(body)["error"]["code"] == "internal_error"
    assert request_id in body
    for leak in ("Traceback", "secret", "RuntimeError", ".py", "/srv"):
        assert leak not in body
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the trace is in the log, not the answer


async def test_every_answer_carries_a_request_id_and_a_tame_client_id_is_kept(start_server):
    client = await start_server(**TOKENS)
    for method, path, headers in [("GET", "/api/jobs", A), ("GET", "/api/jobs", {}), ("GET", "/api/nowhere", A),
                                  ("PUT", "/api/jobs", A), ("GET", "/api/jobs/job_x", A), ("GET", "/", {})]:
        response = await client.request(method, path, headers=headers)
        assert response.headers.get("X-Request-Id"), (method, path)
        if response.status >= 400 and path.startswith("/api"):
            assert set((await response.json())["error"]) == {"code", "message"}
    kept = await client.get("/api/jobs", headers={**A, "X-Request-Id": "trace-42"})
    assert kept.headers["X-Request-Id"] == "trace-42"
    replaced = await client.get("/api/jobs", headers={**A, "X-Request-Id": "x" * 500})
    assert replaced.headers["X-Request-Id"] != "x" * 500


async def test_hostile_inputs_leave_stored_jobs_intact_and_the_server_answering(start_server, tmp_path):
    client = await start_server(limits={"max_body_bytes": 64 * 1024}, **TOKENS)
    done = await submit_as(client, A, "pdf", invoice(5, "INV-KEEP"))
    waiting_a = await submit_as(client, A, "test.echo", {"keep": "a"}, delay=3_600_000, idempotencyKey="k1")
    waiting_b = await submit_as(client, B, "test.echo", {"keep": "b"}, delay=3_600_000, idempotencyKey="k1")
    await wait_status(client, done, "completed", headers=A)
    pdf = await (await client.get(f"/api/jobs/{done}/download", headers=A)).read()
    before = {job_id: (await job_as(client, headers, job_id))[1]
              for job_id, headers in ((done, A), (waiting_a, A), (waiting_b, B))}

    # REST: bodies
    statuses = []
    for body in (b"x" * 100_000, b"{", b"\xff\xfe\x00", b"null", b"[]", b'"str"', b"1e999999",
                 b"[" * 100_000, orjson.dumps({"type": "test.echo", "data": nested(200)}),
                 orjson.dumps({"type": ["pdf"], "data": {}}), orjson.dumps({"type": "pdf", "data": "x" * 60_000}),
                 orjson.dumps({"type": "test.echo", "data": {}, "options": {"idempotencyKey": "k1"},
                               "owner": "bob", "status": "completed", "id": waiting_b})):
        response = await client.post("/api/jobs", data=io.BytesIO(body),
                                     headers={**A, "Content-Type": "application/json"})
        statuses.append(response.status)
    assert all(s < 500 for s in statuses), statuses
    # REST: ids and paths
    for path in ("/api/jobs/..%2F..%2Fetc%2Fpasswd", "/api/jobs/job_%00", f"/api/jobs/{waiting_b}%00",
                 f"/api/jobs/{waiting_b.upper()}", "/api/jobs/%2e%2e/download", f"/api/jobs/{done}/../{waiting_b}",
                 "/api/jobs/" + "a" * 5000, f"/api/jobs/{waiting_b}/download"):
        for method in ("GET", "DELETE"):
            response = await client.request(method, path, headers=A)
            assert response.status in (404, 405), (method, path, response.status)
    for params in ({"limit": "-1"}, {"limit": "1e9"}, {"cursor": "\x00"}, {"status": "x" * 10_000},
                   {"type": "'; --"}):
        response = await client.get("/api/jobs", params=params, headers=A)
        assert response.status in (200, 400, 422), (params, response.status)  # 400: a too-long request line
    # tokens
    for bad in ("Bearer " + "x" * 8000, "Bearer \t", "Bearer " + "alice-token-0123456789abcde"):
        assert (await client.get("/api/jobs", headers={"Authorization": bad})).status == 401
    # WebSocket
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.ws_connect("/api/ws", headers={**A, "Origin": "https://evil.example"})
    async with client.ws_connect("/api/ws", headers=B) as ws:
        for message in ("{", "[]", "null", '{"op": "subscribe", "jobId": "' + waiting_a + '"}',
                        '{"op": "unsubscribe", "jobId": "' + done + '"}', '{"op": "subscribe", "all": "yes"}'):
            await ws.send_str(message)
        await ws.send_bytes(b"\x00" * 1000)
        await ws.send_json({"op": "ping"})
        events = []
        while not events or events[-1].get("event") != "pong":
            events.append(await ws.receive_json(timeout=10))
        assert all(e["event"] in ("error", "pong") for e in events), events
    async with client.ws_connect("/api/ws", headers=B) as ws:
        await ws.send_str("x" * 200_000)
        assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)

    # everything as it was, and the server still answers
    assert (await client.get("/api/health", headers=A)).status == 200
    for job_id, headers in ((done, A), (waiting_a, A), (waiting_b, B)):
        assert (await job_as(client, headers, job_id))[1] == before[job_id]
    assert await (await client.get(f"/api/jobs/{done}/download", headers=A)).read() == pdf
    listing_a = await (await client.get("/api/jobs", headers=A)).json()
    listing_b = await (await client.get("/api/jobs", headers=B)).json()
    assert {j["id"] for j in listing_b["jobs"]} == {waiting_b}
    assert {done, waiting_a} <= {j["id"] for j in listing_a["jobs"]}


async def test_download_serves_only_files_named_after_the_job(start_server, tmp_path):
    client = await start_server()
    store = client.app[STORE]  # type: ignore[index]
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    for name in ("../secret.txt", str(secret), "job_other-1.pdf"):
        job_id = await submit(client, "test.echo", {}, delay=3_600_000)
        job = await store.get(job_id)
        # Claimed by hand at its due time (an hour ahead), then completed with a crafted result.
        (running,) = await store.claim("node_test", job.due_at, 30_000, types=["test.echo"])
        assert running.id == job_id
        await store.complete(running, {"file": name, "filename": "x.txt", "contentType": "text/plain"}, 1)
        response = await client.get(f"/api/jobs/{job.id}/download")
        assert response.status == 404 and "do not serve" not in await response.text()


async def _no_jobs_stored(client) -> bool:  # type: ignore[no-untyped-def]
    return (await (await client.get("/api/jobs")).json())["jobs"] == []


@pytest.mark.parametrize(("body", "field"), [
    ({"type": "test.echo", "data": None}, "data: must not be null"),
    ({"type": "pdf", "data": None}, "data: must not be null"),
    ({"type": "test.echo"}, "data: is required"),
    ({"type": 7, "data": {}}, "type: must be a string"),
    ({"type": None, "data": {}}, "type: is required"),
    ({"type": "", "data": {}}, "type: unknown job type ''"),
    ({"type": "test.echo", "data": {}, "options": []}, "options: must be an object"),
    ({"type": "test.echo", "data": {}, "options": "high"}, "options: must be an object"),
    ({"type": "test.echo", "data": {}, "options": 0}, "options: must be an object"),
    ({"type": "test.echo", "data": {}, "options": {"priority": 5}}, "options.priority: must be one of"),
    ({"type": "test.echo", "data": {}, "options": {"priority": ["high"]}}, "options.priority: must be one of"),
    ({"type": "test.echo", "data": {}, "options": {"maxRetries": "3"}}, "options.maxRetries: must be a whole number"),
    ({"type": "test.echo", "data": {}, "options": {"maxRetries": 2.5}}, "options.maxRetries: must be a whole number"),
    ({"type": "test.echo", "data": {}, "options": {"timeout": [1]}}, "options.timeout: must be a whole number"),
    ({"type": "test.echo", "data": {}, "options": {"delay": {}}}, "options.delay: must be a whole number"),
    ({"type": "test.echo", "data": {}, "options": {"runAt": 1_800_000_000}}, "options.runAt: must be an RFC 3339"),
    ({"type": "test.echo", "data": {}, "options": {"runAt": "2026-11-28T09:30:00"}}, "options.runAt: must be"),
    ({"type": "test.echo", "data": {}, "options": {"runAt": "2026-11-28"}}, "options.runAt: must be"),
    ({"type": "test.echo", "data": {}, "options": {"idempotencyKey": 5}}, "options.idempotencyKey: must be a string"),
    ({"type": "test.echo", "data": {}, "options": {"delay": 5, "runAt": "2026-11-28T09:30:00Z"}},
     "options.delay: give either"),
])
async def test_a_field_of_the_wrong_type_or_null_is_a_422_naming_it_and_stores_nothing(start_server, body, field):
    client = await start_server()
    response = await client.post("/api/jobs", json=body)
    answer = await response.json()
    assert response.status == 422, answer
    assert answer["error"]["code"] == "validation_error" and answer["error"]["message"].startswith(field), answer
    assert await _no_jobs_stored(client)


async def test_null_options_mean_not_given(start_server):
    client = await start_server()
    every_option_null = {key: None for key in ("priority", "maxRetries", "retryDelay", "timeout", "delay", "runAt",
                                               "idempotencyKey")}
    for options in (None, every_option_null, {"delay": None, "runAt": "2000-01-01T00:00:00Z"},
                    {"maxRetries": 2.0}):
        response = await client.post("/api/jobs", json={"type": "test.echo", "data": {}, "options": options})
        assert response.status == 201, (options, await response.json())
        job = await (await client.get(f"/api/jobs/{(await response.json())['jobId']}")).json()
        assert (job["priority"], job["maxRetries"]) == ("medium", 2 if options == {"maxRetries": 2.0} else 3)
    # a null options.idempotencyKey leaves the header's key in force
    keyed = [await client.post("/api/jobs", json={"type": "test.echo", "data": {}, "options": {"idempotencyKey": None}},
                               headers={"Idempotency-Key": "same"}) for _ in range(2)]
    assert [r.status for r in keyed] == [201, 200]
    assert len({(await r.json())["jobId"] for r in keyed}) == 1
    empty_header = await client.post("/api/jobs", json={"type": "test.echo", "data": {}},
                                     headers={"Idempotency-Key": ""})
    assert empty_header.status == 422
    assert (await empty_header.json())["error"]["message"].startswith("Idempotency-Key: must be 1 to 255")


async def test_a_one_megabyte_single_word_item_name_is_refused_naming_the_field_and_the_limit(start_server):
    client = await start_server()
    data = invoice(3)
    data["items"][1]["name"] = "x" * 1_000_000
    response = await client.post("/api/jobs", json={"type": "pdf", "data": data})
    answer = await response.json()
    assert response.status == 422, answer
    assert answer["error"]["message"] == ("data.items[1].name: must be at most 1,000 characters long "
                                          "(max_text_length), got 1,000,000")
    assert await _no_jobs_stored(client)


async def test_the_invoice_limits_come_from_the_pdf_settings(start_server):
    client = await start_server(jobs={"settings": {"pdf": {"max_items": 3, "max_text_length": 30_000}}})
    too_many = await client.post("/api/jobs", json={"type": "pdf", "data": invoice(4)})
    assert too_many.status == 422
    assert (await too_many.json())["error"]["message"] == "data.items: must have at most 3 entries (max_items), got 4"
    assert await _no_jobs_stored(client)
    data = invoice(3)
    data["items"][0]["name"] = "y" * 20_000  # over the default limit, within this one
    job_id = await submit(client, "pdf", data)
    await wait_status(client, job_id, "completed")
