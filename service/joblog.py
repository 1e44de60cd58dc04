"""The job lifecycle log: one INFO line per committed transition of a job, on `offload.jobs`.

It listens to the store's change sink, like the events hub, so every transition is logged
once, in commit order, whoever made it (a submission, the scheduler, a rescue at start-up,
another request's cancel). What happened is read from the job as it is after the change and,
for a job this node saw start, the attempt it started:

  submitted   pending, never claimed
  started     running (durationMs: how long it waited since it was due)
  retried     running → pending with an error: the attempt failed, another one follows
  completed   (durationMs: the attempt's run time, as for every ending below)
  failed      its error's type in errorType; a handler's traceback in `traceback`
  cancelled   (durationMs only when it was running)
  rescued     its lease ran out (the node running it died, or a restart found it running):
              pending again, or failed once it used all its attempts (`status` says which);
              durationMs is the time since its attempt started
  released    handed back as pending at shutdown, the attempt not counted
  cancel_requested  a running job was asked to stop

Each line has the fields `event`, `jobId`, `type`, `user`, `attempt`, `status`, and, when they
apply, `durationMs`, `errorType`, `traceback` (see `service/logs.py` for how they are written).
Cost: a dict lookup and one record on the loop (benchmarks/bench_logging.py); nothing at all
when INFO is off for `offload.jobs`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from offload.service.models import Job, JobStatus, now_ms
from offload.service.scheduler import LEASE_LOST
from offload.service.store.base import StoreChange

log = logging.getLogger("offload.jobs")
_INFO = logging.INFO
#: More running jobs than this remembered means some ended out of sight (on another node
#: sharing the database): the memory starts over rather than grow.
MAX_REMEMBERED = 100_000
#: How much of an error's message a line repeats.
MAX_MESSAGE = 200
#: A rescue is the transition that gives a job the lease-lost error (`rescue_change`); a job
#: rescued as cancelled (a cancel was requested) is logged as cancelled.
_LOST_TYPE, _LOST_MESSAGE = LEASE_LOST["type"], LEASE_LOST["message"]


class JobLog:
    """`on_change` is the store-change listener. `clock` gives the service's time in
    milliseconds (for the run time of an attempt whose ending records no end time: a retry)."""

    def __init__(self, clock: Callable[[], int] = now_ms, logger: logging.Logger = log) -> None:
        self._clock = clock
        self._log = logger
        #: The attempt number of every running job seen starting: a later change of the
        #: same attempt while running is a cancel request, one that leaves running is its end.
        self._running: dict[str, int] = {}

    def on_change(self, change: StoreChange) -> None:
        if type(change) is not Job or not self._log.isEnabledFor(_INFO):
            return  # progress writes are not transitions
        job: Job = change
        status = job.status
        if status is JobStatus.RUNNING:
            if self._running.get(job.id) == job.attempts:
                if job.cancel_requested:
                    self._line("cancel_requested", job)
                return
            if len(self._running) >= MAX_REMEMBERED:
                self._running.clear()
            self._running[job.id] = job.attempts
            started = job.started_at or 0
            self._line("started", job, max(0, started - job.due_at))
            return
        ran = self._running.pop(job.id, None)
        error = job.error
        if status is JobStatus.PENDING and ran is not None and job.attempts < ran:
            self._line("released", job, self._since_start(job))
        elif status is JobStatus.CANCELLED:
            self._line("cancelled", job, self._run_time(job) if ran is not None else None)
        elif error is not None and error.get("type") == _LOST_TYPE and error.get("message") == _LOST_MESSAGE:
            self._line("rescued", job, self._since_start(job), error)  # pending again, or failed
        elif status is JobStatus.PENDING:
            if ran is not None or (error is not None and job.started_at is not None):
                self._line("retried", job, self._since_start(job), error)
            else:
                self._line("submitted", job)
        elif status is JobStatus.COMPLETED:
            self._line("completed", job, self._run_time(job))
        elif status is JobStatus.FAILED:
            self._line("failed", job, self._run_time(job), error)

    def _since_start(self, job: Job) -> int | None:
        return None if job.started_at is None else max(0, self._clock() - job.started_at)

    @staticmethod
    def _run_time(job: Job) -> int | None:
        if job.started_at is None or job.completed_at is None:
            return None
        return max(0, job.completed_at - job.started_at)

    def _line(self, event: str, job: Job, duration: int | None = None, error: dict[str, str] | None = None) -> None:
        # No requestId: a commit may carry the changes of many requests (and runs in no
        # request's context); the job id links a line to the request's access line.
        fields: dict[str, Any] = {"event": event, "jobId": job.id, "type": job.type, "user": job.owner,
                                  "attempt": job.attempts, "status": job.status.value, "requestId": None}
        if duration is not None:
            fields["durationMs"] = duration
        if error is not None:
            fields["errorType"] = error.get("type")
            fields["error"] = error
            if error.get("traceback"):
                fields["traceback"] = error["traceback"]
        self._log.handle(_record(self._log.name, _Text(fields), fields))


class _Text:
    """A line's message, written out only when the line is (on the log writer's thread):
    `job <id> <event>: type=… user=… attempt=… [status=…] [waited|ran=…ms] [error=Type: message]`."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields  # not changed once the line is logged

    def __str__(self) -> str:
        f = self.fields
        event = f["event"]
        text = f"job {f['jobId']} {event}: type={f['type']} user={f['user']} attempt={f['attempt']}"
        if event == "rescued":
            text += f" status={f['status']}"
        duration = f.get("durationMs")
        if duration is not None:
            text += f" {'waited' if event == 'started' else 'ran'}={duration}ms"
        error = f.get("error")
        if error is not None:
            message = str(error.get("message", ""))
            if len(message) > MAX_MESSAGE:
                message = message[:MAX_MESSAGE] + "…"
            text += f" error={error.get('type')}: {message}"
        return text


#: The attributes every `LogRecord` has, as this module's lines have them.
_RECORD = {"levelname": "INFO", "levelno": _INFO, "pathname": __file__, "filename": "joblog.py",
           "module": "joblog", "lineno": 0, "funcName": "on_change", "args": None, "exc_info": None,
           "exc_text": None, "stack_info": None, "thread": None, "threadName": None, "processName": None,
           "process": None, "taskName": None}


def _record(name: str, message: object, fields: dict[str, Any]) -> logging.LogRecord:
    """A record as `logger.info(message, extra=fields)` makes it, for a fifth of the cost:
    no caller frame, thread, process or path looked up (none of it says more than the logger's
    name here)."""
    record = _new_record(logging.LogRecord)
    created = time.time()
    record.__dict__ = {**_RECORD, **fields, "name": name, "msg": message, "created": created,
                       "msecs": (created % 1) * 1000, "relativeCreated": (created - _STARTED) * 1000}
    return record


_STARTED = getattr(logging, "_startTime", time.time())
_new_record = logging.LogRecord.__new__
