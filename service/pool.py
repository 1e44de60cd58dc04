"""Worker processes: one single-process executor per slot.

A `ProcessPoolExecutor` breaks as a whole when one of its processes dies, and it cannot
stop a task that is running. Giving every slot its own one-process executor means the
service always knows which process runs which job, can stop exactly that one (timeout,
cancel, shutdown) and replace it, and a crash fails exactly one job.

Each slot also owns a pipe for progress (read with `loop.add_reader`, no polling) and a
shared cancel flag that a cooperative handler sees through `ctx.progress()`.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson

from workers import runtime

log = logging.getLogger("offload.pool")

ProgressSink = Callable[[str, int, int, "str | None"], None]


@dataclass
class Outcome:
    """How one attempt ended, as the pool saw it."""

    kind: str  # completed | failed | cancelled | stopped
    result: Any = None
    error: dict[str, str] | None = None
    permanent: bool = False


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
    executor: ProcessPoolExecutor | None = None
    pipe: Connection | None = None
    cancel_flag: Any = None
    job_id: str | None = None
    #: Held for a job the scheduler is claiming right now.
    reserved: bool = False
    #: Why the service is stopping the running job ("cancelled", "timeout", "shutdown").
    stop_reason: str | None = None
    processes: list[Any] = field(default_factory=list)
    writer: Connection | None = None
    #: loop.time() when the slot last finished a job (for retiring idle processes).
    idle_since: float = 0.0
    #: Counts the attempts run on this slot: a kill scheduled for one attempt must not hit
    #: the next, which may be a retry of the same job.
    run_no: int = 0

    @property
    def live(self) -> bool:
        return self.executor is not None

    @property
    def busy(self) -> bool:
        return self.job_id is not None or self.reserved

    @property
    def pid(self) -> int | None:
        return self.processes[0].pid if self.processes else None


class WorkerPool:
    """Between `min_size` and `size` worker processes: a process starts when a job needs a
    slot and none is idle, and retires after `idle_timeout` seconds without work."""

    def __init__(self, size: int, *, min_size: int | None = None, idle_timeout: float = 60.0,
                 modules: tuple[str, ...] = (), memory_limit_mb: int = 0,
                 start_method: str = "forkserver", on_progress: ProgressSink | None = None,
                 stop_grace: float = 0.5) -> None:
        self.size = size
        self.min_size = size if min_size is None else min(min_size, size)
        self.idle_timeout = idle_timeout
        self.modules = modules
        self.memory_limit_bytes = memory_limit_mb * 1024 * 1024
        self.stop_grace = stop_grace
        self.on_progress = on_progress or (lambda *a: None)
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # Import the heavy modules once in the fork server: every worker forked from it
            # starts with reportlab and the job types already loaded.
            self._ctx.set_forkserver_preload(["workers.runtime", *runtime.registry.BUILTIN_MODULES, *modules])
        self.slots = [Slot(i) for i in range(size)]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reaper: asyncio.TimerHandle | None = None
        self.replaced = 0
        #: Set while the service stops: a process that ends is not replaced.
        self.draining = False
        self.started = 0
        self.retired = 0

    # ---- life cycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        warm = self.slots[: self.min_size]
        for slot in warm:
            self._spawn(slot)
        await asyncio.gather(*(self._warm(slot) for slot in warm))
        self._schedule_reaper()

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for slot in self.slots:
            if slot.live:
                self._retire(slot, kill=True)

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
                self._retire(slot, kill=False)
                self.retired += 1
                live -= 1
        self._schedule_reaper()

    def _spawn(self, slot: Slot) -> None:
        reader, writer = self._ctx.Pipe(duplex=False)
        slot.cancel_flag = self._ctx.Value("b", 0, lock=False)
        slot.executor = ProcessPoolExecutor(
            max_workers=1, mp_context=self._ctx, initializer=runtime.initialize,
            initargs=(writer, slot.cancel_flag, self.modules, self.memory_limit_bytes))
        slot.pipe, slot.writer = reader, writer
        slot.processes = []
        assert self._loop is not None
        slot.idle_since = self._loop.time()
        self.started += 1
        self._loop.add_reader(reader.fileno(), self._drain, slot, reader)

    async def _warm(self, slot: Slot) -> None:
        """Start the slot's process now rather than when its first job arrives."""
        if slot.executor is None:  # retired before this ran (the service is stopping)
            return
        future = slot.executor.submit(runtime.ping)
        slot.processes = _processes_of(slot.executor)
        try:
            await asyncio.wrap_future(future)
        except BrokenProcessPool:
            log.warning("a worker process died while starting")

    def _retire(self, slot: Slot, *, kill: bool) -> None:
        if slot.pipe is not None and self._loop is not None:
            self._loop.remove_reader(slot.pipe.fileno())
        if kill:
            for process in slot.processes:
                if process.is_alive():
                    process.kill()
        if slot.executor is not None:
            slot.executor.shutdown(wait=False, cancel_futures=True)
        for conn in (slot.pipe, slot.writer):
            if conn is not None:
                conn.close()
        slot.executor = slot.pipe = slot.writer = None
        slot.processes = []

    # ---- progress ---------------------------------------------------------------------------
    def _drain(self, slot: Slot, pipe: Connection) -> None:
        try:
            while pipe.poll():
                job_id, attempt, percent, message = orjson.loads(pipe.recv_bytes())
                if job_id == slot.job_id:
                    self.on_progress(job_id, attempt, percent, message)
        except (EOFError, OSError):
            if self._loop is not None and not pipe.closed:
                self._loop.remove_reader(pipe.fileno())

    # ---- running jobs ------------------------------------------------------------------------
    def reserve(self) -> list[Slot]:
        """Hold every free slot for jobs about to be claimed; hand back unused ones with
        `unreserve`."""
        free = [slot for slot in self.slots if not slot.busy]
        free.sort(key=lambda slot: not slot.live)  # warm processes first
        for slot in free:
            slot.reserved = True
        return free

    @staticmethod
    def unreserve(slots: list[Slot]) -> None:
        for slot in slots:
            slot.reserved = False

    async def run(self, slot: Slot, job_id: str, attempt: int, type: str, data: Any,
                  settings: dict[str, Any], results_dir: str) -> Outcome:
        """Run one attempt on `slot`; returns when it ended, however it ended."""
        assert slot.job_id is None
        if not slot.live:
            self._spawn(slot)
        assert slot.executor is not None
        slot.job_id, slot.stop_reason, slot.reserved = job_id, None, False
        slot.run_no += 1
        slot.cancel_flag.value = 0
        try:
            future = slot.executor.submit(runtime.run, job_id, attempt, type, data, settings, results_dir)
            if not slot.processes:
                slot.processes = _processes_of(slot.executor)
            try:
                raw = await asyncio.wrap_future(future)
            except BrokenProcessPool:
                return await self._died(slot)
            if raw["outcome"] == "cancelled" or slot.stop_reason is not None:
                if raw["outcome"] == "completed" and slot.stop_reason != "shutdown":
                    return Outcome("completed", result=raw["result"])
                return Outcome("stopped" if slot.stop_reason else "cancelled")
            return Outcome(raw["outcome"], result=raw.get("result"), error=raw.get("error"),
                           permanent=raw.get("permanent", False))
        finally:
            slot.job_id = None
            assert self._loop is not None
            slot.idle_since = self._loop.time()
            if slot.executor is not None and _broken(slot.executor):
                self._replace(slot)

    async def _died(self, slot: Slot) -> Outcome:
        # The executor's own thread reaps the dead process. Reading the exit status here at
        # the same time races with it: the fork server sends the status once, and the reader
        # that loses sees end-of-file and records 255. So wait for that thread, then read the
        # status it recorded.
        manager = getattr(slot.executor, "_executor_manager_thread", None)
        if manager is not None:
            await asyncio.to_thread(manager.join, 2.0)
        exitcode = None
        for process in slot.processes:
            exitcode = process.exitcode
        if slot.stop_reason is not None:
            return Outcome("stopped")
        description = _exit_description(exitcode)
        log.warning("worker process %s died running %s (%s)", slot.pid, slot.job_id, description)
        return Outcome("failed", error={"type": "WorkerCrashed", "message": f"worker process died ({description})"})

    def _replace(self, slot: Slot) -> None:
        self._retire(slot, kill=True)
        self.replaced += 1
        if not self.draining and sum(other.live for other in self.slots) < self.min_size:
            self._spawn(slot)
            assert self._loop is not None
            self._loop.create_task(self._warm(slot))

    def stop(self, job_id: str, reason: str) -> bool:
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
        if slot.job_id == job_id and slot.run_no == run_no:
            for process in slot.processes:
                if process.is_alive():
                    log.info("stopping worker process %s running %s (%s)", process.pid, job_id, slot.stop_reason)
                    os.kill(process.pid, signal.SIGKILL)

    def describe(self) -> dict[str, Any]:
        live = [slot for slot in self.slots if slot.live]
        busy = sum(slot.job_id is not None for slot in self.slots)
        return {"processes": len(live), "minProcesses": self.min_size, "maxProcesses": self.size,
                "busy": busy, "idle": len(live) - busy, "started": self.started, "retired": self.retired,
                "replaced": self.replaced, "pids": [slot.pid for slot in live]}


def _processes_of(executor: ProcessPoolExecutor) -> list[Any]:
    # The executor's process table is private; it is the only handle on the process that a
    # one-process executor runs (Python 3.14 adds kill_workers() for the same purpose).
    return list(getattr(executor, "_processes", {}).values())


def _broken(executor: ProcessPoolExecutor) -> bool:
    return bool(getattr(executor, "_broken", False))
