"""The built-in `email` job type: one message to many recipients over SMTP.

It is I/O: an `async def` handler on the service's event loop (aiosmtplib), not a worker
process. Each recipient gets a message of their own (their own `{placeholders}`, and a
refusal that concerns them alone), over one connection, at the rate the server's bucket
allows (`email_rate`).

What a recipient's message became is saved (`ctx.save`) as soon as the server answered,
so the attempt that follows a connection failure sends only to the recipients nobody has
answered for yet: the checkpoint is the result so far, `{"sent": [...], "refused": {...}}`,
and the result is the checkpoint once every recipient was answered. A refusal (a 4xx or 5xx
to RCPT or DATA) is recorded, not retried: the job is retried as a whole only for what
concerns the connection (refused, dropped, timed out, or a 421 "closing"). The one message
that can go twice is the one in flight when a connection drops after its DATA was sent but
before the answer came: SMTP cannot tell whether it was taken. Its Message-ID is the same
in both (`<job id>.<index>@<sender's domain>`), so a receiver can tell.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from offload.workers.context import Context
from offload.workers.email_message import parse_request, request_schema
from offload.workers.email_settings import EmailSettings
from offload.workers.registry import job_type


def validate_email(data: Any, settings: Mapping[str, Any]) -> None:
    parse_request(data, EmailSettings.from_settings(settings))


def email_schema(settings: Mapping[str, Any]) -> dict[str, Any]:
    return request_schema(EmailSettings.from_settings(settings))


def email_needs(data: Any) -> list[str]:
    """The jobs whose result files are attached: the email waits for them."""
    return list(dict.fromkeys(a["job"] for a in data.get("attachments", ())))


@job_type("email", validate=validate_email, schema=email_schema, needs=email_needs)
async def email(data: Any, ctx: Context) -> dict[str, Any]:
    # The sending side (aiosmtplib, ssl) is loaded here, in the service, at the first email:
    # worker processes load this module with every built-in type and must not carry it.
    from offload.workers.email_send import send

    return await send(data, ctx)
