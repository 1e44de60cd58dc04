"""What is PostgreSQL's own in the store: several nodes on one database.

Each test opens two or more `PostgresStore`s ("nodes") on one fresh schema of the real
server (conftest's `pg_schema`); faults are real: backends terminated with
`pg_terminate_backend`, and a loopback TCP proxy in front of the server that is shut to
make the database unreachable. The backend-neutral rules are in test_store_contract.py.
"""
from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import orjson
import pytest

from offload.service.errors import StoreUnavailable
from offload.service.models import Job, JobStatus, new_job_id, now_ms
from offload.service.store import open_store
from offload.service.store.base import ProgressChange, StoreChange
from offload.service.store.postgres import NOTIFY_LIMIT, PostgresStore, payloads
from tests.conftest import POSTGRES_URL, eventually
from tests.tcp_proxy import TcpProxy

LEASE = 30_000
LOST = {"type": "WorkerLost", "message": "the node stopped"}


def new(owner: str = "u", **fields: Any) -> Job:
    return Job(new_job_id(), fields.pop("type", "t"), owner, fields.pop("data", {}), **fields)


@pytest.fixture
def schema(pg_schema: str) -> str:
    return pg_schema


@pytest.fixture
async def nodes(schema: str) -> AsyncIterator[Callable[..., Any]]:
    """Open stores ("nodes") on the test's schema; all closed at the end."""
    opened: list[PostgresStore] = []

    async def node(url: str = POSTGRES_URL, **options: Any) -> PostgresStore:
        store = open_store(url, schema=schema, **options)
        assert isinstance(store, PostgresStore)
        opened.append(store)  # closed at the end even when its open failed (closing twice is harmless)
        await store.open()
        return store

    yield node
    for store in opened:
        await store.close()


async def admin() -> asyncpg.Connection:
    return await asyncpg.connect(POSTGRES_URL)


async def backend_pids(store: PostgresStore, role: str) -> list[int]:
    """The server processes of `store`'s connections `role` (writer, listener), by their name."""
    conn = await admin()
    try:
        return [int(r[0]) for r in await conn.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                                                    f"offload {role} {store.origin}")]
    finally:
        await conn.close()


async def backend_pid(store: PostgresStore, role: str) -> int:
    (pid,) = await backend_pids(store, role)
    return pid


async def terminate(pid: int) -> None:
    conn = await admin()
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()


class Heard:
    """Everything a sink emits, in order, with a way to wait for a condition on it."""

    def __init__(self, sink: Any) -> None:
        self.changes: list[StoreChange] = []
        self._new = asyncio.Event()
        sink.subscribe(self._add)

    def _add(self, change: StoreChange) -> None:
        self.changes.append(change)
        self._new.set()

    def of(self, job_id: str) -> list[StoreChange]:
        return [c for c in self.changes if (c.id if isinstance(c, Job) else c.job_id) == job_id]

    async def until(self, check: Callable[[], bool], timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self._new.clear()
                await self._new.wait()


# ---- claims across nodes -------------------------------------------------------------------------
async def test_concurrent_claims_from_two_nodes_take_each_job_once(nodes: Callable[..., Any]) -> None:
    a, b = await nodes(), await nodes()
    created = await a.create_many([(new(f"user{n % 3}"), None) for n in range(120)])
    ids = {job.id for job, _ in created}
    claimed: list[Job] = []
    while len(claimed) < len(ids):
        # more due jobs than room: the fair path (heads, round robin, SKIP LOCKED) as well as the plain one
        batches = await asyncio.gather(*(store.claim(f"n-{i}", now_ms(), LEASE, limit=4)
                                         for i, store in enumerate([a, b] * 6)))
        got = [job for batch in batches for job in batch]
        assert got, "jobs left unclaimed"
        claimed += got
    assert sorted(j.id for j in claimed) == sorted(ids)  # each one once
    assert all(j.attempts == 1 and j.seq == 1 for j in claimed)
    assert (await b.count_by_status())["running"] == 120


async def test_concurrent_claims_with_room_for_every_due_job_take_each_once(nodes: Callable[..., Any]) -> None:
    a, b = await nodes(), await nodes()
    for _ in range(5):
        created = await a.create_many([(new(), None) for _ in range(30)])
        # room for every due job in each claim: the one-statement path, on both nodes at once
        batches = await asyncio.gather(*(store.claim(f"n-{i}", now_ms(), LEASE, limit=40)
                                         for i, store in enumerate([a, b] * 4)))
        claimed = sorted(job.id for batch in batches for job in batch)
        assert claimed == sorted(job.id for job, _ in created)


async def test_fairness_is_shared_by_the_nodes(nodes: Callable[..., Any]) -> None:
    a, b = await nodes(), await nodes()
    for _ in range(4):
        await a.create(new("alice"))
    await a.create(new("bob"))
    (first,) = await a.claim("n1", now_ms(), LEASE, limit=1)
    assert first.owner == "alice"  # neither served yet: the job that waited longest
    assert await a.complete(first, {"value": 1}, now_ms()) is not None  # nobody runs anything again
    (second,) = await b.claim("n2", now_ms(), LEASE, limit=1)
    # node B knows that node A served alice last: the served state is the database's
    assert second.owner == "bob"


async def test_a_fence_holds_against_another_nodes_write_in_flight(nodes: Callable[..., Any]) -> None:
    a = await nodes()
    await a.create(new())
    (stale,) = await a.claim("n1", now_ms(), LEASE)
    conn = await admin()
    try:
        tx = conn.transaction()
        await tx.start()
        # another node takes the job for a new attempt, not yet committed: it holds the row
        await conn.execute(f'UPDATE "{a.schema}".jobs SET attempts = attempts + 1, lease_owner = $2 '
                           "WHERE id = $1", stale.id, "n2")
        ending = asyncio.ensure_future(a.complete(stale, {"value": "stale"}, now_ms()))
        await eventually(lambda: _waiting_on_lock(conn), what="the completion to wait for the row")
        await tx.commit()
        assert await ending is None  # the WHERE was checked again on the committed row
    finally:
        await conn.close()
    stored = await a.get(stale.id)
    assert stored is not None and (stored.status, stored.attempts, stored.lease_owner) == (
        JobStatus.RUNNING, 2, "n2")


async def _waiting_on_lock(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                    "AND application_name LIKE 'offload writer %'"))


