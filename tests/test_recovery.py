"""Recovery after a crash of the server itself: `kill -9` the real process, start it again
on the same database, and nothing accepted is lost or left running."""
from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import eventually, invoice
from tests.server_process import TERMINAL, EventLog, ServerProcess, alive, all_jobs, get, post, until


async def test_kill_9_reruns_running_jobs_and_runs_pending_ones(tmp_path: Path):
    gate = tmp_path / "gate"
    # A long lease: after a restart the jobs of the dead run must not wait for it to expire.
    with ServerProcess(tmp_path / "server", processes=2, lease_ms=20_000, retry_delay_ms=10) as server:
        await server.start()
        log = EventLog()
        async with server.session() as http:
            follower = asyncio.create_task(log.follow(http))
            rerun = await post(http, "test.steps", {"n": 2, "gate": str(gate)})
            exhausted = await post(http, "test.spin", {}, maxRetries=0)
            for job_id in (rerun, exhausted):
                await until(http, job_id, lambda j: j["status"] == "running", "to run")
            waiting = [await post(http, "test.echo", {"i": i}) for i in range(5)]
            waiting.append(await post(http, "pdf", invoice(3, "INV-9"), priority="high"))
            assert {(await get(http, job_id))["status"] for job_id in waiting} == {"pending"}
            pids = (await (await http.get("/api/stats")).json())["scheduler"]["workers"]["pids"]
            assert len(pids) == 2

            children = server.kill()
            await asyncio.wait_for(follower, 10)
        assert set(pids) <= set(children)
        assert server.integrity() == "ok"

        async def orphans_gone() -> bool:
            return not any(alive(pid) for pid in children)

        await eventually(orphans_gone, 10, "the dead server's worker processes and fork server to exit")

        restarted = time.monotonic()
        await server.start()
        async with server.session() as http:
            follower = asyncio.create_task(log.follow(http, (exhausted,)))
            job = await until(http, rerun, lambda j: j["status"] == "running" and j["attempts"] == 2,
                              "to run again as attempt 2", timeout=10)
            assert time.monotonic() - restarted < 10, "the rescued job waited for its old lease"
            assert job["maxRetries"] == 3

            failed = await until(http, exhausted, lambda j: j["status"] in TERMINAL, "to end")
            assert failed["status"] == "failed" and failed["attempts"] == 1
            assert failed["error"]["type"] == "WorkerLost"
            assert "stopped before it finished" in failed["error"]["message"]

            for job_id in waiting:
                done = await until(http, job_id, lambda j: j["status"] in TERMINAL, "to end")
                assert done["status"] == "completed" and done["attempts"] == 1, done
            pdf = (await get(http, waiting[-1]))["result"]
            async with http.get(pdf["url"]) as response:
                assert response.status == 200 and (await response.read()).startswith(b"%PDF")

            gate.write_text("go")
            done = await until(http, rerun, lambda j: j["status"] in TERMINAL, "to end")
            assert done["status"] == "completed" and done["attempts"] == 2 and done["error"] is None
            assert done["result"]["value"]["steps"] == 2

            jobs = await all_jobs(http)
            assert set(jobs) == {rerun, exhausted, *waiting}
            assert not [j for j in jobs.values() if j["status"] in ("running", "pending")]
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
    log.check_seq()
    assert log.statuses(rerun)[-1] == "completed"
    assert log.statuses(exhausted)[-1] == "failed" and "running" in log.statuses(exhausted)


async def test_expired_lease_is_taken_back_and_the_old_attempt_cannot_finish(tmp_path: Path):
    """The mechanism under the restart: a node that stops renewing loses its running jobs at
    the lease's end, the attempt counts, and the node that lost it cannot record an outcome."""
    from offload.service.models import Job, new_job_id
    from offload.service.scheduler import LEASE_LOST
    from offload.service.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'lease.db'}")
    await store.open()
    try:
        t = 1_000_000
        for max_retries in (1, 0):
            await store.create(Job(new_job_id(), "test.echo", "local", {}, max_retries=max_retries, created_at=t))
        (again, last) = await store.claim("node_a", t, 1000, limit=2)
        assert await store.renew_leases("node_a", t + 1500) == 2  # renewed: not taken back in time
        assert await store.rescue_expired(t + 1400, LEASE_LOST) == []
        rescued = {job.id: job for job in await store.rescue_expired(t + 1501, LEASE_LOST)}
        assert rescued[again.id].status.value == "pending" and rescued[again.id].attempts == 1
        assert rescued[again.id].due_at == t + 1501 and rescued[again.id].lease_owner is None
        assert rescued[last.id].status.value == "failed" and rescued[last.id].error == LEASE_LOST
        assert await store.complete(again, {"value": "late"}, t + 1600) is None  # node_a lost it
        (rerun,) = await store.claim("node_b", t + 1700, 1000)
        assert rerun.id == again.id and rerun.attempts == 2 and rerun.seq > rescued[again.id].seq
        assert await store.fail(again, {"type": "Late", "message": "late"}, t + 1800, None) is None
        done = await store.complete(rerun, {"value": "ok"}, t + 1900)
        assert done is not None and done.status.value == "completed" and done.result == {"value": "ok"}
    finally:
        await store.close()


