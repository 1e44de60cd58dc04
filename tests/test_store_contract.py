"""The store contract (service/store/base.py), one suite for every backend.

Each test runs against each backend in `BACKENDS` through the `store` fixture, on a real
database. A new backend is added to the list and must pass the suite unchanged; nothing
here reaches below the public `Store` methods and its change sink.
"""
from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from offload.service.models import Job, JobStatus, Priority, new_job_id, now_ms
from offload.service.store import IdempotencyMismatch, Store, open_store
from offload.service.store.base import ProgressChange, StoreChange
from offload.service.store.sqlite import SCHEMA_VERSION
from tests.conftest import POSTGRES_URL

#: Backend ids.
BACKENDS = ["sqlite", "postgres"]
LEASE = 30_000
LOST = {"type": "WorkerLost", "message": "the node stopped"}


def _url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'contract.db'}"
    if backend == "postgres":  # a fresh schema of its own each time (the `store` fixture)
        return POSTGRES_URL
    raise ValueError(backend)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    # PostgreSQL: a fresh schema of the test's own (conftest's `pg_schema`, dropped after it)
    options = {"schema": request.getfixturevalue("pg_schema")} if request.param == "postgres" else {}
    opened = open_store(_url(request.param, tmp_path), **options)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


class Heard:
    """Everything the change sink emits, in order."""

    def __init__(self, store: Store) -> None:
        self.changes: list[StoreChange] = []
        self.stop = store.changes.subscribe(self.changes.append)

    def of(self, job_id: str) -> list[StoreChange]:
        return [c for c in self.changes if (c.id if isinstance(c, Job) else c.job_id) == job_id]


def new(owner: str = "u", **fields: Any) -> Job:
    return Job(new_job_id(), fields.pop("type", "t"), owner, fields.pop("data", {}), **fields)


async def make(store: Store, owner: str = "u", **fields: Any) -> Job:
    job, created = await store.create(new(owner, **fields))
    assert created
    return job


async def running(store: Store, owner: str = "u", node: str = "n1", **fields: Any) -> Job:
    job = await make(store, owner, **fields)
    (claimed,) = await store.claim(node, now_ms(), LEASE, types=[job.type])
    assert claimed.id == job.id
    return claimed


# ---- create, get, idempotency ------------------------------------------------------------------
async def test_create_stores_a_pending_job_that_get_returns_to_its_owner_only(store: Store) -> None:
    job = await make(store, "alice", data={"x": [1, "ü"]}, priority=Priority.HIGH)
    assert (job.status, job.seq, job.attempts, job.cancel_requested) == (JobStatus.PENDING, 0, 0, False)
    assert await store.get(job.id) == job == await store.get(job.id, "alice")
    assert await store.get(job.id, "bob") is None
    assert await store.get("job_unknown") is None


async def test_idempotency_key_answers_the_first_job_per_owner(store: Store) -> None:
    first, created = await store.create(new("alice", idempotency_key="k"), "hash-1")
    assert created
    again, created = await store.create(new("alice", idempotency_key="k"), "hash-1")
    assert (again, created) == (first, False)
    with pytest.raises(IdempotencyMismatch) as mismatch:
        await store.create(new("alice", idempotency_key="k"), "hash-2")
    assert mismatch.value.job == first
    other, created = await store.create(new("bob", idempotency_key="k"), "hash-1")
    assert created and other.id != first.id


# ---- claims ------------------------------------------------------------------------------------
async def test_create_many_stores_all_in_one_commit_and_emits_them_in_order(store: Store) -> None:
    heard = Heard(store)
    earlier, _ = await store.create(new("alice", idempotency_key="old"), "hash-old")
    jobs = [new("alice", data={"n": n}) for n in range(5)]
    keyed = [new("alice", idempotency_key="old"), new("alice", idempotency_key="twice"),
             new("alice", idempotency_key="twice")]
    answers = await store.create_many([(job, None) for job in jobs] + [(keyed[0], "hash-old"),
                                       (keyed[1], "hash-2"), (keyed[2], "hash-2")])
    # one answer per job, in order; a key used before (also earlier in the same call) answers that job
    assert [(job.id, created) for job, created in answers[:5]] == [(job.id, True) for job in jobs]
    assert [(job.id, created) for job, created in answers[5:]] == [
        (earlier.id, False), (keyed[1].id, True), (keyed[1].id, False)]
    # emitted before the call returned, in the order given, once each
    assert [c.id for c in heard.changes if isinstance(c, Job)] == [earlier.id, *(j.id for j in jobs), keyed[1].id]
    for job, _ in answers:
        assert await store.get(job.id, "alice") == job
    claimed = await store.claim("n1", now_ms(), LEASE, types=["t"], limit=20)
    assert {j.id: j.data for j in claimed if j.id in {job.id for job in jobs}} == {j.id: j.data for j in jobs}
    assert await store.create_many([]) == []


