"""`offload config` and `offload check`: the configuration as the service would run with it.

`offload config` prints every setting, as TOML, with where its value came from (the file,
an `OFFLOAD_*` variable, a flag, or the default), secrets masked: `[auth] tokens`, any key
named like a secret (`password`, `secret`, `token`, `api_key`, … at the end of its name,
in any section or job type's settings), and the password of a URL. `offload check` loads the
file, imports the job-type modules and checks the schedules against them, starting nothing:
exit 0 when the service would start with it, 2 with one line naming the problem.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson

from offload.service.config import Config, ConfigError, ScheduleConfig, Sources, load_config, load_config_sources

OK, USAGE = 0, 2
MASK = "********"
#: The last word of a key that holds a secret: `smtp_password`, `api_key`, `secret`, `token`.
SECRET_KEY = re.compile(r"(^|_)(password|passwd|pass|secret|secrets|token|tokens|api_key|apikey|private_key|"
                        r"credential|credentials)$", re.IGNORECASE)
#: `scheme://user:password@host`: the password is masked, the rest kept.
_URL_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^:/@]*:)([^@/]*)(@)", re.IGNORECASE)
#: The flags of `offload serve` that set a key (`offload config` takes them too).
FLAGS = {"server.host": "--host", "server.port": "--port", "server.access_log": "--access-log"}


def add_commands(subparsers: Any) -> None:
    show = subparsers.add_parser("config", help="print the effective configuration and where each value came from",
                                 description="Print the configuration `offload serve` would run with, as TOML, "
                                             "each value with its source; secrets masked.")
    show.add_argument("--config", help="path to config.toml (default: ./config.toml if present)")
    show.add_argument("--host", help="as `offload serve --host`")
    show.add_argument("--port", type=int, help="as `offload serve --port`")
    show.add_argument("--access-log", action="store_true", default=None, help="as `offload serve --access-log`")
    show.set_defaults(run_config=show_config)
    check = subparsers.add_parser("check", help="validate the configuration and the job-type modules, start nothing",
                                  description="Load config.toml, import [workers] modules, check every schedule; "
                                              "exit 0 when `offload serve` would start with them, 2 otherwise.")
    check.add_argument("--config", help="path to config.toml (default: ./config.toml if present)")
    check.set_defaults(run_config=check_config)


def serve_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The `[server]` keys that `serve`'s flags set (also `config`'s)."""
    return {"server": {k: v for k, v in (("host", getattr(args, "host", None)), ("port", getattr(args, "port", None)),
                                         ("access_log", getattr(args, "access_log", None)),
                                         ("log_format", getattr(args, "log_format", None))) if v is not None}}


# ---- offload config -------------------------------------------------------------------------------
def show_config(args: argparse.Namespace) -> int:
    try:
        config, sources = load_config_sources(args.config, overrides=serve_overrides(args))
    except ConfigError as exc:
        return _fail(f"offload config: configuration error: {exc}")
    from rich.console import Console  # here, not at the top: `offload serve` never loads rich
    from rich.text import Text

    console = Console(highlight=False)
    for line, source in render(config, sources, _file(args)):
        text = Text(line)
        if source:
            text.append("  # " + source, style="dim")
        console.print(text, soft_wrap=True)
    return OK


def _file(args: argparse.Namespace) -> str | None:
    """The config file `load_config` reads for these arguments, if any."""
    if args.config is not None:
        return str(Path(args.config).expanduser().resolve())
    return str(Path("config.toml").resolve()) if Path("config.toml").is_file() else None


