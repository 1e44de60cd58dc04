"""The job record and its wire format.

`Job` is immutable; the store returns a new one for every change. `to_wire` is the one
place that turns a job into the contract's camelCase JSON.
"""
from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from enum import Enum
from typing import Any


class JobStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True once the job will not change any more (completed, failed or cancelled)."""
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class Priority(int, Enum):
    """Lower sorts first: the store orders pending jobs by this value."""

    HIGH = 0
    MEDIUM = 1
    LOW = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, label: str) -> Priority:
        return cls[label.upper()]


def now_ms() -> int:
    """The wall clock, in milliseconds since the epoch. Due times are compared with a
    `Clock`, not with this: the wall clock can step back."""
    return time.time_ns() // 1_000_000


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class Clock:
    """The service's time, in milliseconds since the epoch: the wall clock, except that it
    never goes back.

    Due times are stored and compared in this time, so a wall clock stepped back (an NTP
    step, a VM resumed from a snapshot) leaves a job due "now" due: the clock goes on from
    where it was at the pace of the monotonic clock, instead of making the queue wait for
    the wall clock to catch up. A step forward is followed at once (`runAt` from clients is
    wall time). The cost: after a step back, the times the service records run ahead of the
    wall clock by that step, until a restart after a downtime at least as long.

    `wall` is the one thing to inject (a test steps it back); the monotonic clock is the
    machine's own."""

    def __init__(self, wall: Callable[[], int] = now_ms) -> None:
        self._wall = wall
        self._offset = wall() - _monotonic_ms()

    def now(self) -> int:
        monotonic = _monotonic_ms()
        self._offset = max(self._offset, self._wall() - monotonic)
        return monotonic + self._offset

    def not_before(self, moment: int) -> None:
        """Never answer earlier than `moment` from now on: at start, the latest time the
        store recorded, so jobs due before a restart are still due after it."""
        self._offset = max(self._offset, moment - _monotonic_ms())


def iso(ms: int | None) -> str | None:
    """Milliseconds since the epoch as ISO-8601 UTC with milliseconds and `Z`."""
    if ms is None:
        return None
    seconds, millis = divmod(ms, 1000)
    t = time.gmtime(seconds)  # a third cheaper than datetime + strftime, on every event
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
            f".{millis:03d}Z")


#: The due time of a job that waits for other jobs (`options.after`) is this offset plus the
#: time it would be due otherwise (its `delay` or `runAt`, or its creation): never due, so the
#: claim, which reads due jobs on an index, passes waiting jobs over at no cost, and the wait
#: keeps the job's own due time for when its last parent completes (`store.base.release_due`).
#: 2**50 ms is beyond the year 37,000; a real due time (at most the year 9999) stays below it.
WAITING_DUE = 1 << 50


def own_due(due_at: int) -> int:
    """The time a job is due by its own options, waiting or not."""
    return due_at - WAITING_DUE if due_at >= WAITING_DUE else due_at


#: What every job id looks like (`new_job_id`): the path check and the OpenAPI document use it.
JOB_ID_PATTERN = r"^job_[a-z2-7]{24}$"


#: Ids drawn ahead, `_IDS_AHEAD` of them from one read of the system's random source: a read
#: for each job cost the submission path a system call of its own.
_ids_ahead: list[str] = []
_IDS_AHEAD = 256


def new_job_id() -> str:
    """120 random bits (from `os.urandom`, as `secrets` draws them), lowercase base32:
    unguessable and safe in paths and URLs."""
    try:
        return _ids_ahead.pop()
    except IndexError:
        encoded = base64.b32encode(os.urandom(15 * _IDS_AHEAD)).decode().lower()  # 24 characters for each 15 bytes
        _ids_ahead.extend("job_" + encoded[at:at + 24] for at in range(0, len(encoded), 24))
        return _ids_ahead.pop()


# A forked process draws its own: never one its parent has drawn already.
os.register_at_fork(after_in_child=_ids_ahead.clear)


@dataclass(frozen=True)
class Job:
    id: str
    type: str
    owner: str
    data: Any
    status: JobStatus = JobStatus.PENDING
    priority: Priority = Priority.MEDIUM
    progress: int = 0
    message: str | None = None
    attempts: int = 0
    max_retries: int = 3
    retry_delay_ms: int = 1000
    timeout_ms: int | None = None
    seq: int = 0
    created_at: int = field(default_factory=now_ms)
    started_at: int | None = None
    completed_at: int | None = None
    #: When the job becomes due; equal to `created_at` unless delayed or retrying.
    due_at: int = 0
    error: dict[str, str] | None = None
    result: dict[str, Any] | None = None
    idempotency_key: str | None = None
    #: The node holding the running attempt and until when its lease holds.
    lease_owner: str | None = None
    lease_until: int | None = None
    #: A cancel was requested while the job ran: its attempt is being stopped, and whatever
    #: it ends as (except completed) becomes cancelled.
    cancel_requested: bool = False
    #: The jobs this one follows (`options.after` and its type's `needs`), in order, and what
    #: a parent's failure does to it: "cancel" (default) or "run".
    after: tuple[str, ...] = ()
    after_failed: str = "cancel"
    #: The parents it still waits for, while pending (it is not due until this is empty).
    waiting_for: tuple[str, ...] = ()
    #: What the latest attempt saved with `ctx.save` (JSON), for the next attempt to resume
    #: from. Read, like `data`, only where an attempt starts (a claim); not on the wire.
    checkpoint: Any = None

    def __post_init__(self) -> None:
        if not self.due_at:
            object.__setattr__(self, "due_at", self.created_at)

    def to_wire(self) -> dict[str, Any]:
        result = self.result
        if result is not None and "file" in result:
            result = {k: v for k, v in result.items() if k != "file"}
            result["url"] = f"/api/jobs/{self.id}/download"
        return {
            "id": self.id,
            "type": self.type,
            "status": self.status.value,
            "priority": self.priority.label,
            "progress": self.progress,
            "message": self.message,
            "attempts": self.attempts,
            "maxRetries": self.max_retries,
            "seq": self.seq,
            "createdAt": iso(self.created_at),
            "startedAt": iso(self.started_at),
            "completedAt": iso(self.completed_at),
            # Only a waiting job has a time to wait for: once claimed, a delay or a retry is over.
            "runAt": iso(own_due(self.due_at)) if self.status is JobStatus.PENDING
            and own_due(self.due_at) > self.created_at else None,
            "error": self.error,
            "result": result,
            "cancelRequested": self.cancel_requested,
            "after": list(self.after),
            "afterFailed": self.after_failed,
            "waitingFor": list(self.waiting_for) if self.status is JobStatus.PENDING else [],
        }
