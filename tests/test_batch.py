"""`POST /api/jobs/batch` on a real server: many jobs in one request and one transaction,
all or none, one answer per job in order, admitted like single submissions counted by the
batch's size, idempotency keys honoured per job, every job's events on `subscribe all`."""
from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import SAMPLE_INVOICE, eventually
from tests.conftest import both_backends as store_backend  # noqa: F401  (each test on SQLite and on PostgreSQL)
from tests.server_process import ServerProcess, post, until

HOUR_MS = 3_600_000


async def post_batch(client: TestClient, jobs: list[dict[str, Any]], status: int = 201) -> dict[str, Any]:
    response = await client.post("/api/jobs/batch", json={"jobs": jobs})
    body = await response.json()
    assert response.status == status, body
    return body


async def stored_jobs(client: TestClient) -> list[dict[str, Any]]:
    """Every job of the caller, following the pages."""
    jobs: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = await (await client.get(f"/api/jobs?limit=200&cursor={cursor}")).json()
        jobs += page["jobs"]
        if page["nextCursor"] is None:
            return jobs
        cursor = page["nextCursor"]


async def completed(client: TestClient) -> int:
    return (await (await client.get("/api/stats")).json())["jobs"]["completed"]


async def test_a_batch_of_100_jobs_is_stored_and_every_job_completes(start_server):
    client = await start_server()
    body = await post_batch(client, [{"type": "test.echo", "data": {"n": n}} for n in range(100)])
    answers = body["jobs"]
    assert len(answers) == 100 and len({a["jobId"] for a in answers}) == 100
    assert all(a["status"] == "pending" and a["created"] is True and a["createdAt"].endswith("Z") for a in answers)
    await eventually(lambda: _equals(completed(client), 100), what="100 completed jobs")
    assert {j["id"] for j in await stored_jobs(client)} == {a["jobId"] for a in answers}


async def _equals(value: Any, expected: Any) -> bool:
    return await value == expected


async def test_answers_come_in_the_order_of_the_jobs(start_server):
    client = await start_server()
    # the echo job's result is its data: each answer's job must carry the data sent at its place
    answers = (await post_batch(client, [{"type": "test.echo", "data": {"n": n}} for n in range(30)]))["jobs"]
    for n, answer in enumerate(answers):
        job = await eventually(lambda a=answer: _finished(client, a["jobId"]), what=f"job {n}")
        assert job["result"] == {"value": {"n": n}}, (n, job)


async def _finished(client: TestClient, job_id: str) -> dict[str, Any] | None:
    job = await (await client.get(f"/api/jobs/{job_id}")).json()
    return job if job["status"] == "completed" else None


async def test_a_batch_over_the_configured_limit_is_refused_naming_it(start_server):
    client = await start_server(limits={"max_batch_jobs": 5})
    refused = await post_batch(client, [{"type": "test.echo", "data": {}}] * 6, status=422)
    assert refused["error"]["code"] == "validation_error"
    assert "max_batch_jobs" in refused["error"]["message"] and "5" in refused["error"]["message"]
    assert (await post_batch(client, [], status=422))["error"]["message"].startswith("jobs:")
    assert len((await post_batch(client, [{"type": "test.echo", "data": {}}] * 5))["jobs"]) == 5
    assert len(await stored_jobs(client)) == 5


async def test_one_invalid_job_refuses_the_batch_naming_it_and_stores_nothing(start_server):
    client = await start_server()
    bad_invoice = {**SAMPLE_INVOICE, "order": {**SAMPLE_INVOICE["order"], "customer": {"address": "x"}}}
    jobs = [{"type": "test.echo", "data": {}}, {"type": "test.echo", "data": {}},
            {"type": "test.echo", "data": {}}, {"type": "pdf", "data": bad_invoice}]
    refused = await post_batch(client, jobs, status=422)
    assert refused["error"]["message"].startswith("jobs[3].data.order.customer.name:"), refused
    refused = await post_batch(client, [{"type": "test.echo", "data": {}}, "not a job"], status=422)
    assert refused["error"]["message"].startswith("jobs[1]:"), refused
    refused = await post_batch(client, [{"type": "test.echo", "data": {}, "options": {"maxRetries": 99}}], status=422)
    assert refused["error"]["message"].startswith("jobs[0].options.maxRetries:"), refused
    assert await stored_jobs(client) == []


