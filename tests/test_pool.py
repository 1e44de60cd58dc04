"""The worker pool grows with the queue and shrinks when idle."""
from __future__ import annotations

from tests.conftest import eventually, submit, wait_status
from tests.conftest import workers as stats


async def test_pool_grows_with_queue_and_retires_idle_processes(start_server, tmp_path):
    client = await start_server(workers={"processes": 3, "min_processes": 1, "idle_timeout": 0.3})
    first = await stats(client)
    assert first["processes"] == 1 and first["maxProcesses"] == 3

    gate = tmp_path / "gate"
    ids = [await submit(client, "test.steps", {"n": 1, "gate": str(gate)}) for _ in range(4)]
    for job_id in ids[:3]:
        await wait_status(client, job_id, "running")
    busy = await stats(client)
    assert busy["processes"] == 3 and busy["busy"] == 3
    assert (await (await client.get(f"/api/jobs/{ids[3]}")).json())["status"] == "pending"

    gate.write_text("go")
    pids = {(await wait_status(client, job_id, "completed"))["result"]["value"]["pid"] for job_id in ids}
    assert len(pids) == 3

    async def shrunk():
        current = await stats(client)
        return current if current["processes"] == 1 else None

    settled = await eventually(shrunk, what="idle processes to retire")
    assert settled["retired"] == 2

    again = await submit(client, "test.echo", {"after": "retire"})
    assert (await wait_status(client, again, "completed"))["result"]["value"] == {"after": "retire"}
