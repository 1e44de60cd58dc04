"""Typed keys for the objects the application shares between handlers."""
from __future__ import annotations

from typing import TYPE_CHECKING
from weakref import WeakSet

from aiohttp import web

if TYPE_CHECKING:
    from offload.service.auth import Authenticator
    from offload.service.config import Config
    from offload.service.events import EventHub
    from offload.service.limits import Limits
    from offload.service.metrics import Metrics
    from offload.service.models import Clock
    from offload.service.retention import Retention
    from offload.service.scheduler import Scheduler
    from offload.service.schedules import Schedules
    from offload.service.stats import Statistics
    from offload.service.store import Store
    from offload.service.submissions import Submissions
    from offload.workers.registry import Registry

# The annotations give type checkers the value types; at run time they stay strings, so
# this module imports nothing from the rest of the service.
CONFIG: web.AppKey[Config] = web.AppKey("config")
STORE: web.AppKey[Store] = web.AppKey("store")
HUB: web.AppKey[EventHub] = web.AppKey("hub")
SCHEDULER: web.AppKey[Scheduler] = web.AppKey("scheduler")
SOCKETS: web.AppKey[WeakSet[web.WebSocketResponse[bool]]] = web.AppKey("sockets")
AUTH: web.AppKey[Authenticator] = web.AppKey("auth")
LIMITS: web.AppKey[Limits] = web.AppKey("limits")
#: Admission and storing of new jobs; set once the store and the scheduler run.
SUBMISSIONS: web.AppKey[Submissions] = web.AppKey("submissions")
#: The service's time (`models.Clock`): due times, claims and submissions use it alone.
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
#: The cleanup of old jobs and result files (`retention.Retention`; `.stats()` for operators).
RETENTION: web.AppKey[Retention] = web.AppKey("retention")
#: The job types this app knows (`workers.registry.Registry`).
REGISTRY: web.AppKey[Registry] = web.AppKey("registry")
#: The `[[schedules]]` and the task that fires their slots (`schedules.Schedules`).
SCHEDULES: web.AppKey[Schedules] = web.AppKey("schedules")

#: The service's figures (`stats.Statistics`) and their Prometheus form (`metrics.Metrics`).
STATS: web.AppKey[Statistics] = web.AppKey("stats")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
#: The request's owner (the user its token names; "local" in single-user mode).
OWNER = web.RequestKey("owner", str)
