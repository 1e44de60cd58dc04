"""Tokens and modes: who may call what, on a real server with two users."""
from __future__ import annotations

import hashlib
import re
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from offload.service.access_log import redact
from offload.service.app import create_app
from offload.service.auth import MAX_TICKETS_PER_USER, Authenticator
from offload.service.config import ConfigError, load_config
from offload.service.keys import AUTH, STORE
from tests.conftest import eventually, submit
from tests.server_process import ServerProcess
from tests.users import ALICE, BOB, TOKENS, A, B, submit_as


# ---- configuration ----------------------------------------------------------------------------
def test_no_tokens_on_a_public_host_refuses_to_start_and_says_how_to_fix_it():
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={}, overrides={"server": {"host": "0.0.0.0"}})
    message = str(caught.value)
    assert "0.0.0.0" in message and "[auth]" in message and "OFFLOAD_AUTH_TOKENS" in message


def test_create_app_also_refuses_a_public_host_without_tokens(make_config):
    with pytest.raises(ConfigError):
        create_app(make_config().replace(server={"host": "::"}))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_no_tokens_on_loopback_is_single_user(host):
    config = load_config(None, environ={}, overrides={"server": {"host": host}})
    assert Authenticator.from_config(config).single_user


def test_tokens_from_environment_as_user_colon_token():
    config = load_config(None, environ={"OFFLOAD_AUTH_TOKENS": f"alice:{ALICE}, bob:{BOB}"},
                         overrides={"server": {"host": "0.0.0.0"}})
    auth = Authenticator.from_config(config)
    assert auth.user_for(ALICE) == "alice" and auth.user_for(BOB) == "bob"
    assert auth.user_for("alice") is None and auth.user_for(ALICE + "x") is None


def test_tokens_file_holds_only_hashes(tmp_path):
    (tmp_path / "tokens.toml").write_text(
        f'"{hashlib.sha256(ALICE.encode()).hexdigest()}" = "alice"\n'
        f'"sha256:{hashlib.sha256(BOB.encode()).hexdigest()}" = "bob"\n')
    (tmp_path / "config.toml").write_text('[server]\nhost = "0.0.0.0"\n[auth]\ntokens_file = "tokens.toml"\n')
    config = load_config(tmp_path / "config.toml", environ={})
    auth = Authenticator.from_config(config)
    assert auth.user_for(ALICE) == "alice" and auth.user_for(BOB) == "bob"
    assert auth.user_for(hashlib.sha256(ALICE.encode()).hexdigest()) is None  # the hash is not the token


@pytest.mark.parametrize("auth, expected", [
    ({"tokens": {"short": "alice"}}, "shorter than 16"),
    ({"tokens": {ALICE: "bad user!"}}, "user name"),
    ({"tokens_file": "missing.toml"}, "cannot be read"),
    ({"tokens": {ALICE: "alice"}, "admins": ["alcie"]}, r"\[auth\] admins: no token is configured for 'alcie'"),
])
def test_bad_auth_settings_stop_start_up_naming_the_problem(tmp_path, auth, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, environ={}, overrides={"auth": auth, "server": {"host": "127.0.0.1"}})


def test_tokens_file_with_plain_tokens_is_refused(tmp_path):
    (tmp_path / "tokens.toml").write_text(f'"{ALICE}" = "alice"\n')
    with pytest.raises(ConfigError, match="sha256"):
        load_config(None, environ={}, overrides={"auth": {"tokens_file": str(tmp_path / "tokens.toml")}})


# ---- REST and WebSocket ---------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"},
                                     {"Authorization": f"Basic {ALICE}"}, {"Authorization": "Bearer"}])
