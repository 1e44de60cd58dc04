"""`GET /api/stats` and the WebSocket's `stats` events, on a real server, after a known set of
jobs (tests/known_jobs.py). The wall clock is injected and stepped to move the last hour and
the day; nothing waits for time to pass."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from offload.service.app import create_app
from offload.service.config import Config
from offload.service.models import Clock
from offload.service.stats import percentile
from tests.conftest import eventually, wait_status
from tests.known_jobs import Wall, run_known_jobs, submit
from tests.users import TOKENS, A, B

HOUR_MS = 3_600_000


async def serve(config: Config, wall: Wall) -> TestClient:
    client = TestClient(TestServer(create_app(config, clock=Clock(wall)), host="127.0.0.1"))
    await client.start_server()
    return client


async def stats(client: TestClient, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = await client.get("/api/stats", headers=headers)
    assert response.status == 200
    return await response.json()


def without_rate(counts: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in counts.items() if k != "errorRate"}


def test_p95_is_the_nearest_rank():
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile([7], 95) == 7
    assert percentile([1, 2], 95) == 2


async def test_stats_after_known_jobs_count_each_status_window_and_type(make_config: Callable[..., Config],
                                                                      tmp_path):
    wall = Wall("2030-06-14T10:00:00+00:00")
    config = make_config(stats={"cache_ms": 0})
    client = await serve(config, wall)
    try:
        await run_known_jobs(client)
        # One worker busy (low priority), the other busy too, and one high job due behind them.
        gate = tmp_path / "gate"
        held = [await submit(client, "test.steps", {"n": 1, "gate": str(gate)}, priority="low") for _ in range(2)]
        for job_id in held:
            await wait_status(client, job_id, "running")
        queued = await submit(client, "test.echo", {"queued": True}, priority="high")
        now = await stats(client)
        assert now["byPriority"] == {"high": {"pending": 1, "running": 0}, "medium": {"pending": 0, "running": 0},
                                     "low": {"pending": 1, "running": 2}}
        assert now["queue"] == {"high": 1, "medium": 0, "low": 0} and now["delayed"] == 1
        processes = now["scheduler"]["workers"]["processList"]
        assert sorted(p["jobId"] for p in processes) == sorted(held)
        node = now["scheduler"]["node"]
        assert now["cluster"] == {"node": node, "runningByNode": {node: 2}}
        assert all(p["pid"] > 0 and p["memoryBytes"] > 0 and p["cpuPercent"] >= 0 for p in processes)
        gate.write_text("go")
        for job_id in (*held, queued):
            await wait_status(client, job_id, "completed")

        figures = await stats(client)
        assert figures["scope"] == "all"
        assert figures["jobs"] == {"pending": 1, "running": 0, "completed": 6, "failed": 2, "cancelled": 1}
        assert figures["queue"] == {"high": 0, "medium": 0, "low": 0} and figures["delayed"] == 1
        expected = {"completed": 6, "failed": 2, "cancelled": 1, "errorRate": 0.25}
        assert figures["recent"]["lastHour"] == expected
        assert figures["recent"]["today"] == expected
        types = figures["types"]
        assert set(types) == {"test.echo", "test.fail", "test.steps"}
        assert (types["test.echo"]["count"], types["test.echo"]["started"]) == (4, 4)
        assert (types["test.fail"]["count"], types["test.fail"]["started"]) == (2, 3)  # one retry: two starts
        assert (types["test.steps"]["count"], types["test.steps"]["started"]) == (2, 2)
        for figure in types.values():
            for key in ("runTime", "queueWait"):
                assert 0 <= figure[key]["meanMs"] and 0 <= figure[key]["p95Ms"], figure
        workers = figures["scheduler"]["workers"]
        assert (workers["processes"], workers["busy"], workers["restarts"]) == (2, 0, 0)
        assert [p["jobId"] for p in workers["processList"]] == [None, None]
        assert figures["websocket"]["connections"] == 0
        assert figures["uptimeSeconds"] >= 0 and figures["version"] == "0.1.0"

        wall.step_ms = 2 * HOUR_MS  # 12:00: the jobs finished more than an hour ago, still today
        later = await stats(client)
        assert later["recent"]["lastHour"] == {"completed": 0, "failed": 0, "cancelled": 0, "errorRate": None}
        assert later["recent"]["today"] == expected
        assert later["uptimeSeconds"] >= 2 * 3600
    finally:
        await client.close()

    client = await serve(config, wall)  # a restart the same day: today's figures come from the store
    try:
        restarted = await stats(client)
        assert restarted["recent"]["today"] == expected
        assert restarted["recent"]["lastHour"]["completed"] == 0
        assert restarted["types"] == {}  # the run-time window is this run's own
        wall.step_ms = 14 * HOUR_MS + 30 * 60_000  # 00:30 the next day
        assert without_rate((await stats(client))["recent"]["today"]) == {"completed": 0, "failed": 0, "cancelled": 0}
    finally:
        await client.close()


async def test_each_user_sees_their_own_figures_and_an_admin_everyones(make_config: Callable[..., Config]):
    wall = Wall("2030-06-14T10:00:00+00:00")
    client = await serve(make_config(auth={**TOKENS["auth"], "admins": ["alice"]}, stats={"cache_ms": 0}), wall)
    try:
        mine = [await submit(client, "test.echo", {"i": i}, headers=A) for i in range(2)]
        theirs = await submit(client, "test.fail", {"permanent": True}, headers=B)
        await submit(client, "test.echo", {"later": True}, headers=B, delay=86_400_000, priority="high")
        for job_id in mine:
            await wait_status(client, job_id, "completed", headers=A)
        await wait_status(client, theirs, "failed", headers=B)

        bob = await stats(client, B)
        assert bob["scope"] == "own"
        assert bob["jobs"] == {"pending": 1, "running": 0, "completed": 0, "failed": 1, "cancelled": 0}
        assert bob["recent"]["lastHour"] == {"completed": 0, "failed": 1, "cancelled": 0, "errorRate": 1.0}
        assert set(bob["types"]) == {"test.fail"} and bob["delayed"] == 1
        assert bob["byPriority"]["high"] == {"pending": 1, "running": 0}
        assert "scheduler" not in bob and "websocket" not in bob

        alice = await stats(client, A)
        assert alice["scope"] == "all"  # an admin sees the whole service
        assert alice["jobs"]["completed"] == 2 and alice["jobs"]["failed"] == 1
        assert alice["recent"]["lastHour"] == {"completed": 2, "failed": 1, "cancelled": 0, "errorRate": 0.3333}
        assert set(alice["types"]) == {"test.echo", "test.fail"}
        pids = [p["pid"] for p in alice["scheduler"]["workers"]["processList"]]
        text = await (await client.get("/api/stats", headers=B)).text()
        assert pids and not any(f'"pid":{pid}' in text for pid in pids)
    finally:
        await client.close()


async def _next_stats(ws: Any) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            event = await ws.receive_json()
            if event["event"] == "stats":
                return event["stats"]


async def test_websocket_stats_events_come_every_interval_until_unsubscribed(make_config: Callable[..., Config]):
    wall = Wall("2030-06-14T10:00:00+00:00")
    client = await serve(make_config(stats={"interval_s": 0.1, "cache_ms": 0}), wall)
    try:
        await run_known_jobs(client, delayed=False)
        async with client.ws_connect("/api/ws") as ws:
            await ws.send_json({"op": "subscribe", "stats": True})
            first = await _next_stats(ws)
            assert first["scope"] == "all"
            assert first["jobs"] == {"pending": 0, "running": 0, "completed": 3, "failed": 2, "cancelled": 1}
            assert first["recent"]["today"] == {"completed": 3, "failed": 2, "cancelled": 1, "errorRate": 0.4}
            assert first["websocket"]["connections"] == 1
            second = await _next_stats(ws)  # the next one, an interval later
            assert second["websocket"]["eventsSent"] > first["websocket"]["eventsSent"]

            await ws.send_json({"op": "unsubscribe", "stats": True})
            await ws.send_json({"op": "ping"})
            async with asyncio.timeout(10):
                while (await ws.receive_json())["event"] != "pong":
                    pass
            try:  # nothing after the pong: the feed stopped (waiting five intervals for a stray one)
                async with asyncio.timeout(0.5):
                    extra = await ws.receive_json()
                raise AssertionError(f"an event after unsubscribe: {extra}")
            except TimeoutError:
                pass
    finally:
        await client.close()


async def test_websocket_stats_of_a_user_are_their_own(make_config: Callable[..., Config]):
    wall = Wall("2030-06-14T10:00:00+00:00")
    client = await serve(make_config(**TOKENS, stats={"interval_s": 0.1, "cache_ms": 0}), wall)
    try:
        done = await submit(client, "test.echo", {"a": 1}, headers=A)
        await wait_status(client, done, "completed", headers=A)
        async with client.ws_connect("/api/ws", headers=B) as ws:
            await ws.send_json({"op": "subscribe", "stats": True})
            figures = await _next_stats(ws)
        assert figures["scope"] == "own" and figures["jobs"]["completed"] == 0
        assert figures["recent"]["today"]["completed"] == 0 and "websocket" not in figures

        async def alice_counts_hers() -> bool:
            return (await stats(client, A))["recent"]["today"]["completed"] == 1

        await eventually(alice_counts_hers, what="alice's completed job in her figures")
    finally:
        await client.close()


def test_finished_minutes_forget_what_is_older_than_today_and_the_last_hour():
    from offload.service.stats import FinishedMinutes

    minutes = FinishedMinutes()
    day = 1_000 * 86_400_000  # a midnight, UTC
    for minute in range(3 * 1440):  # three days, one job a minute, never read
        minutes.add("alice", "completed", day + minute * 60_000)
    kept = minutes._by_owner["alice"]
    assert len(kept) <= 1440 + 60 and min(kept) * 60_000 >= day + 2 * 86_400_000 - 3_600_000
    last = day + (3 * 1440 - 1) * 60_000
    assert minutes.totals("alice", last - 3_600_000 + 60_000)["completed"] == 60
    assert minutes.totals("bob", day)["completed"] == 0 and "bob" not in minutes._by_owner


def test_event_counts_say_what_was_coalesced_and_dropped():
    from offload.service.events import EventHub, Subscriber
    from offload.service.models import Job, JobStatus

    hub = EventHub()
    subscriber = Subscriber("u", limit=3, counts=hub.counts)
    hub.watch_job(subscriber, "job_a")
    for seq, percent in ((1, 10), (2, 20), (3, 30)):  # one queued progress, replaced twice
        hub.progress("job_a", "u", percent, None, seq)
    assert (hub.counts.coalesced, hub.counts.dropped) == (2, 0)
    for seq in (4, 5, 6):  # the third status event finds the outbox full (limit 3)
        hub.status(Job("job_a", "test.echo", "u", {}, status=JobStatus.RUNNING, seq=seq))
    assert hub.counts.dropped == 1
    subscriber.discard()  # the connection closes with three messages unsent
    assert hub.counts.dropped == 4
