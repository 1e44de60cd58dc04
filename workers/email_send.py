"""Sending an `email` job (see `offload.workers.email`): imported by the handler when it
first runs, in the service, so that worker processes, which load every built-in type
module, never load the SMTP client or ssl."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Mapping
from email.message import MIMEPart
from typing import Any

import aiosmtplib

from offload.workers.context import Context, Input
from offload.workers.email_message import (
    EmailRequest, attachment_part, build_message, parse_request,
)
from offload.workers.email_rate import bucket_for
from offload.workers.email_settings import EmailSettings
from offload.workers.errors import JobError, PermanentError
from offload.workers.filenames import safe_filename

#: SMTP's "service not available, closing": the connection's end, not the recipient's.
CLOSING = 421


async def send(data: Any, ctx: Context) -> dict[str, Any]:
    settings = EmailSettings.from_settings(ctx.settings)
    request = parse_request(data, settings)
    done = _Delivery.resume(ctx.checkpoint)
    total = len(request.to)
    todo = [(i, r) for i, r in enumerate(request.to) if not done.answered(r.address)]
    ctx.progress(done.percent(total), done.message(total))
    if not todo:
        return done.to_json()
    parts = await _attachments(request, ctx.inputs, settings)
    domain = request.sender.address.rpartition("@")[2]
    bucket = bucket_for(settings.server, settings.rate, settings.burst)
    host, port = settings.server
    try:
        async with _connection(settings) as smtp:
            for index, recipient in todo:
                await bucket.acquire()
                ctx.check_cancelled()
                message = build_message(request, recipient, f"<{ctx.job_id}.{index}@{domain}>", parts)
                try:
                    await smtp.sendmail(request.sender.address, [recipient.address], message)
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    refusal = exc.recipients[0]
                    _closing(refusal)
                    done.refuse(recipient.address, f"{refusal.code} {refusal.message}")
                except aiosmtplib.SMTPSenderRefused as exc:
                    _closing(exc)
                    error = PermanentError if exc.code >= 500 else JobError
                    raise error(f"the SMTP server refused the sender {exc.sender}: {exc.code} {exc.message}",
                                type="SenderRefused") from None
                except aiosmtplib.SMTPDataError as exc:
                    _closing(exc)
                    done.refuse(recipient.address, f"{exc.code} {exc.message}")
                else:
                    done.accept(recipient.address)
                await ctx.save(done.to_json())
                ctx.progress(done.percent(total), done.message(total))
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise PermanentError(f"the SMTP server {host}:{port} refused the login of {settings.username!r}: "
                             f"{exc.code} {exc.message}", type="SMTPLoginRefused") from None
    except (aiosmtplib.SMTPNotSupported, ssl.SSLCertVerificationError) as exc:
        raise PermanentError(f"SMTP {host}:{port}: {exc}", type="SMTPNotSupported") from None
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, aiosmtplib.SMTPTimeoutError,
            aiosmtplib.SMTPHeloError, aiosmtplib.SMTPResponseException, OSError, TimeoutError) as exc:
        # the connection's failure: retried; the next attempt starts after the last answer saved
        raise JobError(f"SMTP {host}:{port}: {_describe(exc)} ({done.message(total)} so far; a retry sends to "
                       "the others)", type="SMTPConnectionError") from None
    return done.to_json()


class _Delivery:
    """What each recipient's message became so far: the checkpoint, and at the end the result."""

    def __init__(self, sent: list[str], refused: dict[str, str]) -> None:
        self.sent, self.refused = sent, refused
        self._answered = {a.lower() for a in (*sent, *refused)}

    @classmethod
    def resume(cls, checkpoint: Any) -> _Delivery:
        if not isinstance(checkpoint, dict):
            return cls([], {})
        return cls(list(checkpoint.get("sent", [])), dict(checkpoint.get("refused", {})))

    def answered(self, address: str) -> bool:
        return address.lower() in self._answered

    def accept(self, address: str) -> None:
        self.sent.append(address)
        self._answered.add(address.lower())

    def refuse(self, address: str, answer: str) -> None:
        self.refused[address] = answer
        self._answered.add(address.lower())

    def percent(self, total: int) -> int:
        return (len(self.sent) + len(self.refused)) * 100 // total

    def message(self, total: int) -> str:
        refused = f", {len(self.refused)} refused" if self.refused else ""
        return f"{len(self.sent)} of {total} sent{refused}"

    def to_json(self) -> dict[str, Any]:
        return {"sent": list(self.sent), "refused": dict(self.refused)}


def _closing(exc: aiosmtplib.SMTPResponseException) -> None:
    """A 421 to a command is the server closing the connection: a retry, not a refusal."""
    if exc.code == CLOSING:
        raise aiosmtplib.SMTPServerDisconnected(f"{exc.code} {exc.message}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {exc.message}"
    return str(exc) or exc.__class__.__name__


def _connection(settings: EmailSettings) -> aiosmtplib.SMTP:
    """A client for the configured server, used as `async with` (connects, logs in, quits).
    The password is read here, at each connection, and goes nowhere but the login."""
    try:
        password = settings.password()
    except LookupError as exc:
        raise PermanentError(str(exc), type="SMTPPasswordMissing") from None
    host, port = settings.server
    return aiosmtplib.SMTP(
        hostname=host, port=port, timeout=settings.timeout_s, local_hostname=settings.local_hostname,
        use_tls=settings.security == "tls", start_tls=settings.security == "starttls",
        username=settings.username or None, password=password, cert_bundle=settings.ca_file or None)


async def _attachments(request: EmailRequest, inputs: Mapping[str, Input], settings: EmailSettings) -> list[MIMEPart]:
    """Each attachment's part, from the result file of the job it names (one this job waited
    for), encoded once for all recipients; the total size is checked before anything is read."""
    found: list[tuple[Input, str]] = []
    total = 0
    for i, attachment in enumerate(request.attachments):
        source = inputs.get(attachment.job)
        if source is None or source.path is None:
            why = "is not among the jobs this one waited for" if source is None else "has no result file"
            raise PermanentError(f"attachments[{i}].job: job {attachment.job} {why}", type="AttachmentMissing")
        try:
            total += os.stat(source.path).st_size
        except OSError:
            raise PermanentError(f"attachments[{i}].job: the result file of job {attachment.job} is gone "
                                 "(expired by retention?)", type="AttachmentMissing") from None
        name = attachment.filename or source.filename or f"{attachment.job}.bin"
        found.append((source, safe_filename(name, keep=" ()") or "attachment"))
    if total > settings.max_attachment_bytes:
        raise PermanentError(f"attachments: {total} bytes in all, over the limit of {settings.max_attachment_bytes} "
                             "([jobs.settings.email] max_attachment_bytes)", type="AttachmentsTooLarge")
    parts = []
    for source, name in found:
        content = await asyncio.to_thread(source.read_bytes)
        parts.append(attachment_part(content, name, source.content_type or "application/octet-stream"))
    return parts
