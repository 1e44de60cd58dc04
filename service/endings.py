"""What an ended attempt becomes: one pure decision, written once.

A runner (the process pool, the async runner) reports what happened (`Outcome`: the
handler completed, failed or saw its cancel, or the attempt was stopped from outside) and
why the service stopped it, if it did (`StopReason`). `decide` turns that, the job's cancel
request and its retry settings into the store transition to make (`Ending`). No I/O here:
the scheduler makes the transition, tests/test_endings.py checks every rule.

The rules, strongest first:
- an attempt whose start was never recorded (`LOST`) writes nothing: DISCARD;
- a shutdown hands the job back as pending without counting the attempt, even if it
  completed meanwhile (it runs again after the restart): RELEASE;
- a completion beats any other stop (cancel, timeout): the work is done, COMPLETE;
- a cancel request (recorded in the store, or this node's stop) wins over a failure or a
  timeout, and is never retried: CANCEL;
- a timeout is a failure like any other (retried while attempts remain);
- the handler's own `Cancelled` without a stop from the service: CANCEL;
- a failure retries with exponential backoff while attempts remain, unless permanent.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from offload.service.models import Job

#: The longest a retry waits before its jitter, whatever the retry delay and the attempt.
MAX_BACKOFF_MS = 3_600_000
#: A retry's delay is stretched by up to this fraction at random, so retries spread out.
JITTER = 0.25


class OutcomeKind(str, Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    #: The handler stopped at its cancel check (`ctx.progress`, `ctx.check_cancelled`).
    CANCELLED = "cancelled"
    #: The attempt ended from outside (its process killed, its task cancelled).
    STOPPED = "stopped"


class StopReason(str, Enum):
    """Why the service stopped an attempt."""

    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    #: The start of a reserved attempt was never recorded (cancelled or lapsed meanwhile).
    LOST = "lost"


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended, as its runner saw it."""

    kind: OutcomeKind
    result: Any = None
    error: dict[str, str] | None = None
    permanent: bool = False


class EndingKind(Enum):
    COMPLETE = "complete"
    RELEASE = "release"
    CANCEL = "cancel"
    RETRY = "retry"
    FAIL = "fail"
    DISCARD = "discard"


@dataclass(frozen=True)
class Ending:
    kind: EndingKind
    result: Any = None
    error: dict[str, str] | None = None
    #: When a RETRY is due.
    retry_at: int | None = None


def backoff_ms(job: Job, jitter: Callable[[], float]) -> int:
    """The wait before the retry after attempt `job.attempts`: retryDelay * 2^(attempts-1),
    capped at MAX_BACKOFF_MS, stretched by `jitter()` (in [0, 1)) times JITTER."""
    base = job.retry_delay_ms * (2 ** max(job.attempts - 1, 0))
    return int(min(base, MAX_BACKOFF_MS) * (1 + jitter() * JITTER))


def decide(outcome: Outcome, stop: StopReason | None, cancel_requested: bool, job: Job, now: int, *,
           timeout_ms: int, jitter: Callable[[], float]) -> Ending:
    """The ending of `job`'s current attempt. `timeout_ms` is the attempt's timeout (the
    job's own or the configured default), named in a timeout's error."""
    if stop is StopReason.LOST:
        return Ending(EndingKind.DISCARD)
    if stop is StopReason.SHUTDOWN:
        return Ending(EndingKind.RELEASE)
    if outcome.kind is OutcomeKind.COMPLETED:
        return Ending(EndingKind.COMPLETE, result=outcome.result)
    if cancel_requested or stop is StopReason.CANCELLED:
        return Ending(EndingKind.CANCEL)
    if stop is StopReason.TIMEOUT:
        error = {"type": "Timeout", "message": f"the attempt ran past its timeout of {timeout_ms} ms"}
        return _failure(job, error, False, now, jitter)
    if outcome.kind is OutcomeKind.CANCELLED:
        return Ending(EndingKind.CANCEL)
    error = outcome.error or {"type": "Error", "message": "the job failed"}
    return _failure(job, error, outcome.permanent, now, jitter)


def _failure(job: Job, error: dict[str, str], permanent: bool, now: int, jitter: Callable[[], float]) -> Ending:
    if permanent or job.attempts > job.max_retries:
        return Ending(EndingKind.FAIL, error=error)
    return Ending(EndingKind.RETRY, error=error, retry_at=now + backoff_ms(job, jitter))
