"""The `email` job's data: its rules (`parse_request`, run at submission and again in the
job), the same rules as an OpenAPI schema (`request_schema`), and the message each
recipient gets (`build_message`).

A `{name}` in the subject, text or HTML is replaced, per recipient, by that recipient's
`vars.name`, else the job's `vars.name`, else the built-ins `address` and `name`. One with
no value is left as written, so the braces of CSS or a script need no escaping (and no
rule ties a template to every recipient's variables, which no schema could state).
Values are HTML-escaped in the HTML part, and line breaks become spaces in the subject.
"""
from __future__ import annotations

import html as html_lib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.policy import SMTP
from email.utils import formatdate
from typing import Any, TYPE_CHECKING

from offload.workers.errors import ValidationError

if TYPE_CHECKING:
    from offload.workers.email_settings import EmailSettings

#: A dot-atom address (RFC 5322) on a host name: what every address must look like. The
#: schema states the same pattern.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
ADDRESS_PATTERN = rf"^{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*$"
_ADDRESS = re.compile(ADDRESS_PATTERN)
MAX_ADDRESS = 254
#: A header's text: no control characters (no line breaks to inject headers with).
LINE_PATTERN = r"^[^\x00-\x1f\x7f]*$"
_LINE = re.compile(LINE_PATTERN)
MAX_NAME, MAX_SUBJECT, MAX_FILENAME, MAX_VARS = 200, 998, 200, 100
JOB_ID_PATTERN = r"^job_[a-z2-7]{24}$"
_JOB_ID = re.compile(JOB_ID_PATTERN)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FIELDS = ("to", "subject", "text", "html", "from", "replyTo", "vars", "attachments")


@dataclass(frozen=True)
class Recipient:
    address: str
    name: str = ""
    vars: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Attachment:
    job: str
    filename: str | None = None


@dataclass(frozen=True)
class EmailRequest:
    #: Each address once (the first time it is named), in the order given.
    to: tuple[Recipient, ...]
    subject: str
    text: str | None
    html: str | None
    sender: Recipient
    reply_to: Recipient | None
    vars: Mapping[str, str]
    attachments: tuple[Attachment, ...]


