"""The `offload` command: `serve` runs the service (here); `config` and `check` look at its
configuration (`config_command`); the client commands (submit, jobs, get, cancel, download,
watch) live in `offload.commands`."""
from __future__ import annotations

import argparse
import importlib.util
import asyncio
import logging
import sys
from pathlib import Path

from offload import __version__, commands
from offload.service import config_command
from offload.service.config import ConfigError, load_config
from offload.service.forks import fork_early
from offload.service.logs import LOG_FORMATS, setup_logging
from offload.workers.registry import BUILTIN_MODULES

log = logging.getLogger("offload.cli")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="offload", description="offload: background jobs with live progress",
                                     epilog=commands.EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"offload {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    serve = subparsers.add_parser("serve", help="run the service")
    serve.add_argument("--config", help="path to config.toml (default: ./config.toml if present)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument("--access-log", action="store_true", default=None,
                       help="log one line per HTTP request ([server] access_log; off by default)")
    serve.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                       help="DEBUG, INFO (default), WARNING or ERROR, in any case")
    config_command.add_commands(subparsers)
    serve.add_argument("--log-format", type=str.lower, choices=LOG_FORMATS,
                       help="text (readable lines, default) or json (one object a line); [server] log_format")
    commands.add_commands(subparsers)
    args = parser.parse_args(argv)
    if hasattr(args, "run_config"):  # offload config, offload check
        code: int = args.run_config(args)
        return code
    if args.command != "serve":
        return commands.run(args)

    # Before anything starts a thread (the log writer is the first), and before the HTTP side
    # is imported: the worker processes are forked from a copy of this process as it is now
    # (`service/forks.py`), sharing with it what both use (the interpreter, the job types'
    # validation code) and nothing of aiohttp, which no worker needs.
    fork_early(("offload.workers.runtime", *BUILTIN_MODULES))
    # Set up before the configuration is read (its warnings are logged), in the flag's format
    # or text; then in the configured one.
    logs = setup_logging(args.log_level, args.log_format or "text")
    try:
        overrides = config_command.serve_overrides(args)
        try:
            config = load_config(args.config, overrides=overrides)
        except ConfigError as exc:
            print(f"offload: configuration error: {exc}", file=sys.stderr)
            return 2
        logs.use_format(config.server.log_format)
        on_import_path(config.base_dir)
        _workers_skip_the_script()
        loop = _loop()
        asyncio.set_event_loop(loop)
        from offload.service import serving  # the HTTP side: after the fork (see above)

        try:
            return loop.run_until_complete(serving.serve(config))
        except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
            return 130
        finally:
            _close_loop(loop)
    finally:
        logs.close()  # what is still queued is written before the process ends


def _workers_skip_the_script() -> None:
    """Started as the `offload` console script, the service's `__main__` is that script, and
    under `start_method = "spawn"` every worker process would import it again
    (multiprocessing re-imports the parent's main module by path), and with it the whole
    service: aiohttp, the store, the CLI, some 20 MB per worker that no job uses. Named as
    the package's `__main__`, as `python -m offload` names it, it is left alone. (offload's
    own fork server, the default, imports no main module.)"""
    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__spec__", None) is None:
        main.__spec__ = importlib.util.find_spec("offload.__main__")


def on_import_path(folder: Path) -> None:
    """Put the config file's folder first on the import path (as Celery and RQ do with the
    working directory), so `[workers] modules = ["myapp.jobs"]` finds `myapp/` beside
    `config.toml` with no PYTHONPATH. Worker processes see the same path: the fork server is
    sent the service's `sys.path` with its first request, which comes after this, and
    spawned workers are given it when they start."""
    entry = str(folder)
    if entry in sys.path:
        sys.path.remove(entry)
    sys.path.insert(0, entry)


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what still runs (a drain waiting for a start-up that failed), then close."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


if __name__ == "__main__":
    sys.exit(main())
