"""Several real `offload serve` nodes on one PostgreSQL schema (`tests/nodes.py`): jobs
spread over the nodes, events, cancels and downloads reach across them, and a node that
crashes or freezes loses no job and cannot overwrite what another node did meanwhile.

Every node is a real process with real worker processes; the faults are real signals
(SIGKILL, SIGSTOP/SIGCONT). Each test has its own schema, dropped afterwards.
"""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.nodes import Cluster, Watcher, cluster, pg_schema  # noqa: F401 - fixtures
from tests.server_process import get, post, until


def done(job: dict) -> bool:
    return job["status"] in ("completed", "failed", "cancelled")


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
