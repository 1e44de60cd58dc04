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

    @property
    def busy(self) -> bool:
        return self.job_id is not None or self.reserved

    @property
    def pid(self) -> int | None:
        return self.processes[0].pid if self.processes else None


class WorkerPool:
    def __init__(self, size: int, *, modules: tuple[str, ...] = (), memory_limit_mb: int = 0,
                 start_method: str = "forkserver", on_progress: ProgressSink | None = None,
                 stop_grace: float = 0.5) -> None:
        self.size = size
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
        self.replaced = 0

    # ---- life cycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for slot in self.slots:
            self._spawn(slot)
        await asyncio.gather(*(self._warm(slot) for slot in self.slots))

    async def close(self) -> None:
        for slot in self.slots:
            self._retire(slot, kill=True)

    def _spawn(self, slot: Slot) -> None:
        reader, writer = self._ctx.Pipe(duplex=False)
        slot.cancel_flag = self._ctx.Value("b", 0, lock=False)
        slot.executor = ProcessPoolExecutor(
            max_workers=1, mp_context=self._ctx, initializer=runtime.initialize,
            initargs=(writer, slot.cancel_flag, self.modules, self.memory_limit_bytes))
        slot.pipe = reader
        slot._writer = writer  # type: ignore[attr-defined]  # kept open: the child holds its own copy
        slot.processes = []
        assert self._loop is not None
        self._loop.add_reader(reader.fileno(), self._drain, slot, reader)

    async def _warm(self, slot: Slot) -> None:
        assert slot.executor is not None
        future = slot.executor.submit(runtime.ping)
        slot.processes = _processes_of(slot.executor)
        await asyncio.wrap_future(future)

    def _retire(self, slot: Slot, *, kill: bool) -> None:
        if slot.pipe is not None and self._loop is not None:
            self._loop.remove_reader(slot.pipe.fileno())
        if kill:
            for process in slot.processes:
                if process.is_alive():
                    process.kill()
        if slot.executor is not None:
            slot.executor.shutdown(wait=False, cancel_futures=True)
        for conn in (slot.pipe, getattr(slot, "_writer", None)):
            if conn is not None:
                conn.close()
        slot.executor = slot.pipe = None

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
        free = [slot for slot in self.slots if not slot.busy and slot.executor is not None]
        for slot in free:
            slot.reserved = True
        return free

    @staticmethod
    def unreserve(slots: list[Slot]) -> None:
        for slot in slots:
            slot.reserved = False

    @property
    def busy_count(self) -> int:
        return sum(slot.busy for slot in self.slots)

    async def run(self, slot: Slot, job_id: str, attempt: int, type: str, data: Any,
                  settings: dict[str, Any], results_dir: str) -> Outcome:
        """Run one attempt on `slot`; returns when it ended, however it ended."""
        assert slot.executor is not None and slot.job_id is None
        slot.job_id, slot.stop_reason, slot.reserved = job_id, None, False
        slot.cancel_flag.value = 0
        try:
            future = slot.executor.submit(runtime.run, job_id, attempt, type, data, settings, results_dir)
            if not slot.processes:
                slot.processes = _processes_of(slot.executor)
            try:
                raw = await asyncio.wrap_future(future)
            except BrokenProcessPool:
                return self._died(slot)
            if raw["outcome"] == "cancelled" or slot.stop_reason is not None:
                if raw["outcome"] == "completed" and slot.stop_reason != "shutdown":
                    return Outcome("completed", result=raw["result"])
                return Outcome("stopped" if slot.stop_reason else "cancelled")
            return Outcome(raw["outcome"], result=raw.get("result"), error=raw.get("error"),
                           permanent=raw.get("permanent", False))
        finally:
            slot.job_id = None
            if slot.executor is None or _broken(slot.executor):
                self._replace(slot)

    def _died(self, slot: Slot) -> Outcome:
        exitcode = None
        for process in slot.processes:
            process.join(timeout=1)
            exitcode = process.exitcode
        if slot.stop_reason is not None:
            return Outcome("stopped")
        description = _exit_description(exitcode)
        log.warning("worker process %s died running %s (%s)", slot.pid, slot.job_id, description)
        return Outcome("failed", error={"type": "WorkerCrashed", "message": f"worker process died ({description})"})

    def _replace(self, slot: Slot) -> None:
        self._retire(slot, kill=True)
        self.replaced += 1
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
                self._loop.call_later(self.stop_grace, self._kill_if_still, slot, job_id)
                return True
        return False

    def _kill_if_still(self, slot: Slot, job_id: str) -> None:
        if slot.job_id == job_id:
            for process in slot.processes:
                if process.is_alive():
                    log.info("stopping worker process %s running %s (%s)", process.pid, job_id, slot.stop_reason)
                    os.kill(process.pid, signal.SIGKILL)

    def describe(self) -> dict[str, Any]:
        return {"processes": self.size, "busy": self.busy_count, "idle": self.size - self.busy_count,
                "replaced": self.replaced, "pids": [slot.pid for slot in self.slots]}


def _processes_of(executor: ProcessPoolExecutor) -> list[Any]:
    # The executor's process table is private; it is the only handle on the process that a
    # one-process executor runs (Python 3.14 adds kill_workers() for the same purpose).
    return list(getattr(executor, "_processes", {}).values())


def _broken(executor: ProcessPoolExecutor) -> bool:
    return bool(getattr(executor, "_broken", False))
