"""Worker processes: a supervised pool, one process per slot, one job per process at a time.

`concurrent.futures.ProcessPoolExecutor` fails every pending task when one of its processes
dies and cannot stop a task that is running; and each task crosses three threads (the
caller's, the executor's manager, the queue feeder), whose GIL hand-offs cost more than
the task itself for short jobs. So each slot here owns its process and one pipe to it,
watched by the event loop itself (`loop.add_reader` on the events pipe and on the
process's sentinel): sending a job is one write, its progress and outcome arrive as
readable data, and its death as a readable sentinel. The service always knows which process runs which
job, stops exactly that one (timeout, cancel, shutdown) and replaces it; a crash fails
exactly one job.

A process also sees a shared cancel flag, so a cooperative handler stops at its next
`ctx.progress()` before the process is killed.
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import multiprocessing
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import orjson

from offload.service.endings import Outcome, OutcomeKind, StopReason
from offload.service.forks import ForkServer, discard_early
from offload.service.runners import ProgressSink, hold_free, release
from offload.workers import runtime
from offload.workers.registry import BUILTIN_MODULES
from offload.workers.results import remove_partials

log = logging.getLogger("offload.pool")

#: Jobs larger than this are written to their worker from a thread: the worker reads them
#: at once, but the pipe holds only so much, and the loop must not wait on it. A slot's pipe
#: is empty when a job is sent (its process took the last one before running it), so a job
#: that fits in the pipe is written at once; the pipe is enlarged to `JOB_PIPE_BYTES` where
#: the system allows (Linux), which takes a 500-item invoice (34 KB) without the thread.
INLINE_SEND = 32 * 1024
JOB_PIPE_BYTES = 1 << 20


def _enlarge(jobs: Connection) -> int:
    """Make the pipe `jobs` writes into hold `JOB_PIPE_BYTES` if the system lets it; the
    largest job that can then be written to it at once (room is left for the frame header)."""
    set_size, get_size = getattr(fcntl, "F_SETPIPE_SZ", None), getattr(fcntl, "F_GETPIPE_SZ", None)
    if set_size is None or get_size is None:
        return INLINE_SEND
    try:
        fcntl.fcntl(jobs.fileno(), set_size, JOB_PIPE_BYTES)
    except OSError:  # above /proc/sys/fs/pipe-max-size, or the user's pipe quota
        pass
    try:
        return max(INLINE_SEND, fcntl.fcntl(jobs.fileno(), get_size) - 64)
    except OSError:
        return INLINE_SEND


def _exit_description(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


@dataclass
class Slot:
    index: int
    process: Any = None  # multiprocessing.Process while the slot has one
    #: Jobs go out on `jobs` (blocking, written by the service only) and progress and
    #: outcomes come back on `events` (read by the event loop as raw frames).
    jobs: Connection | None = None
    events: Connection | None = None
    frames: Frames | None = None
    cancel_flag: Any = None
    job_id: str | None = None
    #: The running attempt's outcome, resolved by the pipe or the process's end.
    waiter: asyncio.Future[Outcome] | None = None
    #: Held for a job the scheduler is claiming right now.
    reserved: bool = False
    #: Why the service is stopping the running job, once it is.
    stop_reason: StopReason | None = None
    #: Where the running attempt's progress goes.
    progress: ProgressSink | None = None
    #: loop.time() when the slot last finished a job (for retiring idle processes).
    idle_since: float = 0.0
    #: Counts the attempts run on this slot: a kill scheduled for one attempt must not hit
    #: the next, which may be a retry of the same job.
    run_no: int = 0
    #: The largest job written to the process's pipe on the loop (`INLINE_SEND`).
    inline_send: int = INLINE_SEND

    @property
    def live(self) -> bool:
        return self.process is not None

    @property
    def busy(self) -> bool:
        return self.job_id is not None or self.reserved

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class Frames:
    """Splits what arrives on a non-blocking pipe into the worker's length-prefixed messages
    (`workers.runtime.frame`); a message may arrive over several reads."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        messages = []
        start = 0
        while len(buffer) - start >= 4:
            size = int.from_bytes(buffer[start:start + 4], "big")
            if len(buffer) - start - 4 < size:
                break
            messages.append(bytes(buffer[start + 4:start + 4 + size]))
            start += 4 + size
        del buffer[:start]
        return messages


