"""Schedules: recurring jobs from `[[schedules]]` in config.toml, each slot run once.

A schedule names a cron line read in its time zone (`cron = "0 6 * * 1-5"`, `timezone =
"Europe/Berlin"`), and the job to submit at each of its times ("slots"). The job goes through
the submission rules (`validation.parse_submission`, so the type's own validator checks its
data at start-up) and the store's create path, owned by the schedule's `user`.

Once per slot, across restarts and nodes: the store records the latest slot of each schedule
in the same transaction as the job it creates (`Store.fire_slot`), under a unique
`(schedule, slot)`, and the job's idempotency key is derived from the pair as well. A slot
the store has recorded is never fired again, by this node or another.

Missed slots (`catch_up`, the rule in `due`): a slot reached more than `LATE_MS` late, because
the service was down or the machine slept, is missed. "one" (the default) runs the latest
missed slot once, however many were missed; "skip" records it as passed over and waits for
the next slot. A new schedule starts from the next slot after the service first sees it.

Time is the service's `Clock` (injected in tests); `run_once()` is the test hook: it fires
whatever is due now, and returns once the store committed it.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from cronsim import CronSim, CronSimError

from offload.service.config import Config, ConfigError, ScheduleConfig
from offload.service.errors import Invalid
from offload.service.keys import SCHEDULES
from offload.service.limits import Limits
from offload.service.models import Clock, iso
from offload.service.scheduler import Scheduler
from offload.service.store import IdempotencyMismatch, SlotRecord, Store
from offload.service.validation import Submission, parse_submission
from offload.workers.registry import Registry

log = logging.getLogger("offload.schedules")

#: A slot reached later than this after its time counts as missed (see `catch_up`).
LATE_MS = 60_000
#: The longest the task sleeps between two looks at the clock, even with no slot due: a wall
#: clock stepped forward (or a machine that slept) is noticed within this.
MAX_SLEEP_S = 30.0
#: Options a schedule may not set: the schedule sets the key itself, and a slot is its own time.
_NOT_OPTIONS = ("idempotencyKey", "runAt")


class CronError(ValueError):
    """A cron line or time zone that cannot be used; `field` is the config key to blame."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field


class Cron:
    """A 5-field cron line in a time zone, with cronsim's Debian-cron rules across DST: a time
    that does not exist (02:30 on the spring-forward night) runs at the first minute after
    the gap, and a time that occurs twice (02:30 on the fall-back night) runs once. Slots are
    milliseconds since the epoch."""

    def __init__(self, expression: str, zone: str) -> None:
        self.expression = expression
        self.zone_name = zone
        self.zone: timezone | ZoneInfo = timezone.utc if zone == "UTC" else ZoneInfo(zone)

    def next_after(self, moment: int) -> int | None:
        """The first slot later than `moment`; None if there is none within 50 years."""
        found = CronSim(self.expression, datetime.fromtimestamp(moment / 1000, self.zone))
        for _ in range(8):  # a start inside a repeated hour may give a slot before it first
            try:
                slot = _ms(next(found))
            except StopIteration:
                return None
            if slot > moment:
                return slot
        return None  # pragma: no cover - cronsim moves forward within a step or two

    def latest_until(self, moment: int) -> int | None:
        """The last slot at or before `moment`; None if there is none within 50 years."""
        after = datetime.fromtimestamp(moment // 1000 + 1, self.zone)  # whole seconds: "before" is strict
        found = CronSim(self.expression, after, reverse=True)
        latest = None
        for _ in range(8):
            try:
                slot = _ms(next(found))
            except StopIteration:
                return None
            if slot <= moment:
                latest = slot
                break
        # Backwards, cronsim walks wall time: inside the repeated hour of a fall-back night it
        # passes over a slot of the hour's first pass (later on the wall, earlier in time).
        # Forwards it does not; a step or two forwards settles it.
        for _ in range(8):
            if latest is None:
                return None
            later = self.next_after(latest)
            if later is None or later > moment:
                return latest
            latest = later
        return latest  # pragma: no cover


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def parse_cron(expression: str, zone: str) -> Cron:
    """A `Cron`, or `CronError` naming the field (`cron` or `timezone`) and the problem."""
    try:
        cron = Cron(expression, zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError("timezone", f"unknown time zone {zone!r} (an IANA name such as \"Europe/Berlin\", "
                                    "or \"UTC\")") from None
    fields = expression.split()
    if len(fields) != 5:
        raise CronError("cron", f"{expression!r} has {len(fields)} fields; a cron line has 5: "
                                "minute hour day-of-month month day-of-week, e.g. \"0 6 * * 1-5\"")
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=cron.zone))
    except CronSimError as exc:
        raise CronError("cron", f"{expression!r}: {str(exc).lower()} field") from None
    return cron