async def test_create_many_is_all_or_none_and_a_clash_spares_the_writes_beside_it(store: Store) -> None:
    first, _ = await store.create(new("alice", idempotency_key="k"), "hash-1")
    heard = Heard(store)
    before, clash, after = new("alice"), new("alice", idempotency_key="k"), new("alice")
    beside = new("bob")
    # queued together, so that a backend with group commit writes them in one transaction
    results = await asyncio.gather(store.create_many([(before, None), (clash, "hash-2"), (after, None)]),
                                   store.create(beside), return_exceptions=True)
    refused, (kept, created) = results
    assert isinstance(refused, IdempotencyMismatch) and refused.index == 1 and refused.job.id == first.id
    assert await store.get(before.id) is None and await store.get(after.id) is None
    assert created and await store.get(beside.id) == kept
    assert [c.id for c in heard.changes if isinstance(c, Job)] == [beside.id]  # nothing of the refused call
    assert await store.count_pending_of("alice") == 1


async def test_claim_order_is_priority_then_due_time_then_submission(store: Store) -> None:
    now = now_ms()
    low = await make(store, priority=Priority.LOW, due_at=now - 3000)
    late = await make(store, priority=Priority.HIGH, due_at=now - 1000)
    early = await make(store, priority=Priority.HIGH, due_at=now - 2000)
    fifo_a = await make(store, priority=Priority.MEDIUM, due_at=now - 500)
    fifo_b = await make(store, priority=Priority.MEDIUM, due_at=now - 500)
    future = await make(store, priority=Priority.HIGH, due_at=now + 3_600_000)
    claimed = await store.claim("n1", now, LEASE, limit=10)
    assert [j.id for j in claimed] == [early.id, late.id, fifo_a.id, fifo_b.id, low.id]
    assert all((j.status, j.attempts, j.lease_owner) == (JobStatus.RUNNING, 1, "n1") for j in claimed)
    assert (await store.get(future.id)).status is JobStatus.PENDING  # type: ignore[union-attr]
    assert await store.next_due(now) == future.due_at


async def test_claim_shares_slots_between_owners(store: Store) -> None:
    backlog = [await make(store, "alice") for _ in range(4)]
    latecomer = await make(store, "bob")
    claimed = await store.claim("n1", now_ms(), LEASE, limit=2)
    assert {j.owner for j in claimed} == {"alice", "bob"}
    assert latecomer.id in {j.id for j in claimed} and backlog[0].id in {j.id for j in claimed}


async def test_claim_respects_the_per_owner_cap(store: Store) -> None:
    for _ in range(3):
        await make(store, "alice")
    claimed = await store.claim("n1", now_ms(), LEASE, limit=3, per_owner=2)
    assert len(claimed) == 2
    assert await store.claim("n1", now_ms(), LEASE, limit=3, per_owner=2) == []


async def test_a_job_is_claimed_once(store: Store) -> None:
    await make(store)
    first, second = await asyncio.gather(store.claim("n1", now_ms(), LEASE), store.claim("n2", now_ms(), LEASE))
    assert len(first) + len(second) == 1


# ---- fencing -----------------------------------------------------------------------------------
async def test_a_stale_attempt_can_neither_complete_nor_fail_nor_report(store: Store) -> None:
    heard = Heard(store)
    stale = await running(store, max_retries=3)
    now = now_ms()
    (rescued,) = await store.rescue_expired(now, LOST, expired_before=now + LEASE + 1)
    assert rescued.status is JobStatus.PENDING
    (current,) = await store.claim("n2", now_ms(), LEASE)
    assert current.attempts == stale.attempts + 1
    store.set_progress(stale, 50, "stale")
    assert await store.complete(stale, {"value": "stale"}, now_ms()) is None
    assert await store.fail(stale, {"type": "E", "message": "m"}, now_ms(), None) is None
    assert await store.release(stale, now_ms()) is None
    assert await store.cancel_running(stale, now_ms()) is None
    done = await store.complete(current, {"value": "current"}, now_ms())
    assert done is not None and done.result == {"value": "current"} and done.progress == 100
    assert not [c for c in heard.of(stale.id) if isinstance(c, ProgressChange)]
    assert await store.complete(current, {"value": "twice"}, now_ms()) is None  # one ending only


