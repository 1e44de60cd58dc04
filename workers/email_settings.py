"""The settings of the `email` job type, `[jobs.settings.email]` in config.toml.

They live with the other per-type settings so they reach the handler as `ctx.settings`,
take `OFFLOAD_JOBS_SETTINGS_EMAIL_<KEY>` overrides, and show (masked) in `offload config`
like every other setting. The password is never among them: the settings name where it
is (`password_env`, an environment variable; or `password_file`), and it is read when a
connection logs in, never printed, logged or put in an error.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

SECURITY = ("none", "starttls", "tls")
DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}


@dataclass(frozen=True)
class EmailSettings:
    #: The SMTP server every email job of this node sends through.
    host: str = "localhost"
    #: 0: the usual port of `security` (25, 587, 465).
    port: int = 0
    #: none: plain SMTP (a local relay); starttls: upgrade after connecting; tls: TLS from the start.
    security: str = "none"
    username: str = ""
    #: The name of the environment variable holding the password.
    password_env: str = ""
    #: A file holding the password (its first line); relative to the config file's folder.
    password_file: str = ""
    #: A CA bundle (PEM) to verify the server's certificate with, instead of the system's.
    ca_file: str = ""
    #: The sender when a job names none; "" makes `from` required in every job.
    sender: str = ""
    #: The name this node gives in EHLO; "" is the machine's host name (no DNS look-up).
    helo_name: str = ""
    #: Seconds for connecting and for each SMTP command.
    timeout_s: float = 30.0
    #: Messages per second to this server, shared by all email jobs of the node; 0: no limit.
    rate: float = 10.0
    #: How many messages may go at once after a pause (the bucket's size).
    burst: int = 10
    max_recipients: int = 1000
    #: Characters of `text`, of `html`, and of one variable's value.
    max_body_length: int = 1_000_000
    max_attachments: int = 10
    #: The bytes of all attachments of one job together.
    max_attachment_bytes: int = 10_000_000

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> EmailSettings:
        """Raises `ValueError` naming the key (start-up shows it as a configuration error)."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in settings.items():
            name = "sender" if key == "from" else key
            if key == "password":
                raise ValueError("password: the password is never written in the configuration; name the "
                                 "environment variable holding it (password_env) or a file (password_file)")
            if name not in known or key == "sender":
                raise ValueError(f"{key}: unknown setting (known: {', '.join(sorted(_keys()))})")
            default = known[name].default
            if isinstance(default, float) and type(value) is int:
                value = float(value)
            if type(value) is not type(default):
                raise ValueError(f"{key}: must be a {type(default).__name__}, not {value!r}")
            values[name] = value
        email = cls(**values)
        email._check()
        return email

    def _check(self) -> None:
        if self.security not in SECURITY:
            raise ValueError(f"security: must be one of {', '.join(SECURITY)}, not {self.security!r}")
        if not 0 <= self.port < 65536:
            raise ValueError("port: must be between 1 and 65535 (0: the usual port of `security`)")
        if self.password_env and self.password_file:
            raise ValueError("password_env, password_file: give one of them, not both")
        if (self.password_env or self.password_file) and not self.username:
            raise ValueError("username: is required with a password")
        if self.username and self.security == "none" and not _is_loopback(self.host):
            raise ValueError(f"security: a login to {self.host} over plain SMTP would send the password in the "
                             "clear; use starttls or tls")
        for name, low in (("timeout_s", 0.001), ("rate", 0), ("burst", 1), ("max_recipients", 1),
                          ("max_body_length", 1), ("max_attachments", 0), ("max_attachment_bytes", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name}: must be >= {low}")
        if self.sender:
            from offload.workers.email_message import check_address  # the one address rule

            check_address(self.sender, "from")

    @property
    def server(self) -> tuple[str, int]:
        """The server as the rate limit knows it."""
        return self.host, self.port or DEFAULT_PORTS[self.security]

    @property
    def local_hostname(self) -> str:
        return self.helo_name or socket.gethostname() or "localhost"

    def password(self) -> str | None:
        """Read where the settings say, each time a connection logs in (a rotated secret is
        picked up). `LookupError` names the variable or file, never a value."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if not value:
                raise LookupError(f"the environment variable {self.password_env} (password_env) is not set")
            return value
        if self.password_file:
            try:
                lines = Path(self.password_file).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise LookupError(f"cannot read password_file {self.password_file}: {exc.strerror}") from None
            if not lines or not lines[0]:
                raise LookupError(f"password_file {self.password_file} is empty")
            return lines[0]
        return None


def _keys() -> list[str]:
    return ["from" if f.name == "sender" else f.name for f in fields(EmailSettings)]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_paths(settings: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    """`password_file` and `ca_file` relative to the config file's folder."""
    resolved = dict(settings)
    for key in ("password_file", "ca_file"):
        value = resolved.get(key)
        if isinstance(value, str) and value:
            resolved[key] = str((base_dir / Path(value).expanduser()).resolve())
    return resolved
