"""Asking offload's fork server for worker processes (`workers/forkserver.py` is the fork
server itself, and says why offload has its own): starting it, or adopting the one
`offload serve` forked from itself at its start (`fork_early`), sending it requests, and
watching the workers it forks (`ForkedProcess`, what the pool needs of a
`multiprocessing.Process`).

The fork server belongs to the process, not to one service: like `multiprocessing`'s own,
one is kept per process and preload list for the process's life (`ForkServer.shared`), so
a service started again in the same process (tests do) forks its workers at once. That
process-wide state lives here, and only here.
"""
from __future__ import annotations

import atexit
import errno
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import traceback
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from offload.workers.forkserver import PID_BYTES, STATUS_BYTES, CancelFlag, flush_output, read_exactly, run


class ForkedProcess:
    """A worker the fork server forked: what the pool needs of a `multiprocessing.Process`
    (`pid`, `sentinel`, `exitcode`, `join`, `kill`)."""

    def __init__(self, pid: int, status_fd: int) -> None:
        self.pid = pid
        self.sentinel = status_fd
        self._ended = False
        self._exitcode: int | None = None
        self._finalizer = weakref.finalize(self, os.close, status_fd)

    @property
    def exitcode(self) -> int | None:
        """None while the worker runs, and when its status is unknown: the fork server died,
        and the worker may still be running (`kill` still reaches it)."""
        self.join(0)
        return self._exitcode

    def join(self, timeout: float | None = None) -> None:
        """Wait until the worker has ended, or the fork server is gone."""
        if self._ended or not self._finalizer.alive:
            return
        if _ready(self.sentinel, timeout):
            data = read_exactly(self.sentinel, STATUS_BYTES)
            if len(data) == STATUS_BYTES:
                self._exitcode = int.from_bytes(data, "big", signed=True)
                self._ended = True

    def kill(self) -> None:
        if self._ended:  # reaped: its pid may belong to another process by now
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _ready(fd: int, timeout: float | None) -> bool:
    """Whether `fd` is readable (or at its end) within `timeout` seconds. `poll`, not
    `select`: a service with a thousand WebSockets open gives a new worker's pipes numbers
    above `select`'s limit of 1024."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


@dataclass
class _Started:
    """A fork server process and the service's ends of its socket and of its alive pipe."""

    process: Any  # subprocess.Popen, or _ForkedChild when this process forked it (`fork_early`)
    socket: socket.socket
    #: Never written: the workers and the fork server hold its read end, which reads as the
    #: end of the file once the service process is gone.
    alive_w: int

    def close(self) -> None:
        self.socket.close()
        os.close(self.alive_w)

    def stop(self, timeout: float = 0.0) -> None:
        """Close the service's ends (a fork server ends once its socket closes), give it
        `timeout` seconds to end by itself, kill it if it has not, and reap it. Blocks."""
        import subprocess

        self.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _ForkedChild:
    """What `ForkServer` uses of `subprocess.Popen`, for a fork server this process forked."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._ended = os.pidfd_open(pid)

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: ended, status unknown
                pid, status = self.pid, -1
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status) if status >= 0 else -1
                os.close(self._ended)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not _ready(self._ended, timeout):
                import subprocess

                raise subprocess.TimeoutExpired("offload fork server", timeout or 0)
        code = self.poll()
        while code is None:  # readable: it has ended, its status is there
            code = self.poll()
        return code

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


#: The fork server `fork_early` forked, until a `ForkServer` adopts it.
_early: _Started | None = None
#: `ForkServer.shared`'s fork servers, by what they preload.
_shared: dict[tuple[str, ...], ForkServer] = {}


def fork_early(shared: Iterable[str] = ()) -> None:
    """Fork this process's fork server now, while the process runs one thread (so forking
    is safe), after importing `shared`: the modules both sides use. The fork server, and
    every worker it forks, then share those pages (and the interpreter's) with the service
    instead of loading their own copies in a new interpreter; what the service imports
    afterwards is its own. `offload serve` calls it before anything starts a thread and
    before it imports the HTTP side. The first `ForkServer` of the process adopts it; if
    nothing does, it ends with the service (its socket closes). Where a process cannot be
    watched through a descriptor (no `os.pidfd_open`), or a thread already runs, nothing is
    forked: `ForkServer` starts a fork server in a new interpreter instead."""
    global _early
    if _early is not None or threading.active_count() > 1 or not hasattr(os, "pidfd_open"):
        return
    for name in shared:
        importlib.import_module(name)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    alive_r, alive_w = os.pipe()
    # What is loaded now lives as long as the service: its collections need not look at it,
    # and by not looking they leave its pages shared with the fork server and the workers.
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ours.close()
            os.close(alive_w)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            run(theirs, alive_r)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            flush_output()
            os._exit(code)
    theirs.close()
    os.close(alive_r)
    try:
        child = _ForkedChild(pid)
    except OSError:  # the kernel has no pidfd: let it go (it ends as its socket closes)
        ours.close()
        os.close(alive_w)
        os.waitpid(pid, 0)
        return
    _early = _Started(child, ours, alive_w)


def discard_early() -> None:
    """Let the fork server `fork_early` forked end unused (the workers start another way)."""
    global _early
    started, _early = _early, None
    if started is not None:
        started.stop(timeout=5.0)


class ForkServer:
    """The service's side: starts the fork server on first use (again if it died) and asks
    it for workers. The first one adopts the fork server `fork_early` forked, if any; the
    others, and any replacement, run in a new interpreter."""

    def __init__(self, preload: list[str]) -> None:
        self.preload = preload
        self._started: _Started | None = None

    @classmethod
    def shared(cls, preload: list[str]) -> ForkServer:
        """The process's fork server for `preload`, started at its first worker and kept for
        the life of the process (as `multiprocessing` keeps its own): a service started again
        in the same process, as tests do, forks its workers at once instead of loading and
        warming the job types again. It ends with the process, whose end closes its socket."""
        key = tuple(preload)
        found = _shared.get(key)
        if found is None:
            if not _shared:
                atexit.register(_close_shared)
            found = _shared[key] = cls(preload)
        return found

    def start_worker(self, modules: tuple[str, ...], memory_limit_bytes: int
                     ) -> tuple[ForkedProcess, Connection, Connection, CancelFlag]:
        """A new worker process, with the service's ends of its job pipe and its events pipe,
        and its cancel flag. Blocks until the fork server has forked it (at the first call,
        until the fork server has loaded and warmed the job types)."""
        jobs_r, jobs_w = os.pipe()
        events_r, events_w = os.pipe()
        status_r, status_w = os.pipe()
        flag, flag_fd = CancelFlag.new()
        request = json.dumps([list(modules), memory_limit_bytes]).encode()
        try:
            for tries_left in (1, 0):
                try:
                    sock = self._running()
                    socket.send_fds(sock, [request], [jobs_r, events_w, flag_fd, status_w])
                    break
                except OSError:  # it died since: start another one
                    if not tries_left:
                        raise
                    self._forget()
        except BaseException:
            for fd in (jobs_w, events_r, status_r):
                os.close(fd)
            raise
        finally:
            for fd in (jobs_r, events_w, flag_fd, status_w):
                os.close(fd)
        raw = read_exactly(status_r, PID_BYTES)
        if len(raw) != PID_BYTES:
            for fd in (jobs_w, events_r, status_r):
                os.close(fd)
            raise OSError(errno.ECHILD, "the worker fork server ended before it forked a worker")
        process = ForkedProcess(int.from_bytes(raw, "big"), status_r)
        return process, Connection(jobs_w, readable=False), Connection(events_r, writable=False), flag

    def _running(self) -> socket.socket:
        global _early
        if self._started is not None and self._started.process.poll() is None:
            return self._started.socket
        self._forget()
        started, _early = _early, None
        if started is None or started.process.poll() is not None:
            if started is not None:
                started.stop()
            started = self._spawn()
        self._started = started
        # The fork server's first message: where to import from, and what to load.
        started.socket.send(json.dumps({"path": sys.path, "preload": self.preload}).encode())
        return started.socket

    @staticmethod
    def _spawn() -> _Started:
        import subprocess

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        alive_r, alive_w = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", "from offload.workers.forkserver import main; main()",
                 json.dumps({"socket": theirs.fileno(), "alive": alive_r})],
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(), alive_r))
        except BaseException:
            ours.close()
            os.close(alive_w)
            raise
        finally:
            theirs.close()
            os.close(alive_r)
        return _Started(process, ours, alive_w)

    def _forget(self) -> None:
        started, self._started = self._started, None
        if started is not None:
            started.stop()


def _close_shared() -> None:
    """At the process's exit: let every shared fork server end, and reap it."""
    for server in _shared.values():
        started, server._started = server._started, None
        if started is not None:
            started.stop(timeout=5.0)