async def test_progress_takes_the_next_seq_and_is_emitted(store: Store) -> None:
    heard = Heard(store)
    job = await running(store)
    committed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    store.set_progress(job, 40, "rendering", on_commit=committed.set_result)
    seq = await asyncio.wait_for(committed, 10)
    assert seq == job.seq + 1
    (progress,) = [c for c in heard.of(job.id) if isinstance(c, ProgressChange)]
    assert (progress.progress, progress.message, progress.seq, progress.owner) == (40, "rendering", seq, "u")
    stored = await store.get(job.id)
    assert stored is not None and (stored.progress, stored.message, stored.seq) == (40, "rendering", seq)


async def test_progress_queued_before_an_ending_is_written_before_it(store: Store) -> None:
    heard = Heard(store)
    job = await running(store)
    store.set_progress(job, 70, "almost")
    done = await store.complete(job, {"value": 1}, now_ms())
    assert done is not None
    kinds = [(type(c).__name__, c.seq) for c in heard.of(job.id)]
    assert kinds[-2:] == [("ProgressChange", job.seq + 1), ("Job", job.seq + 2)], kinds


# ---- reservations ------------------------------------------------------------------------------
async def test_reservation_is_not_a_change_and_is_skipped_by_claims(store: Store) -> None:
    job = await make(store)
    heard = Heard(store)
    (held,) = await store.reserve("n1", now_ms(), LEASE, ["t"], 5)
    assert (held.id, held.status, held.seq, held.lease_owner) == (job.id, JobStatus.PENDING, 0, "n1")
    assert heard.changes == []
    assert await store.claim("n2", now_ms(), LEASE) == []
    started = await store.start_reserved(held, now_ms(), LEASE)
    assert started is not None and (started.status, started.attempts, started.seq) == (JobStatus.RUNNING, 1, 1)
    assert heard.changes == [started]


async def test_progress_right_after_a_reserved_start_is_kept(store: Store) -> None:
    await make(store)
    (held,) = await store.reserve("n1", now_ms(), LEASE, ["t"], 1)
    start = store.start_reserved(held, now_ms(), LEASE)  # queued, not yet committed
    attempt = dataclasses.replace(held, status=JobStatus.RUNNING, attempts=1)
    committed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    store.set_progress(attempt, 25, "first step", on_commit=committed.set_result)
    started = await start
    assert started is not None
    assert await asyncio.wait_for(committed, 10) == started.seq + 1


async def test_unreserved_and_lapsed_reservations_are_claimable_again(store: Store) -> None:
    first, second = await make(store), await make(store)
    now = now_ms()
    await store.reserve("n1", now, LEASE, ["t"], 2)
    await store.unreserve("n1", [first.id])
    assert [j.id for j in await store.claim("n2", now, LEASE, limit=2)] == [first.id]
    await store.renew_leases("n2", now + 10 * LEASE)  # n2 is alive; n1's lease runs out
    await store.rescue_expired(now, LOST, expired_before=now + LEASE + 1)
    assert [j.id for j in await store.claim("n2", now, LEASE, limit=2)] == [second.id]


# ---- rescue ------------------------------------------------------------------------------------
async def test_rescue_returns_an_expired_job_to_pending_or_fails_it_when_out_of_attempts(store: Store) -> None:
    heard = Heard(store)
    retry = await running(store, max_retries=1)
    last = await running(store, max_retries=0)
    alive = await running(store, node="n2")
    now = now_ms()
    await store.renew_leases("n2", now + 10 * LEASE)
    rescued = {j.id: j for j in await store.rescue_expired(now, LOST, expired_before=now + LEASE + 1)}
    assert set(rescued) == {retry.id, last.id}
    assert (rescued[retry.id].status, rescued[retry.id].due_at, rescued[retry.id].error) == (JobStatus.PENDING, now, LOST)
    assert (rescued[last.id].status, rescued[last.id].error) == (JobStatus.FAILED, LOST)
    assert all(j.seq == 2 and j.lease_owner is None for j in rescued.values())
    assert (await store.get(alive.id)).status is JobStatus.RUNNING  # type: ignore[union-attr]
    assert [c for c in heard.changes if isinstance(c, Job) and c.seq == 2] == list(rescued.values())