@dataclass(frozen=True)
class Due:
    """What to do about a schedule now: record `slot`, and submit its job when `run`."""

    slot: int
    run: bool


def due(cron: Cron, catch_up: str, last: int | None, now: int) -> Due | None:
    """The one rule of slots. The latest slot at or before `now` is due unless `last` (the
    latest recorded) is that slot or a later one. A schedule with nothing recorded starts
    from now: that slot is recorded without a run. A slot reached within `LATE_MS` runs;
    a later one was missed: it runs once with catch_up "one", and is passed over with "skip".
    Several slots missed at once are one: only the latest is ever considered."""
    latest = cron.latest_until(now)
    if latest is None or (last is not None and latest <= last):
        return None
    if last is None:
        return Due(latest, run=False)
    return Due(latest, run=now - latest <= LATE_MS or catch_up == "one")


@dataclass(frozen=True)
class Schedule:
    config: ScheduleConfig
    cron: Cron
    owner: str

    @property
    def name(self) -> str:
        return self.config.name

    def submission(self, config: Config, registry: Registry, slot: int, now: int) -> Submission:
        """The job of `slot`, built and checked as a `POST /api/jobs` body would be, keyed by
        the schedule and the slot."""
        options = {**self.config.options, "idempotencyKey": f"schedule:{self.name}:{iso(slot)}"}
        body = {"type": self.config.type, "data": self.config.data, "options": options}
        return parse_submission(body, self.owner, config, now=now, registry=registry)


def check(config: Config, registry: Registry) -> list[Schedule]:
    """Every `[[schedules]]` entry, checked against the loaded job types: its type must be
    known, and its data and options must pass what a submission must pass. `ConfigError`
    naming the schedule and the field otherwise, so start-up (and `offload check`) stops."""
    from offload.service.auth import LOCAL_USER

    checked = []
    for entry in config.schedules:
        label = f"[[schedules]] {entry.name!r}"
        for key in _NOT_OPTIONS:
            if key in entry.options:
                raise ConfigError(f"{label}: options.{key}: a schedule's jobs may not set it "
                                  "(each slot's job is keyed and timed by the schedule)")
        try:
            schedule = Schedule(entry, parse_cron(entry.cron, entry.timezone), entry.user or LOCAL_USER)
            schedule.submission(config, registry, 0, 0)
        except CronError as exc:
            raise ConfigError(f"{label}: {exc.field}: {exc}") from None
        except Invalid as exc:
            raise ConfigError(f"{label}: {exc.field}: {exc.problem}") from None
        checked.append(schedule)
    return checked