async def test_an_ending_and_another_nodes_rescue_race_and_one_wins(nodes: Callable[..., Any]) -> None:
    a, b = await nodes(), await nodes()
    await a.create_many([(new(max_retries=3), None) for _ in range(20)])
    running = await a.claim("n1", now_ms(), LEASE, limit=20)
    now = now_ms()
    results = await asyncio.gather(*(a.complete(job, {"value": 1}, now_ms()) for job in running),
                                   b.rescue_expired(now, LOST, expired_before=now + LEASE + 1))
    completed = {job.id for job in results[:-1] if job is not None}
    rescued = {job.id for job in results[-1]}
    assert completed | rescued == {job.id for job in running} and not completed & rescued
    for job in running:
        stored = await b.get(job.id)
        assert stored is not None
        assert stored.status is (JobStatus.COMPLETED if job.id in completed else JobStatus.PENDING)


async def test_a_batch_that_deadlocks_is_rolled_back_and_run_again(nodes: Callable[..., Any]) -> None:
    a = await nodes()
    await a.create_many([(new(), None), (new(), None)])
    low, high = sorted(await a.claim("n1", now_ms(), LEASE, limit=2), key=lambda job: job.id)
    conn = await admin()
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SET LOCAL deadlock_timeout = '20s'")  # the store's side sees the deadlock first
        await conn.execute(f'SELECT 1 FROM "{a.schema}".jobs WHERE id = $1 FOR UPDATE', high.id)
        # one batch for both: it locks `low`, then waits for `high`
        requests = asyncio.gather(a.request_cancel(low.id, None), a.request_cancel(high.id, None))
        await eventually(lambda: _waiting_on_lock(conn), what="the batch to wait for the row")
        # and now the other side wants `low`: a deadlock; the batch is the one rolled back
        await conn.execute(f'SELECT 1 FROM "{a.schema}".jobs WHERE id = $1 FOR UPDATE', low.id)
        await tx.commit()
        done = await requests  # run again once the other side committed
    finally:
        await conn.close()
    assert all(job is not None and job.cancel_requested for job in done)


