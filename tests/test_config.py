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
    ("", {"OFFLOAD_SERVER_PROT": "1"}, "unknown key [server] 'prot'"),
    ("", {"OFFLOAD_NOPE": "1"}, "OFFLOAD_NOPE"),
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
