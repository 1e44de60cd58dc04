"""The `export` job type end to end through a real server and real worker processes: inline
rows and named queries on a real SQLite file, written as CSV, JSON Lines and XLSX and read
back (XLSX with openpyxl); bound parameters; refusals at submission; progress, cancellation
and the CLI's `submit export --wait -o out.xlsx`."""
from __future__ import annotations

import csv
import io
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import openpyxl
import orjson
import pytest

from offload.service.config import ConfigError, load_config
from tests.conftest import eventually, submit, wait_status, ws_events_until
from tests.conftest import both_backends as store_backend  # noqa: F401  (each test on SQLite and on PostgreSQL)
from tests.test_cli import cli_env, offload, url_of

ROWS = [
    {"id": 1, "customer": "Ada", "total": 19.5, "created": "2026-11-28", "paid": True, "note": None},
    {"id": 2, "customer": "Grace, \"Amazing\"", "total": 120, "created": "2026-11-29T08:30:00Z", "paid": False,
     "note": "line 1\nline 2"},
    {"id": 3, "customer": "Émile 東京", "total": -0.25, "created": "not a date", "note": "=1+1",
     "tags": ["a", "b"]},
]
COLUMNS = ["id", "customer", "total", "created", "paid", "note", "tags"]
#: A customer whose name is an injection attempt: bound as a parameter, it stays a literal.
BOBBY = "Robert'); DROP TABLE orders; --"
QUERIES = {
    "orders": {"sql": "select id, customer, total, created from orders where created >= :since order by id",
               "count": "select count(*) from orders where created >= :since"},
    "by_customer": {"sql": "select id, customer from orders where customer = :name"},
    "numbers": {"sql": "with recursive n(i) as (select 1 union all select i + 1 from n where i < :n) "
                       "select i, i * 2 as twice, 'row ' || i as label from n",
                "count": "select :n"},
}


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as db:
        db.execute("create table orders (id integer primary key, customer text, total real, created text)")
        db.executemany("insert into orders values (?, ?, ?, ?)",
                       [(i, f"customer {i}", i * 1.5, f"2026-11-{1 + i % 28:02d}") for i in range(1, 101)]
                       + [(1000, BOBBY, 1.0, "2026-11-30")])
    return path


@pytest.fixture
async def server(start_server, database: Path):
    settings = {"pdf": {"currency": "EUR"},
                "export": {"database": str(database), "queries": QUERIES, "max_rows": 50, "max_bytes": 20000,
                           "fetch_rows": 500}}
    return await start_server(jobs={"settings": settings})


