"""The code that runs inside a worker process: start-up, then one job at a time.

The service sends jobs on one pipe, `[job_id, attempt, type, data, settings, results_dir,
extras]` as JSON (`extras`: see `Runner.run`); the process answers on another with any number of
`["p", job_id, attempt, percent, message]` progress messages, then one `["r", outcome]`,
each framed as a 4-byte big-endian length and the JSON bytes (`frame`). Everything is
written from the job's own thread, with no helper thread to win the GIL from a CPU-bound
job, so progress arrives at once and always before the outcome.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

from offload.workers.context import context_of
from offload.workers.errors import Cancelled, JobError
from offload.workers.registry import Registry, input_name
from offload.workers.results import ResultFiles
from offload.workers.tracebacks import handler_traceback

_events: int | None = None  # the file descriptor progress and outcomes are written to
_keep: list[Connection] = []  # holds the connection whose descriptor `_events` is
_cancel: Any = None  # multiprocessing.Value('b'): 1 once the running job must stop
_warmed: set[str] = set()  # job types warmed up in this process, or in the fork server it came from
log = logging.getLogger("offload.workers")
#: This process's job types, built at start-up from the service's module list.
_types: Registry | None = None


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def _write(message: bytes) -> None:
    view = memoryview(frame(message))
    while view:
        view = view[os.write(_events, view):]  # type: ignore[arg-type]


def serve(jobs: Connection, events: Connection, cancel_flag: Any, modules: tuple[str, ...],
          memory_limit_bytes: int, service_alive: int | None = None) -> None:
    """A worker process's whole life: set up, then run jobs until the service closes the pipe.
    `service_alive`: a descriptor that reads as the end of a file once the service process is
    gone (from offload's fork server); without it, `multiprocessing`'s parent process is
    watched instead."""
    initialize(events, cancel_flag, modules, memory_limit_bytes, service_alive)
    while True:
        try:
            job_id, attempt, type, data, settings, results_dir, extras = orjson.loads(jobs.recv_bytes())
        except (EOFError, OSError):  # the service retired this process, or is gone
            return
        outcome = run(job_id, attempt, type, data, settings, results_dir, extras)
        try:
            message = orjson.dumps(["r", outcome])
        except TypeError as exc:
            message = orjson.dumps(["r", {"outcome": "failed", "permanent": True, "error": {
                "type": "ResultNotJSON", "message": f"the handler's result cannot be sent as JSON: {exc}"}}])
        _write(message)


def initialize(events: Connection, cancel_flag: Any, modules: tuple[str, ...], memory_limit_bytes: int,
               service_alive: int | None = None) -> None:
    """Runs once in each new worker process, before its first job."""
    global _events, _cancel, _types
    _events, _cancel = events.fileno(), cancel_flag
    _keep.append(events)
    _exit_with_service(service_alive)
    # Ctrl-C in a terminal reaches the whole process group; the service decides when
    # workers stop, so they ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_limit_bytes > 0:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    _types = Registry.from_modules(modules)
    warm_up(_types)


def warm_up(types: Registry) -> None:
    """Run the `warm_up` hook of every loaded job type that has one, once per process.

    `initialize` calls it in each worker before its first job. Under the default forkserver
    start method the fork server has already run it, after preloading the job types
    (`offload.workers.prewarm`): the workers forked from it inherit the warmed state, share
    its pages, and find nothing left to do here. A hook that fails is logged and skipped
    (it only saves time; the type's first job meets the same problem and reports it)."""
    for job_type in types.types():
        name = job_type.name
        if job_type.warm_up is None or name in _warmed:
            continue
        try:
            job_type.warm_up()
        except Exception:
            log.warning("the warm-up of job type %r failed; its first job pays for its set-up instead", name,
                        exc_info=True)
            continue
        _warmed.add(name)


def warmed() -> frozenset[str]:
    """The job types whose warm-up has run for this process (for diagnostics and tests)."""
    return frozenset(_warmed)


def _exit_with_service(service_alive: int | None) -> None:
    """End this process as soon as the service process is gone (killed, crashed).

    Nothing else would: a job in a CPU loop never looks at its pipe. Waiting on a
    descriptor that becomes readable once the service process has ended (`service_alive`,
    or the sentinel of `multiprocessing`'s parent process) costs a blocked thread, no
    polling; the job the service can no longer record is run again after its restart anyway."""
    if service_alive is not None:
        def wait() -> None:
            while os.read(service_alive, 1):  # nothing is ever written: it reads b"" at the end
                pass
    else:
        parent = multiprocessing.parent_process()  # the service, under spawn and fork
        if parent is None:
            return
        wait = parent.join

    def watch() -> None:
        wait()
        os._exit(70)

    threading.Thread(target=watch, name="offload-service-watch", daemon=True).start()


def _send(job_id: str, attempt: int):
    def send(percent: int, message: str | None) -> None:
        if _events is not None:
            _write(orjson.dumps(("p", job_id, attempt, percent, message)))

    return send


def _is_cancelled() -> bool:
    return bool(_cancel is not None and _cancel.value)


def run(job_id: str, attempt: int, type: str, data: Any, settings: dict[str, Any], results_dir: str,
        extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one job. Never raises: the outcome says how it ended, in plain data."""
    global _types
    if _types is None:  # run outside `serve` (in process, by a test): the built-ins
        _types = Registry.from_modules()
    job_type = _types.get(type)
    if job_type is None:
        return {"outcome": "failed", "error": {"type": "UnknownJobType", "message": f"no job type {type!r} in this worker"},
                "permanent": True}
    upload = {} if job_type.upload is None else {"upload": str(Path(results_dir) / input_name(job_id))}
    files = ResultFiles(job_id, attempt, results_dir)
    ctx = context_of(job_id, attempt, settings, _send(job_id, attempt), _is_cancelled, extras, files=files, **upload)
    try:
        # The result is written inside the same guard: a FileOutput's chunks are produced
        # (and may raise, or be cancelled) while they are written.
        result = files.result_of(job_type.handler(data, ctx))
    except Cancelled:
        return {"outcome": "cancelled"}
    except JobError as exc:
        return {"outcome": "failed", "error": {"type": exc.type, "message": exc.message}, "permanent": exc.permanent}
    except MemoryError:
        return {"outcome": "failed", "error": {"type": "MemoryLimit", "message": "the job ran out of memory "
                "(it went past the worker memory limit)"}, "permanent": True}
    except Exception as exc:  # any handler bug: report it with its traceback, keep the process
        return {"outcome": "failed", "error": {"type": exc.__class__.__name__, "message": str(exc) or repr(exc),
                                               "traceback": handler_traceback(exc)}, "permanent": False}
    finally:
        files.discard()  # a file the handler opened and did not return, or returned half-written
    return {"outcome": "completed", "result": result}
