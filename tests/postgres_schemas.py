"""A fresh PostgreSQL schema per test: the server the tests use (`OFFLOAD_TEST_POSTGRES`,
by default the local one with trust authentication), a unique schema name, and its
removal (CASCADE) at the end. A test that needs PostgreSQL is skipped, naming the URL,
when no server answers there."""
from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from tests.conftest import POSTGRES_URL


def schema_name() -> str:
    return f"test_{secrets.token_hex(8)}"


@asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A schema name nobody uses yet (the store creates it at `open`); dropped afterwards."""
    try:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        # CI must run them (.ci/run's machine has the server): there, no server is a failure.
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"no PostgreSQL server at {POSTGRES_URL} ({exc})")
    name = schema_name()
    try:
        yield name
    finally:
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()
