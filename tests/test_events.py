"""The events hub and a connection's outbox, without a server: ordering, coalescing,
snapshots, overflow."""
from __future__ import annotations

import orjson
import pytest

from offload.service.events import EventHub, Overflow, Subscriber
from offload.service.models import Job, JobStatus


def job(seq: int, status: JobStatus = JobStatus.RUNNING, job_id: str = "job_a", owner: str = "u") -> Job:
    return Job(id=job_id, type="t", owner=owner, data=None, status=status, seq=seq)


async def drain(subscriber: Subscriber) -> list[dict]:
    out = []
    while subscriber._queue:
        out.append(orjson.loads(await subscriber.next()))
    return out


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
    sub.hold()
    hub.watch_job(sub, "job_a")
    hub.progress("job_a", "u", 10, None, 3)   # already reflected by the snapshot
    hub.progress("job_a", "u", 20, None, 5)   # newer: must follow it
    sub.release([job(4)])
    events = await drain(sub)
    assert [e["event"] for e in events] == ["snapshot", "progress"]
    assert events[0]["job"]["seq"] == 4 and events[1]["seq"] == 5


async def test_subscriber_only_sees_its_owners_jobs():
    hub, mine, other = EventHub(), Subscriber("u"), Subscriber("v")
    hub.watch_all(mine)
    hub.watch_all(other)
    hub.status(job(1, owner="u"))
    assert len(await drain(mine)) == 1
    assert await drain(other) == []


async def test_slow_client_overflows_on_status_events_only():
    hub, sub = EventHub(), Subscriber("u", limit=3)
    hub.watch_all(sub)
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
    hub.watch_all(sub)
    for i in range(100):
        hub.status(job(1, job_id=f"job_{i}"))
        hub.status(job(2, JobStatus.COMPLETED, job_id=f"job_{i}"))
    assert len(await drain(sub)) == 200
    assert sub._last_seq == {}


def test_times_are_iso_utc_with_milliseconds():
    from offload.service.models import iso

    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(1764345600123) == "2025-11-28T16:00:00.123Z"
    assert iso(951782400999) == "2000-02-29T00:00:00.999Z"
    assert iso(None) is None
