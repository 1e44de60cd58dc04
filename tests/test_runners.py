"""`async def` job types run on the async runner, which the scheduler starts, stops and
times out the same way as the process pool: cancel, timeout and `async_concurrency` on a
real server."""
from __future__ import annotations

from tests.conftest import eventually, submit, wait_status


async def test_async_job_times_out_and_is_cancelled_like_a_process_job(start_server):
    client = await start_server(workers={"processes": 1})
    slow = await submit(client, "test.async_block", {}, timeout=200, maxRetries=0)
    failed = await wait_status(client, slow, "failed")
    assert failed["error"]["type"] == "Timeout" and failed["attempts"] == 1

    waiting = await submit(client, "test.async_block", {})
    await wait_status(client, waiting, "running")
    response = await client.delete(f"/api/jobs/{waiting}")
    assert response.status == 200
    assert (await wait_status(client, waiting, "cancelled"))["attempts"] == 1

    after = await submit(client, "test.async_steps", {"n": 2})  # the runner goes on
    assert (await wait_status(client, after, "completed"))["result"] == {"value": {"steps": 2}}


async def test_async_concurrency_bounds_the_async_runner(start_server):
    client = await start_server(workers={"processes": 1, "async_concurrency": 1})
    first = await submit(client, "test.async_block", {})
    await wait_status(client, first, "running")
    second = await submit(client, "test.async_block", {})
    process_job = await submit(client, "test.echo", {"x": 1})  # the pool's slots are its own
    await wait_status(client, process_job, "completed")
    assert (await (await client.get(f"/api/jobs/{second}")).json())["status"] == "pending"

    assert (await client.delete(f"/api/jobs/{first}")).status == 200
    await wait_status(client, second, "running")

    async def stopped() -> bool:
        return (await client.delete(f"/api/jobs/{second}")).status == 200
    await eventually(stopped, what="the second async job to be cancelled")
