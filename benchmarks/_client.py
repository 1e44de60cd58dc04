"""What the service benchmarks share: a WebSocket that records when each job reached each
status. The server process itself and the REST helpers are the test suite's
(`tests/server_process.py`), so benchmarks and tests start and talk to `offload serve` alike."""
from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.server_process import ServerProcess  # noqa: E402

Arrival = tuple[float, float, dict[str, Any]]  # perf_counter, wall clock, the job


class Watcher:
    """One `subscribe all` WebSocket; records when each (job, status) event arrived, and
    wakes exactly the waiters of that pair (thousands may wait at once)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], Arrival] = {}
        self._waiting: dict[tuple[str, str], list[asyncio.Future[Arrival]]] = {}

    async def run(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            event = message.json()
            if event.get("event") != "status":
                continue
            key = (event["jobId"], event["status"])
            self.seen[key] = arrival = (time.perf_counter(), time.time(), event["job"])
            for future in self._waiting.pop(key, ()):
                if not future.done():
                    future.set_result(arrival)

    async def wait(self, job_id: str, status: str, timeout: float = 60) -> Arrival:
        """(perf_counter, wall clock, job) when `status` of `job_id` arrived."""
        key = (job_id, status)
        if key in self.seen:
            return self.seen[key]
        future: asyncio.Future[Arrival] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        return await asyncio.wait_for(future, timeout)


async def with_watcher(server: ServerProcess, body: Callable[[aiohttp.ClientSession, Watcher], Any]) -> Any:
    """Run `body(http, watcher)` with a session on `server` and a watcher subscribed to all."""
    async with server.session() as http:
        ws = await http.ws_connect("/api/ws")
        await ws.send_json({"op": "subscribe", "all": True})
        watcher = Watcher()
        reader = asyncio.create_task(watcher.run(ws))
        try:
            return await body(http, watcher)
        finally:
            reader.cancel()
            await ws.close()