async def test_rescue_of_a_cancel_requested_job_cancels_it(store: Store) -> None:
    job = await running(store, max_retries=3)
    await store.request_cancel(job.id, None)
    now = now_ms()
    (rescued,) = await store.rescue_expired(now, LOST, expired_before=now + LEASE + 1)
    assert (rescued.status, rescued.completed_at, rescued.cancel_requested) == (JobStatus.CANCELLED, now, True)


# ---- cancel requests ---------------------------------------------------------------------------
async def test_cancel_pending_is_immediate_and_fenced_by_owner(store: Store) -> None:
    job = await make(store, "alice")
    assert await store.cancel_pending(job.id, "bob", now_ms()) is None
    cancelled = await store.cancel_pending(job.id, "alice", now_ms())
    assert cancelled is not None and (cancelled.status, cancelled.seq) == (JobStatus.CANCELLED, 1)
    assert await store.request_cancel(job.id, "alice") is None  # not running


async def test_cancel_request_is_a_change_of_the_running_job(store: Store) -> None:
    heard = Heard(store)
    job = await running(store, "alice")
    assert await store.request_cancel(job.id, "bob") is None
    requested = await store.request_cancel(job.id, "alice")
    assert requested is not None
    assert (requested.status, requested.cancel_requested, requested.seq) == (JobStatus.RUNNING, True, job.seq + 1)
    assert heard.changes[-1] == requested == await store.get(job.id)
    assert requested.to_wire()["cancelRequested"] is True


@pytest.mark.parametrize("ending", ["retry", "fail", "release"])
async def test_an_attempt_ending_while_cancel_is_requested_is_cancelled(store: Store, ending: str) -> None:
    job = await running(store, max_retries=3)
    await store.request_cancel(job.id, None)
    now = now_ms()
    error = {"type": "E", "message": "m"}
    final = (await store.fail(job, error, now, now + 10) if ending == "retry"
             else await store.fail(job, error, now, None) if ending == "fail" else await store.release(job, now))
    assert final is not None and (final.status, final.completed_at) == (JobStatus.CANCELLED, now)


async def test_a_completion_wins_over_a_cancel_request(store: Store) -> None:
    job = await running(store)
    await store.request_cancel(job.id, None)
    done = await store.complete(job, {"value": 1}, now_ms())
    assert done is not None and done.status is JobStatus.COMPLETED


# ---- the change sink ---------------------------------------------------------------------------
async def test_every_change_is_emitted_in_commit_order_with_its_seq_before_the_write_returns(store: Store) -> None:
    heard, second = Heard(store), Heard(store)
    job = await make(store)
    assert heard.changes == [job]  # already heard when `create` returned
    (claimed,) = await store.claim("n1", now_ms(), LEASE)
    committed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    store.set_progress(claimed, 50, None, on_commit=committed.set_result)
    await committed
    done = await store.complete(claimed, {"value": 1}, now_ms())
    seqs = [(c.status.value if isinstance(c, Job) else "progress", c.seq) for c in heard.changes]
    assert seqs == [("pending", 0), ("running", 1), ("progress", 2), ("completed", 3)]
    assert heard.changes[-1] == done and second.changes == heard.changes
    second.stop()
    await store.cancel_pending((await make(store)).id, None, now_ms())
    assert len(second.changes) == 4 and len(heard.changes) == 6


async def test_a_failing_listener_does_not_stop_the_others(store: Store) -> None:
    def broken(change: StoreChange) -> None:
        raise RuntimeError("listener bug")

    store.changes.subscribe(broken)
    heard = Heard(store)
    job = await make(store)
    assert heard.changes == [job]


