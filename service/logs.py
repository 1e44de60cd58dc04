"""How `offload serve` writes its logs: readable text (the default) or one JSON object a line.

Records are handed to a queue on the thread that logs them (the event loop, mostly) and
formatted and written by a listener thread: a log line costs the loop a record and a queue
put, not a format and a write to a pipe that may be slow (see benchmarks/bench_logging.py).

Structured fields are record attributes, given with `extra=`: the job lifecycle lines
(`service/joblog.py`) carry `jobId`, `type`, `user`, `attempt`, `durationMs`, `errorType`
(and `event`, `status`, `traceback`); every line logged while a request is handled carries
its `requestId` (`REQUEST_ID`, set by the request middleware). The JSON format writes the
fields that are present beside `time`, `level`, `logger` and `message`; the text format
writes the message, then ` request=<id>`, then a traceback on the lines below."""
from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from contextvars import ContextVar
from logging.handlers import QueueHandler
from typing import IO, Any

import orjson

#: The id of the HTTP request being handled, for the log lines it causes.
REQUEST_ID: ContextVar[str | None] = ContextVar("offload_request_id", default=None)

LOG_FORMATS = ("text", "json")
#: Record attributes the JSON format writes when present, in this order.
FIELDS = ("event", "jobId", "type", "user", "attempt", "status", "durationMs", "errorType", "requestId",
          "traceback")


def _iso(created: float) -> str:
    seconds = int(created)
    t = time.gmtime(seconds)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
            f".{int((created - seconds) * 1000):03d}Z")


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

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
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


class _Handoff(QueueHandler):
    """Hands the record over as it is: the listener thread formats it. Only the message is
    made here (cheap), because its arguments may change once the call returns."""

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        # No handler lock: putting on a SimpleQueue is safe from any thread as it is.
        if self.filter(record):
            self.emit(record)
            return True
        return False

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        return record


class _Direct(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler that writes: on the listener's thread (which flushes once per batch of
    queued lines, not once a line), or directly once that stopped."""

    batching = False

    def flush(self) -> None:
        if not self.batching:
            super().flush()


class _Listener(threading.Thread):
    """Takes every record queued so far, writes them, flushes once, waits for more."""

    def __init__(self, records: queue.SimpleQueue[Any], output: _Direct) -> None:
        super().__init__(name="offload-log-writer", daemon=True)
        self.records = records
        self.output = output

    def run(self) -> None:
        records, output = self.records, self.output
        while True:
            batch = [records.get()]
            while True:
                try:
                    batch.append(records.get_nowait())
                except queue.Empty:
                    break
            output.batching = True
            try:
                for record in batch:
                    if record is None:  # `stop`
                        return
                    output.handle(record)
            finally:
                output.batching = False
                output.flush()

    def stop(self) -> None:
        self.records.put(None)
        self.join()


class LogSetup:
    """The process's logging while `offload serve` runs: a queue handler on the root logger
    and the thread that writes its records to `stream`. `close()` writes what is queued."""

    def __init__(self, level: str = "INFO", log_format: str = "text", stream: IO[str] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._output = _Direct(self._stream)
        self._output.setFormatter(formatter(log_format))
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._handoff = _Handoff(self._queue)
        self._handoff.addFilter(_RequestIdFilter())
        self._listener = _Listener(self._queue, self._output)
        root = logging.getLogger()
        for handler in list(root.handlers):  # a second setup in one process replaces the first
            if isinstance(handler, (_Handoff, _Direct)):
                root.removeHandler(handler)
        root.addHandler(self._handoff)
        root.setLevel(level)
        self._listener.start()
        self._closed = False
        os.register_at_fork(after_in_child=self._in_child)

    def use_format(self, log_format: str) -> None:
        """Switch the format (the config file's `[server] log_format`, read after start-up)."""
        self._output.setFormatter(formatter(log_format))

    def close(self) -> None:
        """Write every queued record and stop the thread; later records are written at once."""
        if self._closed:
            return
        self._closed = True
        self._listener.stop()
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
        # A forked worker process has no listener thread: it writes its own lines.
        if not self._closed:
            self._closed = True
            self._output.batching = False
            self._direct()


def setup_logging(level: str = "INFO", log_format: str = "text", stream: IO[str] | None = None) -> LogSetup:
    """Log at `level` and above to `stream` (stderr) in `log_format` ("text" or "json")."""
    return LogSetup(level, log_format, stream)

