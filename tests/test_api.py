"""The core service end to end: REST, WebSocket, worker processes, SQLite, restarts."""
from __future__ import annotations

import asyncio
import io

import pytest
from pypdf import PdfReader

from tests.conftest import SAMPLE_INVOICE, invoice, submit, wait_status, ws_events_until
from tests.conftest import both_backends as store_backend  # noqa: F401  (each test on SQLite and on PostgreSQL)


async def test_submit_answers_201_with_pending_job(start_server):
    client = await start_server()
    response = await client.post("/api/jobs", json={"type": "pdf", "data": SAMPLE_INVOICE, "options": {"priority": "high"}})
    assert response.status == 201
    body = await response.json()
    assert body["status"] == "pending"
    assert body["jobId"].startswith("job_") and len(body["jobId"]) >= 4 + 20
    assert body["createdAt"].endswith("Z")


async def test_websocket_streams_snapshot_running_progress_and_completion(start_server, tmp_path):
    client = await start_server()
    hold = tmp_path / "hold"
    job_id = await submit(client, "test.steps", {"n": 4, "hold": str(hold)})  # no progress until `hold`
    await wait_status(client, job_id, "running")
    async with client.ws_connect("/api/ws") as ws:
        await ws.send_json({"op": "subscribe", "jobId": job_id})
        first = await ws.receive_json()
        assert first["event"] == "snapshot" and first["job"]["id"] == job_id
        assert (first["job"]["status"], first["job"]["progress"]) == ("running", 0)
        hold.write_text("go")
        events = [first, *await ws_events_until(ws, job_id)]
    assert [e["status"] for e in events if e["event"] == "status"] == ["completed"]
    progress = [e["progress"] for e in events if e["event"] == "progress"]
    assert progress and progress == sorted(progress) and progress[-1] == 100, progress  # may be coalesced
    assert set(progress) <= {25, 50, 75, 100}, progress
    assert events[-1]["job"]["progress"] == 100
    assert events[-1]["job"]["result"]["value"]["steps"] == 4
    seqs = [e.get("seq", e.get("job", {}).get("seq")) for e in events]
    assert len(seqs) >= 3 and seqs == sorted(set(seqs)), seqs  # snapshot, progress…, completed


async def test_subscribe_after_completion_gets_terminal_snapshot(start_server):
    client = await start_server()
    job_id = await submit(client, "test.echo", {"hello": "world"})
    done = await wait_status(client, job_id, "completed")
    async with client.ws_connect("/api/ws") as ws:
        await ws.send_json({"op": "subscribe", "jobId": job_id})
        snapshot = await ws.receive_json()
    assert snapshot["event"] == "snapshot"
    assert snapshot["job"]["status"] == "completed"
    assert snapshot["job"]["seq"] == done["seq"]
    assert snapshot["job"]["result"] == {"value": {"hello": "world"}}


async def test_invoice_pdf_downloads_as_real_multipage_pdf(start_server):
    client = await start_server()
    job_id = await submit(client, "pdf", invoice(500, "INV-5000"), priority="high")
    async with client.ws_connect("/api/ws") as ws:
        await ws.send_json({"op": "subscribe", "jobId": job_id})
        events = await ws_events_until(ws, job_id)
    final = events[-1]["job"]
    assert final["status"] == "completed", final
    assert final["result"]["contentType"] == "application/pdf"
    assert final["result"]["url"] == f"/api/jobs/{job_id}/download"
    response = await client.get(final["result"]["url"])
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/pdf"
    assert 'filename="invoice-INV-5000.pdf"' in response.headers["Content-Disposition"]
    body = await response.read()
    assert len(body) == final["result"]["size"]
    reader = PdfReader(io.BytesIO(body))
    assert len(reader.pages) > 3
    assert "INV-5000" in reader.pages[0].extract_text()
    # 500 items, quantity 1 + i % 3, price 1.25 + i, tax 20 %
    from decimal import Decimal
    subtotal = sum(Decimal(1 + i % 3) * (Decimal("1.25") + i) for i in range(500))
    total = (subtotal * Decimal("1.2")).quantize(Decimal("0.01"))
    assert f"{total:,.2f}" in reader.pages[-1].extract_text()


