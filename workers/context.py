"""What a handler gets besides its data: progress reporting, cancellation checks, the
results of the jobs it waited for, a checkpoint kept across attempts, and files to stream
its result into."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from offload.workers.errors import Cancelled


@dataclass(frozen=True)
class Input:
    """A job this job waited for (`options.after`, or a type's `needs`), as it completed.

    `result` is the job's result as stored: `{"value": ...}` for a JSON result, or the file's
    metadata (`filename`, `contentType`, `size`) for a file result, whose bytes are at
    `path` (None for a JSON result). Open them with `open()`; never write there."""

    job_id: str
    type: str
    result: Mapping[str, Any] | None
    path: str | None = None

    @property
    def value(self) -> Any:
        """The JSON result (None for a file result)."""
        return (self.result or {}).get("value")

    @property
    def filename(self) -> str | None:
        return (self.result or {}).get("filename")

    @property
    def content_type(self) -> str | None:
        return (self.result or {}).get("contentType")

    def open(self) -> BinaryIO:
        """The result file, opened for reading; `LookupError` when the job's result is not a file."""
        if self.path is None:
            raise LookupError(f"job {self.job_id} has no result file (its result is a JSON value)")
        return open(self.path, "rb")

    def read_bytes(self) -> bytes:
        with self.open() as fh:
            return fh.read()

    def to_json(self) -> list[Any]:
        """How an input crosses the pipe to a worker process (`from_json`)."""
        return [self.job_id, self.type, self.result, self.path]

    @classmethod
    def from_json(cls, item: list[Any]) -> Input:
        return cls(*item)


#: `save(value)`: store the checkpoint of the attempt; see `Context.save`.
Saver = Callable[[Any], Awaitable[None]]
#: `files(filename, content_type)`: a file the attempt streams its result into; see `Context.file`.
FileMaker = Callable[[str, str], Any]


class Context:
    """Passed to every handler as `ctx`.

    `ctx.progress(percent, message)` reports progress (0..100, never decreasing within an
    attempt; lower values are raised to the last one). It is cheap to call often: calls that
    change nothing visible are dropped, the rest are coalesced on the way to the clients.
    It raises `Cancelled` once the job was cancelled or timed out, so a handler that reports
    progress stops cooperatively; one that never does is stopped by force.

    `ctx.inputs` maps the id of each job this one waited for to its `Input`, in the order
    they were named. `ctx.checkpoint` is what an earlier attempt of this job last saved
    with `await ctx.save(value)` (None on a first attempt). `ctx.file(filename,
    content_type)` gives a file to write a large result into instead of returning bytes.
    """

    __slots__ = ("job_id", "attempt", "settings", "inputs", "checkpoint", "_send", "_is_cancelled",
                 "_percent", "_message", "_save", "_files")

    def __init__(
        self,
        job_id: str,
        attempt: int,
        settings: Mapping[str, Any],
        send: Callable[[int, str | None], None],
        is_cancelled: Callable[[], bool] = lambda: False,
        *,
        inputs: Mapping[str, Input] | None = None,
        checkpoint: Any = None,
        save: Saver | None = None,
        files: FileMaker | None = None,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.settings = settings
        self.inputs: Mapping[str, Input] = inputs or {}
        self.checkpoint = checkpoint
        self._send = send
        self._is_cancelled = is_cancelled
        self._percent = 0
        self._message: str | None = None
        self._save = save
        self._files = files

    @property
    def cancelled(self) -> bool:
        return self._is_cancelled()

    def check_cancelled(self) -> None:
        if self._is_cancelled():
            raise Cancelled(self.job_id)

    def progress(self, percent: float, message: str | None = None) -> None:
        self.check_cancelled()
        value = max(self._percent, min(100, int(percent)))
        if value == self._percent and (message is None or message == self._message):
            return
        self._percent = value
        if message is not None:
            self._message = message
        self._send(value, self._message)

    async def save(self, value: Any) -> None:
        """Store `value` (JSON) as this job's checkpoint, committed when this returns, for a
        later attempt to read as `ctx.checkpoint` (e.g. the recipients a mail already
        reached). Only the attempt that holds the job can save (a replaced one gets
        `Cancelled`). For `async def` handlers, which run in the service."""
        if self._save is None:
            raise RuntimeError("ctx.save is for async def job types, which run in the service")
        await self._save(value)

    def file(self, filename: str, content_type: str) -> Any:
        """A file, opened for binary writing, that becomes the job's result: write to it
        (or hand its `path` to a library that writes files), then return it from the
        handler. Nothing of it is held in memory; `filename` and `content_type` are what the
        download is served as."""
        if self._files is None:
            raise RuntimeError("this context has no results folder to write a file into")
        return self._files(filename, content_type)


def context_of(job_id: str, attempt: int, settings: Mapping[str, Any], send: Callable[[int, str | None], None],
               is_cancelled: Callable[[], bool], extras: Mapping[str, Any] | None, **more: Any) -> Context:
    """The `Context` of one attempt from the JSON `extras` the scheduler sent with it
    (`Runner.run`); `more` adds what cannot cross a pipe (`save`, `files`)."""
    if not extras:
        return Context(job_id, attempt, settings, send, is_cancelled, **more)
    inputs = {item[0]: Input.from_json(item) for item in extras.get("inputs") or ()}
    return Context(job_id, attempt, settings, send, is_cancelled, inputs=inputs,
                   checkpoint=extras.get("checkpoint"), **more)
