"""offload's fork server: one process, started once, that loads the job types, warms them up
and then forks every worker process the service asks for.

A worker forked from it starts in a few milliseconds with reportlab, its fonts and caches
already loaded, and shares those pages with the other workers (`prewarm.py` freezes them
out of the collector's sight). `multiprocessing`'s own fork server does the same, but it
always starts its resource tracker beside it: one more interpreter, some 7 MB, that tracks
named semaphores and shared memory, of which offload creates none. This one is small
because the service asks little of it: one request kind (fork a worker with these four
descriptors), one answer (its pid, then its exit status).

`offload serve` forks it at its very start (`fork_early`), before any thread runs: the
fork server and its workers then share the service's own pages (the interpreter, the
standard library, the job types' validation code) instead of holding copies of their own;
elsewhere (an application calling `create_app`, a replacement for a fork server that died)
it starts in a new interpreter.

The protocol, over a `SOCK_SEQPACKET` socket pair (one message per request, descriptors
attached with `SCM_RIGHTS`):

- first message: `{"path": sys.path, "preload": [modules]}`, after which the fork server
  imports the job types and warms them up (`prewarm.py`);
- request: `[modules, memory_limit_bytes]` as JSON, with the worker's ends of its job pipe
  and its events pipe, the descriptor of its cancel flag (`CancelFlag`), and the write end
  of a status pipe;
- the fork server forks; it writes the new pid (8 bytes) to the status pipe and, once the
  worker has ended, its exit status (4 bytes, signed: the exit code, or minus the signal
  that killed it), then closes the pipe. The service's end of that pipe is the worker's
  sentinel: readable once the worker has ended, or once the fork server is gone.

The fork server ends when the service closes its end of the socket or dies; each worker
ends when the service dies (`runtime.serve`'s `service_alive`).
"""
from __future__ import annotations

import atexit
import errno
import gc
import json
import mmap
import os
import select
import selectors
import signal
import socket
import sys
import threading
import traceback
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

_PID = 8
_STATUS = 4
_MAX_REQUEST = 1 << 16


class CancelFlag:
    """One byte shared between the service and one worker: 1 once the running job must stop.
    Shared through a descriptor (an anonymous memory file where the system has them), so it
    crosses to the worker with its pipes; the mapping keeps a descriptor of its own, so the
    one it was made from can be closed."""

    __slots__ = ("_map",)

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, 1)

    @classmethod
    def new(cls) -> tuple[CancelFlag, int]:
        """A new flag, at 0, and a descriptor to hand the worker (the caller closes it)."""
        fd = _anonymous_file()
        os.ftruncate(fd, 1)
        return cls(fd), fd

    @property
    def value(self) -> int:
        return self._map[0]

    @value.setter
    def value(self, value: int) -> None:
        self._map[0] = value


def _anonymous_file() -> int:
    if hasattr(os, "memfd_create"):
        return os.memfd_create("offload-cancel-flag")
    import tempfile

    fd, path = tempfile.mkstemp(prefix="offload-cancel-")
    os.unlink(path)
    return fd


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
        readable, _, _ = select.select([self.sentinel], [], [], timeout)
        if readable:
            data = _read_exactly(self.sentinel, _STATUS)
            if len(data) == _STATUS:
                self._exitcode = int.from_bytes(data, "big", signed=True)
                self._ended = True

    def kill(self) -> None:
        if self._ended:  # reaped: its pid may belong to another process by now
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        self._finalizer()


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
            readable, _, _ = select.select([self._ended], [], [], timeout)
            if not readable:
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