# ---- notifications ---------------------------------------------------------------------------------
async def test_changes_on_one_node_reach_the_other_in_seq_order_without_data(nodes: Callable[..., Any]) -> None:
    a, b = await nodes(), await nodes()
    heard, echoed = Heard(b.remote), Heard(a.remote)
    job, _ = await a.create(new(data={"big": "x" * 100}))
    (claimed,) = await a.claim("n1", now_ms(), LEASE)
    assert await a.save_checkpoint(claimed, {"page": 3})
    committed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    a.set_progress(claimed, 50, "half", on_commit=committed.set_result)
    await committed
    big = {"text": "é" * 6000}  # too big for a notification of its own: sent as a reference
    done = await a.complete(claimed, big, now_ms())
    assert done is not None
    await heard.until(lambda: any(isinstance(c, Job) and c.status is JobStatus.COMPLETED for c in heard.changes))
    kinds = [(type(c).__name__, c.seq) for c in heard.of(job.id)]
    assert kinds == [("Job", 0), ("Job", 1), ("ProgressChange", 2), ("Job", 3)]
    pending, running, progress, completed = heard.of(job.id)
    assert pending == dataclasses.replace(job, data=None)
    assert running == dataclasses.replace(claimed, data=None, checkpoint=None)
    assert progress == ProgressChange(job.id, "u", 1, 50, "half", 2)
    assert completed == dataclasses.replace(done, data=None) and completed.result == big
    # a node does not hear its own changes: once A hears B's change, A's own came and went
    other, _ = await b.create(new("bob"))
    await echoed.until(lambda: bool(echoed.changes))
    assert echoed.changes == [other]


def test_payloads_stay_under_the_limit_in_order_and_refer_to_what_is_too_big() -> None:
    jobs = [new(message="m" * 300, seq=n) for n in range(80)]
    huge = dataclasses.replace(new(), result={"x": "y" * NOTIFY_LIMIT}, seq=7)
    notes = payloads("origin1", [*jobs, huge])
    assert len(notes) > 1 and all(len(note.encode()) < NOTIFY_LIMIT for note in notes)
    items = [item for note in notes for item in orjson.loads(note)["c"]]
    assert [item[1] for item in items[:-1]] == [job.id for job in jobs]
    assert items[-1] == [huge.id, 7]
    assert {orjson.loads(note)["o"] for note in notes} == {"origin1"}


async def test_a_stale_change_is_not_emitted_again(nodes: Callable[..., Any]) -> None:
    a, b = await nodes(), await nodes()
    heard = Heard(b.remote)
    job, _ = await a.create(new())
    await heard.until(lambda: bool(heard.of(job.id)))
    # the same change delivered twice (a referenced row read late, a replay): heard once
    conn = await admin()
    try:
        for note in payloads("someone-else", [job]):
            await conn.execute("SELECT pg_notify($1, $2)", a.schema, note)
        later, _ = await a.create(new())
    finally:
        await conn.close()
    await heard.until(lambda: bool(heard.of(later.id)))
    assert heard.of(job.id) == [job]


async def test_the_listener_connects_again_after_its_backend_is_terminated(nodes: Callable[..., Any]) -> None:
    a, b = await nodes(), await nodes()
    heard = Heard(b.remote)
    old = await backend_pid(b, "listener")
    await terminate(old)

    async def listening_again() -> bool:
        # `listening` is cleared once the loss is noticed and set again after the new LISTEN
        return b.listening.is_set() and await backend_pids(b, "listener") not in ([], [old])

    await eventually(listening_again, what="a new listener connection")
    job, _ = await a.create(new())
    await heard.until(lambda: bool(heard.of(job.id)))


async def test_cancel_requests_lists_what_another_node_requested(nodes: Callable[..., Any]) -> None:
    a, b = await nodes(), await nodes()
    await a.create(new())
    (job,) = await a.claim("n1", now_ms(), LEASE)
    assert await a.cancel_requests("n1") == []
    requested = await b.request_cancel(job.id, None)
    assert requested is not None
    assert await a.cancel_requests("n1") == [requested]
    assert await a.cancel_requests("n2") == []


# ---- schema, locks ---------------------------------------------------------------------------------
async def test_several_nodes_opening_at_once_create_the_schema_once(nodes: Callable[..., Any]) -> None:
    opened = await asyncio.gather(*(nodes() for _ in range(5)), return_exceptions=True)
    assert not [error for error in opened if isinstance(error, BaseException)]
    stores = [store for store in opened if isinstance(store, PostgresStore)]
    job, _ = await stores[0].create(new())
    assert all([await store.get(job.id) == job for store in stores])


async def test_a_schema_of_a_newer_offload_is_refused(nodes: Callable[..., Any], schema: str) -> None:
    first = await nodes()
    conn = await admin()
    try:
        await conn.execute(f"UPDATE \"{schema}\".meta SET value = 99 WHERE key = 'version'")
    finally:
        await conn.close()
    await first.close()
    with pytest.raises(RuntimeError, match=r"newer offload \(schema 99 > 1\)"):
        await nodes()


