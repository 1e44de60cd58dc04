"""`GET /metrics` on a real server after a known set of jobs (tests/known_jobs.py), read back
with prometheus-client's own parser; who may scrape it; the token-free loopback listener."""
from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from offload.service.config import Config, ConfigError
from tests.known_jobs import run_known_jobs, submit
from tests.conftest import wait_status
from tests.users import TOKENS, A, B


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def scrape(client: TestClient, headers: dict[str, str] | None = None) -> dict[Any, float]:
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(await response.text())


async def test_metrics_after_known_jobs(start_server: Callable[..., Any]):
    client = await start_server()
    await run_known_jobs(client)
    m = await scrape(client)
    jobs = {(outcome, type): value(m, "offload_jobs_total", type=type, outcome=outcome)
            for outcome in ("completed", "failed", "cancelled", "retried") for type in ("test.echo", "test.fail")}
    assert jobs == {("completed", "test.echo"): 3, ("completed", "test.fail"): None,
                    ("failed", "test.echo"): None, ("failed", "test.fail"): 2,
                    ("cancelled", "test.echo"): 1, ("cancelled", "test.fail"): None,
                    ("retried", "test.echo"): None, ("retried", "test.fail"): 1}
    # Run time: the completed and failed jobs; queue wait: every start (the retry too).
    assert value(m, "offload_job_run_seconds_count", type="test.echo") == 3
    assert value(m, "offload_job_run_seconds_count", type="test.fail") == 2
    assert value(m, "offload_job_queue_wait_seconds_count", type="test.echo") == 3
    assert value(m, "offload_job_queue_wait_seconds_count", type="test.fail") == 3
    assert value(m, "offload_job_run_seconds_bucket", type="test.echo", le="+Inf") == 3
    assert 0 <= value(m, "offload_job_run_seconds_sum", type="test.echo") < 60  # type: ignore[operator]
    for priority in ("high", "medium", "low"):
        assert value(m, "offload_queue_depth", priority=priority) == 0
    assert value(m, "offload_jobs_delayed") == 1
    assert value(m, "offload_workers_alive") == 2 and value(m, "offload_workers_busy") == 0
    assert value(m, "offload_workers_max") == 2 and value(m, "offload_worker_restarts_total") == 0
    assert value(m, "offload_worker_memory_bytes", slot="0") > 0  # type: ignore[operator]
    assert value(m, "offload_websocket_connections") == 0
    node = (await (await client.get("/api/stats")).json())["scheduler"]["node"]
    assert value(m, "offload_node_info", node=node, store="sqlite") == 1
    commits = value(m, "offload_store_commit_seconds_count")
    assert commits and commits >= 1
    # Eight jobs stored, eleven transitions besides: at least that many writes were committed.
    assert value(m, "offload_store_batch_writes_sum") >= 8 + 11  # type: ignore[operator]


async def test_websocket_figures_in_metrics(start_server: Callable[..., Any]):
    client = await start_server()
    async with client.ws_connect("/api/ws") as ws:
        await ws.send_json({"op": "subscribe", "all": True})  # nothing to snapshot yet
        await ws.send_json({"op": "ping"})
        received = 1
        assert (await ws.receive_json())["event"] == "pong"  # subscribed: what follows is written live
        job_id = await submit(client, "test.echo", {"watched": True})
        await wait_status(client, job_id, "completed")
        while (await ws.receive_json()).get("status") != "completed":
            received += 1
        received += 1
        m = await scrape(client)
    assert value(m, "offload_websocket_connections") == 1
    # Every message the client read was counted, whether it was queued or written at once.
    assert value(m, "offload_websocket_events_sent_total") == received >= 2  # snapshot, ..., completed
    assert value(m, "offload_websocket_events_coalesced_total") is not None


async def test_each_app_has_its_own_registry(start_server: Callable[..., Any], make_config: Callable[..., Config],
                                             tmp_path):
    first = await start_server()
    done = await submit(first, "test.echo", {})
    await wait_status(first, done, "completed")
    second = await start_server(make_config(store={"url": f"sqlite:///{tmp_path / 'other.db'}"}))
    assert value(await scrape(first), "offload_jobs_total", type="test.echo", outcome="completed") == 1
    assert value(await scrape(second), "offload_jobs_total", type="test.echo", outcome="completed") is None


async def test_metrics_need_an_operator_token(start_server: Callable[..., Any]):
    client = await start_server(auth={**TOKENS["auth"], "admins": ["alice"]})
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer not-a-token-at-all"})).status == 401
    refused = await client.get("/metrics", headers=B)
    assert refused.status == 403
    assert (await refused.json())["error"]["code"] == "forbidden"
    assert value(await scrape(client, A), "offload_workers_alive") == 2


async def test_metrics_without_admins_are_refused_to_every_user(start_server: Callable[..., Any]):
    client = await start_server(**TOKENS)
    for headers in (A, B):
        assert (await client.get("/metrics", headers=headers)).status == 403


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_metrics_listener_answers_without_a_token_on_loopback(start_server: Callable[..., Any]):
    port = _free_port()
    client = await start_server(**TOKENS, metrics={"listen": f"127.0.0.1:{port}"})
    done = await submit(client, "test.echo", {}, headers=A)
    await wait_status(client, done, "completed", headers=A)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            m = parse(await response.text())
        async with session.get(f"http://127.0.0.1:{port}/api/stats") as response:
            assert response.status == 404  # that port serves the metrics alone
    assert value(m, "offload_jobs_total", type="test.echo", outcome="completed") == 1


def test_metrics_listener_must_be_loopback(make_config: Callable[..., Config]):
    with pytest.raises(ConfigError, match="not a loopback address"):
        from offload.service.config import load_config

        load_config(None, environ={}, overrides={"metrics": {"listen": "0.0.0.0:9464"}})
