"""Who is asking: bearer tokens → users, or the single local user when no token is configured.

Tokens come from `[auth] tokens` (token → user, also filled from OFFLOAD_AUTH_TOKENS as
"user:token,…") and from `[auth] tokens_file`, a TOML file of `"<sha256 hex>" = "user"`
lines so that the secrets themselves need not be stored. Either way only SHA-256 digests
are kept in memory, and a presented token is compared with every one of them in constant
time (`hmac.compare_digest`), so the answer time says nothing about how close a guess was.

Without tokens the service trusts whoever can reach it, so it must only listen on a
loopback address: `Authenticator.from_config` refuses any other host, and the middleware
refuses requests whose `Host` is not a loopback name (a web page that rebinds its own
DNS name to 127.0.0.1 must not reach the API).

Browsers cannot give a WebSocket an Authorization header. Rather than a long-lived token
in the URL (where proxies and logs keep it), the page trades its token for a ticket
(`POST /api/ws-ticket`): random, valid for one upgrade within `TICKET_TTL_S` seconds, and
only on `/api/ws?ticket=`. Tickets live in this process's memory, so behind a balancer the
upgrade must reach the node that issued the ticket. `?token=` keeps working; the access
log redacts both (service/access_log.py).
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import re
import secrets
import time
import tomllib
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web
from yarl import URL

from offload.service.errors import Forbidden, TooManyRequests, Unauthorized
from offload.service.keys import AUTH, OWNER

if TYPE_CHECKING:
    from offload.service.config import Config

LOCAL_USER = "local"
MIN_TOKEN_LENGTH = 16
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
HEX_DIGEST = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")
#: Paths anyone may fetch: the demo page and its files, and the probes (which show nothing
#: about jobs, users or processes). Everything else needs a token.
PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = frozenset({"/", "/api/health/live", "/api/health/ready"})
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="offload"'}
#: Seconds a WebSocket ticket stays valid, and how many unused ones a user may hold.
TICKET_TTL_S = 30.0
MAX_TICKETS_PER_USER = 100


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@functools.lru_cache(maxsize=256)
def loopback_authority(authority: str) -> bool:
    """Whether the host a request's `Host` header names (port or not) is a loopback name,
    as `request.url.host` parses it; kept for the few names a service is reached by."""
    try:
        return is_loopback(URL.build(scheme="http", authority=authority).host or "")
    except ValueError:
        return False


@functools.lru_cache(maxsize=256)
def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Tickets:
    """Single-use, short-lived WebSocket credentials. Kept as digests; `clock` (monotonic
    seconds) is the one a test may replace to let tickets expire without waiting."""

    def __init__(self, ttl: float = TICKET_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._live: dict[bytes, tuple[str, float]] = {}  # digest → (user, expiry on `clock`), oldest first
        self._per_user: Counter[str] = Counter()

    def issue(self, user: str) -> tuple[str, float]:
        """A new ticket for `user` and its lifetime in seconds; 429 past the per-user cap."""
        self._forget_expired()
        if self._per_user[user] >= MAX_TICKETS_PER_USER:
            raise TooManyRequests(f"you hold {MAX_TICKETS_PER_USER} unused WebSocket tickets; use them or let "
                                  "them expire", retry_after=int(self.ttl) + 1)
        ticket = secrets.token_urlsafe(32)
        self._live[digest(ticket)] = (user, self.clock() + self.ttl)
        self._per_user[user] += 1
        return ticket, self.ttl

    def redeem(self, ticket: str) -> str | None:
        """The ticket's user, once: the ticket is gone afterwards. None when unknown or expired."""
        entry = self._live.pop(digest(ticket), None)
        if entry is None:
            return None
        user, expires = entry
        self._release(user)
        return user if self.clock() < expires else None

    def _forget_expired(self) -> None:
        now = self.clock()
        while self._live:
            key, (user, expires) = next(iter(self._live.items()))
            if expires > now:
                return
            del self._live[key]
            self._release(user)

    def _release(self, user: str) -> None:
        self._per_user[user] -= 1
        if not self._per_user[user]:
            del self._per_user[user]


class Authenticator:
    """Maps a presented token (or WebSocket ticket) to its user. With no tokens it is single-user."""

    def __init__(self, users_by_digest: dict[bytes, str]) -> None:
        self._entries = list(users_by_digest.items())
        self.tickets = Tickets()

    @property
    def single_user(self) -> bool:
        return not self._entries

    @property
    def users(self) -> set[str]:
        return {user for _, user in self._entries}

    def user_for(self, token: str) -> str | None:
        presented = digest(token)
        found = None
        for known, user in self._entries:  # no early exit: every token costs the same
            if hmac.compare_digest(presented, known):
                found = user
        return found

    @classmethod
    def from_config(cls, config: Config) -> Authenticator:
        """Raises `ConfigError` naming the problem: a bad token or user name, an unreadable
        tokens file, or no tokens on a non-loopback host."""
        from offload.service.config import ConfigError

        entries: dict[bytes, str] = {}
        for token, user in config.auth.tokens.items():
            if len(token) < MIN_TOKEN_LENGTH:
                raise ConfigError(f"[auth] tokens: the token of user {user!r} is shorter than {MIN_TOKEN_LENGTH} "
                                  "characters; use a long random one (python -c 'import secrets; "
                                  "print(secrets.token_urlsafe(32))')")
            entries[digest(token)] = _user(user, "[auth] tokens")
        if config.auth.tokens_file:
            path = config.path(config.auth.tokens_file)
            where = f"[auth] tokens_file {str(path)!r}"
            try:
                raw = tomllib.loads(path.read_text())
            except OSError as exc:
                raise ConfigError(f"{where}: cannot be read ({exc.strerror or exc})") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{where}: not valid TOML: {exc}") from None
            for key, user in raw.items():
                match = HEX_DIGEST.match(key.lower())
                if match is None or not isinstance(user, str):
                    raise ConfigError(f'{where}: each line must be "<sha256 hex of a token>" = "user"; '
                                      f"found {key[:12]!r}…")
                entries[bytes.fromhex(match.group(1))] = _user(user, where)
        if not entries and not is_loopback(config.server.host):
            raise ConfigError(
                f"[server] host {config.server.host!r} is not a loopback address, and no [auth] tokens are "
                "configured: without tokens anyone who can reach the port could use the service. Add tokens "
                '(config.toml: [auth] tokens_file = "tokens.toml" with "<sha256 of token>" = "user" lines, or '
                "the environment: OFFLOAD_AUTH_TOKENS=alice:<token>,bob:<token>), or listen on 127.0.0.1.")
        return cls(entries)


def _user(name: str, where: str) -> str:
    from offload.service.config import ConfigError

    if not USER_NAME.match(name):
        raise ConfigError(f"{where}: user name {name!r} must be 1-64 letters, digits or ._@- characters")
    return name


def presented_token(request: web.Request) -> str | None:
    """The bearer token of the request; `?token=` too on the WebSocket, which a browser
    cannot give headers."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if request.path == "/api/ws" and request.query.get("token"):
        return request.query["token"]
    return None


@web.middleware
async def authenticate(request: web.Request, handler):  # type: ignore[no-untyped-def]
    if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES):
        return await handler(request)
    authenticator = request.app[AUTH]
    if authenticator.single_user:
        if not loopback_authority(request.host):
            raise Forbidden("this single-user service answers only to a loopback host name such as 127.0.0.1 "
                            "or localhost")
        request[OWNER] = LOCAL_USER
        return await handler(request)
    token = presented_token(request)
    ticket = request.query.get("ticket") if request.path == "/api/ws" else None
    if token is None and ticket:
        user = authenticator.tickets.redeem(ticket)
        if user is None:
            raise Unauthorized("the ticket is not valid: it was used already, has expired or was never issued; "
                               "get a new one from POST /api/ws-ticket", headers=CHALLENGE)
        request[OWNER] = user
        return await handler(request)
    if token is None:
        raise Unauthorized("this service needs a token: send `Authorization: Bearer <token>`", headers=CHALLENGE)
    user = authenticator.user_for(token)
    if user is None:
        raise Unauthorized("the token is not valid", headers=CHALLENGE)
    request[OWNER] = user
    return await handler(request)