async def test_alone_is_exclusive_across_nodes(nodes: Callable[..., Any]) -> None:
    a, b = await nodes(), await nodes()
    async with a.alone("retention") as mine:
        assert mine
        async with b.alone("retention") as theirs:
            assert not theirs
        async with b.alone("other task") as theirs:
            assert theirs
    async with b.alone("retention") as theirs:
        assert theirs


def test_bad_settings_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="schema 'Bad-Name'"):
        PostgresStore(POSTGRES_URL, schema="Bad-Name")
    with pytest.raises(ValueError, match="pool_min"):
        PostgresStore(POSTGRES_URL, pool_min=3, pool_max=2)


# ---- availability -----------------------------------------------------------------------------------
@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    """A loopback proxy to the test database, which a test cuts (every connection reset, new
    ones refused) and restores: the database becomes unreachable without being stopped."""
    opened = await TcpProxy.to(POSTGRES_URL).start()
    try:
        yield opened
    finally:
        await opened.close()


async def test_an_unreachable_database_fails_writes_and_reads_until_it_is_back(
        nodes: Callable[..., Any], proxy: TcpProxy) -> None:
    store = await nodes(proxy.url_for(POSTGRES_URL))
    before, _ = await store.create(new())
    proxy.cut()
    with pytest.raises(StoreUnavailable, match="does not answer"):
        await store.create(new())
    with pytest.raises(StoreUnavailable, match="does not answer"):
        await store.writable()
    with pytest.raises(StoreUnavailable, match="does not answer"):
        await store.get(before.id)
    proxy.restore()
    after, created = await store.create(new())  # the writer connects again by itself
    assert created
    await store.writable()
    assert await store.get(after.id) == after and await store.get(before.id) == before


async def test_a_write_after_the_writers_backend_is_terminated_succeeds(nodes: Callable[..., Any]) -> None:
    store = await nodes()
    await store.create(new())
    await terminate(await backend_pid(store, "writer"))
    job, created = await store.create(new())
    assert created and await store.get(job.id) == job


async def test_an_unreachable_database_stops_open_with_the_reason(schema: str, proxy: TcpProxy) -> None:
    url = proxy.url_for(POSTGRES_URL)
    proxy.cut()
    store = open_store(url, schema=schema)
    with pytest.raises(StoreUnavailable, match="cannot open the job store .*does not answer"):
        await store.open()
    await store.close()


async def test_a_claim_of_another_nodes_job_not_heard_yet_emits_its_pending_state_first(
        nodes: Callable[..., Any], proxy: TcpProxy) -> None:
    """Node B claims a job node A stored before A's notification reached B (here: B's
    listener is cut, so it never does): B's watchers still get the job's pending state
    (seq 0) before its running one (seq 1), as the claim read it."""
    a = await nodes()
    b = await nodes(listen_url=proxy.url_for(POSTGRES_URL), poll_ms=60_000)
    heard = Heard(b.remote)
    own: list[StoreChange] = []
    b.changes.subscribe(own.append)
    proxy.cut()  # B hears nothing from A from now on
    job, _ = await a.create(new(data={"n": 1}))
    (claimed,) = await b.claim("nb", now_ms(), LEASE)
    assert [(type(c).__name__, c.seq) for c in heard.of(job.id)] == [("Job", 0)]
    (pending,) = heard.of(job.id)
    assert pending == dataclasses.replace(job, data=None)  # the stored job as it was before the claim
    assert [(c.status, c.seq) for c in own if isinstance(c, Job)] == [(JobStatus.RUNNING, 1)]
    proxy.restore()
    done = await b.complete(claimed, {"ok": True}, now_ms())
    assert done is not None and not [c for c in heard.of(job.id) if c.seq > 0]  # B's own: never in remote


async def test_a_session_left_idle_inside_a_transaction_is_ended_by_the_server(nodes: Callable[..., Any]) -> None:
    """What a node paused mid-batch (SIGSTOP, a frozen VM) would leave: its transaction open
    and its rows locked, which the other nodes' SKIP LOCKED claims and rescues pass over.
    Every connection the store makes has the server end such a session after a few seconds."""
    store = await nodes()
    conn = await store._connect("probe")  # made as the store makes its writer, pool and listener
    try:
        await conn.execute("BEGIN")
        await conn.execute("SELECT id FROM jobs FOR UPDATE")
        (pid,) = await backend_pids(store, "probe")

        async def ended() -> bool:
            admin_conn = await admin()
            try:
                return not await admin_conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)
            finally:
                await admin_conn.close()

        await eventually(ended, 20, "the server to end the idle transaction's session")
    finally:
        conn.terminate()
