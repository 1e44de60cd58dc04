"""WebSocket flow: a client that stops reading is closed and costs nobody else anything;
`subscribe all` streams any number of snapshots; subscribing never misses a change that
lands while the job is read; `unsubscribe all`."""
from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from offload.service.keys import HUB, SOCKETS, STORE
from offload.service.models import Job, new_job_id, now_ms
from tests.conftest import eventually, submit, wait_status, ws_events_until
from tests.conftest import both_backends as store_backend  # noqa: F401  (each test on SQLite and on PostgreSQL)

HOUR_MS = 3_600_000


def _subscribers(client: TestClient, n: int) -> Callable[[], Any]:
    async def check() -> bool:
        stats = await (await client.get("/api/stats")).json()
        return stats["websocket"]["subscribers"] == n
    return check


def _holds_connection_from(port: int) -> bool:
    """Whether this process (the server runs in it) still has the socket whose peer is
    127.0.0.1:`port` open; a socket the kernel merely finishes sending is not held."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            mine.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] == f"0100007F:{port:04X}" and f"socket:[{fields[9]}]" in mine:
            return True
    return False


class RawClient:
    """A WebSocket client on a plain socket with a tiny receive buffer, so that the moment
    it stops reading, the server's writes back up."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send_json(self, value: Any) -> None:
        payload, mask = orjson.dumps(value), os.urandom(4)
        assert len(payload) < 126
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "the server closed the connection"
            data += chunk
        return data

    def read_events_until(self, last: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Read the server's text frames (unmasked, one frame per message) until `last`
        says an event is the last one wanted; returns the events in order."""
        self.sock.settimeout(30)
        events: list[dict[str, Any]] = []
        while not events or not last(events[-1]):
            first, size = self._exactly(2)
            assert first & 0x0F == 0x1 and first & 0x80 and not size & 0x80, (first, size)
            if size == 126:
                size = struct.unpack("!H", self._exactly(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", self._exactly(8))[0]
            payload = self._exactly(size)
            if first & 0x40:
                raise AssertionError("a compressed frame on a connection that negotiated no compression")
            events.append(orjson.loads(payload))
        return events

    def read_to_end(self) -> int:
        """Read until the server has closed the connection; returns the bytes read."""
        self.sock.settimeout(30)
        total = 0
        try:
            while chunk := self.sock.recv(1 << 16):
                total += len(chunk)
        except ConnectionResetError:
            pass
        return total


async def test_client_that_stops_reading_is_closed_and_a_healthy_one_keeps_receiving(start_server, tmp_path):
    client = await start_server(limits={"ws_max_unsent_bytes": 65536, "ws_slow_close_s": 1.0})
    gate = tmp_path / "gate"
    job_id = await submit(client, "test.chatty", {"gate": str(gate)})
    async with client.ws_connect("/api/ws") as healthy:
        await healthy.send_json({"op": "subscribe", "jobId": job_id})
        assert (await healthy.receive_json())["event"] == "snapshot"
        events: list[dict[str, Any]] = []

        async def keep_reading() -> None:
            while not events or events[-1].get("status") != "completed":
                events.append(await healthy.receive_json())

        received = asyncio.get_running_loop().create_task(keep_reading())
        stalled = await asyncio.to_thread(RawClient, client.port)
        try:
            stalled.send_json({"op": "subscribe", "jobId": job_id})  # ... and never reads again
            await eventually(_subscribers(client, 2), what="both subscriptions")
            # Far sooner than the 30 s heartbeat: it is dropped for what it leaves unread.
            await eventually(_subscribers(client, 1), timeout=20, what="the stalled client to be closed")
            # Its connection is gone too, with what it left unread, though it reads nothing ...
            port = stalled.sock.getsockname()[1]
            await eventually(lambda: asyncio.sleep(0, not _holds_connection_from(port)),
                             what="the server to let go of the stalled connection")
            # ... and reading it now reaches the end.
            read = await asyncio.to_thread(stalled.read_to_end)
            assert read > 65536  # it had been sent more than the bound before it stopped taking it
        finally:
            stalled.sock.close()
        assert not received.done()  # the healthy client is still there, and receives the
        # job's news live, including what it reported after the stalled client was gone
        since = (await (await client.get(f"/api/jobs/{job_id}")).json())["seq"]
        await eventually(lambda: asyncio.sleep(0, any(e["seq"] > since for e in events)),
                         what="progress after the stalled client was closed")
        gate.touch()
        async with asyncio.timeout(30):
            await received
    assert events[-1]["status"] == "completed"


async def test_subscribe_all_streams_snapshots_of_12000_unfinished_jobs(start_server):
    client = await start_server()
    store = client.server.app[STORE]
    later = now_ms() + HOUR_MS  # pending, and not due for an hour: nothing runs them
    jobs = [Job(id=new_job_id(), type="test.echo", owner="local", data={"i": i}, due_at=later)
            for i in range(12_000)]
    await asyncio.gather(*(store.create(job) for job in jobs))
    first, last = [job.id for job in jobs[:20]], [job.id for job in jobs[-20:]]
    snapshots: dict[str, int] = {}
    events: dict[str, list[dict[str, Any]]] = {}
    async with client.ws_connect("/api/ws") as ws:
        await ws.send_json({"op": "subscribe", "all": True})
        assert (await ws.receive_json())["event"] == "snapshot"
        # While the snapshots stream, jobs change: at the start (snapshot sent) and at the
        # end (most likely not yet) of the stream.
        for job_id in (*first, *last):
            response = await client.delete(f"/api/jobs/{job_id}")
            assert response.status == 200, await response.text()
        cancelled = set(first) | set(last)
        async with asyncio.timeout(60):
            while len(snapshots) + len(cancelled - snapshots.keys()) < len(jobs) or \
                    any(not any(e.get("status") == "cancelled" for e in events.get(j, ())) for j in cancelled):
                event = await ws.receive_json()
                if event["event"] == "snapshot":
                    job_id = event["job"]["id"]
                    assert job_id not in snapshots and job_id not in events, f"{job_id}: snapshot after its events"
                    snapshots[job_id] = event["job"]["seq"]
                else:
                    assert event["event"] == "status", event
                    seqs = [e["seq"] for e in events.get(event["jobId"], [])]
                    assert event["seq"] > max(seqs + [snapshots.get(event["jobId"], -1)])
                    events.setdefault(event["jobId"], []).append(event)
        await ws.send_json({"op": "ping"})
        assert await ws.receive_json() == {"event": "pong"}  # and nothing more was owed
    assert set(snapshots) | cancelled == {job.id for job in jobs}
    assert set(events) == cancelled


def _complete_during_the_read(connection: Any, job_id: str, gate: Path, published: threading.Event) -> tuple[Any, Any]:
    """Hooks for the store's reader connection: once the statement that reads `job_id` has
    begun (its snapshot of the database taken), let the job finish, and go on only once
    that finish is committed and published. The read then answers the state from before."""
    state = {"sql": "", "done": False}

    def trace(sql: str) -> None:
        state["sql"] = sql

    def progress() -> int:
        if not state["done"] and job_id in state["sql"] and "FROM jobs WHERE id =" in state["sql"]:
            state["done"] = True
            gate.touch()
            assert published.wait(20), "the job's completion was never published"
        return 0

    return trace, progress


@pytest.mark.parametrize("store_backend", ["sqlite"])  # it holds a read inside SQLite's own connection
async def test_a_job_that_finishes_while_the_subscription_reads_it_is_reported(start_server, tmp_path):
    client = await start_server()
    gate = tmp_path / "gate"
    job_id = await submit(client, "test.steps", {"n": 1, "gate": str(gate)})
    await wait_status(client, job_id, "running")
    reader = client.server.app[STORE].reader  # the real store's own connection, watched (a test hook)
    published = threading.Event()
    trace, progress = _complete_during_the_read(reader, job_id, gate, published)
    async with client.ws_connect("/api/ws") as observer, client.ws_connect("/api/ws") as ws:
        await observer.send_json({"op": "subscribe", "jobId": job_id})
        assert (await observer.receive_json())["job"]["status"] == "running"
        await reader.set_trace_callback(trace)
        await reader.set_progress_handler(progress, 1)
        try:
            await ws.send_json({"op": "subscribe", "jobId": job_id})
            done = (await ws_events_until(observer, job_id))[-1]
            published.set()
            snapshot = await ws.receive_json()
        finally:
            published.set()
            await reader.set_progress_handler(None, 1)
            await reader.set_trace_callback(None)
        assert snapshot["event"] == "snapshot"
        assert snapshot["job"]["status"] == "running"  # the read saw the job before it finished ...
        await ws.send_json({"op": "ping"})
        after = []
        while (event := await ws.receive_json())["event"] != "pong":
            after.append(event)
        # ... so the finish, published meanwhile, must follow it (before the pong), after
        # any progress of the job's last step that was published meanwhile too.
        assert after and after[-1] == {"event": "status", "jobId": job_id, "status": "completed",
                                       "job": done["job"], "seq": done["seq"]}, after
        assert all(e["event"] == "progress" for e in after[:-1]), after


async def test_unsubscribe_all_stops_it_and_single_job_subscriptions_stay(start_server, tmp_path):
    client = await start_server()
    gate = tmp_path / "gate"
    watched = await submit(client, "test.steps", {"n": 1, "gate": str(gate)})
    async with client.ws_connect("/api/ws") as ws:
        await ws.send_json({"op": "subscribe", "jobId": watched})
        assert (await ws.receive_json())["job"]["id"] == watched
        await ws.send_json({"op": "subscribe", "all": True})
        await ws.send_json({"op": "unsubscribe", "all": True})
        await ws.send_json({"op": "ping"})
        while (await ws.receive_json())["event"] != "pong":
            pass
        other = await submit(client, "test.echo", {"x": 1})  # seen by a subscribe all alone
        await wait_status(client, other, "completed")
        gate.touch()
        events = []
        async with asyncio.timeout(30):
            while not events or events[-1].get("status") != "completed":
                events.append(await ws.receive_json())
        await ws.send_json({"op": "ping"})
        assert await ws.receive_json() == {"event": "pong"}
    assert {e["jobId"] for e in events} == {watched}, events


async def _stalled_on_a_chatty_job(client: TestClient, gate: Path) -> RawClient:
    job_id = await submit(client, "test.chatty", {"gate": str(gate)})
    stalled = await asyncio.to_thread(RawClient, client.port)
    stalled.send_json({"op": "subscribe", "jobId": job_id})  # ... and never reads again
    await eventually(_subscribers(client, 1), what="the subscription")
    return stalled


async def test_a_stalled_client_dropped_by_the_heartbeat_is_let_go(start_server, tmp_path):
    # Under the unsent-bytes bound (progress is coalesced: it costs little), so the heartbeat
    # is what notices it; then nothing may keep its connection open.
    client = await start_server(limits={"ws_heartbeat_s": 1.0})
    stalled = await _stalled_on_a_chatty_job(client, tmp_path / "gate")
    try:
        port = stalled.sock.getsockname()[1]
        await eventually(_subscribers(client, 0), what="the heartbeat to drop the stalled client")
        await eventually(lambda: asyncio.sleep(0, not _holds_connection_from(port)),
                         what="the server to let go of the stalled connection")
    finally:
        stalled.sock.close()
        (tmp_path / "gate").touch()


async def test_shutdown_does_not_wait_for_a_stalled_client(start_server, tmp_path):
    client = await start_server()
    stalled = await _stalled_on_a_chatty_job(client, tmp_path / "gate")
    try:
        port = stalled.sock.getsockname()[1]

        async def backed_up() -> bool:  # the kernel takes no more: the server holds the rest
            return any(s._req.transport.get_write_buffer_size() for s in client.server.app[SOCKETS])

        await eventually(backed_up, what="the stalled client's connection to back up")
        async with asyncio.timeout(20):  # a guard against hanging, not a speed check
            await client.close()
        assert not _holds_connection_from(port)
    finally:
        stalled.sock.close()
        (tmp_path / "gate").touch()


def _seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] if e["event"] != "snapshot" else e["job"]["seq"] for e in events]


@pytest.mark.parametrize("store_backend", ["sqlite"])  # the hub's coalescing, at the event rate of SQLite's batches
async def test_readers_that_keep_up_get_every_event_while_a_stalled_one_gets_them_coalesced(start_server, tmp_path):
    client = await start_server()
    hub = client.server.app[HUB]
    gate = tmp_path / "gate"
    job_id = await submit(client, "test.chatty", {"gate": str(gate), "size": 20_000})
    await wait_status(client, job_id, "running")  # every event after the snapshot is progress, until the end

    def completed(event: dict[str, Any]) -> bool:
        return event.get("status") == "completed"

    async def keep_reading(ws: Any) -> list[dict[str, Any]]:
        events = [await ws.receive_json()]
        while not completed(events[-1]):
            events.append(await ws.receive_json())
        return events

    readers = [await client.ws_connect("/api/ws") for _ in range(5)]
    stalled = await asyncio.to_thread(RawClient, client.port)
    try:
        for ws in readers:
            await ws.send_json({"op": "subscribe", "jobId": job_id})
        reading = [asyncio.get_running_loop().create_task(keep_reading(ws)) for ws in readers]
        stalled.send_json({"op": "subscribe", "jobId": job_id})  # ... and reads nothing for now

        def stalled_is_behind() -> bool:  # its events wait in its outbox: it is no longer written at once
            return any(subscriber._queue for subscriber in hub._by_job.get(job_id, ()))

        await eventually(lambda: asyncio.sleep(0, stalled_is_behind()), what="the stalled reader to fall behind")
        behind_at = hub.published
        await eventually(lambda: asyncio.sleep(0, hub.published > behind_at + 200), what="200 more events")
        gate.touch()
        async with asyncio.timeout(30):
            kept_up = await asyncio.gather(*reading)
        late = await asyncio.to_thread(stalled.read_events_until, completed)
    finally:
        gate.touch()
        stalled.sock.close()
        for ws in readers:
            await ws.close()
    for events in kept_up:
        assert events[0]["event"] == "snapshot"
        seqs = _seqs(events)
        assert seqs == list(range(seqs[0], seqs[-1] + 1))  # every event, in order, none coalesced
        assert all(e["event"] == "progress" for e in events[1:-1]) and completed(events[-1]), \
            [(e["event"], e.get("status"), e.get("seq")) for e in events if e["event"] != "progress"][:8]
    final = kept_up[0][-1]
    assert late[0]["event"] == "snapshot" and late[-1] == final  # the final status all the same
    seqs = _seqs(late)
    assert seqs == sorted(set(seqs))  # in order, never going back
    assert len(seqs) < seqs[-1] - seqs[0] + 1 - 100  # the progress it could not take was coalesced


async def test_a_client_that_negotiated_compression_reads_the_frames_written_at_once(start_server, tmp_path):
    client = await start_server()
    hold, gate = tmp_path / "hold", tmp_path / "gate"
    job_id = await submit(client, "test.steps", {"n": 3, "hold": str(hold), "gate": str(gate)})
    await wait_status(client, job_id, "running")
    async with client.ws_connect("/api/ws", compress=15) as ws:
        assert ws.compress == 15  # permessage-deflate: aiohttp's own frames are compressed
        await ws.send_json({"op": "subscribe", "jobId": job_id})
        snapshot = await ws.receive_json()  # written by the connection's writer
        assert snapshot["event"] == "snapshot"
        hold.touch()
        gate.touch()
        events = await ws_events_until(ws, job_id)  # written by the hub, uncompressed
        assert [e["event"] for e in events[:-1]] == ["progress"] * (len(events) - 1)
        assert events[-2]["progress"] == 100 and events[-1]["status"] == "completed"
        assert _seqs(events) == list(range(snapshot["job"]["seq"] + 1, snapshot["job"]["seq"] + len(events) + 1))
        await ws.send_json({"op": "ping"})  # compressed again, after them: the stream is intact
        assert await ws.receive_json() == {"event": "pong"}
        await ws.send_json({"op": "subscribe", "jobId": job_id})
        assert (await ws.receive_json())["job"]["status"] == "completed"
