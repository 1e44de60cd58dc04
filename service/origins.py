"""Which web pages may act on the service: the `Origin` check (cross-site request forgery,
cross-site WebSocket hijacking).

A browser attaches cookies and, in single-user mode, reaches a loopback service from any
page it shows; a page elsewhere can send it a POST or DELETE that needs no preflight, and
open a WebSocket. Only the `Origin` header tells who is asking. It must name the service
itself (same scheme, host and port as the request) or one of `[server] allowed_origins`.
A request without `Origin` comes from a program, not a browser page (browsers send it on
every POST, DELETE and WebSocket upgrade), and is let through: it still needs its token.
"""
from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from yarl import URL

from offload.service.errors import Forbidden
from offload.service.keys import CONFIG

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
#: Methods that change nothing; every other method must come from a trusted origin.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def normalise(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin or base URL; None when it is not one."""
    try:
        url = URL(origin.strip())
    except ValueError:
        return None
    scheme = {"ws": "http", "wss": "https"}.get(url.scheme.lower(), url.scheme.lower())
    if scheme not in ("http", "https") or not url.host:
        return None
    return scheme, url.host.lower(), url.explicit_port or _DEFAULT_PORTS[scheme]


def own_origin(request: web.Request) -> tuple[str, str, int] | None:
    return normalise(f"{request.scheme}://{request.host}")


def check_origin(request: web.Request, allowed: Iterable[str]) -> None:
    """403 unless the request has no Origin, or one this service trusts (`Origin: null`,
    sent by sandboxed frames and local files, is never trusted)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    presented = normalise(origin)
    trusted = {own_origin(request), *(normalise(a) for a in allowed)}
    trusted.discard(None)
    if presented is None or presented not in trusted:
        what = "WebSocket connections" if request.path == "/api/ws" else f"{request.method} requests"
        raise Forbidden(f"{what} from origin {origin[:100]!r} are not allowed; "
                        "list it in [server] allowed_origins to allow it")


@web.middleware
async def refuse_foreign_origins(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """State-changing calls (POST, DELETE, …) from a foreign page are refused before they
    are read or authenticated, in both modes, with the WebSocket's allow-list."""
    if request.method not in SAFE_METHODS:
        check_origin(request, request.app[CONFIG].server.allowed_origins)
    return await handler(request)
