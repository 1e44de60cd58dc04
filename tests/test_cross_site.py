"""Cross-site request forgery: a page elsewhere must not create or cancel jobs, in either
mode. Browsers send some POSTs without a CORS preflight (`fetch(url, {mode: "no-cors",
method: "POST", body: new Blob([json])})` sends no Content-Type, a form sends text/plain):
such a body is not JSON to the service (415), and any POST or DELETE whose `Origin` is
foreign is refused (403) before it is read."""
from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.users import TOKENS, A, submit_as

BODY = orjson.dumps({"type": "test.echo", "data": {"value": 1}})
EVIL = "https://evil.example"


async def _jobs(client: Any, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    response = await client.get("/api/jobs", headers=headers)
    assert response.status == 200
    return (await response.json())["jobs"]


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "text/plain;charset=UTF-8", "application/octet-stream", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/vnd.offload+json", "application/json; charset=latin-1"])
async def test_a_body_not_sent_as_application_json_is_415_and_creates_no_job(start_server, content_type):
    client = await start_server()
    headers = {} if content_type is None else {"Content-Type": content_type}
    # skip_auto_headers: aiohttp would otherwise call a bytes body application/octet-stream
    response = await client.post("/api/jobs", data=BODY, headers=headers, skip_auto_headers=["Content-Type"])
    body = await response.json()
    assert response.status == 415, body
    error = body["error"]
    assert error["code"] == "unsupported_media_type" and "application/json" in error["message"]
    assert ("none was sent" in error["message"]) == (content_type is None)
    assert await _jobs(client) == []


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON;charset=UTF-8"])
async def test_application_json_with_or_without_a_utf8_charset_is_a_job(start_server, content_type):
    client = await start_server()
    response = await client.post("/api/jobs", data=BODY, headers={"Content-Type": content_type})
    assert response.status == 201, await response.text()


@pytest.mark.parametrize("mode", ["single-user", "tokens"])
@pytest.mark.parametrize("origin", [EVIL, "null", "http://127.0.0.1:1", "not a url"])
async def test_a_foreign_origin_can_neither_create_nor_cancel_a_job(start_server, mode, origin):
    client = await start_server(**(TOKENS if mode == "tokens" else {}))
    auth = A if mode == "tokens" else {}
    job_id = await submit_as(client, auth, "test.echo", {}, delay=3_600_000)
    foreign = {**auth, "Origin": origin}
    created = await client.post("/api/jobs", json={"type": "test.echo", "data": {}}, headers=foreign)
    assert created.status == 403
    error = (await created.json())["error"]
    assert error["code"] == "forbidden" and "allowed_origins" in error["message"]
    cancelled = await client.delete(f"/api/jobs/{job_id}", headers=foreign)
    assert cancelled.status == 403
    assert (await cancelled.json())["error"]["code"] == "forbidden"
    ticket = await client.post("/api/ws-ticket", headers=foreign)
    assert ticket.status == 403
    jobs = await _jobs(client, auth)
    assert [(job["id"], job["status"]) for job in jobs] == [(job_id, "pending")]
    # reading stays open to any origin: the browser keeps the answer from a foreign page
    assert (await client.get(f"/api/jobs/{job_id}", headers=foreign)).status == 200


@pytest.mark.parametrize("mode", ["single-user", "tokens"])
async def test_the_services_own_origin_and_allowed_origins_may_create_and_cancel(start_server, mode):
    sections: dict[str, Any] = {"server": {"allowed_origins": ("https://app.example.com",)}}
    client = await start_server(**sections, **(TOKENS if mode == "tokens" else {}))
    auth = A if mode == "tokens" else {}
    for origin in (f"http://127.0.0.1:{client.port}", "https://app.example.com", "HTTPS://APP.EXAMPLE.COM:443"):
        headers = {**auth, "Origin": origin}
        job_id = await submit_as(client, headers, "test.echo", {}, delay=3_600_000)
        cancelled = await client.delete(f"/api/jobs/{job_id}", headers=headers)
        assert cancelled.status == 200, (origin, await cancelled.text())
        assert (await cancelled.json())["status"] == "cancelled"
    # a program (no Origin header) is not a page: it passes, with its token
    assert (await client.post("/api/jobs", json={"type": "test.echo", "data": {}}, headers=auth)).status == 201

