"""The client side of the `offload` command: submit, jobs, get, cancel, download, watch.

Every command talks to the service through `offload.client.AsyncClient` (no HTTP here) and
ends with one of these exit codes, which scripts can rely on:

    0    done (for `submit --wait` and `watch ID`: the job completed)
    1    the job failed (its error is printed)
    2    usage or connection error: bad arguments, service not reachable, 401, 404, 409, 422
    3    the job was cancelled
    130  interrupted (Ctrl-C)

Output is for people on a terminal (rich: a live progress bar, tables, colour) and for
scripts otherwise: when stdout or stderr is not a terminal it gets plain, stable lines,
no escape codes, no wrapping (rich would wrap at 80 columns). Results and data go to
stdout; progress and messages to stderr, so `offload submit … --wait > result.json` holds
only the result. rich decides what a terminal is (`Console.is_terminal`), so `NO_COLOR`,
`FORCE_COLOR` and `TERM=dumb` mean what they mean everywhere.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from offload.job import Event, Job, JobStatus, Progress as ProgressEvent, Snapshot, event_to_wire

if TYPE_CHECKING:  # the client and rich are imported where they are used: `offload serve` loads neither
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from offload.client import AsyncClient

DEFAULT_URL = "http://127.0.0.1:8080"
OK, FAILED, USAGE, CANCELLED, INTERRUPTED = 0, 1, 2, 3, 130
#: The exit code a job's final status gives `submit --wait` and `watch ID`.
EXIT_OF = {JobStatus.COMPLETED: OK, JobStatus.FAILED: FAILED, JobStatus.CANCELLED: CANCELLED}

EXIT_CODES = """exit codes:
  0    done (submit --wait, watch ID: the job completed)
  1    the job failed (its error is printed)
  2    usage or connection error: bad arguments, server not reachable,
       401 bad token, 404 unknown job, the request refused (409, 422)
  3    the job was cancelled
  130  interrupted (Ctrl-C)"""


class UsageError(Exception):
    """A bad argument found after parsing (unreadable --data): exit 2 with its message."""


# ---- the command line ---------------------------------------------------------------------
def add_commands(commands: Any) -> None:
    """Add the client commands to `offload`'s subparsers."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", help=f"the service's address (default: $OFFLOAD_URL, else {DEFAULT_URL})")
    connection.add_argument("--token", help="the API token (default: $OFFLOAD_TOKEN)")

    def command(name: str, help: str, run: Callable[..., Awaitable[int]]) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help, description=help, parents=[connection], epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.set_defaults(run=run)
        return parser

    submit = command("submit", "submit a job (and with --wait, follow it to its end)", _submit)
    submit.add_argument("type", help="the job type, e.g. pdf")
    submit.add_argument("--data", default="{}", metavar="JSON|@FILE|@-",
                        help="the job's data: JSON text, @file.json, or @- to read standard input (default {})")
    submit.add_argument("--file", metavar="PATH", help="a file to upload with the job (the image of an image job)")
    submit.add_argument("--priority", choices=("high", "medium", "low"))
    submit.add_argument("--max-retries", type=int, metavar="N", help="attempts after the first (0-10)")
    submit.add_argument("--timeout", type=float, metavar="S", help="seconds an attempt may run")
    submit.add_argument("--delay", type=float, metavar="S", help="seconds to wait before the job may start")
    submit.add_argument("--after", action="append", metavar="ID",
                        help="start once this job of yours completed (repeat, or separate ids with commas)")
    submit.add_argument("--after-failed", choices=("cancel", "run"),
                        help="when a job it follows fails or is cancelled: cancel this one (default) or run it anyway")
    submit.add_argument("--idempotency-key", metavar="K", help="a second submission with this key answers the first job")
    submit.add_argument("--wait", action="store_true",
                        help="follow the job with a progress bar, then write its result (exit code as below)")
    submit.add_argument("-o", "--output", metavar="PATH",
                        help="where --wait writes the result ('-' for stdout; implies --wait); default: a file "
                             "result is saved under its own name in the current folder, a JSON result is printed")
    submit.add_argument("--detach", action="store_true",
                        help="on Ctrl-C, leave the job running without asking whether to cancel it")

    jobs = command("jobs", "list your jobs, newest first", _jobs)
    jobs.add_argument("--status", choices=[s.value for s in JobStatus])
    jobs.add_argument("--type", help="only jobs of this type")
    jobs.add_argument("--limit", type=int, default=20, metavar="N", help="at most N jobs (default 20)")

    get = command("get", "print a job as JSON", _get)
    get.add_argument("id")

    cancel = command("cancel", "cancel a pending or running job", _cancel)
    cancel.add_argument("id")

    download = command("download", "save a completed job's result", _download)
    download.add_argument("id")
    download.add_argument("-o", "--output", metavar="PATH",
                          help="where to write it ('-' for stdout; default: its own name in the current folder)")

    watch = command("watch", "print job events as they come, one line each (one job: until it ends)", _watch)
    watch.add_argument("id", nargs="?", help="one job (default: every job of yours, until Ctrl-C)")
    watch.add_argument("--json", action="store_true", help="one JSON object a line: the service's event messages")