async def test_async_job_type_runs_on_the_loop_with_progress(start_server):
    client = await start_server(workers={"processes": 1})
    async with client.ws_connect("/api/ws") as ws:
        await ws.send_json({"op": "subscribe", "all": True})  # before the job exists: every event of it
        await ws.send_json({"op": "ping"})
        assert await ws.receive_json() == {"event": "pong"}
        job_id = await submit(client, "test.async_steps", {"n": 4})
        events = await ws_events_until(ws, job_id)
    final = events[-1]["job"]
    assert (final["status"], final["result"], final["attempts"]) == ("completed", {"value": {"steps": 4}}, 1)
    assert [e["status"] for e in events if e["event"] == "status"] == ["pending", "running", "completed"]
    progress = [e["progress"] for e in events if e["event"] == "progress"]
    assert progress and progress == sorted(progress) and progress[-1] == 100, progress
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs)), seqs


async def test_large_invoice_travels_to_its_worker_and_back(start_server):
    client = await start_server()
    job_id = await submit(client, "pdf", invoice(5000, "INV-BIG"))
    done = await wait_status(client, job_id, "completed", "failed")
    assert done["status"] == "completed", done
    reader = PdfReader(io.BytesIO(await (await client.get(f"/api/jobs/{job_id}/download")).read()))
    assert len(reader.pages) > 50


async def test_list_filters_and_pages_newest_first(start_server):
    client = await start_server(workers={"processes": 1})
    ids = [await submit(client, "test.echo", {"i": i}, delay=3_600_000) for i in range(5)]
    other = await submit(client, "test.fail", {"permanent": True})
    await wait_status(client, other, "failed")

    response = await client.get("/api/jobs", params={"limit": "2", "type": "test.echo"})
    page = await response.json()
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2]
    seen = [j["id"] for j in page["jobs"]]
    while page["nextCursor"]:
        page = await (await client.get("/api/jobs", params={"limit": "2", "type": "test.echo",
                                                             "cursor": page["nextCursor"]})).json()
        seen += [j["id"] for j in page["jobs"]]
    assert seen == ids[::-1]

    failed = await (await client.get("/api/jobs", params={"status": "failed"})).json()
    assert [j["id"] for j in failed["jobs"]] == [other]
    bad = await client.get("/api/jobs", params={"status": "sleeping"})
    assert bad.status == 422 and "status" in (await bad.json())["error"]["message"]
    assert (await client.get("/api/jobs", params={"cursor": "nonsense"})).status == 422
    assert (await client.get("/api/jobs", params={"limit": "0"})).status == 422


async def test_get_unknown_job_is_404(start_server):
    client = await start_server()
    for path in ("/api/jobs/job_aaaaaaaaaaaaaaaaaaaaaaaa", "/api/jobs/../etc", "/api/jobs/job_%2e%2e%2fetc"):
        response = await client.get(path)
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"


async def test_cancel_pending_job_then_409(start_server):
    client = await start_server()
    job_id = await submit(client, "test.echo", {}, delay=3_600_000)
    response = await client.delete(f"/api/jobs/{job_id}")
    assert response.status == 200
    assert (await response.json())["status"] == "cancelled"
    again = await client.delete(f"/api/jobs/{job_id}")
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "conflict"


async def test_priority_order_high_medium_low_fifo_within(start_server, tmp_path):
    client = await start_server(workers={"processes": 1})
    gate = tmp_path / "gate"
    blocker = await submit(client, "test.steps", {"n": 1, "gate": str(gate)})
    await wait_status(client, blocker, "running")
    order = [("low", 1), ("medium", 1), ("high", 1), ("low", 2), ("high", 2), ("medium", 2)]
    ids = {}
    for priority, n in order:
        ids[(priority, n)] = await submit(client, "test.clock", {"p": priority, "n": n}, priority=priority)
    gate.write_text("go")
    jobs = [await wait_status(client, ids[key], "completed") for key in ids]
    started = sorted(jobs, key=lambda j: j["result"]["value"]["ns"])
    assert [(j["priority"], j["id"]) for j in started] == [
        ("high", ids[("high", 1)]), ("high", ids[("high", 2)]),
        ("medium", ids[("medium", 1)]), ("medium", ids[("medium", 2)]),
        ("low", ids[("low", 1)]), ("low", ids[("low", 2)]),
    ]


