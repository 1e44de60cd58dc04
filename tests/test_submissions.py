"""Admission of new jobs: one pending-count cache serves the global and the per-user cap
(re-read from the store at most every PENDING_FRESH seconds, counted up locally between),
on a real SQLite store."""
from __future__ import annotations

from offload.service.limits import PENDING_FRESH, PendingCounts
from offload.service.models import Job
from offload.service.store.sqlite import SQLiteStore


async def add_job(store: SQLiteStore, n: int, owner: str) -> None:
    await store.create(Job(id=f"job_pending{n}", type="test.echo", owner=owner, data={}))


async def test_one_cache_counts_all_and_each_owner_between_reads(store: SQLiteStore) -> None:
    now = [100.0]
    counts = PendingCounts(lambda: now[0])
    await add_job(store, 1, "a")
    await add_job(store, 2, "b")
    assert await counts.count(store) == 2 and await counts.count(store, "a") == 1

    await add_job(store, 3, "a")  # stored behind the cache's back: not seen until the next read
    assert await counts.count(store) == 2 and await counts.count(store, "a") == 1
    counts.add("a")  # what a submission does after storing: both counts go up
    assert await counts.count(store) == 3 and await counts.count(store, "a") == 2
    assert await counts.count(store, "b") == 1

    await add_job(store, 4, "b")
    now[0] += PENDING_FRESH + 0.01  # stale: read again
    assert await counts.count(store) == 4 and await counts.count(store, "b") == 2

    await add_job(store, 5, "b")
    counts.forget("b")  # a cancel: that owner's count is read afresh at once
    assert await counts.count(store, "b") == 3 and await counts.count(store) == 4
