"""The events hub: job events in, per-connection outboxes out.

Every event is encoded once, into JSON and into the WebSocket frame that carries it, and
handed to each interested subscriber in one loop. A subscriber whose connection keeps up
(nothing queued, its transport not backed up) writes the frame at once (`Subscriber.direct`):
no task, no await and no copy per connection. Only a subscriber that falls behind queues
the event in its outbox, which its connection drains at the client's pace. An outbox
keeps `status` and `snapshot` events in order and never drops them; `progress` events of
one job are coalesced in place (the latest value wins) until a status of that job is queued
after them (later progress queues after the status: a job's `seq` never goes back), so a
slow client costs memory proportional to the jobs it watches, not to the events they produce. An outbox counts the
bytes it holds, so its connection can bound what a client leaves unread. Publishing never
awaits: the scheduler is never held up by a client.

Snapshots for `subscribe all` are not all read at once: the outbox asks for them page by
page as its client takes them (`Subscriber.stream`), so any number of unfinished jobs can
be watched, and each job's live events wait until its snapshot is queued.

Events carry plain data only, so a later node-to-node bridge can feed the hub with events
produced elsewhere through `publish`.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import orjson

from offload.service.frames import text_frame
from offload.service.models import Job, now_ms
from offload.service.store.base import Store, StoreChange


@dataclass(frozen=True)
class Event:
    job_id: str
    owner: str
    seq: int
    kind: str  # "status" | "progress"
    payload: bytes
    #: A status event with a final status (completed, failed, cancelled).
    terminal: bool = False

    @cached_property
    def frame(self) -> bytes:
        """The WebSocket frame of `payload`, built once for every connection that writes it."""
        return text_frame(self.payload)


def status_event(job: Job) -> Event:
    body = {"event": "status", "jobId": job.id, "status": job.status.value, "job": job.to_wire(), "seq": job.seq}
    return Event(job.id, job.owner, job.seq, "status", orjson.dumps(body), job.status.terminal)


def progress_event(job_id: str, owner: str, progress: int, message: str | None, seq: int) -> Event:
    body = {"event": "progress", "jobId": job_id, "progress": progress, "message": message, "seq": seq}
    return Event(job_id, owner, seq, "progress", orjson.dumps(body))


def snapshot_payload(job: Job) -> bytes:
    return orjson.dumps({"event": "snapshot", "job": job.to_wire()})


@dataclass
class EventCounts:
    """What the connections did with events, for statistics and metrics: frames written to
    clients, progress events replaced by a newer one before they were sent (coalesced), and
    events a connection refused or threw away because its client fell behind (dropped)."""

    sent: int = 0
    coalesced: int = 0
    dropped: int = 0


class Overflow(Exception):
    """A subscriber fell too far behind on events that may not be dropped."""


#: Below this many queued messages the snapshot stream of a `subscribe all` asks for its
#: next page, so snapshots are read from the store only as fast as the client takes them.
STREAM_LOW_WATER = 100


@dataclass
class SnapshotStream:
    """The snapshots of one `subscribe all`, paged from the store as the client reads."""

    #: The store's cursor of the next page; None for the first one.
    cursor: str | None = None
    #: Jobs whose snapshot this stream already queued: their live events flow from then on.
    sent: set[str] = field(default_factory=set)


class Subscriber:
    """One WebSocket connection's view: what it watches and what it has yet to receive.

    A job's live events are held while its snapshot is being read (a `subscribe` of that
    job, or a `subscribe all` whose stream has not reached it yet) and follow the snapshot,
    newer ones only, once it is queued: subscribing first and reading after means no
    change can fall between the two."""

    def __init__(self, owner: str | None, limit: int = 10_000, counts: EventCounts | None = None) -> None:
        self.owner = owner
        #: Shared by every connection of the service (`EventHub.counts`).
        self.counts = counts if counts is not None else EventCounts()
        #: Messages (queued and held) before the subscriber overflows.
        self.limit = limit
        self.jobs: set[str] = set()
        self.all = False
        self.overflowed = False
        #: Bytes of the messages queued or held, not yet handed to the connection.
        self.queued_bytes = 0
        #: Called whenever the outbox grows (the connection checks its unsent bytes).
        self.on_grow: Callable[[], None] | None = None
        #: The connection's direct write: takes a ready frame and writes it now if the
        #: connection keeps up (True), or declines (False) and the event is queued. Only
        #: offered an event when nothing is queued before it, so the order stays the same.
        self.direct: Callable[[bytes], bool] | None = None
        self.stream: SnapshotStream | None = None
        self._last_seq: dict[str, int] = {}
        self._queue: deque[list[Any]] = deque()
        self._progress_items: dict[str, list[Any]] = {}
        self._held: dict[str, list[Event]] = {}
        self._held_count = 0
        self._reading: set[str] = set()
        #: Answers to the client's messages sent while snapshots stream: they follow the
        #: stream, so a `ping` after a `subscribe all` is answered after its snapshots.
        self._replies: list[bytes] = []
        self._ready = asyncio.Event()

    # ---- fed by the hub -------------------------------------------------------------------
    def deliver(self, event: Event) -> None:
        if self._holds(event.job_id):
            self._hold(event)
        else:
            self._queue_event(event)

    def _holds(self, job_id: str) -> bool:
        if job_id in self._reading:
            return True
        stream = self.stream
        return stream is not None and job_id not in stream.sent and job_id not in self.jobs

    def _hold(self, event: Event) -> None:
        held = self._held.setdefault(event.job_id, [])
        if event.kind == "progress" and held and held[-1].kind == "progress":
            self.queued_bytes -= len(held[-1].payload)
            held[-1] = event
            self.counts.coalesced += 1
        elif self._full():
            self.counts.dropped += 1
            return
        else:
            held.append(event)
            self._held_count += 1
        self.queued_bytes += len(event.payload)
        self._grew()

    def _queue_event(self, event: Event) -> None:
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
                self.queued_bytes += len(event.payload) - len(item[1])
                item[1] = event.payload
                self.counts.coalesced += 1
                return
        if not self._queue and not self.overflowed and self.direct is not None and self.direct(event.frame):
            self.counts.sent += 1
            return
        if event.kind == "progress":
            item = [event.job_id, event.payload]
            self._progress_items[event.job_id] = item
        else:
            # Progress queued before this status stays before it: a later one is queued after
            # it, not folded back into the earlier place (the client's seq never goes back).
            self._progress_items.pop(event.job_id, None)
            item = [None, event.payload]
        self._push(item)

    def _full(self) -> bool:
        if len(self._queue) + self._held_count + len(self._replies) >= self.limit:
            self.overflowed = True
            self._ready.set()
        return self.overflowed

    def _push(self, item: list[Any]) -> None:
        if self._full():
            self.counts.dropped += 1
            return
        self._queue.append(item)
        self.queued_bytes += len(item[1])
        self._ready.set()
        self._grew()

    def _grew(self) -> None:
        if self.on_grow is not None:
            self.on_grow()

    # ---- one job's snapshot: hold its live events while its current state is read ----------
    def hold(self, job_id: str) -> None:
        self._reading.add(job_id)

    def release(self, job_id: str, job: Job | None) -> None:
        """Queue the snapshot (None: the job was not found), then the events held
        meanwhile that are newer than it."""
        self._reading.discard(job_id)
        if job is not None:
            self._snapshot(job)
        self._release_held(job_id)

    def _snapshot(self, job: Job) -> None:
        last = self._last_seq.get(job.id, -1)
        if job.seq < last:
            return  # the client already has a newer state of this job
        self._last_seq[job.id] = job.seq
        self._push([None, snapshot_payload(job)])

    def _release_held(self, job_id: str) -> None:
        if self._holds(job_id):
            return
        held = self._held.pop(job_id, ())
        for event in held:
            self._held_count -= 1
            self.queued_bytes -= len(event.payload)
        if self.all or job_id in self.jobs:  # not a job whose lookup failed meanwhile
            for event in held:
                self._queue_event(event)

    # ---- `subscribe all`: every unfinished job's snapshot, page by page --------------------
    def start_stream(self) -> None:
        self.stream = SnapshotStream()
        self._ready.set()

    def add_page(self, stream: SnapshotStream, jobs: Iterable[Job], next_cursor: str | None) -> None:
        """Queue one page of snapshots, each followed by its job's held events; after the
        last page (`next_cursor` None), the events of every other job held meanwhile."""
        if stream is not self.stream:
            return  # `unsubscribe all` meanwhile
        for job in jobs:
            stream.sent.add(job.id)
            self._snapshot(job)
            self._release_held(job.id)
        stream.cursor = next_cursor
        if next_cursor is None:
            self.end_stream()

    def end_stream(self) -> None:
        self.stream = None
        for job_id in list(self._held):
            self._release_held(job_id)
        replies, self._replies = self._replies, []
        for payload in replies:
            self.queued_bytes -= len(payload)
            self._push([None, payload])

    def stop_all(self) -> None:
        """`unsubscribe all`: forget the jobs watched through it alone."""
        self.all = False
        self.end_stream()  # releases nothing of jobs not watched one by one: they are dropped
        self._last_seq = {job_id: seq for job_id, seq in self._last_seq.items()
                          if job_id in self.jobs or job_id in self._reading}

    def forget(self, job_id: str) -> None:
        self._last_seq.pop(job_id, None)
        self._release_held(job_id)

    def send_error(self, code: str, message: str) -> None:
        self.send_raw(orjson.dumps({"event": "error", "code": code, "message": message}))

    def send_raw(self, payload: bytes) -> None:
        """Answer the client, in the order of its messages: after the snapshots of a
        `subscribe all` it sent before."""
        if self.stream is not None:
            if self._full():
                self.counts.dropped += 1
                return
            self._replies.append(payload)
            self.queued_bytes += len(payload)
            self._grew()
            return
        self._push([None, payload])

    def discard(self) -> None:
        """Drop everything not yet sent: the connection is being closed."""
        self.counts.dropped += len(self._queue) + self._held_count + len(self._replies)
        self._queue.clear()
        self._progress_items.clear()
        self._held.clear()
        self._held_count = 0
        self._replies.clear()
        self.queued_bytes = 0
        self.stream = None

    # ---- drained by the connection's sender -------------------------------------------------
    async def next(self) -> bytes | None:
        """The next message to send, or None when the snapshot stream wants its next page
        (`self.stream`); raises Overflow when the client fell too far behind."""
        while True:
            if self.overflowed:
                raise Overflow
            if self.stream is not None and len(self._queue) < STREAM_LOW_WATER:
                return None
            if self._queue:
                break
            self._ready.clear()
            await self._ready.wait()
        item = self._queue.popleft()
        job_id, payload = item
        self.queued_bytes -= len(payload)
        if job_id is not None and self._progress_items.get(job_id) is item:
            del self._progress_items[job_id]
        return payload


class EventHub:
    def __init__(self) -> None:
        self._by_job: dict[str, set[Subscriber]] = {}
        self._by_owner: dict[str | None, set[Subscriber]] = {}
        self.published = 0
        #: Sent, coalesced and dropped events of every connection (`Subscriber.counts`).
        self.counts = EventCounts()
        #: Set when `catch_up` polls (a database shared with other nodes): the latest `seq`
        #: published of each watched job since the last pass (and, for the jobs watched one
        #: by one, for as long as they are watched), and the unfinished jobs of the owners
        #: watched with `subscribe all` as the last pass found them: what a pass reads again,
        #: should a notification be lost, and what it need not publish again.
        self.tracking = False
        self._latest: dict[str, int] = {}
        self._open: set[str] = set()
        self._behind: dict[str, int] = {}
        #: Jobs published since the last pass, and in the pass before: their seqs are kept
        #: at least that long, however they ended, so a stale change arriving late is dropped.
        self._touched: set[str] = set()
        self._touched_before: set[str] = set()
        #: When the last pass began (ms since the epoch), None before the first; and the
        #: latest jobs whose final status was published here (the oldest forgotten first).
        self._passed_at: int | None = None
        self._finals: dict[str, None] = {}

    def publish(self, event: Event) -> None:
        """Hand `event` to every subscriber watching its job, in one loop that never awaits:
        each one that keeps up writes it at once, the others queue it."""
        self.published += 1
        targets = self._by_job.get(event.job_id, ())
        everyone = self._by_owner.get(event.owner, ())
        admins = self._by_owner.get(None, ())
        job_id, owner = event.job_id, event.owner
        for subscriber in (*targets, *everyone, *admins):
            if subscriber.owner is not None and subscriber.owner != owner:
                continue  # watching another user's job id (the lookup is about to say 404)
            if subscriber.all or job_id in subscriber.jobs:
                subscriber.deliver(event)

    def on_change(self, change: StoreChange) -> None:
        """The store's change sink, subscribed at start: every committed transition is a
        `status` event, every committed progress write a `progress` event. A change nobody
        watches is counted and not encoded: most jobs have no watcher at all."""
        job_id, owner = (change.id, change.owner) if isinstance(change, Job) else (change.job_id, change.owner)
        if job_id not in self._by_job and owner not in self._by_owner and None not in self._by_owner:
            self.published += 1
            return
        if self.tracking:
            # This node's own changes and those heard from other nodes come by two paths: a
            # job stored here may have run on another node before its insert was emitted
            # here. What is not newer than the latest published is stale, and dropped.
            if change.seq <= self._latest.get(job_id, -1):
                return
            self._latest[job_id] = change.seq
            self._touched.add(job_id)
            if isinstance(change, Job) and change.status.terminal:
                self._finals[job_id] = None
                if len(self._finals) > 10_000:
                    del self._finals[next(iter(self._finals))]
        if isinstance(change, Job):
            self.status(change)
        else:
            self.progress(change.job_id, change.owner, change.progress, change.message, change.seq)

    async def catch_up(self, store: Store) -> int:
        """Read the watched jobs from `store` and publish, as a status event, each one that
        changed since its latest event here: how a node on a shared database makes up for a
        lost notification (`Store.poll_interval`), so no watcher misses a terminal status
        for long. The watched jobs are the ones subscribed to one by one, the ones with an
        event here not yet final, and the unfinished jobs of the owners watched with
        `subscribe all` (those found on the last pass included, so one that finished since
        is read too, and the newest ones, for a job stored and finished between two passes).
        A change not heard within one pass is published by the next one.
        Returns how many jobs were published."""
        self.tracking = True
        started, since = now_ms(), self._passed_at
        rows: dict[str, Job] = {}
        for owner in list(self._by_owner):
            page = await store.unfinished_page(owner, limit=1000)
            rows.update((job.id, job) for job in page.jobs)
            if since is not None:
                # A job stored and finished since the pass before, all its notifications lost,
                # is in none of the sets above: the owner's newest jobs are read for it.
                newest = await store.list_jobs(owner, limit=100)
                rows.update((job.id, job) for job in newest.jobs
                            if job.status.terminal and job.created_at >= since - 1000 and job.id not in rows
                            and job.id not in self._finals)
        wanted = (set(self._by_job) | set(self._latest) | self._open | set(self._behind)) - rows.keys()
        if wanted:
            rows.update(await store.get_many(wanted))
        self._open = {job_id for job_id, job in rows.items() if not job.status.terminal}
        # A row newer than its latest event here may be a change whose notification (or, on
        # this node, whose emission after its commit) is on its way: it is published only
        # when the newer seq seen on the pass before is still not heard, a poll later.
        published = 0
        behind: dict[str, int] = {}
        for job in rows.values():
            latest = self._latest.get(job.id, -1)
            if job.seq <= latest:
                continue
            seen = self._behind.get(job.id)
            if seen is not None and seen > latest:
                published += 1
                self.on_change(job)  # a watcher that has this seq already drops it
            else:
                behind[job.id] = job.seq
        self._behind = behind
        self._passed_at = started
        # Kept for the next pass: the jobs watched one by one (a finished one's final seq
        # too, so it is not published again), the unfinished jobs of watched owners, and
        # whatever was published in this pass or the one before.
        recent, self._touched_before, self._touched = self._touched | self._touched_before, self._touched, set()
        self._latest = {job_id: seq for job_id, seq in self._latest.items()
                        if job_id in self._by_job or job_id in self._open or job_id in behind or job_id in recent}
        return published

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
        """Every job of the subscriber's owner, present and future: the snapshots of the
        unfinished ones follow through `subscriber.stream`, read by the connection."""
        subscriber.all = True
        subscriber.start_stream()
        self._by_owner.setdefault(subscriber.owner, set()).add(subscriber)

    def unwatch_all(self, subscriber: Subscriber) -> None:
        """Stop `watch_all`; the jobs watched one by one stay watched."""
        watchers = self._by_owner.get(subscriber.owner)
        if watchers is not None:
            watchers.discard(subscriber)
            if not watchers:
                del self._by_owner[subscriber.owner]
        subscriber.stop_all()

    def remove(self, subscriber: Subscriber) -> None:
        for job_id in list(subscriber.jobs):
            self.unwatch_job(subscriber, job_id)
        self.unwatch_all(subscriber)

    @property
    def subscriber_count(self) -> int:
        return len({s for group in (*self._by_job.values(), *self._by_owner.values()) for s in group})