class Schedules:
    """The task that fires the schedules' slots, and what `/api/schedules` shows of them."""

    def __init__(self, schedules: list[Schedule], config: Config, registry: Registry, clock: Clock) -> None:
        self.schedules = schedules
        self.config = config
        self.registry = registry
        self.clock = clock
        #: The latest recorded slot of each schedule, as last read or written.
        self.last: dict[str, SlotRecord] = {}
        self._store: Store | None = None
        self._scheduler: Scheduler | None = None
        self._limits: Limits | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, store: Store, scheduler: Scheduler, limits: Limits) -> None:
        """Read what was fired before, deal with the slots missed meanwhile (before the service
        answers), then follow the clock."""
        self._store, self._scheduler, self._limits = store, scheduler, limits
        if not self.schedules:
            return
        self.last = await store.last_slots()
        await self.run_once()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="offload-schedules")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def wake(self) -> None:
        """Look at the clock again now (a test that moved it calls `run_once` instead)."""
        self._wake.set()

    async def run_once(self) -> list[SlotRecord]:
        """Fire (or pass over) every slot due now; returns what this call recorded."""
        assert self._store is not None, "the schedules have not started"
        recorded = []
        async with self._lock:
            for schedule in self.schedules:
                last = self.last.get(schedule.name)
                now = self.clock.now()
                todo = due(schedule.cron, schedule.config.catch_up, None if last is None else last.slot, now)
                if todo is not None:
                    record = await self._fire(schedule, todo, now)
                    if record is not None:
                        recorded.append(record)
        return recorded

    async def _fire(self, schedule: Schedule, todo: Due, now: int) -> SlotRecord | None:
        assert self._store is not None and self._scheduler is not None and self._limits is not None
        if not self._scheduler.accepting:  # draining: the next start catches up, as `catch_up` says
            return None
        job, request_hash = None, None
        if todo.run:
            submission = schedule.submission(self.config, self.registry, todo.slot, now)
            job, request_hash = submission.job, submission.request_hash
        try:
            answer = await self._store.fire_slot(schedule.name, todo.slot, job, request_hash)
        except IdempotencyMismatch as exc:  # the user submitted a job under this slot's key by hand
            log.error("schedule %s: slot %s passed over: its idempotency key was used for job %s with another "
                      "request", schedule.name, iso(todo.slot), exc.job.id)
            answer = await self._store.fire_slot(schedule.name, todo.slot, None)
        if answer is None:  # recorded already, by another node: take its record
            self.last = await self._store.last_slots()
            return None
        stored, created = answer
        record = SlotRecord(schedule.name, todo.slot, None if stored is None else stored.id)
        first = schedule.name not in self.last
        self.last[schedule.name] = record
        if stored is None:
            log.info("schedule %s: slot %s passed over (%s)", schedule.name, iso(todo.slot),
                     "a new schedule starts from the next slot" if first else "missed, and catch_up is skip")
        else:
            log.info("schedule %s: slot %s submitted job %s (%s)", schedule.name, iso(todo.slot), stored.id,
                     schedule.config.type)
        if stored is not None and created:
            self._limits.pending.add(stored.owner)
            self._scheduler.submitted(stored)
        return record

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # the store refused (locked, full disk): try again at the next look
                log.exception("schedules: firing the due slots failed; trying again shortly")
            now = self.clock.now()
            upcoming = [slot for slot in (s.cron.next_after(now) for s in self.schedules) if slot is not None]
            sleep = min([MAX_SLEEP_S, *((slot - now) / 1000 for slot in upcoming)])
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.001, sleep))
            except TimeoutError:
                pass
            self._wake.clear()

    def describe(self, owner: str | None) -> list[dict[str, Any]]:
        """Each schedule (`owner`'s only, unless None) with its next run and its latest slot."""
        now = self.clock.now()
        out = []
        for schedule in self.schedules:
            if owner is not None and schedule.owner != owner:
                continue
            last = self.last.get(schedule.name)
            entry = schedule.config
            out.append({
                "name": schedule.name, "cron": entry.cron, "timezone": entry.timezone, "type": entry.type,
                "user": schedule.owner, "catchUp": entry.catch_up,
                "nextRunAt": iso(schedule.cron.next_after(max(now, last.slot if last else now))),
                "lastSlot": iso(last.slot) if last else None,
                "lastJobId": last.job_id if last else None,
            })
        return out


async def list_schedules(request: web.Request) -> web.Response:
    """`GET /api/schedules`: operators see every schedule, other users their own."""
    from offload.service.api import is_operator, json_response, owner_of

    owner = None if is_operator(request) else owner_of(request)
    return json_response({"schedules": request.app[SCHEDULES].describe(owner)})
