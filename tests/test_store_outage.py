"""A node that loses its PostgreSQL database, and gets it back.

A real server (in process, real worker processes) reaches PostgreSQL through a TCP proxy
of the test's own (`tests/tcp_proxy.py`), which the test cuts and restores: while the
database is away, submissions and the health probes answer 503 store_unavailable with
Retry-After; a job running at the cut keeps its outcome and records it once the database is
back; the node then takes new work by itself, with no restart. A `[store] listen_url` is
the connection LISTEN uses: cutting it alone leaves the node working, woken by its poll.
"""
from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from offload.service.models import Job, new_job_id
from tests.conftest import POSTGRES_URL, eventually, submit, wait_status
from tests.tcp_proxy import TcpProxy


@pytest.fixture
def store_backend() -> str:
    return "postgres"


@pytest.fixture
async def proxy():
    proxy = await TcpProxy.to(POSTGRES_URL).start()
    yield proxy
    await proxy.close()


async def sql(query: str, *args: Any) -> list[Any]:
    """Rows of `query`, on a connection of the test's own, straight to the database."""
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL, timeout=10)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def retry_after(response) -> int:
    value = response.headers.get("Retry-After", "")
    assert value.isdigit() and int(value) >= 1, f"Retry-After {value!r} is not a whole number of seconds"
    return int(value)


async def store_unavailable(response) -> str:
    """`response` is 503 store_unavailable with Retry-After and a message; returns the message."""
    body = await response.json()
    assert response.status == 503, (response.status, body)
    assert body["error"]["code"] == "store_unavailable", body
    retry_after(response)
    message = body["error"]["message"]
    assert re.search(r"database|postgres|store", message, re.I), message
    return message


async def ready(client) -> bool:
    return (await client.get("/api/health/ready")).status == 200


#: How long a request may take to answer while the database is away: a refused connection
#: fails at once and a silent one within the store's own timeouts, never the client's.
ANSWER_WITHIN_S = 15


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["refused", "silent"])
async def test_a_node_cut_off_from_its_database_answers_503_keeps_its_running_job_and_heals(
        start_server, proxy, pg_schema, tmp_path, mode):
    client = await start_server(store={"url": proxy.url_for(POSTGRES_URL), "poll_ms": 200},
                                workers={"processes": 1})
    before = await submit(client, "test.echo", {"before": 1})
    await wait_status(client, before, "completed")
    gate = tmp_path / "gate"
    running = await submit(client, "test.steps", {"n": 2, "gate": str(gate)})
    await wait_status(client, running, "running")
    accepted = proxy.accepted

    proxy.cut(mode)
    async with asyncio.timeout(ANSWER_WITHIN_S):
        response = await client.post("/api/jobs", json={"type": "test.echo", "data": {"while": "cut"}})
        await store_unavailable(response)
    gate.write_text("go")  # the running job ends while its outcome cannot be stored
    for probe in ("/api/health/ready", "/api/health"):
        async with asyncio.timeout(ANSWER_WITHIN_S):
            await store_unavailable(await client.get(probe))
    # Nothing half-written: the refused submission is not in the database.
    rows = await sql(f'SELECT id FROM "{pg_schema}".jobs ORDER BY pos')
    assert [row["id"] for row in rows] == [before, running]
    assert (await sql(f'SELECT status FROM "{pg_schema}".jobs WHERE id = $1', running))[0]["status"] == "running"

    proxy.restore()
    await eventually(lambda: ready(client), 30, "ready once the database is back")
    assert proxy.accepted > accepted, "the node did not open a new connection to the database"
    assert (await (await client.get("/api/health")).json())["status"] == "ok"
    done = await wait_status(client, running, "completed")
    assert done["attempts"] == 1, done  # the outcome held in memory, recorded once: not run again
    assert done["result"]["value"]["steps"] == 2
    after = await submit(client, "test.echo", {"after": "restore"})
    assert (await wait_status(client, after, "completed"))["result"]["value"] == {"after": "restore"}