def check_address(value: Any, field: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_ADDRESS or not _ADDRESS.match(value):
        raise ValidationError(field, f"must be an email address such as ada@example.com (at most {MAX_ADDRESS} "
                                     "characters, ASCII)")
    return value


def _line(value: Any, field: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit or not _LINE.match(value):
        raise ValidationError(field, f"must be a string of at most {limit} characters without line breaks")
    return value


def _vars(value: Any, field: str, limit: int) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_VARS:
        raise ValidationError(field, f"must be an object of at most {MAX_VARS} values")
    out = {}
    for key, item in value.items():
        if type(item) not in (str, int, float) or (type(item) is str and len(item) > limit):
            raise ValidationError(f"{field}.{key}", f"must be a string of at most {limit} characters, or a number")
        out[key] = item if type(item) is str else str(item)
    return out


def _party(value: Any, field: str, limit: int, with_vars: bool) -> Recipient:
    """An address string, or `{"address", "name"?, "vars"?}`."""
    if isinstance(value, str):
        return Recipient(check_address(value, field))
    allowed = ("address", "name", "vars") if with_vars else ("address", "name")
    if not isinstance(value, dict) or "address" not in value:
        raise ValidationError(field, 'must be an address, or an object {"address", "name"}')
    for key in value:
        if key not in allowed:
            raise ValidationError(f"{field}.{key}", f"unknown field (known: {', '.join(allowed)})")
    name = _line(value["name"], f"{field}.name", MAX_NAME) if "name" in value else ""
    variables = _vars(value["vars"], f"{field}.vars", limit) if "vars" in value else None
    return Recipient(check_address(value["address"], f"{field}.address"), name, variables)


def parse_request(data: Any, settings: EmailSettings) -> EmailRequest:
    """`data` checked against every rule, or `ValidationError` naming the field."""
    if not isinstance(data, dict):
        raise ValidationError("", "must be an object")
    for key in data:
        if key not in _FIELDS:
            raise ValidationError(key, f"unknown field (known: {', '.join(_FIELDS)})")
    to = data.get("to")
    if not isinstance(to, list) or not 1 <= len(to) <= settings.max_recipients:
        raise ValidationError("to", f"must be a list of 1 to {settings.max_recipients} recipients")
    limit = settings.max_body_length
    recipients: dict[str, Recipient] = {}
    for i, item in enumerate(to):
        recipient = _party(item, f"to[{i}]", limit, with_vars=True)
        recipients.setdefault(recipient.address.lower(), recipient)
    if "subject" not in data:
        raise ValidationError("subject", "is required")
    subject = _line(data["subject"], "subject", MAX_SUBJECT)
    bodies = {}
    for key in ("text", "html"):
        if key in data and (not isinstance(data[key], str) or len(data[key]) > limit):
            raise ValidationError(key, f"must be a string of at most {limit} characters")
        bodies[key] = data.get(key)
    if bodies["text"] is None and bodies["html"] is None:
        raise ValidationError("text", "give text, html or both")
    if "from" in data:
        sender = _party(data["from"], "from", limit, with_vars=False)
    elif settings.sender:
        sender = Recipient(settings.sender)
    else:
        raise ValidationError("from", "is required: no sender is configured ([jobs.settings.email] from)")
    reply_to = _party(data["replyTo"], "replyTo", limit, with_vars=False) if "replyTo" in data else None
    shared = _vars(data["vars"], "vars", limit) if "vars" in data else {}
    attachments = data.get("attachments", [])
    if not isinstance(attachments, list) or len(attachments) > settings.max_attachments:
        raise ValidationError("attachments", f"must be a list of at most {settings.max_attachments} attachments")
    return EmailRequest(tuple(recipients.values()), subject, bodies["text"], bodies["html"], sender, reply_to,
                        shared, tuple(_attachment(a, f"attachments[{i}]") for i, a in enumerate(attachments)))


def _attachment(value: Any, field: str) -> Attachment:
    if not isinstance(value, dict) or "job" not in value:
        raise ValidationError(field, 'must be an object {"job": "job_…", "filename"?}')
    for key in value:
        if key not in ("job", "filename"):
            raise ValidationError(f"{field}.{key}", "unknown field (known: job, filename)")
    if not isinstance(value["job"], str) or not _JOB_ID.match(value["job"]):
        raise ValidationError(f"{field}.job", "must be a job id (job_…)")
    filename = value.get("filename")
    if filename is not None and (not isinstance(filename, str) or not filename.strip()
                                 or len(filename) > MAX_FILENAME or not _LINE.match(filename)):
        raise ValidationError(f"{field}.filename", f"must be a file name of 1 to {MAX_FILENAME} characters")
    return Attachment(value["job"], filename)


def request_schema(settings: EmailSettings) -> dict[str, Any]:
    """`parse_request`'s rules as an OpenAPI 3.0 schema: exactly what is accepted."""
    limit = settings.max_body_length
    address = {"type": "string", "maxLength": MAX_ADDRESS, "pattern": ADDRESS_PATTERN}
    name = {"type": "string", "maxLength": MAX_NAME, "pattern": LINE_PATTERN}
    variables = {"type": "object", "maxProperties": MAX_VARS, "description": "values for {placeholders}",
                 "additionalProperties": {"anyOf": [{"type": "string", "maxLength": limit}, {"type": "number"}]}}

    def party(with_vars: bool) -> dict[str, Any]:
        properties: dict[str, Any] = {"address": address, "name": name}
        if with_vars:
            properties["vars"] = variables
        return {"anyOf": [address, {"type": "object", "required": ["address"], "properties": properties,
                                    "additionalProperties": False}]}

    body = {"type": "string", "maxLength": limit}
    schema: dict[str, Any] = {
        "type": "object", "additionalProperties": False,
        "required": ["to", "subject"] + ([] if settings.sender else ["from"]),
        "anyOf": [{"required": ["text"]}, {"required": ["html"]}],
        "properties": {
            "to": {"type": "array", "minItems": 1, "maxItems": settings.max_recipients, "items": party(True),
                   "description": "one message per recipient; an address named twice gets one"},
            "subject": {"type": "string", "maxLength": MAX_SUBJECT, "pattern": LINE_PATTERN},
            "text": body, "html": body,
            "from": party(False), "replyTo": party(False), "vars": variables,
            "attachments": {"type": "array", "maxItems": settings.max_attachments, "items": {
                "type": "object", "required": ["job"], "additionalProperties": False, "properties": {
                    "job": {"type": "string", "pattern": JOB_ID_PATTERN,
                            "description": "a job of yours whose result file is attached; the email waits for it"},
                    "filename": {"type": "string", "minLength": 1, "maxLength": MAX_FILENAME,
                                 "pattern": r"^[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f\s][^\x00-\x1f\x7f]*$"}}}},
        },
    }
    return schema


# ---- the messages ---------------------------------------------------------------------------------
def fill(template: str, values: Mapping[str, str], escape: bool = False) -> str:
    """`template` with each `{name}` that has a value replaced by it; the others stay."""
    def value(match: re.Match[str]) -> str:
        found = values.get(match.group(1))
        if found is None:
            return match.group(0)
        return html_lib.escape(found) if escape else found

    return _PLACEHOLDER.sub(value, template)


def values_of(request: EmailRequest, recipient: Recipient) -> dict[str, str]:
    return {"address": recipient.address, "name": recipient.name, **request.vars, **(recipient.vars or {})}


def attachment_part(content: bytes, filename: str, content_type: str) -> MIMEPart:
    """An attachment, encoded once and shared by every recipient's message."""
    maintype, _, subtype = content_type.partition("/")
    if not subtype or maintype == "multipart":
        maintype, subtype = "application", "octet-stream"
    part = MIMEPart(policy=SMTP)
    part.set_content(content, maintype=maintype, subtype=subtype, disposition="attachment", filename=filename)
    return part


def build_message(request: EmailRequest, recipient: Recipient, message_id: str,
                  attachments: Sequence[MIMEPart] = ()) -> bytes:
    """The message `recipient` gets, as the bytes DATA sends."""
    values = values_of(request, recipient)
    message = EmailMessage(policy=SMTP)
    message["From"] = _header_address(request.sender)
    message["To"] = _header_address(recipient)
    if request.reply_to is not None:
        message["Reply-To"] = _header_address(request.reply_to)
    subject_values = {k: " ".join(v.splitlines()) for k, v in values.items()}
    message["Subject"] = fill(request.subject, subject_values)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id
    if request.text is not None:
        message.set_content(fill(request.text, values))
        if request.html is not None:
            message.add_alternative(fill(request.html, values, escape=True), subtype="html")
    else:
        assert request.html is not None
        message.set_content(fill(request.html, values, escape=True), subtype="html")
    if attachments:
        message.make_mixed()
        for part in attachments:
            message.attach(part)  # type: ignore[arg-type]  # any MIMEPart attaches; typeshed says EmailMessage
    return message.as_bytes()


def _header_address(party: Recipient) -> Address:
    return Address(display_name=party.name, addr_spec=party.address)
