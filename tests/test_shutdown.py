"""Graceful shutdown of the real server process on SIGTERM and Ctrl-C (SIGINT)."""
from __future__ import annotations

import asyncio

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import eventually
from tests.server_process import TERMINAL, ServerProcess, get, post, until

GRACE = 3.0


def stored(db: Path, job_id: str) -> tuple[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT status, attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        conn.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_refuses_new_jobs_drains_running_ones_and_exits_0(tmp_path: Path, sig: signal.Signals):
    gate = tmp_path / "gate"
    with ServerProcess(tmp_path / "server", processes=2, shutdown_grace=GRACE) as server:
        await server.start()
        async with server.session() as http:
            finishing = await post(http, "test.steps", {"n": 2, "gate": str(gate)})
            stuck = await post(http, "test.spin", {})
            for job_id in (finishing, stuck):
                await until(http, job_id, lambda j: j["status"] == "running", "to run")
            ws = await http.ws_connect("/api/ws")
            await ws.send_json({"op": "subscribe", "all": True})
            # Each job's snapshot, then its live events: the finishing job's last progress
            # report may come between the two snapshots.
            snapshots: dict[str, Any] = {}
            while len(snapshots) < 2:
                event = await asyncio.wait_for(ws.receive_json(), 10)
                if event["event"] == "snapshot":
                    snapshots[event["job"]["id"]] = event
            assert set(snapshots) == {finishing, stuck}

            server.send(sig, group=sig == signal.SIGINT)  # Ctrl-C reaches the workers too
            signalled = time.monotonic()
            accepted: list[str] = []  # submitted before the signal was handled: kept and run later

            async def refused() -> tuple[int, Any] | None:
                async with http.post("/api/jobs", json={"type": "test.echo", "data": {"late": True}}) as response:
                    body = await response.json()
                    if response.status == 201:
                        accepted.append(body["jobId"])
                        return None
                    return response.status, body, response.headers.get("Retry-After", "")

            status, body, retry_after = await eventually(refused, 5, "a submission to be refused")
            assert status == 503 and body["error"]["code"] == "shutting_down", body
            assert "shutting down" in body["error"]["message"]
            assert retry_after.isdigit() and int(retry_after) >= 1, retry_after
            async with http.get("/api/health/ready") as response:
                assert response.status == 503 and (await response.json())["error"]["code"] == "shutting_down"
                assert response.headers["Retry-After"].isdigit()
            async with http.get("/api/health") as response:
                assert response.status == 200 and (await response.json())["accepting"] is False

            gate.write_text("go")  # the finishing job ends within the grace period
            events: list[dict[str, Any]] = []
            async for message in ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    break
                events.append(message.json())
            assert ws.close_code == 1001, (ws.close_code, events)
            closed = time.monotonic()

        code = server.wait(GRACE + 15)
        assert code == 0, server.tail()
        # The stuck job was stopped only once the grace period was over.
        assert closed - signalled >= GRACE - 0.5, closed - signalled

        ends = {e["jobId"]: e for e in events if e["event"] == "status"}
        assert ends[finishing]["status"] == "completed"
        assert ends[finishing]["job"]["result"]["value"]["steps"] == 2
        assert ends[stuck]["status"] == "pending" and ends[stuck]["job"]["attempts"] == 0
        assert stored(server.db, stuck) == ("pending", 0)
        assert stored(server.db, finishing) == ("completed", 1)
        assert server.integrity() == "ok"
        wal = server.db.with_name(server.db.name + "-wal")
        assert not wal.exists() or wal.stat().st_size == 0, "the database was not closed cleanly"
        assert "Traceback" not in server.log.read_text(), server.tail()
        drained = "offload: drain done: 1 running job finished, 1 running job returned to pending"
        assert server.log.read_text().count(drained) == 1, server.tail()

        # After a restart the job handed back runs again, as its first attempt.
        await server.start()
        async with server.session() as http:
            job = await until(http, stuck, lambda j: j["status"] == "running", "to run again")
            assert job["attempts"] == 1
            for job_id in accepted:
                done = await until(http, job_id, lambda j: j["status"] in TERMINAL, "to end")
                assert done["status"] == "completed"
            assert (await get(http, finishing))["status"] == "completed"
            async with http.delete(f"/api/jobs/{stuck}") as response:
                assert response.status == 200 and (await response.json())["status"] == "cancelled"
        assert server.stop(signal.SIGTERM) == 0, server.tail()
        assert stored(server.db, stuck) == ("cancelled", 1)


async def test_signal_when_idle_exits_at_once(tmp_path: Path):
    with ServerProcess(tmp_path / "server", shutdown_grace=GRACE) as server:
        await server.start()
        async with server.session() as http:
            job_id = await post(http, "test.echo", {"hello": 1})
            await until(http, job_id, lambda j: j["status"] == "completed", "to complete")
        signalled = time.monotonic()
        assert server.stop(signal.SIGTERM) == 0, server.tail()
        assert time.monotonic() - signalled < GRACE, "an idle server waited for the grace period"
        # Printed at once, while log lines reach the file in batches: the drain's line may
        # come before the last few log lines, not necessarily among them.
        assert "offload: drain done: no running jobs" in server.log.read_text()


async def test_a_second_signal_during_the_drain_stops_at_once_and_hands_the_job_back(tmp_path: Path):
    with ServerProcess(tmp_path / "server", processes=1, shutdown_grace=600) as server:
        await server.start()
        async with server.session() as http:
            stuck = await post(http, "test.spin", {})  # would hold the drain for the whole grace
            await until(http, stuck, lambda j: j["status"] == "running", "to run")

        async def draining() -> bool:
            return "SIGINT: stopping" in server.log.read_text()

        server.send(signal.SIGINT, group=True)  # Ctrl-C
        await eventually(draining, 10, "the drain to begin")
        server.send(signal.SIGINT, group=True)  # Ctrl-C again
        assert server.wait(30) == 0, server.tail()  # long before the grace of 600 s is over
        log = server.log.read_text()
        assert "SIGINT again: stopping now" in log and "Traceback" not in log, server.tail()
        assert log.count("offload: drain done: 1 running job returned to pending") == 1, server.tail()
        assert stored(server.db, stuck) == ("pending", 0)  # handed back, the attempt not counted
        assert server.integrity() == "ok"

        await server.start()
        async with server.session() as http:
            job = await until(http, stuck, lambda j: j["status"] == "running", "to run again")
            assert job["attempts"] == 1
            async with http.delete(f"/api/jobs/{stuck}") as response:
                assert response.status == 200 and (await response.json())["status"] == "cancelled"
        assert server.stop(signal.SIGTERM) == 0, server.tail()