def run(args: argparse.Namespace) -> int:
    """Run a client command; every error becomes one line on stderr and its exit code."""
    url = args.url or os.environ.get("OFFLOAD_URL") or DEFAULT_URL
    token = args.token or os.environ.get("OFFLOAD_TOKEN") or None
    if getattr(args, "output", None) is not None and hasattr(args, "wait"):
        args.wait = True
    from offload.client import NotFound, OffloadClientError, ServiceUnreachable, Unauthorized

    try:
        return asyncio.run(_with_client(args, url, token))
    except KeyboardInterrupt:
        return INTERRUPTED
    except UsageError as exc:
        return _fail(f"offload {args.command}: {exc}")
    except Unauthorized as exc:
        return _fail(f"offload: unauthorized at {url}: {exc.message} (check --token or OFFLOAD_TOKEN)")
    except NotFound as exc:
        return _fail(f"offload: not found: {exc.message}")
    except ServiceUnreachable as exc:
        cause = exc.__cause__
        return _fail(f"offload: server not reachable at {url}: {cause or exc.message}")
    except OffloadClientError as exc:  # the service refused the request (409, 422, …)
        status = f" (HTTP {exc.status} {exc.code})" if exc.status else ""
        return _fail(f"offload: {exc.message}{status}")


async def _with_client(args: argparse.Namespace, url: str, token: str | None) -> int:
    from offload.client import AsyncClient

    out = Output()
    async with AsyncClient(url, token, max_reconnect_wait=30.0) as client:
        code: int = await args.run(client, args, out)
        return code


def _fail(message: str) -> int:
    print(" ".join(message.split()), file=sys.stderr, flush=True)  # one line, whatever the message held
    return USAGE


