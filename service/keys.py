"""Typed keys for the objects the application shares between handlers."""
from __future__ import annotations

from typing import TYPE_CHECKING
from weakref import WeakSet

from aiohttp import web

if TYPE_CHECKING:
    from service.auth import Authenticator
    from service.config import Config
    from service.events import EventHub
    from service.limits import Limits
    from service.scheduler import Scheduler
    from service.store import Store

CONFIG = web.AppKey("config", "Config")
STORE = web.AppKey("store", "Store")
HUB = web.AppKey("hub", "EventHub")
SCHEDULER = web.AppKey("scheduler", "Scheduler")
SOCKETS = web.AppKey("sockets", WeakSet)
AUTH = web.AppKey("auth", "Authenticator")
LIMITS = web.AppKey("limits", "Limits")
#: The request's owner (the user its token names; "local" in single-user mode).
OWNER = web.RequestKey("owner", str)