def render(config: Config, sources: Sources, file: str | None) -> list[tuple[str, str]]:
    """The configuration as TOML lines, each with the source of its value ("" for headers),
    aligned so the sources read as a column."""
    lines: list[tuple[str, str]] = [(f"# offload configuration from {file or 'defaults (no config file)'}; "
                                     "secrets masked", "")]
    for section in fields(config):
        if section.name in ("base_dir", "schedules"):
            continue
        lines.append(("", ""))
        lines.append((f"[{section.name}]", ""))
        values = getattr(config, section.name)
        for key in fields(values):
            value = getattr(values, key.name)
            dotted = f"{section.name}.{key.name}"
            if dotted == "jobs.settings":
                continue  # its own tables, below
            lines.append((f"{key.name} = {toml(mask(dotted, value))}", source_of(dotted, sources)))
    for job_type, settings in config.jobs.settings.items():
        lines.append(("", ""))
        lines.append((f"[jobs.settings.{_key(job_type)}]", ""))
        for name, value in settings.items():
            dotted = f"jobs.settings.{job_type}.{name}"
            lines.append((f"{_key(name)} = {toml(mask(dotted, value))}", source_of(dotted, sources)))
    for schedule in config.schedules:
        lines.append(("", ""))
        lines.append(("[[schedules]]", source_of("schedules", sources)))
        for key in fields(ScheduleConfig):
            value = getattr(schedule, key.name)
            lines.append((f"{key.name} = {toml(mask(f'schedules.{key.name}', value))}", ""))
    width = max(len(line) for line, source in lines if source)
    return [(line.ljust(width) if source else line, source) for line, source in lines]


def source_of(dotted: str, sources: Sources) -> str:
    source = sources.get(dotted, "default")
    if source.startswith("file "):
        return "file"
    if source == "flag":
        return f"flag {FLAGS.get(dotted, '')}".strip()
    return source


def mask(dotted: str, value: Any) -> Any:
    """`value` with its secrets replaced by `MASK`: the tokens of `[auth] tokens` (the users
    stay), any value under a key named like a secret, and a URL's password."""
    if dotted == "auth.tokens":
        return {f"{MASK} ({n})": user for n, (_, user) in enumerate(sorted(value.items(), key=lambda kv: kv[1]), 1)}
    key = dotted.rsplit(".", 1)[-1]
    if SECRET_KEY.search(key) and value not in ("", None, {}, (), []):
        return MASK
    if isinstance(value, str):
        return _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), value)
    if isinstance(value, dict):
        return {k: mask(f"{dotted}.{k}", v) for k, v in value.items()}
    return value


def toml(value: Any) -> str:
    """A value written as TOML (inline tables and arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(str(k))} = {toml(v)}" for k, v in value.items()) + "}"
    return toml(str(value))


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else orjson.dumps(key).decode()


# ---- offload check -------------------------------------------------------------------------------
def check_config(args: argparse.Namespace) -> int:
    from offload.service.cli import on_import_path
    from offload.service.schedules import check
    from offload.service.store import open_store
    from offload.workers.registry import ModuleLoadError, Registry

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(f"offload check: configuration error: {exc}")
    try:
        open_store(config.store_url)  # the URL's scheme names a backend; nothing is opened
    except ValueError as exc:
        problem = str(exc).replace(config.store.url, mask("store.url", config.store.url))
        return _fail(f"offload check: configuration error: [store] url: {problem}")
    on_import_path(config.base_dir)
    try:
        registry = Registry.from_modules(config.workers.modules)
    except ModuleLoadError as exc:
        return _fail(f"offload check: [workers] modules: {exc}")
    try:
        schedules = check(config, registry)
    except ConfigError as exc:
        return _fail(f"offload check: configuration error: {exc}")
    from offload.service.models import iso, now_ms

    print(f"offload check: ok: {_file(args) or 'no config file (defaults)'}; job types: {', '.join(registry.names())}; "
          f"{len(schedules)} schedule{'s' if len(schedules) != 1 else ''}", flush=True)
    for schedule in schedules:
        print(f"  schedule {schedule.name}: {schedule.config.cron} ({schedule.config.timezone}), next run "
              f"{iso(schedule.cron.next_after(now_ms()))}", flush=True)
    return OK


def _fail(message: str) -> int:
    print(" ".join(message.split()), file=sys.stderr, flush=True)
    return USAGE
