"""`offload serve` once its configuration is read: build the application, listen, drain on
a signal, stop. Imported by the command line only after it has forked the fork server
(`service/forks.py`), so that no worker holds a copy of aiohttp's pages."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from offload.service.access_log import RedactingAccessLogger
from offload.service.app import create_app
from offload.service.config import Config, ConfigError
from offload.service.errors import OffloadError
from offload.service.keys import SCHEDULER
from offload.workers.registry import ModuleLoadError

log = logging.getLogger("offload.cli")  # the name its lines had before this module was split from cli.py


async def serve(config: Config) -> int:
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