async def test_jobs_and_results_survive_restart(start_server, make_config):
    config = make_config()
    client = await start_server(config)
    done = await submit(client, "pdf", invoice(20, "INV-77"))
    await wait_status(client, done, "completed")
    waiting = await submit(client, "test.echo", {"later": True}, delay=3_600_000)
    pdf_before = await (await client.get(f"/api/jobs/{done}/download")).read()
    await client.close()

    client = await start_server(config)
    job = await (await client.get(f"/api/jobs/{done}")).json()
    assert job["status"] == "completed"
    assert await (await client.get(f"/api/jobs/{done}/download")).read() == pdf_before
    assert (await (await client.get(f"/api/jobs/{waiting}")).json())["status"] == "pending"


async def test_many_invoices_run_in_parallel_while_health_answers(start_server):
    client = await start_server()
    ids = await asyncio.gather(*(submit(client, "pdf", invoice(50, f"INV-{i}")) for i in range(200)))
    async with asyncio.timeout(120):
        while True:
            health = await client.get("/api/health")
            assert health.status == 200
            stats = await (await client.get("/api/stats")).json()
            if stats["jobs"]["completed"] == 200:
                break
            await asyncio.sleep(0.05)
    jobs = [await (await client.get(f"/api/jobs/{i}")).json() for i in ids]
    assert all(j["status"] == "completed" for j in jobs)
    assert stats["scheduler"]["workers"]["processes"] == 2


@pytest.mark.parametrize("body, status, code, field", [
    (b"{not json", 400, "malformed_json", None),
    (b'{"type": "nope", "data": {}}', 422, "validation_error", "type"),
    (b'{"data": {}}', 422, "validation_error", "type"),
    (b'{"type": "pdf"}', 422, "validation_error", "data"),
    (b'{"type": "pdf", "data": {"type": "invoice", "items": []}}', 422, "validation_error", "data.order"),
    (b'{"type": "pdf", "data": {"type": "invoice", "order": {"number": "1", "customer": {"name": "A"}}, '
     b'"items": [{"name": "x", "quantity": "two", "unitPrice": 1}]}}', 422, "validation_error", "data.items[0].quantity"),
    (b'{"type": "test.echo", "data": {}, "options": {"priority": "urgent"}}', 422, "validation_error", "options.priority"),
    (b'{"type": "test.echo", "data": {}, "options": {"maxRetries": 11}}', 422, "validation_error", "options.maxRetries"),
    (b'[1, 2]', 422, "validation_error", "body"),
])
async def test_bad_submissions_are_rejected_and_store_untouched(start_server, body, status, code, field):
    client = await start_server()
    kept = await submit(client, "test.echo", {"keep": 1}, delay=3_600_000)
    response = await client.post("/api/jobs", data=body, headers={"Content-Type": "application/json"})
    assert response.status == status
    error = (await response.json())["error"]
    assert error["code"] == code
    if field:
        assert error["message"].startswith(field), error
    listing = await (await client.get("/api/jobs")).json()
    assert [j["id"] for j in listing["jobs"]] == [kept]


async def test_non_json_content_type_is_415(start_server):
    client = await start_server()
    response = await client.post("/api/jobs", data=b"type=pdf", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 415


async def test_jobs_run_at_once_on_separate_worker_processes(start_server, tmp_path):
    client = await start_server()
    gate = tmp_path / "gate"
    ids = [await submit(client, "test.steps", {"n": 1, "gate": str(gate)}) for _ in range(2)]
    for job_id in ids:
        await wait_status(client, job_id, "running")
    stats = await (await client.get("/api/stats")).json()
    assert stats["scheduler"]["workers"]["busy"] == 2
    gate.write_text("go")
    pids = {(await wait_status(client, i, "completed"))["result"]["value"]["pid"] for i in ids}
    assert len(pids) == 2
