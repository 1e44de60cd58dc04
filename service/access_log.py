"""The access log (`[server] access_log`): one line per request, with its request id and
with credentials taken out of every line.

Browsers authenticate the WebSocket in its URL (`/api/ws?token=…` or `?ticket=…`), and
aiohttp's access log writes the request line, and the Referer, as they came. This logger
writes `token=***` and `ticket=***` instead, in the message and in the record's `extra`
fields alike, whatever the log format.

Health probes and `/api/stats` polling are not logged: they would be most of the lines."""
from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote_plus

from aiohttp.web_log import AccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from offload.service.logs import REQUEST_ID

#: Query parameters that carry a credential.
SECRET_PARAMETERS = frozenset({"token", "ticket"})
#: One `name=value` pair of a query string (after `?`, `&` or `;`).
#: Paths polled by probes and dashboards, never logged (`/api/health`, `/api/health/ready`, …).
QUIET_PATHS = frozenset({"/api/stats", "/api/health"})
_PAIR = re.compile(r"(?<=[?&;])([^=&;#\s\"]+)=([^&;#\s\"]*)")


def redact(text: str) -> str:
    """`text` with the value of every credential parameter replaced by `***`; names are
    compared as a server decodes them (`%74oken=` is `token=`)."""
    if "=" not in text:
        return text

    def hide(match: re.Match[str]) -> str:
        name = match.group(1)
        return f"{name}=***" if unquote_plus(name).lower() in SECRET_PARAMETERS else match.group(0)

    return _PAIR.sub(hide, text)


class RedactingAccessLogger(AccessLogger):
    def _format_line(self, request: BaseRequest, response: StreamResponse,
                     time: float) -> Iterable[tuple[str | tuple[str, str], str]]:
        return [(key, redact(value) if isinstance(value, str) else value)
                for key, value in super()._format_line(request, response, time)]

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        path = request.path
        if path in QUIET_PATHS or path.startswith("/api/health/"):
            return
        # The request's own context is over by now: the id comes from the response header.
        request_id = REQUEST_ID.set(response.headers.get("X-Request-Id"))
        try:
            super().log(request, response, time)
        finally:
            REQUEST_ID.reset(request_id)