@dataclass
class Output:
    """stdout for results, stderr for progress and messages; each a rich console when it is
    a terminal, plain lines when it is not."""

    out: Console = field(default_factory=lambda: _console(highlight=False))
    err: Console = field(default_factory=lambda: _console(stderr=True, highlight=False))

    def line(self, text: str, style: str | None = None) -> None:
        """A result line on stdout."""
        if self.out.is_terminal:
            self.out.print(text, style=style, markup=False, soft_wrap=True)
        else:
            _write(sys.stdout, text)

    def note(self, text: str, style: str | None = None) -> None:
        """A message on stderr."""
        if self.err.is_terminal:
            self.err.print(text, style=style, markup=False, soft_wrap=True)
        else:
            _write(sys.stderr, text)

    def json(self, value: Any) -> None:
        self.line(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _write(stream: TextIO, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()  # a script reading a pipe sees each line as it happens


# ---- submit -----------------------------------------------------------------------------------
async def _submit(client: AsyncClient, args: argparse.Namespace, out: Output) -> int:
    data = read_data(args.data)
    try:
        job = await client.submit(args.type, data, priority=args.priority, max_retries=args.max_retries,
                                  timeout=args.timeout, delay=args.delay, idempotency_key=args.idempotency_key,
                                  after=[i.strip() for ids in args.after or () for i in ids.split(",") if i.strip()],
                                  after_failed=args.after_failed, file=args.file)
    except OSError as exc:  # the file to upload cannot be read
        raise UsageError(f"--file: cannot read {args.file}: {exc.strerror or exc}") from None
    if not args.wait:
        out.line(job.id)
        return OK
    return await follow(client, job, args, out)


def read_data(spec: str) -> Any:
    """`--data`: JSON text, `@file`, or `@-` for standard input."""
    where = "--data"
    if spec.startswith("@"):
        name = spec[1:]
        where = "standard input" if name == "-" else name
        try:
            text = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:
            raise UsageError(f"--data: cannot read {name}: {exc.strerror}") from None
    else:
        text = spec.encode()
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"--data: {where} is not valid JSON: {exc}") from None


async def follow(client: AsyncClient, job: Job, args: argparse.Namespace, out: Output) -> int:
    """Follow the job over the WebSocket to its end, showing its progress, then write the
    result. Ctrl-C stops following and asks what to do with the job (see `_interrupted`)."""
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    try:
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
        handled = True
    except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows: Ctrl-C is KeyboardInterrupt
        handled = False
    display = ProgressDisplay(out, job)
    following = asyncio.ensure_future(_to_the_end(client, job.id, display))
    stop = asyncio.ensure_future(interrupted.wait())
    try:
        with display:
            await asyncio.wait({following, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C is KeyboardInterrupt again
        stop.cancel()
        if not following.done():
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
    if not following.done() or following.cancelled():
        return await _interrupted(client, job, args, out)
    final = following.result()
    if final.status is JobStatus.COMPLETED:
        await save_result(client, final, args.output, out)
    elif final.status is JobStatus.FAILED:
        error = f"{final.error.type}: {final.error.message}" if final.error else "no error recorded"
        out.note(f"offload: job {final.id} failed: {error}", style="red")
    else:
        out.note(f"offload: job {final.id} was cancelled", style="yellow")
    return EXIT_OF[final.status]


async def _to_the_end(client: AsyncClient, job_id: str, display: ProgressDisplay) -> Job:
    async for event in client.watch(job_id):
        display.update(event)
        if not isinstance(event, ProgressEvent) and event.job.status.terminal:
            return event.job
    from offload.client import ServiceUnreachable

    raise ServiceUnreachable(f"the events of job {job_id} ended before its final status")  # pragma: no cover


async def _interrupted(client: AsyncClient, job: Job, args: argparse.Namespace, out: Output) -> int:
    """Ctrl-C during `--wait`: on a terminal, ask whether to cancel the job (no by default);
    with `--detach`, or with no terminal to ask on, leave it running and say so."""
    if args.detach or not (sys.stdin.isatty() and out.err.is_terminal):
        reason = "" if args.detach else " (no terminal to ask whether to cancel it)"
        out.note(f"offload: job {job.id} left running{reason}; follow it with: offload watch {job.id}")
        return INTERRUPTED
    try:
        from rich.prompt import Confirm

        cancel = Confirm.ask(f"Cancel job {job.id}?", default=False, console=out.err)
    except (KeyboardInterrupt, EOFError):
        cancel = False
        out.note("")
    if cancel:
        answer = await client.cancel(job.id)
        state = "cancel requested; its attempt is stopping" if answer.cancel_requested else answer.status.value
        out.note(f"offload: job {job.id}: {state}")
    else:
        out.note(f"offload: job {job.id} left running; follow it with: offload watch {job.id}")
    return INTERRUPTED


class ProgressDisplay:
    """The job's progress while `submit --wait` follows it: a live rich bar (percent,
    message, elapsed) on a terminal; otherwise one plain line on stderr each time the
    status, percent or message changes: `job_… running 40% rendering items`."""

    def __init__(self, out: Output, job: Job) -> None:
        self.out = out
        self.job_id, self.type = job.id, job.type
        self.state: tuple[str, int, str | None] = (job.status.value, job.progress, job.message)
        self.shown: tuple[str, int, str | None] | None = None
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        if out.err.is_terminal:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                                TextColumn("{task.fields[message]}"), console=out.err)

    def __enter__(self) -> ProgressDisplay:
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task(f"{self.job_id} {self.type}", total=100, status="", message="")
        self._show()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, event: Event) -> None:
        status, progress, message = self.state
        if isinstance(event, ProgressEvent):
            progress, message = event.progress, event.message
        else:
            status, progress, message = event.job.status.value, event.job.progress, event.job.message
        self.state = (status, progress, message)
        self._show()

    def _show(self) -> None:
        if self.state == self.shown:
            return
        self.shown = self.state
        status, progress, message = self.state
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=progress, status=status, message=message or "")
        elif self.bar is None:
            self.out.note(" ".join(filter(None, (self.job_id, status, f"{progress}%", message))))


