"""`offload serve`: run the service."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web

from offload.service.access_log import RedactingAccessLogger
from offload.service.app import create_app
from offload.service.config import ConfigError, load_config
from offload.service.keys import CONFIG, SCHEDULER

log = logging.getLogger("offload.cli")


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="offload", description="offload: background jobs with live progress")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the service")
    serve.add_argument("--config", help="path to config.toml (default: ./config.toml if present)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {"server": {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}}
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"offload: configuration error: {exc}", file=sys.stderr)
        return 2
    loop = _loop()
    asyncio.set_event_loop(loop)
    app = create_app(config)
    _stop_gracefully_on_signals(app, loop)
    print(f"offload: serving on http://{config.server.host}:{config.server.port}  "
          f"(database {config.store_url}, {config.process_count} worker processes)", flush=True)
    try:
        web.run_app(app, host=config.server.host, port=config.server.port, loop=loop, print=None,
                    shutdown_timeout=config.server.shutdown_grace + 5, handle_signals=False,
                    access_log_class=RedactingAccessLogger)
    except (RuntimeError, OSError) as exc:  # the database is taken, the port is in use, …
        print(f"offload: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _stop_gracefully_on_signals(app: web.Application, loop: asyncio.AbstractEventLoop) -> None:
    """SIGTERM and Ctrl-C: drain the scheduler first, then let aiohttp shut down.

    aiohttp's own signal handling stops listening at once, so a client would see refused
    connections instead of the contract's 503 `shutting_down`. Here the first signal stops
    the scheduler while the server goes on answering: new jobs are refused, running jobs
    get `shutdown_grace` seconds and are then handed back as pending, and their events
    still reach the WebSockets. Only then does aiohttp stop listening, close the
    WebSockets (1001) and the store. A signal during start-up takes effect once start-up
    is done (stopping half-way would leave it half-built); a second signal changes nothing."""
    grace = app[CONFIG].server.shutdown_grace
    started = asyncio.Event()
    stopping: list[asyncio.Task[None]] = []

    async def on_startup(app: web.Application) -> None:
        started.set()

    def graceful_exit() -> None:
        raise web.GracefulExit()

    async def drain() -> None:
        await started.wait()
        try:
            await app[SCHEDULER].stop(grace)
        finally:
            loop.call_soon(graceful_exit)

    def on_signal(sig: signal.Signals) -> None:
        if stopping:
            log.info("%s: already stopping; running jobs are stopped %g s after the first signal", sig.name, grace)
            return
        log.info("%s: stopping; running jobs get %g s to finish", sig.name, grace)
        stopping.append(loop.create_task(drain(), name="offload-drain"))

    app.on_startup.append(on_startup)  # after the cleanup contexts: the scheduler runs by then

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)


if __name__ == "__main__":
    sys.exit(main())
