"""What an ended attempt becomes (`endings.decide`): every rule as a row of a table, and
the backoff's exact bounds. Pure: no processes, no sockets, no store."""
from __future__ import annotations

import pytest

from offload.service.endings import (MAX_BACKOFF_MS, Ending, EndingKind, Outcome, OutcomeKind, StopReason,
                                     backoff_ms, decide)
from offload.service.models import Job, JobStatus

NOW = 1_000_000
ERROR = {"type": "Boom", "message": "it broke"}
TIMEOUT = {"type": "Timeout", "message": "the attempt ran past its timeout of 500 ms"}


def job(attempts: int = 1, max_retries: int = 3, retry_delay_ms: int = 1000) -> Job:
    return Job(id="job_x", type="t", owner="u", data={}, status=JobStatus.RUNNING, attempts=attempts,
               max_retries=max_retries, retry_delay_ms=retry_delay_ms, created_at=1)


COMPLETED = Outcome(OutcomeKind.COMPLETED, result={"value": 1})
FAILED = Outcome(OutcomeKind.FAILED, error=ERROR)
PERMANENT = Outcome(OutcomeKind.FAILED, error=ERROR, permanent=True)
HANDLER_CANCELLED = Outcome(OutcomeKind.CANCELLED)
STOPPED = Outcome(OutcomeKind.STOPPED)
RETRY_1 = Ending(EndingKind.RETRY, error=ERROR, retry_at=NOW + 1000)  # jitter 0 below

CASES = [
    # outcome, stop reason, cancel requested, job, ending
    (COMPLETED, None, False, job(), Ending(EndingKind.COMPLETE, result={"value": 1})),
    (COMPLETED, StopReason.CANCELLED, False, job(), Ending(EndingKind.COMPLETE, result={"value": 1})),
    (COMPLETED, StopReason.TIMEOUT, False, job(), Ending(EndingKind.COMPLETE, result={"value": 1})),
    (COMPLETED, None, True, job(), Ending(EndingKind.COMPLETE, result={"value": 1})),
    (COMPLETED, StopReason.SHUTDOWN, False, job(), Ending(EndingKind.RELEASE)),
    (STOPPED, StopReason.SHUTDOWN, False, job(), Ending(EndingKind.RELEASE)),
    (FAILED, StopReason.SHUTDOWN, True, job(), Ending(EndingKind.RELEASE)),
    (COMPLETED, StopReason.LOST, False, job(), Ending(EndingKind.DISCARD)),
    (FAILED, StopReason.LOST, True, job(), Ending(EndingKind.DISCARD)),
    (STOPPED, StopReason.CANCELLED, False, job(), Ending(EndingKind.CANCEL)),
    (HANDLER_CANCELLED, StopReason.CANCELLED, False, job(), Ending(EndingKind.CANCEL)),
    (HANDLER_CANCELLED, None, False, job(), Ending(EndingKind.CANCEL)),
    # a cancel request recorded in the store: a failure is cancelled, never retried
    (FAILED, None, True, job(), Ending(EndingKind.CANCEL)),
    (STOPPED, StopReason.TIMEOUT, True, job(), Ending(EndingKind.CANCEL)),
    (FAILED, StopReason.CANCELLED, False, job(), Ending(EndingKind.CANCEL)),
    # failures retry while attempts remain, unless permanent
    (FAILED, None, False, job(), RETRY_1),
    (FAILED, None, False, job(attempts=3, max_retries=3), Ending(EndingKind.RETRY, error=ERROR, retry_at=NOW + 4000)),
    (FAILED, None, False, job(attempts=4, max_retries=3), Ending(EndingKind.FAIL, error=ERROR)),
    (FAILED, None, False, job(max_retries=0), Ending(EndingKind.FAIL, error=ERROR)),
    (PERMANENT, None, False, job(), Ending(EndingKind.FAIL, error=ERROR)),
    (Outcome(OutcomeKind.FAILED), None, False, job(max_retries=0),
     Ending(EndingKind.FAIL, error={"type": "Error", "message": "the job failed"})),
    # a timeout is a failure that retries, whatever the handler reported when it stopped
    (STOPPED, StopReason.TIMEOUT, False, job(), Ending(EndingKind.RETRY, error=TIMEOUT, retry_at=NOW + 1000)),
    (HANDLER_CANCELLED, StopReason.TIMEOUT, False, job(), Ending(EndingKind.RETRY, error=TIMEOUT, retry_at=NOW + 1000)),
    (PERMANENT, StopReason.TIMEOUT, False, job(), Ending(EndingKind.RETRY, error=TIMEOUT, retry_at=NOW + 1000)),
    (STOPPED, StopReason.TIMEOUT, False, job(attempts=4), Ending(EndingKind.FAIL, error=TIMEOUT)),
]


@pytest.mark.parametrize(("outcome", "stop", "cancel_requested", "attempt", "ending"), CASES)
def test_each_ending_follows_its_rule(outcome: Outcome, stop: StopReason | None, cancel_requested: bool,
                                      attempt: Job, ending: Ending) -> None:
    assert decide(outcome, stop, cancel_requested, attempt, NOW, timeout_ms=500, jitter=lambda: 0.0) == ending


@pytest.mark.parametrize(("attempts", "delay", "low"), [
    (1, 1000, 1000), (2, 1000, 2000), (3, 1000, 4000), (5, 250, 4000), (1, 0, 0),
    (13, 1000, MAX_BACKOFF_MS), (30, 3_600_000, MAX_BACKOFF_MS),
])
def test_backoff_is_the_retry_delay_doubled_per_attempt_with_a_quarter_of_jitter(attempts: int, delay: int,
                                                                                 low: int) -> None:
    attempt = job(attempts=attempts, retry_delay_ms=delay)
    assert backoff_ms(attempt, lambda: 0.0) == low
    assert backoff_ms(attempt, lambda: 0.5) == int(low * 1.125)
    assert backoff_ms(attempt, lambda: 0.999999) == int(low * (1 + 0.999999 * 0.25)) <= low * 1.25
    retry = decide(FAILED, None, False, job(attempts=attempts, max_retries=100, retry_delay_ms=delay), NOW,
                   timeout_ms=1, jitter=lambda: 1.0)
    assert retry.kind is EndingKind.RETRY and retry.retry_at == NOW + int(low * 1.25)
