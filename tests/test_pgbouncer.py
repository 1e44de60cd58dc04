"""offload's PostgreSQL store through PgBouncer in session mode, the way the README says to
run it: a real `pgbouncer` (Debian's, installed by .ci/run) on a loopback port of its own,
in front of the test database. Two stores ("nodes") through it: the schema made once by
nodes starting together, a job stored by one heard (LISTEN through the pooler) and claimed
by the other, the retention lock held by one at a time."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from offload.service.models import Job, JobStatus, new_job_id, now_ms
from offload.service.store import open_store
from offload.service.store.base import StoreChange
from offload.service.store.postgres import PostgresStore
from tests.conftest import POSTGRES_URL, eventually

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def pgbouncer(pg_schema: str) -> Iterator[str]:
    """A PgBouncer in session mode on a free loopback port; yields the store URL through it.
    Its files are in a folder of their own under the system's temporary folder, which the
    `postgres` user it runs as (when the tests run as root) can reach."""
    if not Path(PGBOUNCER).exists():  # CI must run it: .ci/run installs pgbouncer
        (pytest.fail if os.environ.get("CI") else pytest.skip)("needs Debian's pgbouncer")
    target = urlsplit(POSTGRES_URL)
    user, database = target.username or "postgres", target.path.lstrip("/") or "test"
    port = _free_port()
    folder = Path(tempfile.mkdtemp(prefix="offload-pgbouncer-"))
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\n{database} = host={target.hostname or '127.0.0.1'} port={target.port or 5432} "
        f"dbname={database}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = trust\n"
        f"auth_file = {folder / 'users.txt'}\npool_mode = session\nmax_client_conn = 200\n"
        f"default_pool_size = 40\nunix_socket_dir =\nlogfile = {folder / 'pgbouncer.log'}\n")
    command = [PGBOUNCER, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        shutil.chown(folder, "postgres")
        for file in folder.iterdir():
            shutil.chown(file, "postgres")
        command[1:1] = ["-u", "postgres"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log = folder / "pgbouncer.log"
                raise AssertionError("pgbouncer did not start: "
                                     + (log.read_text()[-500:] if log.exists() else "")) from None
            time.sleep(0.05)  # polling a port with a deadline
    try:
        yield f"postgresql://{user}@127.0.0.1:{port}/{database}"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


async def test_two_nodes_through_pgbouncer_in_session_mode_share_jobs_and_events(pgbouncer: str, pg_schema: str):
    # Server connections PgBouncer hands on from one client to the next: opened once before.
    warm = [open_store(pgbouncer, schema=pg_schema + "_warm", poll_ms=60_000) for _ in range(5)]
    try:
        await asyncio.gather(*(store.open() for store in warm))
    finally:
        for store in warm:
            await store.close()
        admin = await asyncpg.connect(POSTGRES_URL)
        await admin.execute(f'DROP SCHEMA IF EXISTS "{pg_schema}_warm" CASCADE')
        await admin.close()
    stores = [open_store(pgbouncer, schema=pg_schema, poll_ms=60_000) for _ in range(5)]
    try:
        await asyncio.gather(*(store.open() for store in stores))  # starting together: the schema made once
        a, b = stores[:2]
        assert isinstance(a, PostgresStore) and isinstance(b, PostgresStore)
        heard: list[StoreChange] = []
        b.remote.subscribe(heard.append)
        await b.listening.wait()
        job, created = await a.create(Job(new_job_id(), "t", "u", {"n": 1}))
        assert created

        async def heard_it() -> bool:
            return any(isinstance(c, Job) and c.id == job.id for c in heard)

        await eventually(heard_it, 10, "node B to hear node A's job through PgBouncer")
        (claimed,) = await b.claim("node-b", now_ms(), 30_000)
        assert claimed.id == job.id and claimed.status is JobStatus.RUNNING
        done = await b.complete(claimed, {"ok": True}, now_ms())
        assert done is not None and await a.get(job.id) == done
        async with a.alone("retention") as mine:
            assert mine
            async with b.alone("retention") as theirs:
                assert not theirs
    finally:
        for store in stores:
            await store.close()