async def exported(client, data: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    job = await wait_status(client, await submit(client, "export", data), "completed", "failed", timeout=60)
    assert job["status"] == "completed", job
    response = await client.get(job["result"]["url"])
    assert response.status == 200
    return job, await response.read()


async def test_inline_rows_to_csv_jsonl_and_xlsx_read_back_with_their_types(server):
    job, body = await exported(server, {"format": "csv", "rows": ROWS, "filename": "orders"})
    assert job["result"]["filename"] == "orders.csv" and job["result"]["contentType"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
    assert rows[0] == COLUMNS  # every key, in order of first appearance
    assert rows[1] == ["1", "Ada", "19.5", "2026-11-28", "true", "", ""]
    assert rows[2][1] == 'Grace, "Amazing"' and rows[2][5] == "line 1\nline 2"
    assert rows[3][:3] == ["3", "Émile 東京", "-0.25"] and rows[3][6] == '["a","b"]'

    job, body = await exported(server, {"format": "jsonl", "rows": ROWS, "columns": ["customer", "total", "paid"]})
    lines = [orjson.loads(line) for line in body.splitlines()]
    assert lines == [{"customer": r["customer"], "total": r["total"], "paid": r.get("paid")} for r in ROWS]

    job, body = await exported(server, {"format": "xlsx", "rows": ROWS, "sheet": "Orders"})
    assert job["result"]["filename"] == "export.xlsx"
    book = openpyxl.load_workbook(io.BytesIO(body))
    sheet = book["Orders"]
    got = list(sheet.iter_rows(values_only=True))
    assert got[0] == tuple(COLUMNS)
    assert got[1] == (1, "Ada", 19.5, datetime(2026, 11, 28), True, None, None)
    assert got[2][2] == 120 and got[2][3] == datetime(2026, 11, 29, 8, 30) and got[2][4] is False
    assert got[3][3] == "not a date" and got[3][5] == "=1+1"  # text, never a formula
    assert sheet.cell(2, 4).number_format == "yyyy-mm-dd"

    job, body = await exported(server, {"format": "csv", "rows": [[1, "a"], [2, "b", "extra"]]})
    assert body == b"1,a\r\n2,b,extra\r\n"  # arrays with no columns: as they are, no header


async def test_a_named_query_binds_its_parameters_and_counts_its_rows(server, database):
    job, body = await exported(server, {"format": "csv", "query": "orders", "params": {"since": "2026-11-27"}})
    rows = list(csv.reader(io.StringIO(body.decode())))
    with sqlite3.connect(database) as db:
        want = db.execute("select id from orders where created >= '2026-11-27' order by id").fetchall()
    assert rows[0] == ["id", "customer", "total", "created"]
    assert [int(r[0]) for r in rows[1:]] == [w[0] for w in want]
    assert job["progress"] == 100 and job["message"] == f"{len(want):,} rows written"

    _, body = await exported(server, {"format": "jsonl", "query": "by_customer", "params": {"name": BOBBY}})
    assert [orjson.loads(line) for line in body.splitlines()] == [{"id": 1000, "customer": BOBBY}]
    _, body = await exported(server, {"format": "jsonl", "query": "by_customer", "params": {"name": "x' or '1'='1"}})
    assert body == b""  # a literal that matches nobody, not a condition that matches everybody
    with sqlite3.connect(database) as db:
        assert db.execute("select count(*) from orders").fetchone()[0] == 101

    _, body = await exported(server, {"format": "xlsx", "query": "orders", "params": {"since": "2026-11-28"},
                                      "columns": ["total", "id"]})
    got = list(openpyxl.load_workbook(io.BytesIO(body)).active.iter_rows(values_only=True))
    assert got[0] == ("total", "id") and all(isinstance(r[0], (int, float)) and isinstance(r[1], int) for r in got[1:])

    failed = await wait_status(server, await submit(server, "export", {
        "format": "csv", "query": "orders", "params": {"since": "2026"}, "columns": ["id", "secret"]}),
        "failed", "completed")
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert failed["error"]["message"].startswith("columns[1]: is not a column of query 'orders'")


@pytest.mark.parametrize(("data", "field"), [
    ({"format": "pdf", "rows": []}, "format"),
    ({"rows": []}, "format"),
    ({"format": "csv"}, "rows"),
    ({"format": "csv", "rows": [], "query": "orders"}, "rows"),
    ({"format": "csv", "query": "drop_everything"}, "query"),
    ({"format": "csv", "query": "orders"}, "params.since"),
    ({"format": "csv", "query": "orders", "params": {"since": "2026", "limit": 5}}, "params.limit"),
    ({"format": "csv", "query": "orders", "params": {"since": {"$gt": ""}}}, "params.since"),
    ({"format": "csv", "query": "orders", "params": None}, "params"),
    ({"format": "csv", "rows": [{"a": 1}] * 51}, "rows"),
    ({"format": "csv", "rows": [{"a": "x" * 30000}]}, "rows"),
    ({"format": "csv", "rows": [{"a": 1}, [1]]}, "rows[1]"),
    ({"format": "csv", "rows": [], "params": {}}, "params"),
    ({"format": "csv", "rows": [], "columns": ["a", "a"]}, "columns"),
    ({"format": "csv", "rows": [], "filename": None}, "filename"),
    ({"format": "xlsx", "rows": [], "sheet": "a/b"}, "sheet"),
    ({"format": "csv", "rows": [], "sql": "select 1"}, "sql"),
])
async def test_a_bad_export_is_refused_before_it_is_stored_naming_the_field(server, data, field):
    response = await server.post("/api/jobs", json={"type": "export", "data": data})
    body = await response.json()
    assert response.status == 422, body
    assert body["error"]["message"].startswith(f"data.{field}: "), body
    assert (await (await server.get("/api/jobs")).json())["jobs"] == []


async def test_progress_follows_the_rows_written_and_a_cancel_stops_the_stream(server):
    async with server.ws_connect("/api/ws") as ws:
        job_id = await submit(server, "export", {"format": "csv", "query": "numbers", "params": {"n": 20000}})
        await ws.send_json({"op": "subscribe", "jobId": job_id})
        events = await ws_events_until(ws, job_id, timeout=60)
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress == sorted(progress, key=lambda e: e["progress"])
    assert any(" of 20,000 rows written" in (e["message"] or "") for e in progress), progress
    assert events[-1]["status"] == "completed"

    job_id = await submit(server, "export", {"format": "xlsx", "query": "numbers", "params": {"n": 50_000_000}})

    async def streaming() -> bool:
        job = await (await server.get(f"/api/jobs/{job_id}")).json()
        return job["status"] == "running" and "rows written" in (job["message"] or "")

    await eventually(streaming, 60, "the export to stream rows")
    assert (await server.delete(f"/api/jobs/{job_id}")).status in (200, 202)
    assert (await wait_status(server, job_id, "cancelled", "completed", "failed"))["status"] == "cancelled"
    from offload.service.keys import CONFIG

    folder = server.server.app[CONFIG].results_path
    assert not [p.name for p in folder.iterdir() if p.name.startswith((job_id, f".{job_id}"))]


async def test_the_cli_submits_an_export_waits_and_saves_the_workbook(server, tmp_path):
    (tmp_path / "rows.json").write_bytes(orjson.dumps({"format": "xlsx", "rows": ROWS}))
    out = tmp_path / "out.xlsx"
    result = await offload("submit", "export", "--data", "@rows.json", "--wait", "-o", str(out),
                           "--url", url_of(server), cwd=tmp_path, env=cli_env())
    assert result.code == 0, result
    got = list(openpyxl.load_workbook(out).active.iter_rows(values_only=True))
    assert got[0] == tuple(COLUMNS) and got[1][:3] == (1, "Ada", 19.5)


def test_named_queries_are_checked_at_start_up_and_the_database_is_relative_to_the_config(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[jobs.settings.export]\ndatabase = "shop.db"\n'
                      '[jobs.settings.export.queries.orders]\nsql = "select * from orders where a = :a"\n'
                      'count = "select count(*) from orders where b = :b"\n')
    with pytest.raises(ConfigError, match=r"\[jobs.settings.export\] queries.orders.count: uses :b"):
        load_config(config, environ={})
    config.write_text('[jobs.settings.export]\ndatabase = "shop.db"\n'
                      '[jobs.settings.export.queries.orders]\nsql = "select * from orders where a = :a"\n')
    assert load_config(config, environ={}).jobs.settings["export"]["database"] == str(tmp_path / "shop.db")
    config.write_text('[jobs.settings.export]\ndatabase = "postgresql://db/shop"\n')
    with pytest.raises(ConfigError, match="only a SQLite file"):
        load_config(config, environ={})


async def test_the_readme_example_runs_as_written(start_server, make_config, tmp_path, database):
    assert database == tmp_path / "shop.db"  # the file the README's config names
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Data export"):readme.index("## Large results")]
    toml = next(block for block in re.findall(r"```toml\n(.*?)```", section, re.S) if "queries.orders" in block)
    (tmp_path / "config.toml").write_text(toml)
    settings = load_config(tmp_path / "config.toml", environ={}).jobs.settings
    assert settings["export"]["database"] == str(tmp_path / "shop.db")
    server = await start_server(make_config(jobs={"settings": settings}))
    request = re.search(r"-d '(\{.*?\})'", section, re.S).group(1)
    body = orjson.loads(request)
    job, content = await exported(server, body["data"])
    assert job["result"]["filename"] == "orders.xlsx"
    got = list(openpyxl.load_workbook(io.BytesIO(content)).active.iter_rows(values_only=True))
    assert got[0] == ("id", "customer", "total", "created") and len(got) > 1