class WorkerPool:
    """Between `min_size` and `size` worker processes: a process starts when a job needs a
    slot and none is idle, and retires after `idle_timeout` seconds without work."""

    def __init__(self, size: int, *, min_size: int | None = None, idle_timeout: float = 60.0,
                 modules: tuple[str, ...] = (), memory_limit_mb: int = 0,
                 start_method: str = "forkserver", stop_grace: float = 0.5) -> None:
        self.size = size
        self.min_size = size if min_size is None else min(min_size, size)
        self.idle_timeout = idle_timeout
        self.modules = modules
        self.memory_limit_bytes = memory_limit_mb * 1024 * 1024
        self.stop_grace = stop_grace
        #: The default: offload's own fork server (`service/forks.py`), which loads the job
        #: types and runs their warm-ups once, so every worker forked from it starts with them
        #: loaded and warm (`workers/prewarm.py`). `spawn` and `fork` go through multiprocessing.
        self._forks: ForkServer | None = None
        self._ctx: Any = None
        if start_method == "forkserver":
            self._forks = ForkServer.shared(["offload.workers.runtime", *BUILTIN_MODULES, *modules,
                                             "offload.workers.prewarm"])
        else:
            discard_early()
            self._ctx = multiprocessing.get_context(start_method)
        self.slots = [Slot(i) for i in range(size)]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reaper: asyncio.TimerHandle | None = None
        #: Set while the service stops: a process that ends is not replaced.
        self.draining = False
        self.started = 0
        self.retired = 0
        self.replaced = 0

    # ---- life cycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for slot in self.slots[: self.min_size]:
            self._spawn(slot)
        self._schedule_reaper()

    async def close(self) -> None:
        self.draining = True
        if self._reaper is not None:
            self._reaper.cancel()
        processes = [slot.process for slot in self.slots if slot.live]
        for slot in self.slots:
            if slot.live:
                self._end(slot, kill=True)
        # Reap them off the loop, so none is left behind as a zombie.
        await asyncio.gather(*(asyncio.to_thread(process.join, 5) for process in processes))

    def _spawn(self, slot: Slot) -> None:
        assert self._loop is not None
        if self._forks is not None:
            process, our_jobs, our_events, slot.cancel_flag = self._forks.start_worker(
                self.modules, self.memory_limit_bytes)
        else:
            their_jobs, our_jobs = self._ctx.Pipe(duplex=False)
            our_events, their_events = self._ctx.Pipe(duplex=False)
            slot.cancel_flag = self._ctx.Value("b", 0, lock=False)
            process = self._ctx.Process(
                target=runtime.serve, name=f"offload-worker-{slot.index}", daemon=True,
                args=(their_jobs, their_events, slot.cancel_flag, self.modules, self.memory_limit_bytes))
            process.start()
            their_jobs.close()
            their_events.close()
        slot.inline_send = _enlarge(our_jobs)
        slot.process, slot.jobs, slot.events, slot.frames = process, our_jobs, our_events, Frames()
        slot.idle_since = self._loop.time()
        self.started += 1
        self._loop.add_reader(our_events.fileno(), self._read, slot, our_events)
        self._loop.add_reader(process.sentinel, self._exited, slot, process)

    def _end(self, slot: Slot, *, kill: bool) -> None:
        """Detach the slot from its process. Closing the pipes lets an idle process leave by
        itself; `kill` stops it whatever it is doing."""
        process, jobs, events = slot.process, slot.jobs, slot.events
        slot.process = slot.jobs = slot.events = slot.frames = None
        assert self._loop is not None
        if events is not None:
            self._loop.remove_reader(events.fileno())
            events.close()
        if jobs is not None:
            jobs.close()
        if process is not None:
            self._loop.remove_reader(process.sentinel)
            if kill and process.exitcode is None:
                process.kill()

    def _schedule_reaper(self) -> None:
        assert self._loop is not None
        self._reaper = self._loop.call_later(max(0.05, min(self.idle_timeout / 2, 5.0)), self._reap)

    def _reap(self) -> None:
        """Retire processes idle for longer than `idle_timeout`, down to `min_size`."""
        assert self._loop is not None
        now = self._loop.time()
        live = sum(slot.live for slot in self.slots)
        for slot in reversed(self.slots):
            if live <= self.min_size:
                break
            if slot.live and not slot.busy and now - slot.idle_since >= self.idle_timeout:
                self._end(slot, kill=False)
                self.retired += 1
                live -= 1
        self._schedule_reaper()

    # ---- what the processes say ------------------------------------------------------------
    def _read(self, slot: Slot, events: Connection) -> None:
        try:
            data = os.read(events.fileno(), 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the process is ending; its sentinel tells how
            assert self._loop is not None
            self._loop.remove_reader(events.fileno())
            return
        assert slot.frames is not None
        for raw in slot.frames.feed(data):
            message = orjson.loads(raw)
            if message[0] == "p":
                _, job_id, attempt, percent, text = message
                if job_id == slot.job_id and slot.progress is not None:
                    slot.progress(percent, text)
            elif slot.waiter is not None and not slot.waiter.done():
                raw = message[1]
                slot.waiter.set_result(Outcome(OutcomeKind(raw["outcome"]), result=raw.get("result"),
                                               error=raw.get("error"), permanent=raw.get("permanent", False)))

    def _exited(self, slot: Slot, process: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(process.sentinel)
        process.join(0)
        if slot.process is not process:  # retired on purpose, already detached
            return
        waiter = slot.waiter
        if waiter is not None and not waiter.done():
            if slot.stop_reason is not None:
                waiter.set_result(Outcome(OutcomeKind.STOPPED))
            else:
                description = _exit_description(process.exitcode)
                log.warning("worker process %s died running %s (%s)", process.pid, slot.job_id, description)
                waiter.set_result(Outcome(OutcomeKind.FAILED, error={"type": "WorkerCrashed",
                                                           "message": f"worker process died ({description})"}))
        elif not self.draining:
            log.warning("idle worker process %s ended (%s)", process.pid, _exit_description(process.exitcode))
        self._end(slot, kill=True)
        self.replaced += 1
        if not self.draining and sum(other.live for other in self.slots) < self.min_size:
            self._spawn(slot)

    # ---- running jobs ------------------------------------------------------------------------
    def reserve(self) -> list[Slot]:
        """Hold every free slot for jobs about to be claimed; hand back unused ones with
        `unreserve`."""
        return hold_free(sorted(self.slots, key=lambda slot: not slot.live))  # warm processes first

    @staticmethod
    def unreserve(slots: list[Slot]) -> None:
        release(slots)

    async def run(self, slot: Slot, job_id: str, attempt: int, type: str, data: Any,
                  settings: Mapping[str, Any], results_dir: str, progress: ProgressSink,
                  extras: Mapping[str, Any] | None = None) -> Outcome:
        """Run one attempt on `slot`; returns when it ended, however it ended: what the
        handler reported, or STOPPED when its process ended under a stop. What the ending
        becomes is not decided here (`endings.decide`)."""
        assert slot.job_id is None and self._loop is not None
        if not slot.live:
            self._spawn(slot)
        assert slot.jobs is not None
        slot.job_id, slot.stop_reason, slot.reserved, slot.progress = job_id, None, False, progress
        slot.run_no += 1
        slot.cancel_flag.value = 0
        slot.waiter = waiter = self._loop.create_future()
        try:
            message = orjson.dumps([job_id, attempt, type, data, settings, results_dir, extras])
            try:
                if len(message) <= slot.inline_send:
                    slot.jobs.send_bytes(message)
                else:
                    await asyncio.to_thread(slot.jobs.send_bytes, message)
            except OSError:
                pass  # the process is already gone: its sentinel resolves the waiter
            outcome = await waiter
            if outcome.kind is not OutcomeKind.COMPLETED:  # a killed process could not remove its partial file
                await asyncio.to_thread(remove_partials, results_dir, job_id, attempt)
            return outcome
        finally:
            slot.job_id = slot.waiter = slot.progress = None
            slot.idle_since = self._loop.time()

    def drain(self) -> None:
        """The service is stopping: a process that ends from now on is not replaced."""
        self.draining = True

    def stop(self, job_id: str, reason: StopReason) -> bool:
        """Ask the job running `job_id` to stop: at once through its cancel flag, and by
        killing its process if it has not returned after `stop_grace` seconds."""
        for slot in self.slots:
            if slot.job_id == job_id:
                slot.stop_reason = reason
                slot.cancel_flag.value = 1
                assert self._loop is not None
                self._loop.call_later(self.stop_grace, self._kill_if_still, slot, job_id, slot.run_no)
                return True
        return False

    def _kill_if_still(self, slot: Slot, job_id: str, run_no: int) -> None:
        if slot.job_id == job_id and slot.run_no == run_no and slot.process is not None:
            log.info("stopping worker process %s running %s (%s)", slot.process.pid, job_id, slot.stop_reason)
            slot.process.kill()

    def processes(self) -> list[tuple[int, int, str | None]]:
        """Each live process as `(slot, pid, running job id or None)`, for statistics."""
        return [(slot.index, slot.pid, slot.job_id) for slot in self.slots if slot.pid is not None]

    def describe(self) -> dict[str, Any]:
        live = [slot for slot in self.slots if slot.live]
        busy = sum(slot.job_id is not None for slot in self.slots)
        return {"processes": len(live), "minProcesses": self.min_size, "maxProcesses": self.size,
                "busy": busy, "idle": len(live) - busy, "started": self.started, "retired": self.retired,
                "replaced": self.replaced, "pids": [slot.pid for slot in live]}