# ---- retry ----------------------------------------------------------------------------------------
async def test_retry_makes_a_failed_or_cancelled_job_pending_again_as_new_under_its_id(store: Store) -> None:
    heard = Heard(store)
    job = await running(store, "alice", max_retries=0, data={"kept": [1]})
    failed = await store.fail(job, {"type": "E", "message": "m"}, now_ms(), None)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert await store.retry(job.id, "bob", now_ms()) is None  # owner fenced
    now = now_ms() + 5
    retried = await store.retry(job.id, "alice", now)
    assert retried is not None and retried.id == job.id
    assert (retried.status, retried.attempts, retried.error, retried.result, retried.progress) == (
        JobStatus.PENDING, 0, None, None, 0)
    assert (retried.started_at, retried.completed_at, retried.due_at, retried.seq) == (None, None, now, failed.seq + 1)
    assert (retried.created_at, retried.max_retries) == (job.created_at, job.max_retries)
    assert heard.changes[-1] == retried == await store.get(job.id)
    (again,) = await store.claim("n1", now, LEASE)
    assert (again.id, again.attempts, again.data) == (job.id, 1, job.data)

    cancelled = await store.cancel_pending((await make(store, "alice", cancel_requested=False)).id, "alice", now_ms())
    assert cancelled is not None
    back = await store.retry(cancelled.id, None, now_ms())
    assert back is not None and back.status is JobStatus.PENDING and not back.cancel_requested


async def test_retry_is_fenced_to_a_job_still_failed_or_cancelled(store: Store) -> None:
    job = await running(store)
    pending = await make(store, type="waiting")
    assert await store.retry(pending.id, None, now_ms()) is None
    assert await store.retry(job.id, None, now_ms()) is None
    done = await store.complete(job, {"value": 1}, now_ms())
    assert await store.retry(job.id, None, now_ms()) is None
    assert await store.get(job.id) == done  # untouched
    failed = await store.fail(await running(store, max_retries=0), {"type": "E", "message": "m"}, now_ms(), None)
    assert failed is not None
    first, second = await asyncio.gather(store.retry(failed.id, None, now_ms()), store.retry(failed.id, None, now_ms()))
    assert (first is None) != (second is None)  # two retries at once: one new cycle, not two


# ---- retention ----------------------------------------------------------------------------------
async def ended(store: Store, status: JobStatus, at: int, file: str | None = None, owner: str = "u") -> Job:
    job = await running(store, owner, max_retries=0)
    if status is JobStatus.COMPLETED:
        result = {"value": 1} if file is None else {"file": file, "filename": "r.txt", "contentType": "text/plain"}
        final = await store.complete(job, result, at)
    elif status is JobStatus.FAILED:
        final = await store.fail(job, {"type": "E", "message": "m"}, at, None)
    else:
        final = await store.cancel_running(job, at)
    assert final is not None and final.status is status
    return final


async def test_purge_deletes_the_oldest_finished_jobs_of_one_status_without_a_change(store: Store) -> None:
    t = now_ms()
    old = [await ended(store, JobStatus.COMPLETED, t - 3000 + i, file=None if i else "x-1.txt") for i in range(3)]
    young = await ended(store, JobStatus.COMPLETED, t)
    old_failed = await ended(store, JobStatus.FAILED, t - 5000)
    alive = await running(store)
    heard = Heard(store)
    first = await store.purge_finished(JobStatus.COMPLETED, t - 1000, 2)
    assert [(p.job_id, p.status, p.file) for p in first] == [(old[0].id, JobStatus.COMPLETED, "x-1.txt"),
                                                               (old[1].id, JobStatus.COMPLETED, None)]
    assert [p.job_id for p in await store.purge_finished(JobStatus.COMPLETED, t - 1000, 2)] == [old[2].id]
    assert await store.purge_finished(JobStatus.COMPLETED, t - 1000, 2) == []
    assert heard.changes == []  # a deletion is not a change of a job
    for job in old:
        assert await store.get(job.id) is None
    for job in (young, old_failed, alive):
        assert await store.get(job.id) is not None
    assert [p.job_id for p in await store.purge_finished(JobStatus.FAILED, t, 10)] == [old_failed.id]
    with pytest.raises(ValueError, match="finished"):
        await store.purge_finished(JobStatus.RUNNING, t, 10)
    assert (await store.get(alive.id)).status is JobStatus.RUNNING  # type: ignore[union-attr]


async def test_a_job_retried_before_its_purge_commits_is_kept(store: Store) -> None:
    t = now_ms()
    failed = await ended(store, JobStatus.FAILED, t - 5000)
    retry, purge = await asyncio.gather(store.retry(failed.id, None, t),
                                        store.purge_finished(JobStatus.FAILED, t, 10))
    assert retry is not None and purge == []  # queued first, the retry committed first
    assert (await store.get(failed.id)).status is JobStatus.PENDING  # type: ignore[union-attr]