def fork_early() -> None:
    """Fork this process's fork server now, while the process runs one thread (so forking
    is safe) and holds the modules it has imported so far: the fork server, and every worker
    it forks, then share those pages with the service instead of loading their own copies
    in a new interpreter. `offload serve` calls it before anything starts a thread. The
    first `ForkServer` of the process adopts it; if nothing does, it ends with the service
    (its socket closes). Where a process cannot be watched through a descriptor (no
    `os.pidfd_open`), or a thread already runs, nothing is forked: `ForkServer` starts a
    fork server in a new interpreter instead."""
    global _early
    if _early is not None or threading.active_count() > 1 or not hasattr(os, "pidfd_open"):
        return
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
            _run(theirs, alive_r)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            _flush()
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
        started.close()
        started.process.wait()


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

    @property
    def pid(self) -> int | None:
        return self._started.process.pid if self._started is not None else None

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
        raw = _read_exactly(status_r, _PID)
        if len(raw) != _PID:
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
                started.close()
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
            started.close()
            if started.process.poll() is None:
                started.process.kill()
            started.process.wait()


def _close_shared(timeout: float = 5.0) -> None:
    """At the process's exit: let every shared fork server end, and reap it."""
    import subprocess

    for server in _shared.values():
        started, server._started = server._started, None
        if started is None:
            continue
        started.close()
        try:
            started.process.wait(timeout)
        except subprocess.TimeoutExpired:
            started.process.kill()
            started.process.wait()


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


# ---- the fork server process ----------------------------------------------------------------
def main() -> None:
    """The fork server in a new interpreter: its socket and alive pipe are named in argv."""
    descriptors = json.loads(sys.argv[1])
    _run(socket.socket(fileno=descriptors["socket"]), descriptors["alive"])


def _run(sock: socket.socket, alive: int) -> None:
    """The fork server's life: its first message says where to import from and what to load;
    it loads that, then forks workers until its socket closes."""
    # Ctrl-C in a terminal reaches the whole process group; the service decides when its
    # workers stop (and, while it starts, whether it starts at all).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    first = sock.recv(_MAX_REQUEST)
    if not first:  # the service went away, or never needed it (another start method)
        return
    settings = json.loads(first)
    sys.path[:] = settings["path"]
    for name in settings["preload"]:
        try:
            __import__(name)
        except Exception:  # the worker imports it again, and reports it as its start-up failure
            traceback.print_exc()
    _serve(sock, alive)


def _serve(sock: socket.socket, alive: int) -> None:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the selector below
    status: dict[int, int] = {}  # the status pipe of each worker still running
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj == wake_r:
                    os.read(wake_r, 4096)
                    _reap(status)
                    continue
                try:
                    request, fds, _, _ = socket.recv_fds(sock, _MAX_REQUEST, 4)
                except OSError:
                    request, fds = b"", []
                if not request:  # the service closed its end, or is gone
                    return
                pid = _fork(request, fds, (sock, selector), alive, (wake_r, wake_w), status)
                status[pid] = fds[3]
                os.write(fds[3], pid.to_bytes(_PID, "big"))
                for fd in fds[:3]:
                    os.close(fd)
                _reap(status)  # a worker that ended before it was listed


def _reap(status: dict[int, int]) -> None:
    while status:
        try:
            pid, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = status.pop(pid, None)
        if fd is not None:
            try:
                os.write(fd, os.waitstatus_to_exitcode(code).to_bytes(_STATUS, "big", signed=True))
            except OSError:  # the service no longer listens
                pass
            os.close(fd)


def _fork(request: bytes, fds: list[int], own: tuple[socket.socket, selectors.BaseSelector], alive: int,
          wake: tuple[int, int], status: dict[int, int]) -> int:
    """Fork one worker: in the child, drop what belongs to the fork server (`own`, `wake`, the
    other workers' status pipes) and serve jobs; in the fork server, return its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for thing in own:
            thing.close()
        for fd in (*wake, *status.values(), fds[3]):
            os.close(fd)
        modules, memory_limit_bytes = json.loads(request)
        flag = CancelFlag(fds[2])
        os.close(fds[2])
        from offload.workers import runtime

        runtime.serve(Connection(fds[0], writable=False), Connection(fds[1], readable=False),
                      flag, tuple(modules), memory_limit_bytes, service_alive=alive)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        _flush()
        os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass

