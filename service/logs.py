"""How `offload serve` writes its logs: readable text (the default) or one JSON object a line.

A line is formatted on the thread that logs it (the event loop, mostly: a few
microseconds) and written by a thread of its own, so a slow pipe never holds the loop. The
loop hands its lines over together, at most `FLUSH_S` after the first of them: each hand-off
wakes the writer thread, which must then take the GIL from the loop, and one hand-off a line
(three a job) cost the service a sixth of its throughput in that contention
(benchmarks/bench_logging.py measures both). Lines logged on other threads are handed over
at once, so they may be written before lines the loop logged a moment earlier.

Structured fields are record attributes, given with `extra=`: the job lifecycle lines
(`service/joblog.py`) carry `jobId`, `type`, `user`, `attempt`, `durationMs`, `errorType`
(and `event`, `status`, `traceback`); every line logged while a request is handled carries
its `requestId` (`REQUEST_ID`, set by the request middleware). The JSON format writes the
fields that are present beside `time`, `level`, `logger` and `message`; the text format
writes the message, then ` request=<id>`, then a traceback on the lines below."""
from __future__ import annotations

import asyncio
import logging
import os
import queue
import sys
import threading
import time
from contextvars import ContextVar
from typing import IO, Any

import orjson

#: The id of the HTTP request being handled, for the log lines it causes.
REQUEST_ID: ContextVar[str | None] = ContextVar("offload_request_id", default=None)

LOG_FORMATS = ("text", "json")
#: Record attributes the JSON format writes when present, in this order.
FIELDS = ("event", "jobId", "type", "user", "attempt", "status", "durationMs", "errorType", "requestId",
          "traceback")


#: The second `_iso` wrote last, and its text: a line's time costs a lookup, not a `gmtime`.
_iso_second: tuple[int, str] = (-1, "")


def _iso(created: float) -> str:
    global _iso_second
    seconds = int(created)
    second, text = _iso_second
    if second != seconds:
        t = time.gmtime(seconds)
        text = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        _iso_second = (seconds, text)
    return f"{text}.{int((created - seconds) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: `time` (UTC, ISO 8601), `level`, `logger`, `message`, the
    structured fields that are present (`FIELDS`), and `exception` with a logged exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": _iso(record.created), "level": record.levelname, "logger": record.name,
                               "message": record.getMessage()}
        attributes = record.__dict__
        for name in FIELDS:
            value = attributes.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """`2026-12-01 13:57:09,123 INFO offload.jobs: job … completed … request=…`, with a
    handler's traceback (a failed job) or a logged exception on the lines below."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """As `logging.Formatter` writes it (local time, `,` and milliseconds), the date and
        time of day made once a second."""
        seconds = int(record.created)
        second, text = self._second
        if second != seconds:
            text = time.strftime(self.default_time_format, self.converter(seconds))
            self._second = (seconds, text)
        return f"{text},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            line = super().format(record)
        else:  # what `logging.Formatter.format` makes of this format, without its general steps
            record.message = record.getMessage()
            record.asctime = self.formatTime(record)
            line = f"{record.asctime} {record.levelname} {record.name}: {record.message}"
        attributes = record.__dict__
        request_id = attributes.get("requestId")
        if request_id is not None:
            head, newline, rest = line.partition("\n")
            line = f"{head} request={request_id}{newline}{rest}"
        traceback = attributes.get("traceback")
        if traceback:
            line = f"{line}\n{traceback.rstrip()}"
        return line


def formatter(log_format: str) -> logging.Formatter:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    return JsonFormatter() if log_format == "json" else TextFormatter()


class _RequestIdFilter(logging.Filter):
    """Puts the id of the request being handled on the record (the logging thread's context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        if request_id is not None and "requestId" not in record.__dict__:
            record.requestId = request_id
        return True


#: The longest a line logged on the event loop waits before it is handed to the writer.
FLUSH_S = 0.02
#: Lines gathered on the loop that are handed over at once, without waiting for `FLUSH_S`.
FLUSH_LINES = 512


class _Handoff(logging.Handler):
    """Formats each record where it is logged and hands the line to the writer thread: from
    the event loop, gathered and handed over together (`FLUSH_S`, `FLUSH_LINES`); from any
    other thread, at once."""

    def __init__(self, lines: queue.SimpleQueue[Any]) -> None:
        super().__init__()
        self.lines = lines
        self._gathered: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        # No handler lock: the gathered list belongs to the loop's thread, and putting on a
        # SimpleQueue is safe from any thread as it is.
        if not self.filter(record):
            return False
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return True
        loop = asyncio._get_running_loop()
        if loop is None:
            self.lines.put(line + "\n")
            return True
        if self._timer_loop is not loop:  # lines gathered on a loop that stopped since
            self.hand_over()
        gathered = self._gathered
        gathered.append(line)
        if len(gathered) >= FLUSH_LINES:
            self.hand_over()
        elif self._timer is None:
            self._timer, self._timer_loop = loop.call_later(FLUSH_S, self.hand_over), loop
        return True

    def emit(self, record: logging.LogRecord) -> None:  # `handle` does it all
        self.handle(record)

    def hand_over(self) -> None:
        """Give the writer every line gathered on the loop (called on the loop's thread, or
        once the loop stopped)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_loop = None
        if self._gathered:
            gathered, self._gathered = self._gathered, []
            gathered.append("")
            self.lines.put("\n".join(gathered))


class _Direct(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes on the logging thread itself: once the writer thread stopped, and in a forked
    worker process."""


class _Writer(threading.Thread):
    """Takes every chunk of lines handed over so far, writes them, flushes once, waits for more."""

    def __init__(self, lines: queue.SimpleQueue[Any], stream: IO[str]) -> None:
        super().__init__(name="offload-log-writer", daemon=True)
        self.lines = lines
        self.stream = stream

    def run(self) -> None:
        lines, stream = self.lines, self.stream
        while True:
            chunks = [lines.get()]
            while True:
                try:
                    chunks.append(lines.get_nowait())
                except queue.Empty:
                    break
            stop = None in chunks
            try:
                stream.write("".join(chunk for chunk in chunks if chunk is not None))
                stream.flush()
            except Exception:  # a closed or broken stream: nothing to write the problem to either
                pass
            if stop:
                return

    def stop(self) -> None:
        self.lines.put(None)
        self.join()


class LogSetup:
    """The process's logging while `offload serve` runs: a hand-off handler on the root
    logger and the thread that writes its lines to `stream`. `close()` writes what is left."""

    def __init__(self, level: str = "INFO", log_format: str = "text", stream: IO[str] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._output = _Direct(self._stream)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._handoff = _Handoff(self._queue)
        self._handoff.addFilter(_RequestIdFilter())
        self.use_format(log_format)
        self._writer = _Writer(self._queue, self._stream)
        root = logging.getLogger()
        for handler in list(root.handlers):  # a second setup in one process replaces the first
            if isinstance(handler, (_Handoff, _Direct)):
                root.removeHandler(handler)
        root.addHandler(self._handoff)
        root.setLevel(level)
        self._writer.start()
        self._closed = False
        os.register_at_fork(after_in_child=self._in_child)

    def use_format(self, log_format: str) -> None:
        """Switch the format (the config file's `[server] log_format`, read after start-up)."""
        chosen = formatter(log_format)
        self._output.setFormatter(chosen)
        self._handoff.setFormatter(chosen)

    def close(self) -> None:
        """Write every line handed over or gathered, and stop the thread; later records are
        written at once."""
        if self._closed:
            return
        self._closed = True
        self._handoff.hand_over()
        self._writer.stop()
        self._direct()

    def _direct(self) -> None:
        """Write from the logging thread itself, with the same format and fields."""
        root = logging.getLogger()
        if self._handoff in root.handlers:
            root.removeHandler(self._handoff)
            for log_filter in self._handoff.filters:
                self._output.addFilter(log_filter)
            root.addHandler(self._output)

    def _in_child(self) -> None:
        # A forked worker process has no writer thread: it writes its own lines.
        if not self._closed:
            self._closed = True
            self._direct()


def setup_logging(level: str = "INFO", log_format: str = "text", stream: IO[str] | None = None) -> LogSetup:
    """Log at `level` and above to `stream` (stderr) in `log_format` ("text" or "json")."""
    return LogSetup(level, log_format, stream)