@pytest.mark.timeout(60)
async def test_listen_uses_listen_url_and_a_cut_listener_leaves_the_poll_to_wake_the_node(
        start_server, proxy, pg_schema):
    from offload.service.store.postgres import PostgresStore

    # A long lease: the scheduler's own periodic claims (every lease_ms / 3) stay out of the
    # way, so a job another node stores while the listener is cut is found by the poll alone.
    client = await start_server(store={"url": POSTGRES_URL, "listen_url": proxy.url_for(POSTGRES_URL),
                                       "poll_ms": 300}, workers={"processes": 1}, jobs={"lease_ms": 600_000})
    # The proxy carries the node's LISTEN and nothing else: its one session's latest
    # statement is a LISTEN.
    async def through_proxy() -> set[int]:
        return proxy.upstream_ports()

    await eventually(through_proxy, 10, "the listener to connect through listen_url")
    (port,) = proxy.upstream_ports()
    (session,) = await sql("SELECT query FROM pg_stat_activity WHERE client_port = $1", port)
    assert session["query"].lstrip().upper().startswith("LISTEN"), session["query"]

    other = PostgresStore(POSTGRES_URL, schema=pg_schema, poll_ms=60_000)  # another node, writing
    await other.open()
    try:
        async def from_other_node(data: dict[str, Any]) -> str:
            job, _ = await other.create(Job(id=new_job_id(), type="test.echo", owner="local", data=data))
            return job.id

        heard = await from_other_node({"while": "listening"})
        await wait_status(client, heard, "completed")

        proxy.cut()  # the listener alone loses the database; the node's other connections do not
        assert await ready(client)
        polled = await from_other_node({"while": "listener cut"})
        assert (await wait_status(client, polled, "completed"))["result"]["value"] == {"while": "listener cut"}

        proxy.restore()  # the listener comes back by itself, through listen_url again
        await eventually(through_proxy, 30, "the listener to reconnect through listen_url")
        (port,) = proxy.upstream_ports()

        async def listening() -> bool:
            rows = await sql("SELECT query FROM pg_stat_activity WHERE client_port = $1", port)
            return bool(rows) and rows[0]["query"].lstrip().upper().startswith("LISTEN")

        await eventually(listening, 10, "the reconnected listener to LISTEN again")
        again = await from_other_node({"while": "listening again"})
        await wait_status(client, again, "completed")
    finally:
        await other.close()


async def test_the_proxy_carries_a_session_then_refuses_then_silences_then_carries_again(proxy):
    """The helper itself, on a bare connection: what the tests above rely on it to do."""
    import asyncpg

    url = proxy.url_for(POSTGRES_URL)
    conn = await asyncpg.connect(url, timeout=10)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert proxy.open_connections == 1 and len(proxy.upstream_ports()) == 1
        proxy.cut()
        with pytest.raises((ConnectionError, OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
            await conn.fetchval("SELECT 1", timeout=10)
        with pytest.raises((ConnectionError, OSError, asyncpg.PostgresConnectionError)):
            await asyncpg.connect(url, timeout=10)
    finally:
        conn.terminate()

    proxy.restore()
    conn = await asyncpg.connect(url, timeout=10)
    try:
        proxy.cut("silent")
        with pytest.raises(TimeoutError):
            await conn.fetchval("SELECT 1", timeout=0.5)
        with pytest.raises(TimeoutError):
            await asyncpg.connect(url, timeout=0.5)
    finally:
        conn.terminate()
    proxy.restore()
    conn = await asyncpg.connect(url, timeout=10)
    try:
        assert await conn.fetchval("SELECT 2") == 2
    finally:
        await conn.close()
    assert proxy.accepted >= 4  # (asyncpg may try again on a refused connection)


@pytest.mark.timeout(120)
async def test_an_outage_longer_than_the_lease_still_ends_the_job_completed_once(start_server, proxy, pg_schema,
                                                                                  tmp_path):
    """Cut off past its job's lease, the node cannot renew it: once the database is back the
    job is either recorded from the held outcome (attempt 1) or, its lease run out, taken
    back and run again (attempt 2): completed either way, and never left running or lost."""
    client = await start_server(store={"url": proxy.url_for(POSTGRES_URL), "poll_ms": 200},
                                workers={"processes": 1}, jobs={"lease_ms": 1500})
    gate = tmp_path / "gate"
    job_id = await submit(client, "test.steps", {"n": 2, "gate": str(gate)})
    await wait_status(client, job_id, "running")
    proxy.cut()
    gate.write_text("go")

    async def lease_ran_out() -> bool:
        rows = await sql(f'SELECT lease_until < (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS out '
                         f'FROM "{pg_schema}".jobs WHERE id = $1', job_id)
        return rows[0]["out"]

    await eventually(lease_ran_out, 30, "the job's lease to run out while the node is cut off")
    proxy.restore()
    done = await wait_status(client, job_id, "completed", "failed", timeout=60)
    assert done["status"] == "completed", done
    assert done["attempts"] in (1, 2), done
    assert done["result"]["value"]["steps"] == 2
    (row,) = await sql(f'SELECT status, lease_owner FROM "{pg_schema}".jobs WHERE id = $1', job_id)
    assert row["status"] == "completed" and row["lease_owner"] is None
