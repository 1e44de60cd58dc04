"""Configuration: file, then environment, then flags; unknown or invalid keys stop start-up."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from offload.service.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_config_is_the_defaults(tmp_path):
    shipped = load_config(ROOT / "config.toml", environ={})
    assert (shipped.server.host, shipped.server.port) == ("127.0.0.1", 8080)
    assert shipped.store_url == f"sqlite:///{ROOT / 'data' / 'offload.db'}"
    assert shipped.results_path == ROOT / "data" / "results"
    assert shipped.jobs.settings["pdf"]["currency"] == "EUR"


def test_environment_beats_file_and_flags_beat_both(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[server]\nport = 9001\n[workers]\nprocesses = 3\n[store]\nurl = "jobs.db"\n')
    from_file = load_config(config, environ={})
    assert (from_file.server.port, from_file.workers.processes) == (9001, 3)
    assert from_file.store_url == f"sqlite:///{tmp_path / 'jobs.db'}"  # relative to the file's folder
    from_env = load_config(config, environ={"OFFLOAD_SERVER_PORT": "9002", "OFFLOAD_WORKERS_PROCESSES": "4"})
    assert (from_env.server.port, from_env.workers.processes) == (9002, 4)
    from_flags = load_config(config, environ={"OFFLOAD_SERVER_PORT": "9002"}, overrides={"server": {"port": 9003}})
    assert from_flags.server.port == 9003


@pytest.mark.parametrize("text, environ, message", [
    ("[server]\nprot = 1\n", {}, "unknown key [server] 'prot'"),
    ("[sever]\nport = 1\n", {}, "unknown section [sever]"),
    ("[server]\nport = 'eighty'\n", {}, "[server] port: expected int"),
    ("[server]\nport = 0\n", {}, "port must be between 1 and 65535"),
    ("[workers]\nstop_grace = -1\n", {}, "stop_grace must be >= 0"),
    ("", {"OFFLOAD_SERVER_PORT": "tcp://10.0.0.1:8080"}, "OFFLOAD_SERVER_PORT: [server] port: expected int"),
    ("", {"OFFLOAD_WORKERS_PROCESSES": "-1"}, "processes must be >= 0"),
    ("[jobs.settings.pdf]\nmax_items = 10\n", {"OFFLOAD_JOBS_SETTINGS_PDF_MAX_ITEMS": "many"},
     "OFFLOAD_JOBS_SETTINGS_PDF_MAX_ITEMS: [jobs.settings.pdf] max_items: expected int, got 'many'"),
    ("", {"OFFLOAD_JOBS_SETTINGS_PDF": "x"}, "OFFLOAD_JOBS_SETTINGS_PDF: expected OFFLOAD_JOBS_SETTINGS_<TYPE>_<KEY>"),
    ("[server\n", {}, "not valid TOML"),
])
def test_bad_configuration_names_the_problem(tmp_path, text, environ, message):
    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(config, environ=environ)
    assert message in str(caught.value)


def test_serve_refuses_a_bad_config_with_a_clear_message(tmp_path):
    (tmp_path / "config.toml").write_text("[server]\nprot = 1\n")
    result = subprocess.run([sys.executable, "-m", "offload", "serve", "--config", str(tmp_path / "config.toml")],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "'prot'" in result.stderr


def test_environment_variables_that_name_no_setting_are_warnings(tmp_path, caplog):
    # What Kubernetes injects for a Service named `offload`, a typo, and the clients' own.
    environ = {"OFFLOAD_PORT": "tcp://10.0.0.1:8080", "OFFLOAD_SERVICE_HOST": "10.0.0.1",
               "OFFLOAD_PORT_8080_TCP_PROTO": "tcp", "OFFLOAD_SERVER_PROT": "1",
               "OFFLOAD_URL": "http://offload:8080", "OFFLOAD_TOKEN": "secret", "OFFLOAD_SERVER_PORT": "9005"}
    empty = tmp_path / "config.toml"
    empty.write_text("")
    with caplog.at_level("WARNING", logger="offload.config"):
        config = load_config(empty, environ=environ)
    assert config.server.port == 9005
    warned = sorted(record.getMessage().split(":")[0] for record in caplog.records)
    assert warned == [f"ignoring environment variable {name}" for name in
                      ("OFFLOAD_PORT", "OFFLOAD_PORT_8080_TCP_PROTO", "OFFLOAD_SERVER_PROT", "OFFLOAD_SERVICE_HOST")]
    assert "[server] has no key 'prot'" in caplog.text
    assert "secret" not in caplog.text


def test_job_type_settings_come_from_the_environment(tmp_path):
    config = tmp_path / "config.toml"
    # (an application's type here: [jobs.settings.pdf] takes only the keys the invoice knows)
    config.write_text('[jobs.settings.pdf]\ncurrency = "EUR"\nmax_items = 10\n'
                      '[jobs.settings."my_app.report"]\ntitle = "Q"\nstrict = false\n')
    loaded = load_config(config, environ={
        "OFFLOAD_JOBS_SETTINGS_PDF_CURRENCY": "USD", "OFFLOAD_JOBS_SETTINGS_PDF_MAX_ITEMS": "500",
        "OFFLOAD_JOBS_SETTINGS_MY_APP_REPORT_STRICT": "true", "OFFLOAD_JOBS_SETTINGS_MY_APP_REPORT_LOGO_WIDTH": "1.5",
        "OFFLOAD_JOBS_SETTINGS_MY_APP_REPORT_TITLE": "Quarterly", "OFFLOAD_JOBS_SETTINGS_EXPORT_MAX_ROWS": "500"})
    assert loaded.jobs.settings["pdf"] == {"currency": "USD", "max_items": 500}
    assert loaded.jobs.settings["my_app.report"] == {"title": "Quarterly", "strict": True, "logo_width": 1.5}
    assert loaded.jobs.settings["export"]["max_rows"] == 500
    # The default table takes the environment too: a config file without settings.
    config.write_text("")
    assert load_config(config, environ={"OFFLOAD_JOBS_SETTINGS_PDF_CURRENCY": "GBP"}).jobs.settings["pdf"] == {
        "currency": "GBP"}


def test_the_readmes_tokens_file_recipe_makes_a_file_the_service_reads(tmp_path):
    recipe = next(line for line in (ROOT / "README.md").read_text().splitlines()
                  if line.startswith("printf") and ">> tokens.toml" in line)
    token = "a-long-enough-token-for-alice"
    subprocess.run(["sh", "-c", recipe], cwd=tmp_path, env={"TOKEN": token, "PATH": "/usr/bin:/bin"}, check=True)
    (tmp_path / "config.toml").write_text('[auth]\ntokens_file = "tokens.toml"\n')
    from offload.service.auth import Authenticator

    auth = Authenticator.from_config(load_config(tmp_path / "config.toml", environ={}))
    assert auth.user_for(token) == "alice"


def test_the_store_is_named_without_its_password_and_with_its_postgresql_schema() -> None:
    config = load_config(None, environ={}, overrides={
        "store": {"url": "postgresql://offload:s3cret@db.internal:5432/app", "schema": "jobs"}})
    assert config.store_label == "postgresql://offload:***@db.internal:5432/app schema jobs"
    assert "s3cret" not in config.store_label
    sqlite = load_config(None, environ={}, overrides={"store": {"url": "sqlite:////var/lib/offload/jobs.db"}})
    assert sqlite.store_label == "sqlite:////var/lib/offload/jobs.db"
