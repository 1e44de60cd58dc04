"""`generate_invoice(order, items)`: the invoice PDF, rendered by the service when there is
one, in this process when there is not. The migration path from rendering inside a web
request: the call stays as it was and gains the background service.

    from offload import generate_invoice, agenerate_invoice

    pdf = generate_invoice(order, items)                 # bytes; blocking (Django, Flask)
    pdf = await agenerate_invoice(order, items)          # the same for asyncio code

- With `url=` or `OFFLOAD_URL` set, it submits a `pdf` job (`{"type": "invoice", "order":
  order, "items": items}`) and waits for it over the WebSocket (`timeout` seconds at most:
  then `TimeoutError`; the job goes on in the service).
- When that service cannot be reached (no connection, or 503 `shutting_down` /
  `store_unavailable` once the client's retries are spent), it renders in this process with
  the same renderer and logs a warning saying so; with `fallback=False` it raises the
  client's `ServiceUnreachable` / `Unavailable` instead.
- With no URL at all it renders in this process (logged at info).

Either way the PDF holds the same text. Bad input is `InvalidRequest` either way, its
message naming the field as the service's 422 does (`data.items[0].quantity: …`); a job
that fails in the service is `JobFailed`, never rendered again here. `order` and `items`
are the invoice `data` of docs/api.md; unknown fields are ignored, as the service does.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from offload.client import AsyncClient, Client, InvalidRequest, OffloadClientError, ServiceUnreachable, Unavailable

log = logging.getLogger("offload.invoice")

#: Seconds of 429/503 retries before giving up (and falling back), unless `max_retry_wait=` says otherwise.
RETRY_WAIT = 5.0
#: Failures that mean "no service to render it": anything else is raised as it is.
UNREACHABLE = (ServiceUnreachable, Unavailable)


def generate_invoice(order: dict[str, Any], items: list[dict[str, Any]], *, url: str | None = None,
                     token: str | None = None, fallback: bool = True, timeout: float = 120.0,
                     **client_options: Any) -> bytes:
    """The invoice PDF's bytes; blocking. `client_options` go to `Client` (`max_attempts`,
    `max_retry_wait`, `max_reconnect_wait`); `max_retry_wait` is `RETRY_WAIT` unless given,
    since someone usually waits for this call and the fallback is right here."""
    client_options.setdefault("max_retry_wait", RETRY_WAIT)
    url = url or os.environ.get("OFFLOAD_URL")
    if not url:
        log.info("OFFLOAD_URL is not set: rendering invoice %s in this process", _number(order))
        return render_locally(order, items)
    try:
        with Client(url, token, **client_options) as client:
            return client.run("pdf", invoice_data(order, items), wait_timeout=timeout)
    except UNREACHABLE as exc:
        if not fallback:
            raise
        _warn(url, order, exc)
    return render_locally(order, items)


async def agenerate_invoice(order: dict[str, Any], items: list[dict[str, Any]], *, url: str | None = None,
                            token: str | None = None, fallback: bool = True, timeout: float = 120.0,
                            **client_options: Any) -> bytes:
    """`generate_invoice` for asyncio code; an in-process render runs in a thread, off the loop."""
    client_options.setdefault("max_retry_wait", RETRY_WAIT)
    url = url or os.environ.get("OFFLOAD_URL")
    if not url:
        log.info("OFFLOAD_URL is not set: rendering invoice %s in this process", _number(order))
        return await asyncio.to_thread(render_locally, order, items)
    try:
        async with AsyncClient(url, token, **client_options) as client:
            result: bytes = await client.run("pdf", invoice_data(order, items), wait_timeout=timeout)
            return result
    except UNREACHABLE as exc:
        if not fallback:
            raise
        _warn(url, order, exc)
    return await asyncio.to_thread(render_locally, order, items)


def invoice_data(order: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "invoice", "order": order, "items": items}


def render_locally(order: dict[str, Any], items: list[dict[str, Any]]) -> bytes:
    """The same parse and render a `pdf` worker runs. reportlab is imported here, on first
    use, so that `import offload` stays cheap."""
    from offload.workers.errors import ValidationError
    from offload.workers.invoice_data import parse_invoice
    from offload.workers.invoice_render import render_invoice

    try:
        invoice = parse_invoice(invoice_data(order, items))  # the shipped [jobs.settings.pdf] defaults
    except ValidationError as exc:
        raise InvalidRequest(f"data.{exc.field}: {exc.problem}" if exc.field else f"data: {exc.problem}") from None
    return render_invoice(invoice)


def _warn(url: str, order: Any, exc: OffloadClientError) -> None:
    log.warning("offload at %s is unavailable (%s); rendering invoice %s in this process instead",
                url, exc.message, _number(order))


def _number(order: Any) -> str:
    return str(order.get("number", "?")) if isinstance(order, dict) else "?"
