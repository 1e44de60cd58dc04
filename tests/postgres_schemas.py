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

POSTGRES_URL = os.environ.get("OFFLOAD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1/test")


def schema_name() -> str:
    return f"test_{secrets.token_hex(8)}"


@asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A schema name nobody uses yet (the store creates it at `open`); dropped afterwards."""
    try:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"no PostgreSQL server at {POSTGRES_URL} ({exc})")
    name = schema_name()
    try:
        yield name
    finally:
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()
