"""What the email type stands on: the checkpoint of `ctx.save` (a fenced store write, read by
the next attempt's claim, kept by a schema-4 column that older files get by migration) and
its SMTP settings, whose password never shows in `offload config` or `offload check`."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from offload.service.models import Job, new_job_id, now_ms
from offload.service.store.sqlite import SCHEMA_VERSION, SQLiteStore

ROOT = Path(__file__).resolve().parent.parent
LEASE = 30_000


async def running(store: SQLiteStore, node: str = "n1") -> Job:
    job, _ = await store.create(Job(new_job_id(), "email", "u", {"to": []}, max_retries=3))
    (claimed,) = await store.claim(node, now_ms(), LEASE, types=["email"])
    return claimed


async def test_a_checkpoint_is_saved_by_the_attempt_holding_the_job_and_read_by_the_next(store: SQLiteStore) -> None:
    job = await running(store)
    seen: list[object] = []
    store.changes.subscribe(seen.append)
    assert await store.save_checkpoint(job, {"sent": ["a@example.com"], "refused": {}})
    assert seen == []  # not a change: no seq, no event
    assert (await store.get(job.id)).seq == job.seq  # type: ignore[union-attr]
    await store.fail(job, {"type": "SMTPConnectionError", "message": "dropped"}, now_ms(), retry_at=now_ms())
    assert not await store.save_checkpoint(job, {"sent": []})  # that attempt is over
    (again,) = await store.claim("n2", now_ms(), LEASE, types=["email"])
    assert again.attempts == 2 and again.checkpoint == {"sent": ["a@example.com"], "refused": {}}
    assert not await store.save_checkpoint(job, {"sent": []})  # the replaced attempt, while the next one runs
    assert not await store.save_checkpoint(Job(**{**again.__dict__, "lease_owner": "n1"}), {"sent": []})
    assert await store.save_checkpoint(again, {"sent": ["a@example.com", "b@example.com"], "refused": {}})
    await store.complete(again, {"value": {"sent": 2}}, now_ms())
    async with store.reader.execute("SELECT checkpoint FROM jobs WHERE id = ?", (job.id,)) as cursor:
        assert (await cursor.fetchone())[0] is None  # a completion clears it: the result says it all


async def test_a_retried_job_keeps_its_checkpoint(store: SQLiteStore) -> None:
    job = await running(store)
    assert await store.save_checkpoint(job, {"sent": ["a@example.com"]})
    await store.fail(job, {"type": "X", "message": "x"}, now_ms(), retry_at=None)
    assert (await store.retry(job.id, None, now_ms())) is not None
    (again,) = await store.claim("n1", now_ms(), LEASE, types=["email"])
    assert again.checkpoint == {"sent": ["a@example.com"]}


async def test_a_checkpoint_that_is_not_json_is_refused_before_anything_is_written(store: SQLiteStore) -> None:
    job = await running(store)
    try:
        await store.save_checkpoint(job, {"when": object()})
    except TypeError:
        pass
    else:
        raise AssertionError("a value that is not JSON was accepted")
    assert await store.save_checkpoint(job, [1])  # the writer goes on


async def test_a_file_of_schema_3_gets_the_checkpoint_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = SQLiteStore(path)
    await db.open()
    job = await running(db)
    await db.close()
    raw = sqlite3.connect(path)  # as an older offload left it: no checkpoint column, version 3
    raw.execute("ALTER TABLE jobs DROP COLUMN checkpoint")
    raw.execute("PRAGMA user_version=3")
    raw.commit()
    raw.close()
    db = SQLiteStore(path)
    await db.open()
    try:
        assert await db.save_checkpoint(job, {"sent": ["x@example.com"]})
    finally:
        await db.close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert raw.execute("SELECT checkpoint FROM jobs").fetchone()[0] == '{"sent":["x@example.com"]}'
    raw.close()


def offload(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "offload", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=environ)


def test_the_smtp_password_never_shows_in_offload_config_or_check(tmp_path: Path) -> None:
    secret = "smtp-pass-from-the-env-7731"
    config = tmp_path / "config.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "o.db"}"\n'
                      '[jobs.settings.email]\nhost = "smtp.example.com"\nsecurity = "starttls"\n'
                      'username = "shop"\npassword_env = "OFFLOAD_TEST_SMTP_SECRET"\n')
    env = {"OFFLOAD_TEST_SMTP_SECRET": secret}
    shown = offload("config", "--config", str(config), env=env)
    assert shown.returncode == 0, shown.stderr
    assert 'password_env = "OFFLOAD_TEST_SMTP_SECRET"' in shown.stdout  # where it is, not what it is
    checked = offload("check", "--config", str(config), env=env)
    assert checked.returncode == 0, checked.stderr
    assert "email" in checked.stdout
    for result in (shown, checked):
        assert secret not in result.stdout + result.stderr
    missing = offload("check", "--config", str(config), env={})
    assert missing.returncode == 2 and "OFFLOAD_TEST_SMTP_SECRET" in missing.stderr, missing.stderr
    config.write_text(config.read_text() + 'password = "typed-into-the-file-99"\n')
    typed = offload("check", "--config", str(config), env=env)
    assert typed.returncode == 2 and "never written in the configuration" in typed.stderr, typed.stderr
    assert "typed-into-the-file-99" not in typed.stdout + typed.stderr
    plain = tmp_path / "plain.toml"
    plain.write_text('[jobs.settings.email]\nhost = "smtp.example.com"\nusername = "shop"\n'
                     'password_env = "OFFLOAD_TEST_SMTP_SECRET"\n')
    refused = offload("check", "--config", str(plain), env=env)
    assert refused.returncode == 2 and "in the clear" in refused.stderr, refused.stderr
