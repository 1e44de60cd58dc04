"""Several real `offload serve` nodes on one PostgreSQL schema (`tests/nodes.py`): jobs
spread over the nodes, events, cancels and downloads reach across them, and a node that
crashes or freezes loses no job and cannot overwrite what another node did meanwhile.

Every node is a real process with real worker processes; the faults are real signals
(SIGKILL, SIGSTOP/SIGCONT). Each test has its own schema, dropped afterwards.
"""
from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from tests import nodes as harness
from tests.conftest import eventually
from tests.nodes import Cluster, Node, Watcher, holds, seq_of
from tests.nodetypes import payload
from tests.server_process import TERMINAL, all_jobs, get, post, until

pg_schema = harness.pg_schema  # the fixtures
cluster = harness.cluster


def done(job: dict) -> bool:
    return job["status"] in TERMINAL


# ---- the harness on one SQLite node (no PostgreSQL needed) ---------------------------------------
async def test_harness_one_sqlite_node_runs_watches_and_survives_a_kill(cluster, tmp_path: Path) -> None:
    nodes: Cluster = cluster({"url": f"sqlite:///{tmp_path / 'one.db'}"})
    a = nodes.add("a")
    await nodes.start()
    assert a.node_id and a.node_id.startswith("node_")
    async with a.session() as http, Watcher(a) as ws:
        await ws.subscribe()
        job_id = await post(http, "node.work", {"marks": str(nodes.marks), "n": 4})
        await ws.until_terminal(job_id)
        assert ws.problems(job_id, first_seq=0) == []
        job = await get(http, job_id)
        assert job["status"] == "completed" and job["result"]["value"]["node"] == "a", job
        held = await post(http, "node.work", {"marks": str(nodes.marks), "gate": str(nodes.gate("g"))})
        assert (await nodes.started(held))["node"] == "a"
    a.kill(signal.SIGKILL)
    await a.restart()
    nodes.open_gate("g")
    async with a.session() as http:
        job = await until(http, held, done, "finished after the restart")
        assert job["status"] == "completed" and job["attempts"] == 2, job


