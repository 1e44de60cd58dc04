"""Two users with two tokens, for the multi-user tests: `start_server(**TOKENS)`."""
from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

ALICE, BOB = "alice-token-0123456789abcdef", "bob-token-0123456789abcdef"
A = {"Authorization": f"Bearer {ALICE}"}
B = {"Authorization": f"Bearer {BOB}"}
TOKENS: dict[str, Any] = {"auth": {"tokens": {ALICE: "alice", BOB: "bob"}}}


async def submit_as(client: TestClient, headers: dict[str, str], type: str, data: Any, **options: Any) -> str:
    response = await client.post("/api/jobs", json={"type": type, "data": data, "options": options}, headers=headers)
    body = await response.json()
    assert response.status == 201, body
    return body["jobId"]


async def job_as(client: TestClient, headers: dict[str, str], job_id: str) -> tuple[int, dict[str, Any]]:
    response = await client.get(f"/api/jobs/{job_id}", headers=headers)
    return response.status, await response.json()
