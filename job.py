"""The job and its live events as a client sees them: typed, immutable views of the wire format.

    Job           the job of `GET /api/jobs/{id}`, snake_case, times as aware UTC datetimes
    JobStatus     pending | running | completed | failed | cancelled (`.terminal`)
    JobResult     a file (`filename`, `content_type`, `size`, `url`) or a JSON `value`
    JobFailure    the `error` of a failed attempt: its `type` and `message`
    Snapshot, Progress, Status    the WebSocket events, from `parse_event`

Fields the service adds later are ignored, so an older client keeps working against a
newer service. This module imports nothing but the standard library: it is the one place
that turns the camelCase JSON into these classes, and back (`Job.to_wire`, `event_to_wire`:
what `offload get` and `offload watch --json` print).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from offload.service.models import JobStatus  # the service's own enum: one list of statuses




@dataclass(frozen=True, slots=True)
class JobFailure:
    type: str
    message: str


@dataclass(frozen=True, slots=True)
class JobResult:
    """A file result (download it with the client's `download`) or a handler's JSON value."""

    filename: str | None = None
    content_type: str | None = None
    size: int | None = None
    url: str | None = None
    value: Any = None

    @property
    def is_file(self) -> bool:
        return self.url is not None


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    type: str
    status: JobStatus
    priority: str
    progress: int
    message: str | None
    attempts: int
    max_retries: int
    seq: int
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    run_at: datetime | None = None
    error: JobFailure | None = None
    result: JobResult | None = None
    #: True while a cancel was asked for and the running attempt is still stopping (DELETE's 202).
    cancel_requested: bool = False
    #: The jobs this one follows (`after`), what a failed one does to it, and those it still waits for.
    after: tuple[str, ...] = ()
    after_failed: str = "cancel"
    waiting_for: tuple[str, ...] = ()

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Job:
        error = wire.get("error")
        result = wire.get("result")
        return cls(
            id=wire["id"], type=wire["type"], status=JobStatus(wire["status"]),
            priority=wire.get("priority", "medium"), progress=int(wire.get("progress") or 0),
            message=wire.get("message"), attempts=int(wire.get("attempts") or 0),
            max_retries=int(wire.get("maxRetries") or 0), seq=int(wire.get("seq") or 0),
            created_at=_parse_time(wire["createdAt"]), started_at=_time(wire.get("startedAt")),
            completed_at=_time(wire.get("completedAt")), run_at=_time(wire.get("runAt")),
            error=JobFailure(str(error.get("type", "Error")), str(error.get("message", "")))
            if isinstance(error, dict) else None,
            result=_result(result) if isinstance(result, dict) else None,
            cancel_requested=bool(wire.get("cancelRequested", False)),
            after=tuple(wire.get("after") or ()), after_failed=str(wire.get("afterFailed") or "cancel"),
            waiting_for=tuple(wire.get("waitingFor") or ()),
        )


    def to_wire(self) -> dict[str, Any]:
        """The contract's camelCase JSON of this job (times with milliseconds and `Z`)."""
        wire: dict[str, Any] = {
            "id": self.id, "type": self.type, "status": self.status.value, "priority": self.priority,
            "progress": self.progress, "message": self.message, "attempts": self.attempts,
            "maxRetries": self.max_retries, "seq": self.seq, "createdAt": wire_time(self.created_at),
            "startedAt": wire_time(self.started_at), "completedAt": wire_time(self.completed_at),
            "runAt": wire_time(self.run_at),
            "error": {"type": self.error.type, "message": self.error.message} if self.error else None,
            "result": _wire_result(self.result) if self.result is not None else None,
            "cancelRequested": self.cancel_requested,
            "after": list(self.after), "afterFailed": self.after_failed, "waitingFor": list(self.waiting_for),
        }
        return wire


def _wire_result(result: JobResult) -> dict[str, Any]:
    if result.is_file:
        return {"filename": result.filename, "contentType": result.content_type, "size": result.size,
                "url": result.url}
    return {"value": result.value}


def wire_time(value: datetime | None) -> str | None:
    """A time as the wire writes it: ISO-8601 UTC with milliseconds and `Z`."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _result(wire: dict[str, Any]) -> JobResult:
    if "url" in wire:
        size = wire.get("size")
        return JobResult(filename=wire.get("filename"), content_type=wire.get("contentType"),
                         size=int(size) if size is not None else None, url=wire["url"])
    return JobResult(value=wire.get("value"))


def _time(value: str | None) -> datetime | None:
    return None if value is None else _parse_time(value)


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# ---- WebSocket events -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Snapshot:
    """The job as it is now: the first event after each (re)subscription."""

    job: Job

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def seq(self) -> int:
        return self.job.seq


@dataclass(frozen=True, slots=True)
class Progress:
    job_id: str
    progress: int
    message: str | None
    seq: int


@dataclass(frozen=True, slots=True)
class Status:
    """A status change, with the job as it is after it; never dropped by the service."""

    job_id: str
    status: JobStatus
    job: Job
    seq: int


Event = Snapshot | Progress | Status


def parse_event(wire: dict[str, Any]) -> Event | None:
    """The typed event of a server message; None for messages that are not job events
    (`pong`, and kinds this client does not know). `error` messages are the caller's."""
    kind = wire.get("event")
    if kind == "snapshot":
        return Snapshot(Job.from_wire(wire["job"]))
    if kind == "progress":
        return Progress(wire["jobId"], int(wire.get("progress") or 0), wire.get("message"), int(wire["seq"]))
    if kind == "status":
        job = Job.from_wire(wire["job"])
        return Status(wire.get("jobId", job.id), JobStatus(wire["status"]), job, int(wire.get("seq", job.seq)))
    return None


def event_to_wire(event: Event) -> dict[str, Any]:
    """The server message of a typed event, as `parse_event` read it."""
    if isinstance(event, Snapshot):
        return {"event": "snapshot", "job": event.job.to_wire()}
    if isinstance(event, Progress):
        return {"event": "progress", "jobId": event.job_id, "progress": event.progress, "message": event.message,
                "seq": event.seq}
    return {"event": "status", "jobId": event.job_id, "status": event.status.value, "job": event.job.to_wire(),
            "seq": event.seq}
