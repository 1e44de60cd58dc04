"""Which web pages may open the WebSocket (cross-site WebSocket hijacking).

A browser attaches cookies and, in single-user mode, reaches a loopback service from any
page it shows; only the `Origin` header tells who is asking. It must name the service
itself (same scheme, host and port as the request) or one of `[server] allowed_origins`.
A request without `Origin` comes from a program, not a browser page, and is let through:
it still needs its token.
"""
from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from yarl import URL

from offload.service.errors import Forbidden

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


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
    """403 unless the request has no Origin, or one this service trusts."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    presented = normalise(origin)
    trusted = {own_origin(request), *(normalise(a) for a in allowed)}
    trusted.discard(None)
    if presented is None or presented not in trusted:
        raise Forbidden(f"WebSocket connections from origin {origin[:100]!r} are not allowed; "
                        "list it in [server] allowed_origins to allow it")
