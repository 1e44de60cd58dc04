"""The events hub and a connection's outbox, without a server: ordering, coalescing,
snapshots, overflow."""
from __future__ import annotations

import orjson
import pytest

from offload.service.events import EventHub, Overflow, Subscriber
from offload.service.models import Job, JobStatus
from tests.conftest import both_backends as store_backend  # noqa: F401  (each test on SQLite and on PostgreSQL)


def job(seq: int, status: JobStatus = JobStatus.RUNNING, job_id: str = "job_a", owner: str = "u") -> Job:
    return Job(id=job_id, type="t", owner=owner, data=None, status=status, seq=seq)


async def drain(subscriber: Subscriber) -> list[dict]:
    out = []
    while subscriber._queue:
        payload = await subscriber.next()
        assert payload is not None
        out.append(orjson.loads(payload))
    return out


def watch_all(hub: EventHub, subscriber: Subscriber, *unfinished: Job) -> None:
    """`subscribe all` with its snapshot stream answered at once, in one page."""
    hub.watch_all(subscriber)
    assert subscriber.stream is not None
    subscriber.add_page(subscriber.stream, unfinished, None)


async def test_progress_is_coalesced_in_place_and_status_kept_in_order():
    hub, sub = EventHub(), Subscriber("u")
    hub.watch_job(sub, "job_a")
    hub.status(job(1))
    for seq, percent in ((2, 10), (3, 20), (4, 30)):
        hub.progress("job_a", "u", percent, f"at {percent}", seq)
    hub.status(job(5, JobStatus.COMPLETED))
    events = await drain(sub)
    assert [(e["event"], e.get("progress"), e["seq"]) for e in events] == [
        ("status", None, 1), ("progress", 30, 4), ("status", None, 5)]


async def test_snapshot_first_then_only_newer_events():
    hub, sub = EventHub(), Subscriber("u")
    sub.hold("job_a")
    hub.watch_job(sub, "job_a")
    hub.progress("job_a", "u", 10, None, 3)   # already reflected by the snapshot
    hub.progress("job_a", "u", 20, None, 5)   # newer: must follow it
    sub.release("job_a", job(4))
    events = await drain(sub)
    assert [e["event"] for e in events] == ["snapshot", "progress"]
    assert events[0]["job"]["seq"] == 4 and events[1]["seq"] == 5


async def test_subscriber_only_sees_its_owners_jobs():
    hub, mine, other = EventHub(), Subscriber("u"), Subscriber("v")
    watch_all(hub, mine)
    watch_all(hub, other)
    hub.status(job(1, owner="u"))
    assert len(await drain(mine)) == 1
    assert await drain(other) == []


async def test_slow_client_overflows_on_status_events_only():
    hub, sub = EventHub(), Subscriber("u", limit=3)
    watch_all(hub, sub)
    for seq in range(1, 1000):
        hub.progress("job_a", "u", seq % 100, None, seq)  # one slot, however many
    assert not sub.overflowed
    for i in range(4):
        hub.status(job(1, job_id=f"job_{i}"))
    assert sub.overflowed
    with pytest.raises(Overflow):
        await sub.next()


async def test_subscribe_all_forgets_finished_jobs():
    hub, sub = EventHub(), Subscriber("u")
    watch_all(hub, sub)
    for i in range(100):
        hub.status(job(1, job_id=f"job_{i}"))
        hub.status(job(2, JobStatus.COMPLETED, job_id=f"job_{i}"))
    assert len(await drain(sub)) == 200
    assert sub._last_seq == {}


async def test_subscribe_all_pages_snapshots_and_holds_each_jobs_events_until_its_snapshot():
    hub, sub = EventHub(), Subscriber("u")
    hub.watch_all(sub)
    stream = sub.stream
    assert stream is not None and await sub.next() is None  # the writer is asked for a page
    hub.progress("job_b", "u", 10, None, 3)
    hub.progress("job_b", "u", 20, None, 4)                   # coalesced while held
    hub.status(job(6, JobStatus.COMPLETED, job_id="job_c"))   # finished before its page
    hub.status(job(2, job_id="job_a"))                        # older than its snapshot
    sub.add_page(stream, [job(2, job_id="job_a")], "page 2")
    assert [orjson.loads(payload)["job"]["id"] for _, payload in sub._queue] == ["job_a"]  # its snapshot alone
    hub.progress("job_a", "u", 50, None, 3)                   # job_a's snapshot is out: flows
    sub.add_page(stream, [job(3, job_id="job_b")], None)      # the last page
    assert sub.stream is None
    events = [(e["event"], e.get("jobId") or e["job"]["id"], e.get("seq", e.get("job", {}).get("seq")))
              for e in await drain(sub)]
    assert events == [("snapshot", "job_a", 2), ("progress", "job_a", 3), ("snapshot", "job_b", 3), ("progress", "job_b", 4),
                      ("status", "job_c", 6)]
    assert sub.queued_bytes == 0


async def test_outbox_counts_the_bytes_it_holds():
    hub, sub = EventHub(), Subscriber("u")
    hub.watch_job(sub, "job_a")
    hub.status(job(1))
    first = sub.queued_bytes
    assert first > 0
    hub.progress("job_a", "u", 10, "x" * 1000, 2)
    hub.progress("job_a", "u", 20, None, 3)  # replaces the one before in place
    assert first < sub.queued_bytes < first + 200
    await drain(sub)
    assert sub.queued_bytes == 0


