from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import time
from pathlib import Path
from collections.abc import AsyncIterator, Iterator
from typing import Any, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient, TestServer

from offload.service.app import create_app
from offload.service.config import Config, load_config
from offload.service.store.sqlite import SQLiteStore

SAMPLE_INVOICE = {
    "type": "invoice",
    "order": {"number": "INV-1001", "date": "2026-11-28", "currency": "EUR", "taxRate": 0.2,
              "customer": {"name": "Ada Lovelace", "address": "12 Analytical Row\nLondon", "email": "ada@example.com"}},
    "items": [{"name": "Widget", "quantity": 2, "unitPrice": 9.5, "sku": "W-1"},
              {"name": "Gadget", "quantity": 1, "unitPrice": 120, "sku": "G-7"}],
}


def invoice(n_items: int = 2, number: str = "INV-1001") -> dict[str, Any]:
    items = [{"name": f"Item {i}", "quantity": 1 + i % 3, "unitPrice": 1.25 + i, "sku": f"SKU-{i}"}
             for i in range(n_items)]
    return {**SAMPLE_INVOICE, "order": {**SAMPLE_INVOICE["order"], "number": number}, "items": items}


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """The tests run on uvloop, the loop `offload serve` runs on."""
    import uvloop

    return {"uvloop": uvloop.new_event_loop}


#: The PostgreSQL database the tests use (each test in a schema of its own).
POSTGRES_URL = os.environ.get("OFFLOAD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1/test")


def _run_apart(make: Callable[[], Awaitable[None]]) -> None:
    """Run a coroutine to its end on a loop of its own in another thread: callable from sync
    fixtures and from async ones alike (whose loop is running here)."""
    with concurrent.futures.ThreadPoolExecutor(1) as apart:
        apart.submit(lambda: asyncio.run(make())).result()  # type: ignore[arg-type]


def drop_schema(name: str) -> None:
    """Drop a test's PostgreSQL schema and everything in it."""
    import asyncpg

    async def drop() -> None:
        db = await asyncpg.connect(POSTGRES_URL)
        try:
            await db.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await db.close()

    _run_apart(drop)


_reachable: list[str | None] = []


def need_postgres() -> None:
    """Skip (outside CI) or fail (in CI, which must run them) when the test database does not answer."""
    if not _reachable:
        import asyncpg

        async def probe() -> None:
            db = await asyncpg.connect(POSTGRES_URL, timeout=5)
            await db.close()

        try:
            _run_apart(probe)
            _reachable.append(None)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            _reachable.append(f"needs PostgreSQL at {POSTGRES_URL} (set OFFLOAD_TEST_POSTGRES): {exc}")
    if _reachable[0] is not None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(_reachable[0])


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema name in the test database, dropped after the test (the store creates it)."""
    need_postgres()
    name = f"t_{secrets.token_hex(6)}"
    yield name
    drop_schema(name)


@pytest.fixture
def store_backend() -> str:
    """The backend of the service `make_config` sets up. A module runs each of its tests on
    both with `store_backend = both_backends` (a fixture of the same name overrides this one)."""
    return "sqlite"


@pytest.fixture(params=["sqlite", "postgres"])
def both_backends(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_config(tmp_path: Path, store_backend: str, request: pytest.FixtureRequest) -> Callable[..., Config]:
    """A configuration on a fresh SQLite file in tmp_path (or, with `store_backend` set to
    "postgres", a fresh PostgreSQL schema); keyword sections override."""
    if store_backend == "postgres":
        store = {"url": POSTGRES_URL, "schema": request.getfixturevalue("pg_schema"), "poll_ms": 200}
    else:
        store = {"url": f"sqlite:///{tmp_path / 'offload.db'}"}

    def make(**sections: dict[str, Any]) -> Config:
        base = load_config(None, environ={}, overrides={
            "store": store,
            "workers": {"processes": 2, "modules": ["tests.jobtypes"]},
            "jobs": {"results_dir": str(tmp_path / "results"), "retry_delay_ms": 10},
            "server": {"shutdown_grace": 5},
        })
        return base.replace(**sections) if sections else base

    return make


@pytest.fixture
async def start_server(make_config: Callable[..., Config]):
    """Start the real service on a loopback port; returns a client. Stopped at test end."""
    clients: list[TestClient] = []

    async def start(config: Config | None = None, **sections: dict[str, Any]) -> TestClient:
        app = create_app(config or make_config(**sections))
        client = TestClient(TestServer(app, host="127.0.0.1"))
        try:
            await client.start_server()
        except BaseException:
            await client.close()
            raise
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def submit(client: TestClient, type: str, data: Any, **options: Any) -> str:
    response = await client.post("/api/jobs", json={"type": type, "data": data, "options": options})
    body = await response.json()
    assert response.status == 201, body
    return body["jobId"]


async def workers(client: TestClient) -> dict[str, Any]:
    """The worker pool figures from /api/stats."""
    return (await (await client.get("/api/stats")).json())["scheduler"]["workers"]


async def wait_status(client: TestClient, job_id: str, *statuses: str, timeout: float = 30,
                      headers: dict[str, str] | None = None) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        response = await client.get(f"/api/jobs/{job_id}", headers=headers)
        job = await response.json()
        return job if job["status"] in statuses else None

    return await eventually(check, timeout, f"job {job_id} to be {'/'.join(statuses)}")


async def ws_events_until(ws: Any, job_id: str, terminal: tuple[str, ...] = ("completed", "failed", "cancelled"),
                          timeout: float = 30) -> list[dict[str, Any]]:
    """Collect events for `job_id` until its terminal status event (or snapshot) arrives."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            event = await ws.receive_json()
            if event.get("jobId", event.get("job", {}).get("id")) != job_id:
                continue
            events.append(event)
            status = event.get("status") or (event["job"]["status"] if event["event"] == "snapshot" else None)
            if status in terminal:
                return events


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """An open SQLite store on a fresh file, for tests of the store alone (the contract suite
    parametrises its own over every backend)."""
    db = SQLiteStore(tmp_path / "store.db")
    await db.open()
    yield db
    await db.close()
