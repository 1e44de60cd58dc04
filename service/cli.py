"""`offload serve`: run the service."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from aiohttp import web

from service.app import create_app
from service.config import ConfigError, load_config


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
    print(f"offload: serving on http://{config.server.host}:{config.server.port}  "
          f"(database {config.store_url}, {config.process_count} worker processes)", flush=True)
    try:
        web.run_app(app, host=config.server.host, port=config.server.port, loop=loop, print=None,
                    shutdown_timeout=config.server.shutdown_grace + 5, handle_signals=True)
    except (RuntimeError, OSError) as exc:  # the database is taken, the port is in use, …
        print(f"offload: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
