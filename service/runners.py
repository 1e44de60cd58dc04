"""Where attempts run: the `Runner` interface, and the runner of `async def` job types.

The scheduler starts every attempt the same way, on a runner: it reserves the runner's
free slots, claims as many jobs of the runner's types, runs each with `run(...)` (which
returns how the attempt ended, an `Outcome`) and asks for a stop with `stop(job_id,
reason)`. The process pool (`service/pool.py`) runs plain functions in worker processes;
`AsyncRunner` runs `async def` handlers as tasks on the service's loop (I/O-bound work such
as mail), at most `[workers] async_concurrency` at a time.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from offload.service.endings import Outcome, OutcomeKind, StopReason
from offload.workers.context import Saver, context_of
from offload.workers.errors import Cancelled, JobError
from offload.workers.registry import FileOutput, JobType
from offload.workers.results import ResultFile, ResultFiles
from offload.workers.tracebacks import handler_traceback

#: Where one attempt's progress goes: `(percent, message)`.
ProgressSink = Callable[[int, "str | None"], None]
#: `savers(job_id, attempt)`: the `ctx.save` of that attempt (`Scheduler._saver_of`).
Savers = Callable[[str, int], Saver]


class Runner(Protocol):
    #: How many attempts it runs at once.
    size: int

    def reserve(self) -> list[Any]:
        """Hold every free slot for jobs about to be claimed."""

    def unreserve(self, slots: list[Any]) -> None:
        """Hand back held slots that got no job."""

    async def run(self, slot: Any, job_id: str, attempt: int, type: str, data: Any,
                  settings: Mapping[str, Any], results_dir: str, progress: ProgressSink,
                  extras: Mapping[str, Any] | None = None) -> Outcome:
        """Run one attempt on a held slot; return how it ended, however it ended. `extras`
        (JSON) carries what the handler's `Context` gets besides its data: `inputs` (a list
        of `Input.to_json()`) and `checkpoint`."""

    def stop(self, job_id: str, reason: StopReason) -> bool:
        """Ask the running attempt of `job_id` to stop; False when it runs nowhere here."""

    def drain(self) -> None:
        """The service is stopping."""


class _Holdable(Protocol):
    reserved: bool

    @property
    def busy(self) -> bool: ...


H = TypeVar("H", bound=_Holdable)


def hold_free(slots: list[H]) -> list[H]:
    """Hold the slots that are not busy, in the order given, for jobs about to be claimed."""
    free = [slot for slot in slots if not slot.busy]
    for slot in free:
        slot.reserved = True
    return free


def release(slots: list[H]) -> None:
    """Hand back held slots that got no job."""
    for slot in slots:
        slot.reserved = False


@dataclass(eq=False)
class AsyncSlot:
    index: int
    reserved: bool = False
    job_id: str | None = None
    task: asyncio.Task[Any] | None = None
    stop_reason: StopReason | None = None

    @property
    def busy(self) -> bool:
        return self.reserved or self.job_id is not None


class AsyncRunner:
    """Runs `async def` handlers on the loop. `job_types(name)` gives a job type
    (`Registry.get`), or None when this node has none. `savers` gives each attempt its
    `ctx.save` (the scheduler sets it: a save is a fenced store write)."""

    def __init__(self, job_types: Callable[[str], JobType | None], concurrency: int,
                 savers: Savers | None = None) -> None:
        self.size = concurrency
        self._job_types = job_types
        self.savers = savers
        self.slots = [AsyncSlot(i) for i in range(concurrency)]

    def reserve(self) -> list[AsyncSlot]:
        return hold_free(self.slots)

    @staticmethod
    def unreserve(slots: list[AsyncSlot]) -> None:
        release(slots)

    async def run(self, slot: AsyncSlot, job_id: str, attempt: int, type: str, data: Any,
                  settings: Mapping[str, Any], results_dir: str, progress: ProgressSink,
                  extras: Mapping[str, Any] | None = None) -> Outcome:
        job_type = self._job_types(type)
        if job_type is None or not job_type.is_async:
            slot.reserved = False
            return Outcome(OutcomeKind.FAILED, permanent=True, error={
                "type": "UnknownJobType", "message": f"job type {type!r} is not registered on this node"})
        slot.job_id, slot.stop_reason, slot.reserved = job_id, None, False
        save = None if self.savers is None else self.savers(job_id, attempt)
        files = ResultFiles(job_id, attempt, results_dir)
        ctx = context_of(job_id, attempt, settings, progress, lambda: slot.stop_reason is not None, extras,
                         save=save, files=files)
        slot.task = task = asyncio.ensure_future(job_type.handler(data, ctx))
        try:
            value = await task
            # A file result is written off the loop (a FileOutput's chunks are produced
            # there too, so they must not touch ctx); a JSON value needs no thread.
            result = await asyncio.to_thread(files.result_of, value) if isinstance(value, (FileOutput, ResultFile)) \
                else files.result_of(value)
        except Cancelled:
            return Outcome(OutcomeKind.CANCELLED)
        except asyncio.CancelledError:
            if slot.stop_reason is None:  # not a stop: the service itself is being torn down
                raise
            return Outcome(OutcomeKind.STOPPED)
        except JobError as exc:
            return Outcome(OutcomeKind.FAILED, error={"type": exc.type, "message": exc.message},
                           permanent=exc.permanent)
        except Exception as exc:  # any handler bug: the job failed (with its traceback), the service goes on
            return Outcome(OutcomeKind.FAILED, error={"type": exc.__class__.__name__, "message": str(exc) or repr(exc),
                                                      "traceback": handler_traceback(exc)})
        finally:
            slot.job_id = slot.task = None
            files.discard()
        return Outcome(OutcomeKind.COMPLETED, result=result)

    def stop(self, job_id: str, reason: StopReason) -> bool:
        """Mark the stop (a cooperative handler sees it at its next `ctx.progress()`) and
        cancel the handler's task, so one that awaits stops at once."""
        for slot in self.slots:
            if slot.job_id == job_id and slot.task is not None:
                slot.stop_reason = reason
                slot.task.cancel()
                return True
        return False

    def drain(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"concurrency": self.size, "busy": sum(slot.job_id is not None for slot in self.slots)}
