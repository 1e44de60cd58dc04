"""The `offload` command: `serve` runs the service (here); `config` and `check` look at its
configuration (`config_command`); the client commands (submit, jobs, get, cancel, download,
watch) live in `offload.commands`."""
from __future__ import annotations

import argparse
import importlib.util
import asyncio
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from offload import __version__, commands
from offload.service import config_command
from offload.service.access_log import RedactingAccessLogger
from offload.service.app import create_app
from offload.service.config import Config, ConfigError, load_config
from offload.service.errors import OffloadError
from offload.service.forks import fork_early
from offload.service.keys import SCHEDULER
from offload.service.logs import LOG_FORMATS, setup_logging
from offload.workers.registry import ModuleLoadError

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

    # Before anything starts a thread (the log writer is the first): the worker processes are
    # forked from a copy of this process as it is now (`service/forks.py`).
    fork_early()
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
        try:
            return loop.run_until_complete(_serve(config))
        except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
            return 130
        finally:
            _close_loop(loop)
    finally:
        logs.close()  # what is still queued is written before the process ends


def _workers_skip_the_script() -> None:
    """Started as the `offload` console script, the service's `__main__` is that script, and
    every worker process would import it again (multiprocessing re-imports the parent's main
    module by path), and with it the whole service: aiohttp, the store, the CLI, some 20 MB
    per worker that no job uses. Named as the package's `__main__`, as `python -m offload`
    names it, it is left alone, and workers hold only what the fork server loaded."""
    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__spec__", None) is None:
        main.__spec__ = importlib.util.find_spec("offload.__main__")


def on_import_path(folder: Path) -> None:
    """Put the config file's folder first on the import path (as Celery and RQ do with the
    working directory), so `[workers] modules = ["myapp.jobs"]` finds `myapp/` beside
    `config.toml` with no PYTHONPATH. Worker processes see the same path: forked ones
    inherit it, and spawned ones, like the fork server that forks the others, are given
    the parent's `sys.path` when they start, which is after this."""
    entry = str(folder)
    if entry in sys.path:
        sys.path.remove(entry)
    sys.path.insert(0, entry)


async def _serve(config: Config) -> int:
    """Start, serve until a signal's drain is over, stop. "serving on" is printed only once
    the port listens; a start-up that fails (the database is read-only, the port is taken)
    prints one line, closes what was opened and returns 1."""
    try:
        app = create_app(config)
    except ConfigError as exc:  # a schedule whose type or data the loaded job types refuse
        print(f"offload: configuration error: {exc}", file=sys.stderr, flush=True)
        return 2
    except ModuleLoadError as exc:  # a module named in [workers] modules: nothing has started yet
        looked = f"; looked in {config.base_dir} (the config file's folder) and the Python path" \
            if exc.not_found else ""
        print(f"offload: cannot start: [workers] modules: {exc}{looked}", file=sys.stderr, flush=True)
        return 1
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=config.server.shutdown_grace + 5,
                           access_log_class=RedactingAccessLogger,
                           access_log=logging.getLogger("aiohttp.access") if config.server.access_log else None)
    shutdown = _Shutdown(app, config.server.shutdown_grace)
    shutdown.install(asyncio.get_running_loop())
    try:
        try:
            await runner.setup()  # the cleanup contexts: store, worker pool, scheduler
            await web.TCPSite(runner, config.server.host, config.server.port).start()
        except (OffloadError, RuntimeError, OSError) as exc:
            message = exc.message if isinstance(exc, OffloadError) else str(exc)
            print(f"offload: cannot start: {message}", file=sys.stderr, flush=True)
            return 1
        print(f"offload: serving on http://{config.server.host}:{config.server.port}  "
              f"(database {config.store_label}, {config.process_count} worker processes)", flush=True)
        shutdown.started.set()
        await shutdown.done.wait()
        return 0
    finally:
        await runner.cleanup()  # also the cleanup contexts that started before a failing one


class _Shutdown:
    """SIGTERM and Ctrl-C: drain the scheduler first, then let aiohttp shut down.

    aiohttp's own signal handling stops listening at once, so a client would see refused
    connections instead of the contract's 503 `shutting_down`. Here the first signal stops
    the scheduler while the server goes on answering: new jobs are refused, running jobs
    get `shutdown_grace` seconds and are then handed back as pending, and their events
    still reach the WebSockets. Only then does aiohttp stop listening, close the
    WebSockets (1001) and the store. A second signal cuts the grace short: the running
    jobs are stopped at once and handed back as pending all the same. A signal during
    start-up takes effect once start-up is done (stopping half-way would leave it
    half-built)."""

    def __init__(self, app: web.Application, grace: float) -> None:
        self.app = app
        self.grace = grace
        #: Set once the service listens: a drain waits for it.
        self.started = asyncio.Event()
        #: Set once the drain is over: the service stops.
        self.done = asyncio.Event()
        self._drain: asyncio.Task[None] | None = None
        self._hurried = False

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.on_signal, sig)

    def on_signal(self, sig: signal.Signals) -> None:
        if self._drain is None:
            log.info("%s: stopping; running jobs get %g s to finish (signal again to stop them now)",
                     sig.name, self.grace)
            self._drain = asyncio.get_running_loop().create_task(self.drain(), name="offload-drain")
        elif not self._hurried and not self.done.is_set():
            log.warning("%s again: stopping now; running jobs go back to pending", sig.name)
            self._hurried = True
            if SCHEDULER in self.app:
                self.app[SCHEDULER].hurry()
        else:
            log.info("%s: already stopping", sig.name)

    async def drain(self) -> None:
        await self.started.wait()
        scheduler = self.app[SCHEDULER]
        try:
            if self._hurried:  # the second signal came during start-up
                scheduler.hurry()
            print(f"offload: drain done: {await scheduler.stop(self.grace)}", flush=True)
        finally:
            self.done.set()


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