async def test_api_without_a_valid_token_is_401(start_server, headers):
    client = await start_server(**TOKENS)
    for method, path in [("GET", "/api/jobs"), ("POST", "/api/jobs"), ("GET", "/api/health"),
                         ("GET", "/api/stats"), ("GET", "/api/jobs/job_aaaaaaaaaaaaaaaaaaaaaaaa"),
                         ("DELETE", "/api/jobs/job_aaaaaaaaaaaaaaaaaaaaaaaa"), ("GET", "/api/openapi.json"),
                         ("GET", "/api/nowhere")]:
        response = await client.request(method, path, headers=headers)
        assert response.status == 401, (method, path)
        assert (await response.json())["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.headers["X-Request-Id"]


async def test_valid_token_works_and_query_token_is_only_for_the_websocket(start_server):
    client = await start_server(**TOKENS)
    assert (await client.get("/api/jobs", headers=A)).status == 200
    assert (await client.get("/api/jobs", headers={"Authorization": f"bearer {ALICE}"})).status == 200
    assert (await client.get("/api/jobs", params={"token": ALICE})).status == 401


async def test_demo_page_stays_public(start_server):
    client = await start_server(**TOKENS)
    assert (await client.get("/")).status == 200
    assert (await client.get("/static/app.js")).status == 200


async def test_health_probes_need_no_token_and_show_nothing_sensitive(start_server):
    client = await start_server(**TOKENS)
    live = await client.get("/api/health/live")
    assert live.status == 200 and await live.json() == {"status": "alive"}
    ready = await client.get("/api/health/ready")
    assert ready.status == 200 and await ready.json() == {"status": "ready"}
    assert (await client.get("/api/health")).status == 401  # the full answer stays behind a token
    assert (await client.get("/api/health", headers=A)).status == 200


async def test_websocket_needs_a_token_in_header_or_query(start_server):
    client = await start_server(**TOKENS)
    for kwargs in ({}, {"params": {"token": "nope-nope-nope-nope"}}, {"headers": {"Authorization": "Bearer nope"}}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await client.ws_connect("/api/ws", **kwargs)
        assert caught.value.status == 401
    for kwargs in ({"params": {"token": ALICE}}, {"headers": A}):
        async with client.ws_connect("/api/ws", **kwargs) as ws:
            await ws.send_json({"op": "ping"})
            assert (await ws.receive_json())["event"] == "pong"


async def test_single_user_mode_answers_only_to_a_loopback_host_name(start_server):
    client = await start_server()
    assert (await client.get("/api/jobs")).status == 200
    assert (await client.get("/api/jobs", headers={"Host": "localhost"})).status == 200
    rebound = await client.get("/api/jobs", headers={"Host": "evil.example:8080"})
    assert rebound.status == 403
    assert (await rebound.json())["error"]["code"] == "forbidden"


async def test_single_user_mode_owner_is_local_and_tokens_are_ignored(start_server):
    client = await start_server()
    job_id = await submit(client, "test.echo", {}, delay=3_600_000)
    response = await client.get(f"/api/jobs/{job_id}", headers={"Authorization": "Bearer whatever"})
    assert response.status == 200
    assert (await client.server.app[STORE].get(job_id)).owner == "local"


# ---- WebSocket tickets ----------------------------------------------------------------------------
async def _ticket(client: TestClient, headers: dict[str, str]) -> str:
    response = await client.post("/api/ws-ticket", headers=headers)
    body = await response.json()
    assert response.status == 201, body
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["expiresAt"])
    return body["ticket"]


async def _pong(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_json({"op": "ping"})
    assert (await ws.receive_json())["event"] == "pong"


async def _refused(client: TestClient, **kwargs: Any) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect("/api/ws", **kwargs)
    return caught.value.status


async def test_a_ticket_opens_one_websocket_once(start_server):
    client = await start_server(**TOKENS)
    ticket = await _ticket(client, A)
    assert ALICE not in ticket
    async with client.ws_connect("/api/ws", params={"ticket": ticket}) as ws:
        await _pong(ws)
    assert await _refused(client, params={"ticket": ticket}) == 401  # used once: gone
    assert await _refused(client, params={"ticket": "made-up-ticket-0123456789abcdef"}) == 401
    # a ticket is no REST credential, and getting one needs the token itself
    ticket = await _ticket(client, A)
    assert (await client.get("/api/jobs", params={"ticket": ticket})).status == 401
    assert (await client.post("/api/ws-ticket", params={"ticket": ticket})).status == 401
    assert (await client.post("/api/ws-ticket")).status == 401
    async with client.ws_connect("/api/ws", params={"ticket": ticket}) as ws:  # still unused
        await _pong(ws)


async def test_a_ticket_expires(start_server):
    client = await start_server(**TOKENS)
    tickets = client.server.app[AUTH].tickets
    now = [1000.0]
    tickets.clock = lambda: now[0]  # the service's clock, moved by the test instead of waited for
    late, in_time = await _ticket(client, A), await _ticket(client, A)
    now[0] += tickets.ttl - 0.5
    async with client.ws_connect("/api/ws", params={"ticket": in_time}) as ws:
        await _pong(ws)
    now[0] += 0.5
    assert await _refused(client, params={"ticket": late}) == 401


async def test_a_ticket_is_its_users_alone(start_server):
    client = await start_server(**TOKENS)
    mine = await submit_as(client, A, "test.echo", {}, delay=3_600_000)
    theirs = await submit_as(client, B, "test.echo", {}, delay=3_600_000)
    async with client.ws_connect("/api/ws", params={"ticket": await _ticket(client, A)}) as ws:
        await ws.send_json({"op": "subscribe", "all": True})
        await ws.send_json({"op": "subscribe", "jobId": theirs})
        await ws.send_json({"op": "ping"})
        events = []
        while (event := await ws.receive_json())["event"] != "pong":
            events.append(event)
    assert [(e["event"], e["job"]["id"]) for e in events if e["event"] == "snapshot"] == [("snapshot", mine)]
    assert [e["code"] for e in events if e["event"] == "error"] == ["not_found"]


async def test_unused_tickets_per_user_are_capped_until_they_expire(start_server):
    client = await start_server(**TOKENS)
    tickets = client.server.app[AUTH].tickets
    now = [1000.0]
    tickets.clock = lambda: now[0]
    for _ in range(MAX_TICKETS_PER_USER):
        await _ticket(client, A)
    refused = await client.post("/api/ws-ticket", headers=A)
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    await _ticket(client, B)  # another user is not affected
    now[0] += tickets.ttl
    await _ticket(client, A)  # expired tickets no longer count


# ---- the log ------------------------------------------------------------------------------------
async def test_the_access_log_never_shows_a_token_or_ticket(tmp_path):
    (tmp_path / "tokens.toml").write_text(f'"{hashlib.sha256(ALICE.encode()).hexdigest()}" = "alice"\n')
    with ServerProcess(tmp_path, processes=1, sections={"auth": {"tokens_file": "tokens.toml"}},
                       env={"OFFLOAD_SERVER_ACCESS_LOG": "true"}) as server:
        server.spawn()
        await eventually(lambda: _answers(server), 30, "the server to answer")
        async with server.session() as http:
            async with http.post("/api/ws-ticket", headers=A) as response:
                ticket = (await response.json())["ticket"]
            for params in ({"token": ALICE}, {"ticket": ticket}):
                async with http.ws_connect("/api/ws", params=params) as ws:
                    await ws.send_json({"op": "ping"})
                    assert (await ws.receive_json())["event"] == "pong"
            # a token in another request's query, and in a Referer: redacted as well
            referer = {"Referer": f"http://127.0.0.1:{server.port}/?x=1&token={ALICE}"}
            async with http.get("/api/jobs", params={"token": ALICE}, headers=referer) as response:
                assert response.status == 401

        def logged() -> str:
            return server.log.read_text(errors="replace")

        async def written() -> list[str]:  # the three access-log lines with a query
            lines = [line for line in logged().splitlines() if "aiohttp.access" in line and "?" in line]
            return lines if len(lines) == 3 else []

        lines = await eventually(written, 20, "the access log lines")
        assert ALICE not in logged() and ticket not in logged()
        assert '"GET /api/ws?token=*** HTTP/1.1" 101' in lines[0]
        assert '"GET /api/ws?ticket=*** HTTP/1.1" 101' in lines[1]
        assert '"GET /api/jobs?token=*** HTTP/1.1" 401' in lines[2] and "/?x=1&token=***" in lines[2]


async def test_the_access_log_is_off_unless_asked_for(tmp_path):
    for folder, env in ((tmp_path / "default", {}), (tmp_path / "on", {"OFFLOAD_SERVER_ACCESS_LOG": "true"})):
        with ServerProcess(folder, processes=1, env=env) as server:
            await server.start()
            async with server.session() as http, http.get("/api/jobs") as response:
                assert response.status == 200
            server.stop()  # every line the server wrote is in its log once it has exited
        logged = [line for line in server.log.read_text().splitlines() if "aiohttp.access" in line]
        assert ('"GET /api/jobs HTTP/1.1" 200' in " ".join(logged)) == bool(env), logged


@pytest.mark.parametrize("line, expected", [
    ("GET /api/ws?a=1&token=s3cret&b=2 HTTP/1.1", "GET /api/ws?a=1&token=***&b=2 HTTP/1.1"),
    ("GET /api/ws?%74oken=s3cret;ticket=t1ck3t", "GET /api/ws?%74oken=***;ticket=***"),
    ("https://app.example/page?token=s3cret#top", "https://app.example/page?token=***#top"),
    ("GET /api/jobs?tokens=2&status=pending HTTP/1.1", "GET /api/jobs?tokens=2&status=pending HTTP/1.1"),
])
def test_redact_hides_credential_parameters_only(line, expected):
    assert redact(line) == expected


async def _answers(server: ServerProcess) -> bool:
    """Any answer will do (`ServerProcess.start` waits for a 200 that needs a token here)."""
    try:
        async with server.session() as http, http.get("/api/jobs"):
            return True
    except aiohttp.ClientError:
        return False
