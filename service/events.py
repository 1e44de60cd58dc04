"""The events hub: job events in, per-connection outboxes out.

Every event is encoded once and handed to each interested subscriber's outbox. An outbox
keeps `status` and `snapshot` events in order and never drops them; `progress` events of
one job are coalesced in place (the latest value wins), so a slow client costs memory
proportional to the jobs it watches, not to the events they produce. Publishing never
awaits: the scheduler is never held up by a client.

Events carry plain data only, so a later node-to-node bridge can feed the hub with events
produced elsewhere through `publish`.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from offload.service.models import Job


@dataclass(frozen=True)
class Event:
    job_id: str
    owner: str
    seq: int
    kind: str  # "status" | "progress"
    payload: bytes
    #: A status event with a final status (completed, failed, cancelled).
    terminal: bool = False


def status_event(job: Job) -> Event:
    body = {"event": "status", "jobId": job.id, "status": job.status.value, "job": job.to_wire(), "seq": job.seq}
    return Event(job.id, job.owner, job.seq, "status", orjson.dumps(body), job.status.terminal)


def progress_event(job_id: str, owner: str, progress: int, message: str | None, seq: int) -> Event:
    body = {"event": "progress", "jobId": job_id, "progress": progress, "message": message, "seq": seq}
    return Event(job_id, owner, seq, "progress", orjson.dumps(body))


def snapshot_payload(job: Job) -> bytes:
    return orjson.dumps({"event": "snapshot", "job": job.to_wire()})


class Overflow(Exception):
    """A subscriber fell too far behind on events that may not be dropped."""


class Subscriber:
    """One WebSocket connection's view: what it watches and what it has yet to receive."""

    def __init__(self, owner: str | None, limit: int = 10_000) -> None:
        self.owner = owner
        self.limit = limit
        self.jobs: set[str] = set()
        self.all = False
        self.overflowed = False
        self._last_seq: dict[str, int] = {}
        self._queue: deque[list[Any]] = deque()
        self._progress_items: dict[str, list[Any]] = {}
        self._held: list[Event] | None = None
        self._ready = asyncio.Event()

    # ---- fed by the hub -------------------------------------------------------------------
    def deliver(self, event: Event) -> None:
        if self._held is not None:
            self._held.append(event)
            return
        if event.seq <= self._last_seq.get(event.job_id, -1):
            return
        if event.terminal and event.job_id not in self.jobs:
            # Nothing follows a final status: a `subscribe all` connection need not remember
            # the job, or it would remember every job it ever saw.
            self._last_seq.pop(event.job_id, None)
        else:
            self._last_seq[event.job_id] = event.seq
        if event.kind == "progress":
            item = self._progress_items.get(event.job_id)
            if item is not None:
                item[1] = event.payload
                return
            item = [event.job_id, event.payload]
            self._progress_items[event.job_id] = item
        else:
            item = [None, event.payload]
        self._push(item)

    def _push(self, item: list[Any]) -> None:
        if len(self._queue) >= self.limit:
            self.overflowed = True
            self._ready.set()
            return
        self._queue.append(item)
        self._ready.set()

    # ---- snapshots: hold live events while the current state is read ---------------------
    def hold(self) -> None:
        if self._held is None:
            self._held = []

    def release(self, snapshots: Iterable[Job]) -> None:
        """Send each snapshot, then the events held meanwhile that are newer than it."""
        for job in snapshots:
            self._last_seq[job.id] = max(job.seq, self._last_seq.get(job.id, -1))
            self._push([None, snapshot_payload(job)])
        held, self._held = self._held or [], None
        for event in held:
            if self.all or event.job_id in self.jobs:  # not a job whose lookup failed meanwhile
                self.deliver(event)

    def forget(self, job_id: str) -> None:
        self._last_seq.pop(job_id, None)

    def send_error(self, code: str, message: str) -> None:
        self._push([None, orjson.dumps({"event": "error", "code": code, "message": message})])

    def send_raw(self, payload: bytes) -> None:
        self._push([None, payload])

    # ---- drained by the connection's sender -------------------------------------------------
    async def next(self) -> bytes:
        """The next message to send; raises Overflow when the client fell too far behind."""
        while not self._queue:
            if self.overflowed:
                raise Overflow
            self._ready.clear()
            await self._ready.wait()
        if self.overflowed:
            raise Overflow
        job_id, payload = self._queue.popleft()
        if job_id is not None:
            del self._progress_items[job_id]
        return payload


class EventHub:
    def __init__(self) -> None:
        self._by_job: dict[str, set[Subscriber]] = {}
        self._by_owner: dict[str | None, set[Subscriber]] = {}
        self.published = 0

    def publish(self, event: Event) -> None:
        self.published += 1
        targets = self._by_job.get(event.job_id, ())
        everyone = self._by_owner.get(event.owner, ())
        admins = self._by_owner.get(None, ())
        for subscriber in (*targets, *everyone, *admins):
            if subscriber.owner is not None and subscriber.owner != event.owner:
                continue  # watching another user's job id (the lookup is about to say 404)
            if subscriber.all or event.job_id in subscriber.jobs:
                subscriber.deliver(event)

    def status(self, job: Job) -> None:
        self.publish(status_event(job))

    def progress(self, job_id: str, owner: str, progress: int, message: str | None, seq: int) -> None:
        self.publish(progress_event(job_id, owner, progress, message, seq))

    def watch_job(self, subscriber: Subscriber, job_id: str) -> None:
        subscriber.jobs.add(job_id)
        self._by_job.setdefault(job_id, set()).add(subscriber)

    def unwatch_job(self, subscriber: Subscriber, job_id: str) -> None:
        subscriber.jobs.discard(job_id)
        if not subscriber.all:
            subscriber.forget(job_id)
        watchers = self._by_job.get(job_id)
        if watchers is not None:
            watchers.discard(subscriber)
            if not watchers:
                del self._by_job[job_id]

    def watch_all(self, subscriber: Subscriber) -> None:
        subscriber.all = True
        self._by_owner.setdefault(subscriber.owner, set()).add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        for job_id in list(subscriber.jobs):
            self.unwatch_job(subscriber, job_id)
        watchers = self._by_owner.get(subscriber.owner)
        if watchers is not None:
            watchers.discard(subscriber)
            if not watchers:
                del self._by_owner[subscriber.owner]

    @property
    def subscriber_count(self) -> int:
        return len({s for group in (*self._by_job.values(), *self._by_owner.values()) for s in group})