async def test_result_files_walks_completed_jobs_with_a_file_in_the_order_they_ended(store: Store) -> None:
    t = now_ms()
    a = await ended(store, JobStatus.COMPLETED, t - 3000, file="a-1.pdf")
    await ended(store, JobStatus.COMPLETED, t - 2500)  # no file
    await ended(store, JobStatus.FAILED, t - 2400)
    b = await ended(store, JobStatus.COMPLETED, t - 2000, file="b-1.pdf")
    c = await ended(store, JobStatus.COMPLETED, t, file="c-1.pdf")
    files, marker = await store.result_files(t - 1000, limit=1)
    assert [(f.job_id, f.file, f.completed_at) for f in files] == [(a.id, "a-1.pdf", t - 3000)]
    seen = [f.job_id for f in files]
    while True:
        files, after = await store.result_files(t - 1000, limit=1, after=marker)
        seen += [f.job_id for f in files]
        if after == marker:
            break
        marker = after
    assert seen == [a.id, b.id]
    files, _ = await store.result_files(t + 1, limit=10, after=marker)  # later, from where it stopped
    assert [f.job_id for f in files] == [c.id]
    assert (await store.get(a.id)) is not None  # listing deletes nothing


async def test_list_scheduled_lists_pending_jobs_not_due_yet_newest_first(store: Store) -> None:
    now = now_ms()
    await make(store, "alice", due_at=now - 10)
    later = await make(store, "alice", due_at=now + 60_000)
    latest = await make(store, "alice", due_at=now + 120_000, type="other")
    await make(store, "bob", due_at=now + 60_000)
    page = await store.list_scheduled("alice", now)
    assert [j.id for j in page.jobs] == [latest.id, later.id] and page.next_cursor is None
    assert [j.id for j in (await store.list_scheduled("alice", now, type="t")).jobs] == [later.id]
    first = await store.list_scheduled("alice", now, limit=1)
    assert [j.id for j in first.jobs] == [latest.id] and first.next_cursor
    rest = await store.list_scheduled("alice", now, limit=1, cursor=first.next_cursor)
    assert [j.id for j in rest.jobs] == [later.id]
    assert [j.id for j in (await store.list_scheduled("alice", now + 90_000)).jobs] == [latest.id]
    assert len((await store.list_scheduled(None, now)).jobs) == 3


# ---- SQLite specifics ----------------------------------------------------------------------------
async def test_a_new_sqlite_file_gives_the_space_of_deleted_jobs_back(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'small.db'}")
    await store.open()
    try:
        t = now_ms()
        for _ in range(4):
            jobs = [(new(data={"blob": "x" * 4000}), None) for _ in range(250)]
            await store.create_many(jobs)
            while claimed := await store.claim("n1", now_ms() + 1000, LEASE, limit=250):
                for job in claimed:
                    await store.complete(job, {"value": 1}, t)
        assert (await store.count_by_status())["completed"] == 1000
        with sqlite3.connect(tmp_path / "small.db") as conn:
            assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
            before = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.close()
        while await store.purge_finished(JobStatus.COMPLETED, t + 1, 300):
            pass
        while await store.compact(100):
            pass
        with sqlite3.connect(tmp_path / "small.db") as conn:
            after, free = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count"))
        conn.close()
        assert free == 0 and after < before / 10, (before, after)
    finally:
        await store.close()


