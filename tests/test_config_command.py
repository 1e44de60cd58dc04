"""`offload config` (the effective configuration, each value's source, secrets masked) and
`offload check` (the file, the job-type modules and the schedules, starting nothing), run as
the real command."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from offload.service.config import load_config, load_config_sources

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cr3t-token-of-alice-0123456789"
SMTP_PASSWORD = "hunter2-but-longer"
DB_PASSWORD = "db-pass-word"
ENV_TOKEN = "bobs-token-from-the-environment"


def offload(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "offload", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=environ)


def line_of(output: str, start: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith(start)]
    return line


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'''
[server]
shutdown_grace = 3.0
[store]
url = "postgresql://offload:{DB_PASSWORD}@db.internal/offload"
[auth]
tokens = {{"{TOKEN}" = "alice"}}
admins = ["alice"]
[jobs.settings.mail]
smtp_host = "mail.example.com"
smtp_password = "{SMTP_PASSWORD}"
[[schedules]]
name = "nightly"
cron = "0 6 * * 1-5"
timezone = "Europe/Berlin"
type = "test.echo"
data = {{ hello = "world" }}
user = "alice"
''')
    return path


def test_config_names_each_values_source_and_masks_every_secret(config_file: Path) -> None:
    result = offload("config", "--config", str(config_file), "--port", "9100",
                     env={"OFFLOAD_SERVER_HOST": "0.0.0.0",
                          "OFFLOAD_AUTH_TOKENS": f"alice:{TOKEN},bob:{ENV_TOKEN}"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for secret in (TOKEN, SMTP_PASSWORD, DB_PASSWORD, ENV_TOKEN):
        assert secret not in out
    assert str(config_file) in out.splitlines()[0]
    assert line_of(out, "port = 9100").endswith("# flag --port")
    host = line_of(out, "host = ")
    assert host.startswith('host = "0.0.0.0"') and host.endswith("# environment OFFLOAD_SERVER_HOST")
    assert line_of(out, "shutdown_grace = 3.0").endswith("# file")
    assert line_of(out, "access_log = false").endswith("# default")
    # the environment's tokens replace the file's; users stay readable, tokens do not
    tokens = line_of(out, "tokens = ")
    assert '= "alice"' in tokens and '= "bob"' in tokens and "********" in tokens and tokens.endswith("# environment OFFLOAD_AUTH_TOKENS")
    assert line_of(out, "smtp_password = ").startswith('smtp_password = "********"')
    assert line_of(out, "smtp_host = ").startswith('smtp_host = "mail.example.com"')  # not a secret
    assert line_of(out, "url = ").startswith('url = "postgresql://offload:********@db.internal/offload"')
    assert line_of(out, "tokens_file = ").endswith("# default")
    assert line_of(out, "[[schedules]]").endswith("# file") and 'cron = "0 6 * * 1-5"' in out
    assert "\x1b[" not in out  # not a terminal: no escape codes


def test_config_of_a_missing_file_exits_2_and_load_config_answers_as_before() -> None:
    result = offload("config", "--config", "/nonexistent/config.toml")
    assert result.returncode == 2 and "does not exist" in result.stderr
    sources = load_config_sources(None, environ={})[1]
    assert load_config(None, environ={}) == load_config_sources(None, environ={})[0]
    assert all(source.startswith("file ") for source in sources.values())  # the checkout's config.toml, if any


def checkable(config_file: Path) -> None:
    """The fixture's file, on an SQLite store, with the test job types."""
    text = config_file.read_text().replace(f"postgresql://offload:{DB_PASSWORD}@db.internal/offload", "jobs.db")
    config_file.write_text(text + '\n[workers]\nmodules = ["tests.jobtypes"]\n')


def test_check_passes_a_good_config_and_names_the_next_run(config_file: Path) -> None:
    checkable(config_file)
    result = offload("check", "--config", str(config_file))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and "test.echo" in result.stdout
    assert "schedule nightly: 0 6 * * 1-5 (Europe/Berlin), next run 20" in result.stdout


@pytest.mark.parametrize("change, message", [
    (('cron = "0 6 * * 1-5"', 'cron = "0 25 * * 1-5"'), "[[schedules]] 'nightly': cron: '0 25 * * 1-5': bad hour field"),
    (('type = "test.echo"', 'type = "test.nope"'), "[[schedules]] 'nightly': type: unknown job type 'test.nope'"),
    (('modules = ["tests.jobtypes"]', 'modules = ["tests.no_such_module"]'), "[workers] modules: cannot import"),
    (('shutdown_grace = 3.0', 'shutdown_grace = -3.0'), "[server] shutdown_grace must be >= 0"),
    (('url = "jobs.db"', f'url = "mysql://u:{DB_PASSWORD}@db/x"'), "unsupported store URL 'mysql://u:********@db/x'"),
])
def test_check_fails_with_exit_2_naming_the_problem(config_file: Path, change: tuple[str, str],
                                                     message: str) -> None:
    checkable(config_file)
    config_file.write_text(config_file.read_text().replace(*change))
    result = offload("check", "--config", str(config_file))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