async def test_unsubscribe_all_keeps_single_job_subscriptions():
    hub, sub = EventHub(), Subscriber("u")
    hub.watch_job(sub, "job_a")
    watch_all(hub, sub)
    hub.unwatch_all(sub)
    hub.status(job(1, job_id="job_a"))
    hub.status(job(1, job_id="job_b"))
    assert [e["jobId"] for e in await drain(sub)] == ["job_a"]
    assert hub.subscriber_count == 1


def test_times_are_iso_utc_with_milliseconds():
    from offload.service.models import iso

    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(1764345600123) == "2025-11-28T16:00:00.123Z"
    assert iso(951782400999) == "2000-02-29T00:00:00.999Z"
    assert iso(None) is None


class Connection:
    """A subscriber's direct write, as a connection offers it: takes frames while it keeps
    up (`behind` False), declines them while it is behind."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.frames: list[bytes] = []
        self.behind = False
        subscriber.direct = self.offer

    def offer(self, frame: bytes) -> bool:
        if self.behind:
            return False
        self.frames.append(frame)
        return True

    def events(self) -> list[dict]:
        out = []
        for frame in self.frames:
            assert frame[0] == 0x81  # one final text frame, unmasked
            size, start = frame[1], 2
            if size == 126:
                size, start = int.from_bytes(frame[2:4], "big"), 4
            elif size == 127:
                size, start = int.from_bytes(frame[2:10], "big"), 10
            assert len(frame) == start + size
            out.append(orjson.loads(frame[start:]))
        return out


def kinds(events: list[dict]) -> list[tuple[str, int]]:
    return [(e["event"], e["seq"] if "seq" in e else e["job"]["seq"]) for e in events]


async def test_a_subscriber_that_keeps_up_gets_every_event_written_at_once_and_nothing_queued():
    hub, sub = EventHub(), Subscriber("u")
    connection = Connection(sub)
    hub.watch_job(sub, "job_a")
    hub.status(job(1))
    for seq in range(2, 6):
        hub.progress("job_a", "u", seq * 10, None, seq)
    hub.status(job(6, JobStatus.COMPLETED))
    assert kinds(connection.events()) == [("status", 1), ("progress", 2), ("progress", 3), ("progress", 4),
                                          ("progress", 5), ("status", 6)]
    assert not sub._queue and sub.queued_bytes == 0


async def test_one_event_is_framed_once_for_every_subscriber():
    hub = EventHub()
    subscribers = [Subscriber("u") for _ in range(3)]
    connections = [Connection(sub) for sub in subscribers]
    for sub in subscribers:
        hub.watch_job(sub, "job_a")
    hub.progress("job_a", "u", 10, "x" * 200, 2)  # a 2-byte length in its header
    frames = [connection.frames[0] for connection in connections]
    assert frames[0] is frames[1] is frames[2]
    assert connections[0].events()[0]["message"] == "x" * 200


async def test_a_subscriber_that_falls_behind_queues_and_coalesces_and_catches_up_in_order():
    hub, sub = EventHub(), Subscriber("u")
    connection = Connection(sub)
    hub.watch_job(sub, "job_a")
    hub.progress("job_a", "u", 10, None, 2)
    connection.behind = True
    hub.progress("job_a", "u", 20, None, 3)
    hub.status(job(4))
    hub.progress("job_a", "u", 30, None, 5)
    hub.progress("job_a", "u", 40, None, 6)  # coalesced with 5, while it is behind
    connection.behind = False
    # It keeps up again, but what is queued goes first: nothing is written past it.
    hub.progress("job_a", "u", 50, None, 7)
    hub.status(job(8, JobStatus.COMPLETED))
    assert kinds(connection.events()) == [("progress", 2)]
    assert kinds(await drain(sub)) == [("progress", 3), ("status", 4), ("progress", 7), ("status", 8)]
    hub.progress("job_b", "u", 10, None, 1)  # not watched
    hub.watch_job(sub, "job_b")
    hub.progress("job_b", "u", 20, None, 2)  # the outbox is empty again: written at once
    assert kinds(connection.events()) == [("progress", 2), ("progress", 2)]


async def test_a_final_status_declined_by_a_connection_behind_is_queued_not_lost():
    hub, sub = EventHub(), Subscriber("u")
    connection = Connection(sub)
    hub.watch_job(sub, "job_a")
    connection.behind = True
    hub.status(job(9, JobStatus.FAILED))
    assert kinds(await drain(sub)) == [("status", 9)]
    assert connection.frames == []


async def test_events_of_a_job_being_read_wait_for_its_snapshot_even_when_the_connection_keeps_up():
    hub, sub = EventHub(), Subscriber("u")
    connection = Connection(sub)
    sub.hold("job_a")
    hub.watch_job(sub, "job_a")
    hub.progress("job_a", "u", 10, None, 3)  # reflected by the snapshot
    hub.progress("job_a", "u", 20, None, 5)
    assert connection.frames == []
    sub.release("job_a", job(4))
    hub.progress("job_a", "u", 30, None, 6)  # behind the snapshot still queued
    assert connection.frames == []
    assert kinds(await drain(sub)) == [("snapshot", 4), ("progress", 6)]  # 5, then 6 in its place
    hub.progress("job_a", "u", 40, None, 7)
    assert kinds(connection.events()) == [("progress", 7)]


async def test_an_overflowed_subscriber_is_written_nothing_more():
    hub, sub = EventHub(), Subscriber("u", limit=2)
    connection = Connection(sub)
    watch_all(hub, sub)
    connection.behind = True
    for i in range(3):
        hub.status(job(1, job_id=f"job_{i}"))
    assert sub.overflowed
    sub.discard()  # its connection is being closed: the outbox is empty, yet nothing is written
    connection.behind = False
    hub.status(job(1, job_id="job_x"))
    assert connection.frames == []