async def test_idempotency_keys_are_honoured_per_job_across_batches(start_server):
    client = await start_server()
    first = (await post_batch(client, [
        {"type": "test.echo", "data": {"a": 1}, "options": {"idempotencyKey": "order-1"}},
        {"type": "test.echo", "data": {"b": 1}}]))["jobs"]
    second = (await post_batch(client, [
        {"type": "test.echo", "data": {"a": 1}, "options": {"idempotencyKey": "order-1"}},
        {"type": "test.echo", "data": {"c": 1}, "options": {"idempotencyKey": "order-2"}}]))["jobs"]
    assert second[0]["jobId"] == first[0]["jobId"] and second[0]["created"] is False
    assert second[1]["created"] is True and second[1]["jobId"] not in {a["jobId"] for a in first}
    # every job answers an earlier one: 200, as a repeated single POST
    again = await post_batch(client, [{"type": "test.echo", "data": {"c": 1},
                                       "options": {"idempotencyKey": "order-2"}}], status=200)
    assert again["jobs"][0]["jobId"] == second[1]["jobId"]
    # a key reused with another body refuses the whole batch, naming the job
    refused = await post_batch(client, [{"type": "test.echo", "data": {"d": 1}},
                                        {"type": "test.echo", "data": {"a": 2}, "options": {"idempotencyKey": "order-1"}}],
                               status=422)
    assert refused["error"]["message"].startswith("jobs[1].options.idempotencyKey:"), refused
    assert first[0]["jobId"] in refused["error"]["message"]
    assert len(await stored_jobs(client)) == 3


async def test_the_per_user_pending_cap_counts_the_whole_batch(start_server):
    client = await start_server(limits={"max_pending_per_user": 10})
    waiting = {"type": "test.echo", "data": {}, "options": {"delay": HOUR_MS}}  # stays pending
    await post_batch(client, [waiting] * 6)
    response = await client.post("/api/jobs/batch", json={"jobs": [waiting] * 5})  # 6 + 5 > 10
    assert response.status == 429 and int(response.headers["Retry-After"]) >= 1
    assert (await response.json())["error"]["code"] == "too_many_requests"
    assert len(await stored_jobs(client)) == 6
    await post_batch(client, [waiting] * 4)  # 6 + 4 fits
    assert len(await stored_jobs(client)) == 10


async def test_the_global_pending_cap_counts_the_whole_batch(start_server):
    client = await start_server(jobs={"max_pending": 10})
    waiting = {"type": "test.echo", "data": {}, "options": {"delay": HOUR_MS}}
    await post_batch(client, [waiting] * 6)
    response = await client.post("/api/jobs/batch", json={"jobs": [waiting] * 5})
    assert response.status == 429 and int(response.headers["Retry-After"]) >= 1
    assert "queue is full" in (await response.json())["error"]["message"]
    assert len(await stored_jobs(client)) == 6


async def test_a_batch_is_refused_with_503_while_the_service_shuts_down(tmp_path: Path):
    with ServerProcess(tmp_path / "server", processes=1, shutdown_grace=3.0) as server:
        await server.start()
        async with server.session() as http:
            spinning = await post(http, "test.spin", {})  # keeps the service draining
            await until(http, spinning, lambda j: j["status"] == "running", "to run")
            server.send(signal.SIGTERM)

            async def refused() -> tuple[int, Any, str] | None:
                async with http.post("/api/jobs/batch", json={"jobs": [{"type": "test.echo", "data": {}}]}) as response:
                    if response.status == 201:
                        return None  # sent before the signal was handled
                    return response.status, await response.json(), response.headers.get("Retry-After", "")

            status, body, retry_after = await eventually(refused, 5, "a batch to be refused")
            assert status == 503 and body["error"]["code"] == "shutting_down", body
            assert retry_after.isdigit() and int(retry_after) >= 1


async def test_the_submission_rate_counts_each_job_of_a_batch(start_server):
    client = await start_server(limits={"submit_rate": 0.01, "submit_burst": 10})
    await post_batch(client, [{"type": "test.echo", "data": {}}] * 8)
    response = await client.post("/api/jobs/batch", json={"jobs": [{"type": "test.echo", "data": {}}] * 3})
    assert response.status == 429 and int(response.headers["Retry-After"]) >= 1
    await post_batch(client, [{"type": "test.echo", "data": {}}] * 2)  # the last two tokens
    assert len(await stored_jobs(client)) == 10


async def test_subscribe_all_sees_every_job_of_a_batch_complete(start_server):
    client = await start_server()
    async with client.ws_connect("/api/ws") as ws:
        await ws.send_json({"op": "subscribe", "all": True})
        answers = (await post_batch(client, [{"type": "test.echo", "data": {"n": n}} for n in range(50)]))["jobs"]
        waiting = {a["jobId"] for a in answers}
        statuses: dict[str, list[str]] = {job_id: [] for job_id in waiting}
        async with asyncio.timeout(30):
            while waiting:
                event = await ws.receive_json()
                if event.get("event") == "status" and event["jobId"] in statuses:
                    statuses[event["jobId"]].append(event["status"])
                    if event["status"] == "completed":
                        waiting.discard(event["jobId"])
    # each job's whole life, from its commit in the batch (pending) to its completion
    assert all(seen == ["pending", "running", "completed"] for seen in statuses.values()), statuses
