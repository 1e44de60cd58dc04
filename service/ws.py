"""`GET /api/ws`: live job events for one connection.

Reading and writing are separate tasks: the reader handles the client's ops, the writer
drains the connection's `Subscriber` outbox. A client that stops reading only fills its own
outbox (progress coalesced, status kept) until it overflows and is closed; nobody else waits.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from offload.service.config import LimitsConfig
from offload.service.errors import OffloadError
from offload.service.events import EventHub, Overflow, Subscriber
from offload.service.keys import CONFIG, HUB, LIMITS, OWNER, SOCKETS, STORE
from offload.service.models import Job
from offload.service.origins import check_origin
from offload.service.store import Store

log = logging.getLogger("offload.ws")

PONG = orjson.dumps({"event": "pong"})


async def websocket(request: web.Request) -> web.WebSocketResponse:
    config, limits, owner = request.app[CONFIG], request.app[LIMITS], request[OWNER]
    check_origin(request, config.server.allowed_origins)  # 403 before the upgrade
    limits.open_socket(owner)  # 429 before the upgrade
    try:
        return await _serve(request, owner, config.limits)
    finally:
        limits.close_socket(owner)


async def _serve(request: web.Request, owner: str, limits: LimitsConfig) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=limits.ws_heartbeat_s, max_msg_size=limits.max_ws_message_bytes)
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    hub, store = request.app[HUB], request.app[STORE]
    subscriber = Subscriber(owner)
    writer = asyncio.get_running_loop().create_task(_write(ws, subscriber))
    try:
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                await _handle(message.data, subscriber, hub, store)
            elif message.type is WSMsgType.BINARY:
                subscriber.send_error("unsupported_frame", "send JSON text frames, not binary")
            elif message.type is WSMsgType.ERROR:
                break
    finally:
        hub.remove(subscriber)
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
    return ws


async def _write(ws: web.WebSocketResponse, subscriber: Subscriber) -> None:
    try:
        while True:
            await ws.send_frame(await subscriber.next(), WSMsgType.TEXT)
    except Overflow:
        log.warning("closing a WebSocket whose client fell too far behind")
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"client too slow: reconnect and subscribe again")
    except (ConnectionError, RuntimeError):
        pass


async def _handle(text: str, subscriber: Subscriber, hub: EventHub, store: Store) -> None:
    try:
        message: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        subscriber.send_error("malformed_json", "the message is not valid JSON")
        return
    if not isinstance(message, dict):
        subscriber.send_error("bad_message", "a message must be a JSON object with an `op`")
        return
    op = message.get("op")
    if op == "ping":
        subscriber.send_raw(PONG)
    elif op == "subscribe" and message.get("all") is True:
        if subscriber.all:
            return
        subscriber.hold()
        hub.watch_all(subscriber)
        jobs: list[Job] = []
        try:
            jobs = await store.unfinished(subscriber.owner)
        except OffloadError as exc:
            subscriber.send_error(exc.code, exc.message)
        finally:
            subscriber.release(jobs)
    elif op == "subscribe":
        job_id = message.get("jobId")
        if not isinstance(job_id, str):
            subscriber.send_error("bad_message", "subscribe needs `jobId` (a string) or `all: true`")
            return
        subscriber.hold()
        hub.watch_job(subscriber, job_id)
        job = None
        try:
            job = await store.get(job_id, subscriber.owner)
        except OffloadError as exc:
            subscriber.send_error(exc.code, exc.message)
        finally:
            if job is None:
                hub.unwatch_job(subscriber, job_id)
                subscriber.release(())
                subscriber.send_error("not_found", f"no job with id {job_id!r}")
            else:
                subscriber.release((job,))
    elif op == "unsubscribe":
        job_id = message.get("jobId")
        if not isinstance(job_id, str):
            subscriber.send_error("bad_message", "unsubscribe needs `jobId` (a string)")
            return
        hub.unwatch_job(subscriber, job_id)
    else:
        subscriber.send_error("unknown_op", f"unknown op {op!r}; use subscribe, unsubscribe or ping")