# ---- soak: kill -9 at random moments under load -----------------------------------------------

KILLS = 20


class Load:
    """Submits small jobs without pause, from several clients; remembers every job a 201
    acknowledged. Connection errors while the server is down are expected and skipped."""

    def __init__(self, server: ServerProcess, rng: random.Random) -> None:
        self.server = server
        self.rng = rng
        self.acknowledged: list[str] = []
        self.refused = 0
        self.running = True

    async def client(self, index: int) -> None:
        async with self.server.session(timeout=aiohttp.ClientTimeout(total=5)) as http:
            n = 0
            while self.running:
                n += 1
                if self.rng.random() < 0.3:
                    body = {"type": "pdf", "data": invoice(self.rng.randint(1, 40), f"INV-{index}-{n}")}
                else:
                    body = {"type": "test.echo", "data": {"client": index, "n": n}}
                try:
                    async with http.post("/api/jobs", json=body) as response:
                        if response.status == 201:
                            self.acknowledged.append((await response.json())["jobId"])
                        else:
                            self.refused += 1
                except (aiohttp.ClientError, TimeoutError, ConnectionError):
                    self.refused += 1
                    await asyncio.sleep(0.02)  # the server is down: do not spin on refused connections
                # pace the load so a backlog the 2 worker processes can clear builds up
                await asyncio.sleep(0.01)


@pytest.mark.timeout(150)
async def test_soak_random_kill_9_under_load_loses_nothing(tmp_path: Path):
    rng = random.Random(20261128)
    # Plenty of retries: a job that happens to be running at several kills must still end
    # completed; exhausting attempts is the first test's subject.
    with ServerProcess(tmp_path / "server", processes=2, lease_ms=2000, max_retries=10,
                       log_level="WARNING") as server:
        await server.start()
        load = Load(server, random.Random(rng.random()))
        log = EventLog()
        clients = [asyncio.create_task(load.client(i)) for i in range(3)]
        try:
            async with server.session() as http:
                for kill in range(KILLS):
                    follower = asyncio.create_task(log.follow(http))
                    await asyncio.sleep(rng.uniform(0.1, 1.2))  # a random moment under load
                    children = server.kill()
                    await asyncio.wait_for(follower, 10)
                    assert server.integrity() == "ok", f"kill {kill + 1}"
                    acknowledged = list(load.acknowledged)

                    if rng.random() < 0.25:  # now and then, die again while starting up
                        server.spawn()
                        await asyncio.sleep(rng.uniform(0.0, 0.3))
                        children += server.kill()
                        assert server.integrity() == "ok", f"kill {kill + 1} during start-up"

                    await server.start()
                    present = await all_jobs(http)
                    missing = [job_id for job_id in acknowledged if job_id not in present]
                    assert not missing, f"after kill {kill + 1}: {len(missing)} acknowledged jobs are missing"

                    async def orphans_gone(children: list[int] = children) -> bool:
                        return not any(alive(pid) for pid in children)

                    await eventually(orphans_gone, 10, f"the processes of the server killed ({kill + 1}) to exit")
        finally:
            load.running = False
            await asyncio.gather(*clients)
        assert len(load.acknowledged) > 200, "the load did not get through"

        async with server.session() as http:
            follower = asyncio.create_task(log.follow(http))

            async def all_done() -> dict[str, dict[str, Any]] | None:
                jobs = await all_jobs(http)
                return jobs if all(j["status"] in TERMINAL for j in jobs.values()) else None

            jobs = await eventually(all_done, 60, "every job to end")
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        assert set(load.acknowledged) <= set(jobs)
        not_completed = {job_id: j["error"] for job_id, j in jobs.items() if j["status"] != "completed"}
        assert not not_completed, not_completed
    log.check_seq()
