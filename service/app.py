"""`create_app(config)`: the whole service as one aiohttp application.

Start order (cleanup contexts): store → statistics (seeded from the store before anything
writes) → worker pool → scheduler → schedules → retention → the metrics listener, if any; stop
order is the reverse, so running jobs are handed back before the pool stops and the store closes last.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from importlib import resources
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from weakref import WeakSet

from aiohttp import WSCloseCode, web

from offload.service import api, ws
from offload.service.auth import Authenticator, authenticate
from offload.service.config import Config, metrics_address
from offload.service.errors import NotFound, OffloadError, PayloadTooLarge, Unavailable
from offload.service.events import EventHub
from offload.service.joblog import JobLog
from offload.service.keys import (
    AUTH, CLOCK, CONFIG, HUB, LIMITS, METRICS, REGISTRY, RETENTION, SCHEDULER, SCHEDULES, SOCKETS, STATS, STORE,
    SUBMISSIONS,
)
from offload.service.metrics import Metrics, metrics_response
from offload.service.limits import Limits
from offload.service.logs import REQUEST_ID
from offload.service.models import Clock
from offload.service.openapi import openapi_json
from offload.service.origins import refuse_foreign_origins
from offload.service.pool import WorkerPool
from offload.service.retention import Retention
from offload.service.scheduler import Scheduler
from offload.service.schedules import Schedules, check as check_schedules, list_schedules
from offload.service.stats import Statistics
from offload.service.store import Store, open_store
from offload.service.submissions import Submissions
from offload.workers.registry import BUILTIN_MODULES, Registry

log = logging.getLogger("offload.app")
#: The page's folder, wherever the package is installed (a wheel or an editable checkout).
STATIC = Path(str(resources.files("offload.static")))


#: A caller's own X-Request-Id is kept when it is this tame (it goes into logs and headers).
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _request_ids() -> Iterator[str]:
    """The ids of requests that bring none: 16 hex digits, a random half drawn at start and a
    counter, unique within a run and apart from other runs' (they name a request in the logs;
    nothing is guarded by guessing one, so they cost no draw from the random source)."""
    prefix = secrets.token_hex(4)
    return (f"{prefix}{n:08x}" for n in itertools.count())


_next_request_id = _request_ids().__next__


#: A Host safe to repeat in the page's CSP (anything else just leaves out the ws: sources).
_HOST = re.compile(r"^[A-Za-z0-9.:\[\]-]{1,255}$")


def _page_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The demo page runs only its own files: no inline or foreign script or style, no
    framing (clickjacking), no Referer leaving the page, no type sniffing. `connect-src`
    names ws:/wss: to this host besides 'self', which older browsers do not apply to
    WebSockets."""
    own = f" ws://{request.host} wss://{request.host}" if _HOST.match(request.host) else ""
    response.headers.update({
        "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                                   f"img-src 'self' data:; connect-src 'self'{own}; base-uri 'none'; "
                                   "form-action 'self'; frame-ancestors 'none'",
        "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"})


@web.middleware
async def errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    request_id = request.headers.get("X-Request-Id", "")
    if not request_id or not _CLIENT_REQUEST_ID.match(request_id):
        request_id = _next_request_id()
    request_id_set = REQUEST_ID.set(request_id)  # on every line logged while handling it
    try:
        response = await handler(request)
    except OffloadError as exc:
        if exc.status >= 500:  # 503s say what is wrong already (draining, store fault): a warning
            level = logging.WARNING if isinstance(exc, Unavailable) else logging.ERROR
            log.log(level, "request %s %s %s: %s", request_id, request.method, request.path, exc.message)
        response = api.json_response(exc.to_wire(), exc.status)
        response.headers.update(exc.headers)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CONFIG].limits.max_body_bytes
        response = api.json_response(PayloadTooLarge(f"the request body is larger than {limit} bytes").to_wire(), 413)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status >= 500:
            log.error("request %s %s %s: HTTP %d %s", request_id, request.method, request.path, exc.status, exc.reason)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        message = {404: f"no such endpoint: {request.path}",
                   405: f"{request.method} is not allowed on {request.path}"}.get(exc.status, exc.reason)
        response = api.json_response({"error": {"code": code, "message": message}}, exc.status)
        for header in ("Allow",):
            if header in exc.headers:
                response.headers[header] = exc.headers[header]
    except Exception:
        log.exception("request %s %s %s failed", request_id, request.method, request.path)
        response = api.json_response({"error": {"code": "internal_error", "message": "the service failed to "
                                      f"answer this request; quote request id {request_id} when reporting it"}}, 500)
    finally:
        REQUEST_ID.reset(request_id_set)
    response.headers["X-Request-Id"] = request_id
    path = request.path
    if path == "/" or path.startswith("/static/"):  # the page's own headers, on whatever it is answered
        _page_headers(request, response)
    return response


