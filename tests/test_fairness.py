"""Fairness: within a priority, workers are shared between users, so one user's backlog does
not hold up another user's new job."""
from __future__ import annotations

from offload.service.models import Job, Priority, new_job_id, now_ms
from offload.service.store.fairness import Served, round_robin
from offload.service.store.sqlite import SQLiteStore
from tests.conftest import wait_status
from tests.users import TOKENS, A, B, job_as, submit_as


def test_round_robin_prefers_fewest_running_then_least_recently_served():
    served = Served()
    heads = {"a": [(1, 1), (2, 2), (3, 3)], "b": [(9, 9)], "c": [(5, 5), (6, 6)]}
    running = {"a": 2}
    # b and c run nothing: c first (its job is older), then b; then a and c share
    assert round_robin(running, served, heads, 6) == [5, 9, 6, 1, 2, 3]
    assert running == {"a": 5, "b": 1, "c": 2}
    # with equal running counts, whoever was served least recently goes first
    served = Served()
    assert round_robin({}, served, {"a": [(1, 10)], "b": [(9, 11)]}, 1) == [10]  # neither yet: older job
    assert round_robin({}, served, {"a": [(1, 12)], "b": [(9, 11)]}, 1) == [11]
    assert round_robin({}, served, {"a": [(1, 12)], "b": [(9, 13)]}, 1) == [12]


async def test_store_claims_a_latecomers_job_before_the_backlog(tmp_path):
    store = SQLiteStore(tmp_path / "fair.db")
    await store.open()
    try:
        base = now_ms() - 1000
        backlog = [await store.create(Job(id=new_job_id(), type="t", owner="a", data={}, created_at=base + i))
                   for i in range(50)]
        late = (await store.create(Job(id=new_job_id(), type="t", owner="b", data={}, created_at=base + 100)))[0]
        urgent = (await store.create(Job(id=new_job_id(), type="t", owner="a", data={}, created_at=base + 200,
                                         priority=Priority.HIGH)))[0]
        one_slot = []
        for _ in range(4):  # one worker: claim one, finish it, claim the next
            [job] = await store.claim("n", now_ms(), 30_000, limit=1)
            one_slot.append(job.id)
            await store.complete(job, None, now_ms())
        # priority stays strict; then a and b alternate although a's backlog is older
        assert one_slot == [urgent.id, late.id, backlog[0][0].id, backlog[1][0].id]
        assert await store.count_pending_of("a") == 48 and await store.count_pending_of("b") == 0
    finally:
        await store.close()


async def test_store_shares_a_multi_slot_claim_between_owners(tmp_path):
    store = SQLiteStore(tmp_path / "fair.db")
    await store.open()
    try:
        base = now_ms() - 1000
        for i in range(20):
            await store.create(Job(id=new_job_id(), type="t", owner="a", data={}, created_at=base + i))
        for i in range(2):
            await store.create(Job(id=new_job_id(), type="t", owner="b", data={}, created_at=base + 50 + i))
        claimed = await store.claim("n", now_ms(), 30_000, limit=4)
        assert sorted(j.owner for j in claimed) == ["a", "a", "b", "b"]
    finally:
        await store.close()


async def test_latecomers_job_starts_before_another_users_backlog(start_server, tmp_path):
    client = await start_server(workers={"processes": 1}, **TOKENS)
    gate = tmp_path / "gate"
    blocker = await submit_as(client, A, "test.steps", {"n": 1, "gate": str(gate)})
    await wait_status(client, blocker, "running", headers=A)
    backlog = [await submit_as(client, A, "test.clock", {"i": i}) for i in range(10)]
    late = await submit_as(client, B, "test.clock", {"b": True})
    gate.write_text("go")
    await wait_status(client, backlog[-1], "completed", headers=A)
    b_started = (await job_as(client, B, late))[1]["result"]["value"]["ns"]
    a_started = [(await job_as(client, A, j))[1]["result"]["value"]["ns"] for j in backlog]
    assert b_started < min(a_started)
    assert a_started == sorted(a_started)  # A's own jobs still start in order


def test_round_robin_respects_the_per_owner_cap():
    heads = {"a": [(1, 1), (2, 2), (3, 3)], "b": [(4, 4), (5, 5)]}
    running = {"a": 1}
    assert round_robin(running, Served(), heads, 5, cap=2) == [4, 1, 5]
    assert running == {"a": 2, "b": 2}


async def test_per_user_running_cap_leaves_slots_to_others(start_server, tmp_path):
    client = await start_server(workers={"processes": 3}, limits={"max_running_per_user": 1}, **TOKENS)
    gate = tmp_path / "gate"
    mine = [await submit_as(client, A, "test.steps", {"n": 1, "gate": str(gate)}) for _ in range(3)]
    await wait_status(client, mine[0], "running", headers=A)
    theirs = await submit_as(client, B, "test.steps", {"n": 1, "gate": str(gate)})
    await wait_status(client, theirs, "running", headers=B)
    statuses = [(await job_as(client, A, j))[1]["status"] for j in mine]
    assert statuses == ["running", "pending", "pending"]  # a slot is free, but A is at the cap
    gate.write_text("go")
    for job_id in mine:
        await wait_status(client, job_id, "completed", headers=A)