# ---- helpers --------------------------------------------------------------------------------------
def ran_by(job: dict) -> str:
    """The node whose worker completed the job (`node.work`'s JSON result)."""
    return job["result"]["value"]["node"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def running_rows(pg) -> list[dict]:
    return await pg.fetch("SELECT id, attempts, lease_owner, lease_until FROM jobs WHERE status = 'running'")


async def leases_are_live(pg, nodes: Cluster) -> list[str]:
    """What breaks "every running job has a live lease": a lease owner that is no running
    node, or a lease that ran out."""
    live = {node.node_id for node in nodes.nodes if node.running and not node.paused}
    now = now_ms()
    return [f"{row['id']}: lease of {row['lease_owner']} until {row['lease_until']} (now {now}, live {sorted(live)})"
            for row in await running_rows(pg) if row["lease_owner"] not in live or row["lease_until"] <= now]


# ---- spreading work ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3])
async def test_jobs_submitted_to_one_node_run_on_every_node(pg_schema, cluster, n: int) -> None:
    nodes: Cluster = cluster(pg_schema.store())
    names = "abc"[:n]
    for name in names:
        nodes.add(name)
    await nodes.start()
    a = nodes.nodes[0]
    gate = str(nodes.gate("g"))
    async with a.session() as http:
        # Held at the gate, each node's one worker keeps its job: the rest must go elsewhere.
        ids = [await post(http, "node.work", {"marks": str(nodes.marks), "gate": gate}) for _ in range(3 * n)]

        async def every_node_started() -> bool:
            return {mark["node"] for job_id in ids if (mark := nodes.mark(job_id))} == set(names)

        await eventually(every_node_started, 20, f"each of the {n} nodes to start one of the jobs")
        nodes.open_gate("g")
        jobs = [await until(http, job_id, done, "finished") for job_id in ids]
    assert [job["status"] for job in jobs] == ["completed"] * len(ids), jobs
    assert {ran_by(job) for job in jobs} == set(names)
    assert [job["attempts"] for job in jobs] == [1] * len(ids)  # each ran once, on one node
    assert await running_rows(pg_schema) == []


# ---- events across nodes ---------------------------------------------------------------------------
async def test_websocket_on_one_node_sees_every_event_of_a_job_on_another(pg_schema, cluster) -> None:
    nodes: Cluster = cluster(pg_schema.store())
    by_name = await nodes.pair()
    a, b = by_name["a"], by_name["b"]
    async with a.session() as http, Watcher(a) as all_a, Watcher(b) as all_b:
        await all_a.subscribe()
        await all_b.subscribe()
        job_id = await post(http, "node.work", {"marks": str(nodes.marks), "hold": str(nodes.gate("h")), "n": 5})
        runner = (await nodes.started(job_id))["node"]
        other = by_name["b" if runner == "a" else "a"]
        async with Watcher(other) as one:
            await one.subscribe(job_id)  # a snapshot of the job running elsewhere, then its events
            nodes.open_gate("h")
            await one.until_terminal(job_id)
            await all_a.until_terminal(job_id)
            await all_b.until_terminal(job_id)
    events = one.events[job_id]
    assert events[0]["event"] == "snapshot" and events[0]["job"]["status"] == "running", events
    assert one.problems(job_id) == []
    progress = [e["progress"] for e in events if e["event"] == "progress"]
    assert progress and progress == sorted(progress) and progress[-1] == 100, events
    assert events[-1]["status"] == "completed" and ran_by(events[-1]["job"]) == runner
    # Both subscribe-all sockets saw the whole story, from the insert on, the same one.
    for watcher in (all_a, all_b):
        assert watcher.problems(job_id, first_seq=0) == [], watcher.node.name
    assert [(e["event"], e.get("seq")) for e in all_a.events[job_id]] == \
        [(e["event"], e.get("seq")) for e in all_b.events[job_id]]


async def test_a_lost_notification_is_made_up_by_the_poll_and_nothing_follows_a_final_status(pg_schema,
                                                                                            cluster) -> None:
    """A change committed without its notification (written here straight into the table, as
    a lost NOTIFY leaves it) reaches a WebSocket within a poll (`poll_ms`); and a job whose
    final status the socket already had is not sent again, nor any older state of it, by the
    polls that follow. The probe's change tells the test that a poll ran after a given moment."""
    nodes: Cluster = cluster(pg_schema.store(poll_ms=200))
    a = nodes.add("a")
    nodes.add("b")  # which may run the job: a hears of it through its notifications
    await nodes.start()
    async with a.session() as http, Watcher(a) as ws:
        await ws.subscribe()
        probe = await post(http, "node.work", {}, delay=3_600_000)  # pending for an hour: never runs here
        job_id = await post(http, "node.work", {"marks": str(nodes.marks), "gate": str(nodes.gate("g"))})
        await nodes.started(job_id)

        async def a_poll_ran() -> None:
            rows = await pg_schema.fetch("UPDATE jobs SET seq = seq + 1, message = 'probe' WHERE id = $1 "
                                         "RETURNING seq", probe)
            seq = rows[0]["seq"]
            await holds(lambda: any(seq_of(e) == seq for e in ws.events[probe]), 10,
                        f"the poll to publish the probe's seq {seq}, which nobody notified")

        await a_poll_ran()  # one poll saw the job unfinished
        nodes.open_gate("g")
        await ws.until_terminal(job_id)
        await a_poll_ran()  # and one ran after its final status was sent
        await a_poll_ran()
        # A job stored and finished with every notification lost (straight into the table):
        # a `subscribe all` socket still gets its final status from a poll.
        silent = "job_stored_without_notification"
        await pg_schema.fetch(
            "INSERT INTO jobs (id, owner, type, status, priority, data, progress, attempts, max_retries, "
            "retry_delay_ms, seq, created_at, started_at, completed_at, due_at, result) "
            "SELECT $1, owner, type, 'completed', priority, data, 100, 1, max_retries, retry_delay_ms, 2, now_ms, "
            "now_ms, now_ms, now_ms, '{\"value\": 1}' FROM jobs, "
            "(SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now_ms) AS clock WHERE id = $2",
            silent, probe)
        await holds(lambda: any(e.get("status") == "completed" for e in ws.events[silent]), 10,
                    "the poll to publish a job stored and finished without a notification")
    assert ws.problems(job_id, first_seq=0) == []


# ---- cancels across nodes ----------------------------------------------------------------------------
async def test_cancel_on_one_node_stops_the_attempt_on_another(pg_schema, cluster) -> None:
    nodes: Cluster = cluster(pg_schema.store())
    by_name = await nodes.pair()
    a = by_name["a"]
    async with a.session() as http:
        job_id = await post(http, "node.work", {"marks": str(nodes.marks), "gate": str(nodes.gate("never"))})
    runner = by_name[(await nodes.started(job_id))["node"]]
    other = by_name["b" if runner is a else "a"]
    assert (await runner.stats())["scheduler"]["workers"]["busy"] == 1
    async with other.session() as http:
        async with http.delete(f"/api/jobs/{job_id}") as response:
            body = await response.json()
            assert response.status in (200, 202), body
        job = await until(http, job_id, done, "cancelled", timeout=10)
    assert job["status"] == "cancelled", job
    async def worker_free() -> bool:
        stats = await runner.stats()
        return stats["scheduler"]["running"] == 0 and stats["scheduler"]["workers"]["busy"] == 0

    await eventually(worker_free, 10, f"node {runner.name} to stop the cancelled attempt")
    assert nodes.mark(job_id, 1, "finished") is None  # it stopped where it waited


# ---- wake-ups across nodes ---------------------------------------------------------------------------
async def test_a_job_submitted_on_one_node_starts_on_an_idle_node_through_its_notification(pg_schema,
                                                                                            cluster) -> None:
    """Node b looks at the database by itself only every 60 s (poll_ms) and claims again by
    itself only at its lease renewal (every lease_ms / 3 = 20 s): a start within 10 s is the
    notification's doing."""
    nodes: Cluster = cluster(pg_schema.store(), lease_ms=60_000)
    a = nodes.add("a", sections={"limits": {"max_running_per_user": 1}})  # runs one job at a time, reserves none
    b = nodes.add("b", store={"poll_ms": 60_000})
    await nodes.start(a)
    marks = str(nodes.marks)
    async with a.session() as http:
        blocker = await post(http, "node.work", {"marks": marks, "gate": str(nodes.gate("g"))})
        assert (await nodes.started(blocker))["node"] == "a"
        await nodes.start(b)
        async with b.session() as http_b:  # b's first passes are over: it sleeps, with nothing to do
            warm = await post(http_b, "node.work", {"marks": marks})
            assert ran_by(await until(http_b, warm, done, "finished")) == "b"
        job_id = await post(http, "node.work", {"marks": marks})
        assert (await nodes.started(job_id, timeout=10))["node"] == "b"
        nodes.open_gate("g")
        assert (await until(http, job_id, done, "finished"))["status"] == "completed"


def nodes_of(nodes: Cluster, job_id: str) -> list[str]:
    """The nodes whose workers started the job's attempts, in order."""
    return [mark["node"] for attempt in range(1, 12) if (mark := nodes.mark(job_id, attempt))]


# ---- crashes and freezes -------------------------------------------------------------------------------
async def test_a_killed_node_s_running_jobs_finish_on_another_after_its_lease(pg_schema, cluster) -> None:
    nodes: Cluster = cluster(pg_schema.store(), processes=2, lease_ms=2000)
    by_name = await nodes.pair()
    a = by_name["a"]
    gate = str(nodes.gate("g"))
    async with a.session() as http:
        ids = [await post(http, "node.work", {"marks": str(nodes.marks), "gate": gate}) for _ in range(4)]
    marks = {job_id: await nodes.started(job_id) for job_id in ids}
    victim_name = max("ab", key=lambda name: sum(mark["node"] == name for mark in marks.values()))
    victim, survivor = by_name[victim_name], by_name["b" if victim_name == "a" else "a"]
    lost = [job_id for job_id, mark in marks.items() if mark["node"] == victim_name]
    dead_id = victim.node_id
    victim.kill(signal.SIGKILL, group=True)  # the machine died: server and workers

    async def rescued() -> bool:
        return not any(row["lease_owner"] == dead_id for row in await running_rows(pg_schema))

    await eventually(rescued, 15, f"the jobs of the killed node {victim_name} to be taken back")
    assert await leases_are_live(pg_schema, nodes) == []
    nodes.open_gate("g")
    async with survivor.session() as http:
        jobs = {job_id: await until(http, job_id, done, "finished") for job_id in ids}
    assert {job["status"] for job in jobs.values()} == {"completed"}, jobs
    for job_id in lost:  # run again, on the node that lived
        assert jobs[job_id]["attempts"] == 2 and ran_by(jobs[job_id]) == survivor.name, jobs[job_id]
    assert await running_rows(pg_schema) == []


async def test_a_frozen_node_s_late_completion_is_refused(pg_schema, cluster) -> None:
    nodes: Cluster = cluster(pg_schema.store(), lease_ms=2000)
    by_name = await nodes.pair()
    a, b = by_name["a"], by_name["b"]
    data = {"marks": str(nodes.marks), "gate": str(nodes.gate("g")), "file": True, "seed": 7, "size": 5000}
    async with Watcher(a) as all_a, Watcher(b) as all_b:
        await all_a.subscribe()
        await all_b.subscribe()
        async with a.session() as http:
            job_id = await post(http, "node.work", data, maxRetries=3)
        frozen = by_name[(await nodes.started(job_id))["node"]]
        other = by_name["b" if frozen is a else "a"]
        frozen.pause()  # past its lease: the other node takes the job over
        try:
            assert (await nodes.started(job_id, 2, timeout=15))["node"] == other.name
            nodes.open_gate("g")  # both attempts may finish now; only the second one has the job
            async with other.session() as http:
                job = await until(http, job_id, done, "completed by the other node")
        finally:
            frozen.resume()
        assert job["status"] == "completed" and job["attempts"] == 2, job
        async def refused() -> bool:  # the first attempt finished too, late, and was turned away
            return nodes.mark(job_id, 1, "finished") is not None and "its outcome is discarded" in frozen.tail(200)

        await eventually(refused, 15, f"node {frozen.name} to finish its late attempt and have it refused")
        await all_a.until_terminal(job_id)
        await all_b.until_terminal(job_id)
        async with frozen.session() as http:  # the frozen node, awake, tells the same story
            seen = await get(http, job_id)
            assert seen["status"] == "completed" and seen["attempts"] == 2, seen
            async with http.get(f"/api/jobs/{job_id}/download") as response:
                assert response.status == 200
                body = await response.read()
    rows = await pg_schema.fetch("SELECT status, attempts, result FROM jobs WHERE id = $1", job_id)
    assert len(rows) == 1 and rows[0]["status"] == "completed" and rows[0]["attempts"] == 2, rows
    assert body == f"{other.name} attempt 2\n".encode() + payload(7, 5000)
    assert sorted(p.name for p in nodes.results.iterdir() if job_id in p.name) == [f"{job_id}-2.bin"]
    for watcher in (all_a, all_b):
        ends = [e for e in watcher.events[job_id] if e["event"] == "status" and e["status"] in TERMINAL]
        assert len(ends) == 1, (watcher.node.name, watcher.events[job_id])
        assert watcher.problems(job_id, first_seq=0) == [], watcher.node.name


# ---- results across nodes ------------------------------------------------------------------------------
async def test_a_result_completed_on_one_node_downloads_byte_identical_through_another(pg_schema, cluster) -> None:
    nodes: Cluster = cluster(pg_schema.store())
    by_name = await nodes.pair()
    a = by_name["a"]
    async with a.session() as http:
        job_id = await post(http, "node.work", {"marks": str(nodes.marks), "file": True, "seed": 11, "size": 300_000})
        job = await until(http, job_id, done, "completed")
    assert job["status"] == "completed", job
    runner = by_name[nodes.mark(job_id)["node"]]
    other = by_name["b" if runner is a else "a"]
    expected = f"{runner.name} attempt 1\n".encode() + payload(11, 300_000)
    for node in (other, runner):
        async with node.session() as http, http.get(f"/api/jobs/{job_id}/download") as response:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"] == "application/octet-stream"
            assert await response.read() == expected, node.name


# ---- a soak of crashes ------------------------------------------------------------------------------------
KILLS = 20
#: Unfinished jobs the submitters keep at most (as the watcher sees them): the queue stays short,
#: so the drain at the end is quick, whatever the machine's speed.
IN_FLIGHT = 12


@pytest.mark.timeout(150)
async def test_soak_random_kills_under_submissions_lose_no_job_and_no_event(pg_schema, cluster) -> None:
    """Three nodes; node a is never killed and carries the WebSocket; b and c are killed
    with SIGKILL (the server alone, or its whole process group) twenty times between them
    and restarted, while jobs are submitted to all three. Every job acknowledged with 201
    ends, and a's socket saw each one's events from its insert to its final status without
    a gap."""
    rng = random.Random(int(time.time()))
    nodes: Cluster = cluster(pg_schema.store(), lease_ms=1500)
    a, b, c = nodes.add("a"), nodes.add("b"), nodes.add("c")
    await nodes.start()
    acked: list[str] = []
    origin: dict[str, str] = {}  # job id -> the node that acknowledged it
    refused = 0
    stop = asyncio.Event()

    async with Watcher(a) as ws:
        await ws.subscribe()

        def unfinished() -> int:
            return sum(1 for job_id in acked if ws.terminal(job_id) is None)

        async def submitter(node: Node) -> None:
            nonlocal refused
            data = {"marks": str(nodes.marks), "n": 2}
            while not stop.is_set():
                if unfinished() >= IN_FLIGHT:
                    await holds(lambda: unfinished() < IN_FLIGHT or stop.is_set(), 30, "the queue to drain")
                    continue
                if not node.up:
                    await holds(lambda: node.up or stop.is_set(), 30, f"node {node.name} back")
                    continue
                try:
                    async with node.session() as http, http.post(
                            "/api/jobs", json={"type": "node.work", "data": data, "options": {"maxRetries": 10}},
                            timeout=aiohttp.ClientTimeout(total=10)) as response:
                        body = await response.json()
                        if response.status == 201:
                            acked.append(body["jobId"])
                            origin[body["jobId"]] = node.name
                        else:
                            refused += 1
                except (aiohttp.ClientError, ConnectionError, TimeoutError):
                    refused += 1  # the node died under the request: not acknowledged

        submitters = [asyncio.create_task(submitter(node)) for node in (a, b, c)]
        try:
            for kill in range(KILLS):
                victim = rng.choice((b, c))
                before = len(acked)
                victim.kill(signal.SIGKILL, group=kill % 2 == 1)
                await victim.restart()
                # Let the cluster work a little with the node back before the next crash.
                await holds(lambda before=before: len(acked) >= before + 5, 30, "submissions after a restart")
        finally:
            stop.set()
            await asyncio.gather(*submitters)

        async def all_ended() -> bool:
            return all(ws.terminal(job_id) is not None for job_id in acked)

        await eventually(all_ended, 40, f"every acknowledged job ({len(acked)}) to end on a's WebSocket")
        async with a.session() as http:
            jobs = await all_jobs(http)
    assert len(acked) == len(set(acked)) >= KILLS * 5
    missing = [job_id for job_id in acked if job_id not in jobs]
    assert missing == [], f"{len(missing)} acknowledged jobs are gone: {missing[:5]}"
    statuses = {job_id: jobs[job_id]["status"] for job_id in acked}
    assert set(statuses.values()) == {"completed"}, [jobs[j] for j, s in statuses.items() if s != "completed"][:3]
    problems = [f"{problem} (submitted on {origin[job_id]}, ran on {', '.join(nodes_of(nodes, job_id))})"
                for job_id in acked for problem in ws.problems(job_id, first_seq=0)]
    assert problems == [], f"{len(problems)} problems in the events, e.g. {problems[:5]}"
    assert await running_rows(pg_schema) == []
    reruns = sum(jobs[job_id]["attempts"] > 1 for job_id in acked)
    print(f"soak: {len(acked)} jobs acknowledged, {refused} refused or cut off, {reruns} ran again")