async def test_a_schema_2_file_is_converted_to_incremental_vacuum_once(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    schema = (Path(__file__).parent.parent / "service/store/schema.sql").read_text()
    old = schema.split("-- Finished jobs by status")[0]  # before schema 3's index
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(old)
        conn.execute("INSERT INTO jobs (id, owner, type, status, priority, data, max_retries, retry_delay_ms, "
                     "created_at, due_at, completed_at) VALUES "
                     "('job_old', 'u', 't', 'completed', 1, '{}', 3, 1000, 1, 1, 2)")
        conn.execute("PRAGMA user_version=2")
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        assert (await store.get("job_old")) is not None
        assert [p.job_id for p in await store.purge_finished(JobStatus.COMPLETED, 3, 10)] == ["job_old"]
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
async def test_a_schema_1_file_opens_and_gains_cancel_requests(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    schema = (Path(__file__).parent.parent / "service/store/schema.sql").read_text()
    old = schema.replace(",\n    cancel_requested INTEGER NOT NULL DEFAULT 0", "")
    assert "cancel_requested" not in old
    with sqlite3.connect(path) as conn:
        conn.executescript(old)
        conn.execute("INSERT INTO jobs (id, owner, type, status, priority, data, max_retries, retry_delay_ms, "
                     "created_at, due_at, attempts, seq, lease_owner, lease_until) VALUES "
                     "('job_old', 'u', 't', 'running', 1, '{}', 3, 1000, 1, 1, 1, 1, 'n1', 9999999999999)")
        conn.execute("PRAGMA user_version=1")
    conn.close()
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        job = await store.get("job_old")
        assert job is not None and job.cancel_requested is False and job.status is JobStatus.RUNNING
        requested = await store.request_cancel("job_old", "u")
        assert requested is not None and requested.cancel_requested and requested.seq == 2
    finally:
        await store.close()


@pytest.mark.parametrize(("name", "reason"), [
    ("SQLITE_BUSY", "locked by another process"), ("SQLITE_READONLY_DBMOVED", "read-only"),
    ("SQLITE_FULL", "disk holding the database is full"), ("SQLITE_IOERR_WRITE", "cannot be written"),
    ("SQLITE_CORRUPT", "the database failed"),
])
def test_sqlite_errors_are_classified_by_their_result_code_not_their_text(name: str, reason: str) -> None:
    from offload.service.store.sqlite import _translate

    error = sqlite3.OperationalError("a message that names no cause (locked? full?)")
    error.sqlite_errorname = name  # type: ignore[attr-defined]
    assert reason in _translate(error).message


# ---- schedules: a slot fires once ----------------------------------------------------------------
async def test_fire_slot_records_the_slot_with_its_job_once_and_refuses_it_again(store: Store) -> None:
    heard = Heard(store)
    job = new("alice", idempotency_key="schedule:daily:1000")
    answer = await store.fire_slot("daily", 1000, job, "hash-1")
    assert answer is not None
    fired, created = answer
    assert created and fired is not None and fired.id == job.id and fired.status is JobStatus.PENDING
    assert [c.id for c in heard.changes if isinstance(c, Job)] == [job.id]  # a change like any created job
    assert await store.get(job.id, "alice") == fired
    # the same slot again (this node after a restart, or another node): nothing is stored
    again = new("alice", idempotency_key="schedule:daily:1000")
    assert await store.fire_slot("daily", 1000, again, "hash-1") is None
    assert await store.fire_slot("daily", 999, new("alice", idempotency_key="schedule:daily:999"), "h") is None
    assert await store.get(again.id) is None
    assert (await store.last_slots())["daily"].job_id == job.id
    # a later slot fires, and becomes the latest; other schedules keep their own
    later = new("alice", idempotency_key="schedule:daily:2000")
    assert await store.fire_slot("daily", 2000, later, "hash-2") is not None
    assert await store.fire_slot("weekly", 500, None) == (None, False)  # passed over: no job
    slots = await store.last_slots()
    assert {name: (r.slot, r.job_id) for name, r in slots.items()} == {"daily": (2000, later.id),
                                                                         "weekly": (500, None)}
    assert (await store.count_by_status("alice"))["pending"] == 2


async def test_fire_slot_stores_neither_the_slot_nor_the_job_when_the_job_is_refused(store: Store) -> None:
    taken, _ = await store.create(new("alice", idempotency_key="schedule:daily:1000"), "other request")
    heard = Heard(store)
    with pytest.raises(IdempotencyMismatch):
        await store.fire_slot("daily", 1000, new("alice", idempotency_key="schedule:daily:1000"), "hash-1")
    assert await store.last_slots() == {}
    assert heard.changes == []
    # the key used before with the same request answers that job, and the slot is recorded
    answer = await store.fire_slot("daily", 1000, new("alice", idempotency_key="schedule:daily:1000"),
                                   "other request")
    assert answer == (taken, False)
    assert (await store.last_slots())["daily"].job_id == taken.id


async def test_concurrent_fires_of_one_slot_store_one_job(store: Store) -> None:
    """Two nodes (here two calls queued together) firing the same slot: one job."""
    jobs = [new("alice", idempotency_key=f"schedule:daily:1000:{n}") for n in range(5)]
    answers = await asyncio.gather(*(store.fire_slot("daily", 1000, job, None) for job in jobs))
    assert sum(answer is not None for answer in answers) == 1
    assert (await store.count_by_status("alice"))["pending"] == 1