def create_app(config: Config, *, registry: Registry | None = None, clock: Clock | None = None) -> web.Application:
    """`registry` holds the job types (default: the built-ins and `[workers] modules`; the
    worker processes load the same modules); `clock` is the service's time (default: the
    machine's); tests inject one to step it."""
    app = web.Application(middlewares=[errors, refuse_foreign_origins, authenticate],
                          client_max_size=config.limits.max_body_bytes)
    app[CONFIG] = config
    app[REGISTRY] = registry or Registry.from_modules(config.workers.modules)
    app[AUTH] = Authenticator.from_config(config)  # ConfigError: no tokens on a public host
    app[LIMITS] = Limits(config.limits)
    app[HUB] = EventHub()
    app[SOCKETS] = WeakSet()
    app[CLOCK] = clock or Clock()
    # ConfigError naming the schedule and the field (an unknown type, data its type refuses)
    app[SCHEDULES] = Schedules(check_schedules(config, app[REGISTRY]), config, app[REGISTRY], app[CLOCK])
    app.add_routes(api.routes)
    app.router.add_get("/api/schedules", list_schedules)
    app.router.add_get("/api/ws", ws.websocket)
    app.router.add_get("/api/openapi.json", openapi_json)
    app.router.add_get("/", _index)
    if STATIC.is_dir():
        app.router.add_static("/static", STATIC)
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(_statistics)
    app.cleanup_ctx.append(_scheduler)
    app.cleanup_ctx.append(_schedules)
    app.cleanup_ctx.append(_retention)
    app.cleanup_ctx.append(_metrics_listener)
    app.on_shutdown.append(_close_sockets)
    return app


async def _index(request: web.Request) -> web.StreamResponse:
    page = STATIC / "index.html"
    if not page.is_file():
        raise NotFound("the demo page is not installed")
    return web.FileResponse(page)


async def _store(app: web.Application):  # type: ignore[no-untyped-def]
    config = app[CONFIG]
    store = open_store(config.store_url, config.store)
    store.subscribe_all(app[HUB].on_change)  # events come from commits (any node's), and only from them
    store.changes.subscribe(JobLog(app[CLOCK].now).on_change)  # and so do the job lifecycle lines
    await store.open()  # closes whatever it opened when it fails
    try:
        config.results_path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # no teardown runs for a setup that failed: close the store here
        await store.close()
        raise RuntimeError(f"cannot create the results folder {config.results_path}: {exc.strerror}") from None
    app[STORE] = store
    log.info("job store: %s", config.store_label)
    catch_up = None
    if store.poll_interval is not None:  # other nodes write too: make up for a lost notification
        app[HUB].tracking = True
        catch_up = asyncio.get_running_loop().create_task(_catch_up(app[HUB], store), name="offload-catch-up")
    yield
    if catch_up is not None:
        catch_up.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await catch_up
    await store.close()


