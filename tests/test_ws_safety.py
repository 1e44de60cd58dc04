"""The WebSocket against hostile pages and clients: foreign origins, garbage, huge messages,
too many connections. The server stays healthy and other sockets keep working."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType

from tests.conftest import eventually
from tests.users import TOKENS, A, B


def _origin(client) -> str:  # type: ignore[no-untyped-def]
    return f"http://127.0.0.1:{client.port}"


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1:{port}",
                                    "http://localhost.evil.example:{port}", "not a url"])
async def test_foreign_origin_is_refused_with_403_before_upgrading(start_server, origin):
    client = await start_server()
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect("/api/ws", headers={"Origin": origin.format(port=client.port)})
    assert caught.value.status == 403


async def test_own_origin_and_no_origin_are_accepted(start_server):
    client = await start_server()
    for headers in ({"Origin": _origin(client)}, {"Origin": _origin(client).upper()}, {}):
        async with client.ws_connect("/api/ws", headers=headers) as ws:
            await ws.send_json({"op": "ping"})
            assert await ws.receive_json() == {"event": "pong"}


async def test_configured_origin_is_accepted_and_still_needs_a_token(start_server):
    client = await start_server(server={"allowed_origins": ("https://app.example.com",)}, **TOKENS)
    headers = {"Origin": "https://app.example.com"}
    async with client.ws_connect("/api/ws", headers={**headers, **A}) as ws:
        await ws.send_json({"op": "ping"})
        assert await ws.receive_json() == {"event": "pong"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect("/api/ws", headers=headers)
    assert caught.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect("/api/ws", headers={"Origin": "https://other.example.com", **A})
    assert caught.value.status == 403


@pytest.mark.parametrize("send, code", [
    (lambda ws: ws.send_bytes(b"\x00\x01binary"), "unsupported_frame"),
    (lambda ws: ws.send_str("{not json"), "malformed_json"),
    (lambda ws: ws.send_str("\x00\x00"), "malformed_json"),
    (lambda ws: ws.send_str("[1, 2]"), "bad_message"),
    (lambda ws: ws.send_str('"subscribe"'), "bad_message"),
    (lambda ws: ws.send_json({"op": {"nested": True}}), "unknown_op"),
    (lambda ws: ws.send_json({"op": "subscribe", "jobId": 123}), "bad_message"),
    (lambda ws: ws.send_json({"op": "subscribe", "jobId": "../../etc/passwd"}), "not_found"),
    (lambda ws: ws.send_json({"op": "unsubscribe", "jobId": ["x"]}), "bad_message"),
    (lambda ws: ws.send_str("[" * 60_000), "malformed_json"),
])
async def test_bad_messages_get_an_error_event_and_the_socket_stays_open(start_server, send, code):
    client = await start_server()
    async with client.ws_connect("/api/ws") as ws:
        await send(ws)
        event = await ws.receive_json()
        assert event["event"] == "error" and event["code"] == code, event
        assert isinstance(event["message"], str)
        await ws.send_json({"op": "ping"})
        assert await ws.receive_json() == {"event": "pong"}


async def test_too_big_message_closes_with_1009_and_others_keep_working(start_server):
    client = await start_server(limits={"max_ws_message_bytes": 4096})
    async with client.ws_connect("/api/ws") as bystander, client.ws_connect("/api/ws") as ws:
        await ws.send_str('{"op": "ping", "pad": "' + "x" * 10_000 + '"}')
        message = await ws.receive()
        assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
        assert ws.close_code == WSCloseCode.MESSAGE_TOO_BIG
        await bystander.send_json({"op": "ping"})
        assert await bystander.receive_json() == {"event": "pong"}
    assert (await client.get("/api/health")).status == 200


async def test_websockets_per_user_are_capped_with_429(start_server):
    client = await start_server(limits={"max_websockets_per_user": 2}, **TOKENS)
    first = await client.ws_connect("/api/ws", headers=A)
    second = await client.ws_connect("/api/ws", headers=A)
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect("/api/ws", headers=A)
    assert caught.value.status == 429
    assert int(caught.value.headers["Retry-After"]) >= 1
    async with client.ws_connect("/api/ws", headers=B) as other_user:  # B has their own allowance
        await other_user.send_json({"op": "ping"})
        assert await other_user.receive_json() == {"event": "pong"}
    await first.close()

    async def reconnects() -> bool:
        try:
            third = await client.ws_connect("/api/ws", headers=A)
        except aiohttp.WSServerHandshakeError:
            return False
        await third.close()
        return True

    assert await eventually(reconnects, timeout=10, what="a freed connection slot")
    await second.close()


async def test_dead_websocket_is_dropped_by_heartbeat(start_server):
    client = await start_server(limits={"ws_heartbeat_s": 1.0})

    def subscribers(n):
        async def check():
            stats = await (await client.get("/api/stats")).json()
            return stats["websocket"]["subscribers"] == n
        return check

    async with client.ws_connect("/api/ws", autoping=False) as deaf:
        await deaf.send_json({"op": "subscribe", "all": True})
        await eventually(subscribers(1), what="the subscription to register")
        # the client never answers the server's pings, as a vanished peer would not
        kinds = []
        async with asyncio.timeout(10):
            while True:
                message = await deaf.receive()
                kinds.append(message.type)
                if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                    break
        assert WSMsgType.PING in kinds
        await eventually(subscribers(0), what="the silent socket to be dropped")
    async with client.ws_connect("/api/ws") as healthy:
        await healthy.send_json({"op": "ping"})
        assert (await healthy.receive_json())["event"] == "pong"