# ---- results ----------------------------------------------------------------------------------
async def save_result(client: AsyncClient, job: Job, output: str | None, out: Output) -> None:
    """A completed job's result: a file downloaded to `output` (default: its own name in the
    current folder, never overwriting a file there) and its path printed; a JSON value written
    to `output`, or printed. `-` is stdout."""
    result = job.result
    if result is None or not result.is_file:
        value = result.value if result is not None else None
        if output is None or output == "-":
            out.json(value)
        else:
            Path(output).write_bytes(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
            out.line(output)
        return
    if output == "-":
        sys.stdout.flush()
        async for chunk in client.download_chunks(job.id):  # a chunk at a time: the file may not fit in memory
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return
    target = Path(output) if output is not None else unused(Path(Path(result.filename or "").name or f"{job.id}.bin"))
    await client.download_to(job.id, target)
    out.line(str(target))


def unused(path: Path) -> Path:
    """`path`, or `name-1.ext`, `name-2.ext`… when it exists."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


# ---- jobs, get, cancel, download -----------------------------------------------------------
async def _jobs(client: AsyncClient, args: argparse.Namespace, out: Output) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    found: list[Job] = []
    pages = client.jobs(args.status, args.type, page_size=min(args.limit, 100))
    try:
        async for job in pages:
            found.append(job)
            if len(found) >= args.limit:
                break
    finally:
        await pages.aclose()  # type: ignore[attr-defined]
    now = datetime.now(timezone.utc)
    header = ("ID", "TYPE", "STATUS", "PROGRESS", "AGE", "DURATION")
    rows = [(job.id, job.type, job.status.value, f"{job.progress}%", span((now - job.created_at).total_seconds()),
             span(((job.completed_at or now) - job.started_at).total_seconds()) if job.started_at else "-")
            for job in found]
    if out.out.is_terminal:
        from rich.table import Table

        table = Table(*header, box=None, header_style="bold")
        for row in rows:
            table.add_row(*row[:2], f"[{STYLE.get(row[2], '')}]{row[2]}[/]", *row[3:])
        out.out.print(table)
    else:  # aligned columns without spaces inside a field: `awk '{print $1}'` takes the ids
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            out.line("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return OK


STYLE = {"pending": "cyan", "running": "blue", "completed": "green", "failed": "red", "cancelled": "yellow"}


def span(seconds: float) -> str:
    """A duration in its two largest units: 12s, 3m05s, 2h05m, 3d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


async def _get(client: AsyncClient, args: argparse.Namespace, out: Output) -> int:
    out.json((await client.get(args.id)).to_wire())
    return OK


async def _cancel(client: AsyncClient, args: argparse.Namespace, out: Output) -> int:
    job = await client.cancel(args.id)
    out.line(f"{job.id} cancel requested (its attempt is stopping)" if job.cancel_requested
             else f"{job.id} {job.status.value}")
    return OK


async def _download(client: AsyncClient, args: argparse.Namespace, out: Output) -> int:
    job = await client.get(args.id)
    if job.status is not JobStatus.COMPLETED:  # let the service say why (409)
        await client.download(job.id)
    await save_result(client, job, args.output, out)
    return OK


# ---- watch ----------------------------------------------------------------------------------
async def _watch(client: AsyncClient, args: argparse.Namespace, out: Output) -> int:
    """Events as they come. One job: until its final status, whose exit code this returns;
    every job: until Ctrl-C. A REST call first, so an unknown id, a bad token or a service
    that is not there is one line at once rather than a reconnecting WebSocket."""
    if args.id:
        await client.get(args.id)
    else:
        pages = client.jobs(page_size=1)
        try:
            await pages.__anext__()
        except StopAsyncIteration:
            pass
        finally:
            await pages.aclose()  # type: ignore[attr-defined]
    async for event in client.watch(args.id):
        if args.json:
            out.line(orjson.dumps(event_to_wire(event)).decode())
        else:
            text, status = describe(event)
            out.line(text, style=STYLE.get(status or "", None))
        if args.id and not isinstance(event, ProgressEvent) and event.job.status.terminal:
            return EXIT_OF[event.job.status]
    return OK


def describe(event: Event) -> tuple[str, str | None]:
    """One line for a person: `job_… running 40% rendering items`; with the status, if any."""
    if isinstance(event, ProgressEvent):
        return " ".join(filter(None, (event.job_id, "progress", f"{event.progress}%", event.message))), None
    job = event.job
    kind = "snapshot" if isinstance(event, Snapshot) else "status"
    detail: str | None = job.message
    if job.status is JobStatus.FAILED and job.error:
        detail = f"{job.error.type}: {job.error.message}"
    elif job.status is JobStatus.COMPLETED and job.result is not None:
        detail = job.result.filename if job.result.is_file else orjson.dumps(job.result.value).decode()
    return " ".join(filter(None, (job.id, kind, job.status.value, f"{job.progress}%", detail))), job.status.value


def _console(**options: Any) -> Console:
    from rich.console import Console

    return Console(**options)