async def _catch_up(hub: EventHub, store: Store) -> None:
    """Every `poll_interval`, the jobs watched here as the database has them (`EventHub.catch_up`)."""
    assert store.poll_interval is not None
    while True:
        await asyncio.sleep(store.poll_interval)  # a poll period, not a wait for something
        try:
            await hub.catch_up(store)
        except OffloadError as exc:
            log.warning("could not read the watched jobs: %s", exc.message)
        except Exception:
            log.exception("reading the watched jobs failed")


async def _scheduler(app: web.Application):  # type: ignore[no-untyped-def]
    config = app[CONFIG]
    min_size = None if config.workers.min_processes < 0 else config.workers.min_processes
    pool = WorkerPool(config.process_count, min_size=min_size, idle_timeout=config.workers.idle_timeout,
                      modules=tuple(m for m in app[REGISTRY].modules if m not in BUILTIN_MODULES),
                      memory_limit_mb=config.workers.memory_limit_mb, start_method=config.workers.start_method,
                      stop_grace=config.workers.stop_grace)
    try:
        await pool.start()
        scheduler = Scheduler(config, app[STORE], pool, app[CLOCK], registry=app[REGISTRY])
        await scheduler.start()
    except BaseException:  # no teardown runs for a setup that failed: stop the processes here
        await pool.close()
        raise
    app[SCHEDULER] = scheduler
    app[STATS].scheduler = scheduler
    app[SUBMISSIONS] = Submissions(config, app[STORE], scheduler, app[LIMITS], app[REGISTRY])
    log.info("scheduler %s: %d worker processes", scheduler.node, pool.size)
    yield
    await scheduler.stop(config.server.shutdown_grace)
    await pool.close()


async def _schedules(app: web.Application):  # type: ignore[no-untyped-def]
    """After the scheduler: the slots missed while the service was down are dealt with before
    it answers; stopped first, so no slot fires into a stopping service."""
    schedules = app[SCHEDULES]
    await schedules.start(app[STORE], app[SCHEDULER], app[LIMITS])
    yield
    await schedules.stop()


async def _retention(app: web.Application):  # type: ignore[no-untyped-def]
    config = app[CONFIG]
    retention = Retention(config.retention, app[STORE], app[CLOCK], config.results_path)
    app[RETENTION] = retention
    retention.start()
    yield
    await retention.stop()


async def _statistics(app: web.Application):  # type: ignore[no-untyped-def]
    """Statistics and metrics listen to the store's changes from its start; the minutes of
    today are read before the scheduler writes anything, so no change is counted twice."""
    store = app[STORE]
    stats = Statistics(app[CONFIG].stats, store, app[CLOCK], app[HUB], connections=lambda: len(app[SOCKETS]))
    metrics = Metrics(stats)
    await stats.seed()
    stats.observers.append(metrics.observed)
    unsubscribe = [store.changes.subscribe(stats.on_change)]
    store.on_commit = metrics.on_commit
    app[STATS], app[METRICS] = stats, metrics
    yield
    store.on_commit = None
    for stop in unsubscribe:
        stop()


async def _metrics_listener(app: web.Application):  # type: ignore[no-untyped-def]
    """`[metrics] listen`: `GET /metrics` with no token on a loopback port of its own."""
    listen = app[CONFIG].metrics.listen
    if not listen:
        yield
        return
    metrics = app[METRICS]

    async def scrape(request: web.Request) -> web.Response:
        return metrics_response(await metrics.render())

    side = web.Application()
    side.router.add_get("/metrics", scrape)
    runner = web.AppRunner(side, access_log=None)
    await runner.setup()
    host, port = metrics_address(listen)
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise RuntimeError(f"[metrics] listen: cannot listen on {listen}: {exc.strerror}") from None
    log.info("metrics: http://%s/metrics", listen)
    yield
    await runner.cleanup()


async def _close_sockets(app: web.Application) -> None:
    if SCHEDULER in app:
        app[SCHEDULER].stop_accepting()
    sockets = app[SOCKETS]
    for socket in list(sockets):
        await socket.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
