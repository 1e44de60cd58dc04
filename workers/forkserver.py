"""offload's fork server: one process, started once, that loads the job types, warms them up
and then forks every worker process the service asks for.

A worker forked from it starts in a few milliseconds with reportlab, its fonts and caches
already loaded, and shares those pages with the other workers (`prewarm.py` freezes them
out of the collector's sight). `multiprocessing`'s own fork server does the same, but it
always starts its resource tracker beside it: one more interpreter, some 7 MB, that tracks
named semaphores and shared memory, of which offload creates none. This one is small
because the service asks little of it: one request kind (fork a worker with these four
descriptors), one answer (its pid, then its exit status).

`offload serve` forks it from itself at its very start, before any thread runs: the fork
server and its workers then share the service's own pages (the interpreter, the standard
library, the job types' validation code) instead of holding copies of their own; elsewhere
(an application calling `create_app`, a replacement for a fork server that died) it starts
in a new interpreter (`main`). The service's side of all this is `service/forks.py`.

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

import json
import mmap
import os
import selectors
import signal
import socket
import sys
import traceback
from multiprocessing.connection import Connection

PID_BYTES = 8
STATUS_BYTES = 4
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


def read_exactly(fd: int, size: int) -> bytes:
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
    run(socket.socket(fileno=descriptors["socket"]), descriptors["alive"])


def run(sock: socket.socket, alive: int) -> None:
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
                os.write(fds[3], pid.to_bytes(PID_BYTES, "big"))
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
                os.write(fd, os.waitstatus_to_exitcode(code).to_bytes(STATUS_BYTES, "big", signed=True))
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
        flush_output()
        os._exit(code)


def flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass

