"""`GET /api/ws`: live job events for one connection.

Reading and writing are separate tasks: the reader handles the client's ops, the writer
drains the connection's `Subscriber` outbox (and pages the snapshots of `subscribe all` in
from the store as the client takes them). While the client keeps up (nothing queued, the
transport under its high-water mark), the hub's events skip the outbox and the writer:
the hub writes each event's ready frame to the transport itself (`_Guard.offer`), so a
thousand subscribers of one job cost one loop, not a thousand task wake-ups. A client that
falls behind has its events queued instead; its writer waits for the transport to drain
before each frame, and meanwhile the outbox coalesces progress. A client that stops reading
only fills its own outbox (progress coalesced, status kept); once what it leaves unsent (outbox plus what
the transport could not write) stays over `ws_max_unsent_bytes` for `ws_slow_close_s`,
or the outbox overflows, the connection is closed with 1013 and its memory freed at once.
Nobody else waits, and the event loop never does.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from offload.service.config import LimitsConfig
from offload.service.errors import OffloadError
from offload.service.events import EventHub, Overflow, SnapshotStream, Subscriber
from offload.service.api import stats_scope
from offload.service.keys import CONFIG, HUB, LIMITS, OWNER, SOCKETS, STATS, STORE
from offload.service.stats import StatsFeed
from offload.service.origins import check_origin
from offload.service.store import Store

log = logging.getLogger("offload.ws")

PONG = orjson.dumps({"event": "pong"})
#: Snapshots read from the store at a time for `subscribe all`.
SNAPSHOT_PAGE = 500
#: How long a closing slow client gets for the close handshake before its connection is
#: aborted: whatever it left unread is freed either way.
CLOSE_HANDSHAKE_S = 1.0
SLOW = b"client too slow: reconnect and subscribe again"


async def websocket(request: web.Request) -> web.WebSocketResponse:
    config, limits, owner = request.app[CONFIG], request.app[LIMITS], request[OWNER]
    check_origin(request, config.server.allowed_origins)  # 403 before the upgrade
    limits.open_socket(owner)  # 429 before the upgrade
    try:
        return await _serve(request, owner, config.limits)
    finally:
        limits.close_socket(owner)


async def _serve(request: web.Request, owner: str, limits: LimitsConfig) -> web.WebSocketResponse:
    # writer_limit 0: the writer waits for a backed-up transport after every frame, so what
    # a slow client cannot take yet stays in the outbox, where progress is coalesced.
    ws = web.WebSocketResponse(heartbeat=limits.ws_heartbeat_s, max_msg_size=limits.max_ws_message_bytes,
                               writer_limit=0)
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    hub, store = request.app[HUB], request.app[STORE]
    subscriber = Subscriber(owner, counts=hub.counts)
    feed = StatsFeed(request.app[STATS], subscriber, stats_scope(request))
    guard = _Guard(ws, request.transport, subscriber, hub, limits)
    writer = asyncio.get_running_loop().create_task(_write(ws, subscriber, store, guard))
    try:
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                await _handle(message.data, subscriber, hub, store, feed)
            elif message.type is WSMsgType.BINARY:
                subscriber.send_error("unsupported_frame", "send JSON text frames, not binary")
            elif message.type is WSMsgType.ERROR:
                break
    finally:
        feed.stop()
        hub.remove(subscriber)
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await guard.stop()
        guard.let_go()
    return ws


class _Guard:
    """Bounds what one connection leaves unsent: its outbox plus the transport's buffer.

    Checked whenever the outbox grows and around every frame written, so a client that
    stays over the bound is noticed without polling; a timer closes it once it has been
    over for the whole grace period."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None, subscriber: Subscriber,
                 hub: EventHub, limits: LimitsConfig) -> None:
        self.ws, self.transport, self.subscriber, self.hub = ws, transport, subscriber, hub
        self.bound, self.grace = limits.ws_max_unsent_bytes, limits.ws_slow_close_s
        #: The frame being written: out of the outbox, maybe not yet in the transport.
        self.writing = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None
        #: Above this many bytes in the transport's buffer the client is behind: the
        #: transport's own high-water mark, where it stops taking more from aiohttp's writer.
        self.behind = transport.get_write_buffer_limits()[1] if transport is not None else 0
        subscriber.on_grow = self.check
        subscriber.direct = self.offer

    def offer(self, frame: bytes) -> bool:
        """Write the ready `frame` now if the connection keeps up: not closed, its writer
        idle (the subscriber offers nothing while its outbox holds anything) and its
        transport not backed up. False: the subscriber queues the event instead."""
        transport = self.transport
        if self.writing or self.ws.closed or transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() > self.behind:
            return False
        try:
            transport.write(frame)
        except (OSError, RuntimeError):  # the connection just failed: the writer finds out
            return False
        if transport.get_write_buffer_size():  # the kernel took less than all of it
            self.check()
        return True

    def unsent(self) -> int:
        buffered = self.transport.get_write_buffer_size() if self.transport is not None else 0
        return self.subscriber.queued_bytes + self.writing + buffered

    def check(self) -> None:
        if self._closing is not None:
            return
        if self.unsent() <= self.bound:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.grace, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self.unsent() > self.bound:
            log.warning("closing a WebSocket whose client left %d bytes unread for %.1f s", self.unsent(), self.grace)
            self.close()

    def close(self) -> None:
        """Close with 1013 now: stop feeding the connection and drop what it holds."""
        if self._closing is not None:
            return
        self.hub.remove(self.subscriber)
        self.subscriber.discard()
        self._closing = asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        timed_out = False
        try:
            async with asyncio.timeout(CLOSE_HANDSHAKE_S):
                await self.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=SLOW)
        except TimeoutError:
            timed_out = True
        # A close frame stuck behind data the client does not read would keep that data,
        # and the connection, forever: abort instead.
        if self.transport is not None and (timed_out or self.transport.get_write_buffer_size()):
            self.transport.abort()

    def let_go(self) -> None:
        """The socket is done (closed, or dropped by the heartbeat): if its transport still
        holds data a moment later, the client is not reading it and never will, and a
        graceful close would keep the connection open until it does. Abort it instead."""
        transport = self.transport
        if transport is None or not transport.get_write_buffer_size():
            return

        def abort_if_stuck() -> None:
            if transport.get_write_buffer_size():
                transport.abort()

        asyncio.get_running_loop().call_later(CLOSE_HANDSHAKE_S, abort_if_stuck)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closing is not None:
            await asyncio.gather(self._closing, return_exceptions=True)


async def _write(ws: web.WebSocketResponse, subscriber: Subscriber, store: Store, guard: _Guard) -> None:
    try:
        while True:
            payload = await subscriber.next()
            if payload is None:
                assert subscriber.stream is not None
                await _next_page(subscriber, subscriber.stream, store)
                continue
            guard.writing = len(payload)
            guard.check()
            await ws.send_frame(payload, WSMsgType.TEXT)
            subscriber.counts.sent += 1
            guard.writing = 0
            guard.check()
    except Overflow:
        log.warning("closing a WebSocket whose client fell too far behind")
        guard.close()
    except (ConnectionError, RuntimeError):
        pass


async def _next_page(subscriber: Subscriber, stream: SnapshotStream, store: Store) -> None:
    try:
        page = await store.unfinished_page(subscriber.owner, limit=SNAPSHOT_PAGE, cursor=stream.cursor)
    except OffloadError as exc:
        subscriber.send_error(exc.code, exc.message)
        if stream is subscriber.stream:
            subscriber.end_stream()  # what was held still goes out: no final status is lost
        return
    subscriber.add_page(stream, page.jobs, page.next_cursor)


async def _handle(text: str, subscriber: Subscriber, hub: EventHub, store: Store, feed: StatsFeed) -> None:
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
    elif op == "subscribe" and message.get("stats") is True:
        feed.start()  # a `stats` event now, then every [stats] interval_s
    elif op == "unsubscribe" and message.get("stats") is True:
        feed.stop()
    elif op == "subscribe" and message.get("all") is True:
        if not subscriber.all:
            hub.watch_all(subscriber)  # the writer streams the snapshots
    elif op == "subscribe":
        job_id = message.get("jobId")
        if not isinstance(job_id, str):
            subscriber.send_error("bad_message", "subscribe needs `jobId` (a string), `all: true` or `stats: true`")
            return
        await _subscribe_job(job_id, subscriber, hub, store)
    elif op == "unsubscribe" and message.get("all") is True:
        hub.unwatch_all(subscriber)
    elif op == "unsubscribe":
        job_id = message.get("jobId")
        if not isinstance(job_id, str):
            subscriber.send_error("bad_message", "unsubscribe needs `jobId` (a string), `all: true` or `stats: true`")
            return
        hub.unwatch_job(subscriber, job_id)
    else:
        subscriber.send_error("unknown_op", f"unknown op {op!r}; use subscribe, unsubscribe or ping")


async def _subscribe_job(job_id: str, subscriber: Subscriber, hub: EventHub, store: Store) -> None:
    # Watch first, read after: a change committed while the job is read is held and
    # follows the snapshot; read first, and one published in between would be lost.
    subscriber.hold(job_id)
    hub.watch_job(subscriber, job_id)
    job, failed = None, False
    try:
        job = await store.get(job_id, subscriber.owner)
    except OffloadError as exc:
        failed = True
        subscriber.send_error(exc.code, exc.message)
    finally:
        if job is None:
            hub.unwatch_job(subscriber, job_id)
        subscriber.release(job_id, job)
    if job is None and not failed:
        subscriber.send_error("not_found", f"no job with id {job_id!r}")
