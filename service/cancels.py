"""Cancellation: what `DELETE /api/jobs/{id}` does, from any node.

A pending job is cancelled at once. For a running one, the request is recorded in the store
(`Store.request_cancel`, a change like any other); the node running the attempt hears it
through the store's change sink and stops the attempt, and the store's rules make whatever
that attempt ends as cancelled, unless it completed first. The caller waits a bounded time,
on the change sink (no polling), for the job's final status and answers with the truth.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from offload.service.errors import Conflict, already_finished, job_not_found
from offload.service.models import Job, JobStatus
from offload.service.store import Store
from offload.service.store.base import StoreChange

#: How many times a cancel looks again when the job moved between pending and running
#: under it (claimed, or handed back by a retry or a shutdown) before it could be recorded.
_RACES = 5


@dataclass(frozen=True)
class CancelAnswer:
    job: Job
    #: True once the job is cancelled; False while the attempt is still stopping (202).
    done: bool


async def _unfinished(store: Store, job_id: str, owner: str | None) -> Job:
    """The job as it is now: 404 when it is not the caller's, 409 once it finished."""
    job = await store.get(job_id, owner)
    if job is None:
        raise job_not_found(job_id)
    if job.status.terminal:
        raise _already(job)
    return job


def _already(job: Job) -> Conflict:
    return already_finished(job.id, job.status.value)


async def cancel(store: Store, job_id: str, owner: str | None, now: int, wait: float) -> CancelAnswer:
    """Cancel the job: `done` once it is cancelled, else the job with its request recorded
    after waiting up to `wait` seconds for the attempt to stop. 404 for an unknown (or
    foreign) job, 409 when it finished, also when it completed while being cancelled."""
    final: asyncio.Future[Job] = asyncio.get_running_loop().create_future()

    def hear(change: StoreChange) -> None:
        if isinstance(change, Job) and change.id == job_id and change.status.terminal and not final.done():
            final.set_result(change)

    # Before the request, so its ending cannot slip past; any node's (the attempt may run on another).
    unsubscribe = store.subscribe_all(hear)
    try:
        requested = None
        for _ in range(_RACES):
            cancelled = await store.cancel_pending(job_id, owner, now)
            if cancelled is not None:
                return CancelAnswer(cancelled, True)
            requested = await store.request_cancel(job_id, owner)
            if requested is not None:
                break
            job = await _unfinished(store, job_id, owner)
        if requested is None:  # it keeps moving: report what it is now, the request not recorded
            return CancelAnswer(job, False)
        try:
            ended = await asyncio.wait_for(asyncio.shield(final), wait)
        except asyncio.TimeoutError:
            return CancelAnswer(requested, False)
        if ended.status is not JobStatus.CANCELLED:  # it finished before it saw the stop
            raise _already(ended)
        return CancelAnswer(ended, True)
    finally:
        unsubscribe()
        final.cancel()
