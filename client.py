"""Python clients for an offload service: `AsyncClient` for asyncio code, `Client` for the rest.

    async with AsyncClient("http://127.0.0.1:8080", token=None) as offload:
        job = await offload.submit("pdf", invoice, priority="high")     # -> Job
        pdf = await offload.wait(job.id, on_progress=print)             # bytes, or the JSON value
        pdf = await offload.run("pdf", invoice)                         # submit + wait
        async for event in offload.watch(job.id): ...                   # Snapshot | Progress | Status
        async for job in offload.jobs(status="failed"): ...             # every page
        await offload.get(id); await offload.cancel(id)
        await offload.download(id); await offload.download_to(id, "invoice.pdf")

    with Client() as offload:                                           # OFFLOAD_URL, OFFLOAD_TOKEN
        pdf = offload.run("pdf", invoice)                               # the same API, blocking

`url` and `token` default to the `OFFLOAD_URL` and `OFFLOAD_TOKEN` environment variables.

What a caller can rely on:
- Every failure is an `OffloadClientError` with the contract's `code`, `message` and HTTP
  `status` (None when there was no answer): `NotFound`, `Conflict`, `InvalidRequest`,
  `Unauthorized`, `Forbidden`, `TooManyRequests`, `Unavailable`, `ServiceUnreachable` (no
  connection, or no answer within `timeout`), and `JobFailed` / `JobCancelled` from `wait`.
- 429 and 503 answers are retried after their `Retry-After` (or a short backoff), at most
  `max_attempts` times and `max_retry_wait` seconds in all, then raised. A submission
  without an idempotency key gets a generated one, so a retried submission never makes a
  second job.
- `watch` and `wait` follow the WebSocket; after a dropped connection they reconnect with
  backoff (for up to `max_reconnect_wait` seconds of the service being unreachable) and
  subscribe again. The fresh snapshot then tells what happened meanwhile, so a terminal
  status is never missed; events not newer (by `seq`) than one already yielded for the
  job are dropped. `watch()` with no id follows every job of the caller: jobs it has seen
  unfinished are re-subscribed one by one after a reconnect, so one that finished while
  the connection was down still reports its final status (a job that was created and
  finished entirely while it was down is not seen: list it with `jobs`).

Why `Client` runs its own event loop in a background thread, rather than `asyncio.run`
per call: it works wherever blocking code runs (a Django or Flask view, a thread of a
WSGI server, a shell, a framework that already runs an event loop in this thread, where
`asyncio.run` would refuse), and it keeps one connection pool across calls. Its calls are
safe from several threads at once; `on_progress` and iteration run in the calling thread.
"""
from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import itertools
import logging
import os
import random
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson

from offload.job import Event, Job, JobStatus, Progress, Snapshot, Status, parse_event, wire_time

log = logging.getLogger("offload.client")

T = TypeVar("T")
OnProgress = Callable[[int, "str | None"], "Awaitable[None] | None"]
CHUNK = 256 * 1024
#: Reconnect backoff of `watch`: first pause, and the longest.
RECONNECT_FIRST, RECONNECT_MAX = 0.1, 5.0


# ---- errors ---------------------------------------------------------------------------------
class OffloadClientError(Exception):
    """The root of every error the clients raise. `status` is the HTTP status (None when
    there was no answer), `code` the contract's snake_case code."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.status = status
        self.retry_after = retry_after


class ServiceUnreachable(OffloadClientError):
    """No connection to the service (refused, unknown host) or no answer in time."""

    code = "unreachable"


class BadRequest(OffloadClientError):
    code = "bad_request"


class Unauthorized(OffloadClientError):
    code = "unauthorized"


class Forbidden(OffloadClientError):
    code = "forbidden"


class NotFound(OffloadClientError):
    code = "not_found"


class Conflict(OffloadClientError):
    code = "conflict"


class InvalidRequest(OffloadClientError):
    """422: the message starts with the field, e.g. `data.items[3].quantity: …`."""

    code = "validation_error"


class TooManyRequests(OffloadClientError):
    code = "too_many_requests"


class Unavailable(OffloadClientError):
    """503: the service is shutting down or its store takes no writes."""

    code = "unavailable"


class JobFailed(OffloadClientError):
    """The job ended `failed`: `type` and `message` are its `error`, `job` the whole job."""

    code = "job_failed"

    def __init__(self, job: Job) -> None:
        self.job = job
        self.type = job.error.type if job.error else "Error"
        super().__init__(job.error.message if job.error else f"job {job.id} failed")

    def __str__(self) -> str:
        return f"job {self.job.id} failed: {self.type}: {self.message}"


class JobCancelled(OffloadClientError):
    code = "job_cancelled"

    def __init__(self, job: Job) -> None:
        self.job = job
        super().__init__(f"job {job.id} was cancelled")


_BY_STATUS: dict[int, type[OffloadClientError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 422: InvalidRequest,
    429: TooManyRequests, 503: Unavailable,
}


def error_for(status: int, body: bytes, headers: Any) -> OffloadClientError:
    """The exception of an error answer: the contract's code and message when the body has
    them (a proxy's HTML page has not), and its `Retry-After` in seconds."""
    code, message = f"http_{status}", f"the service answered HTTP {status}"
    try:
        error = orjson.loads(body)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    cls = _BY_STATUS.get(status, OffloadClientError)
    return cls(message, code=code, status=status, retry_after=retry_after(headers.get("Retry-After")))


def retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds from now: delay-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def backoff(attempt: int, first: float = 0.25, cap: float = 8.0) -> float:
    """Exponential with full jitter in its upper half: 1st, 2nd … retry."""
    base = min(cap, first * 2 ** (attempt - 1))
    return base / 2 + random.random() * base / 2


# ---- the asyncio client -------------------------------------------------------------------
class AsyncClient:
    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0,
                 max_attempts: int = 5, max_retry_wait: float = 30.0, max_reconnect_wait: float = 120.0) -> None:
        """`timeout`: seconds to connect, and the longest silence while reading an answer.
        `max_attempts` / `max_retry_wait`: the bound on retrying 429 and 503 answers.
        `max_reconnect_wait`: how long `watch` and `wait` keep trying to reach a service that
        went away before they raise `ServiceUnreachable`."""
        url = url or os.environ.get("OFFLOAD_URL")
        if not url:
            raise OffloadClientError("no offload URL: pass url= or set OFFLOAD_URL (e.g. http://127.0.0.1:8080)",
                                     code="no_url")
        if not url.startswith(("http://", "https://")):
            raise OffloadClientError(f"the offload URL must start with http:// or https://, not {url!r}", code="bad_url")
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get("OFFLOAD_TOKEN") or None
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.max_retry_wait = max_retry_wait
        self.max_reconnect_wait = max_reconnect_wait
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on first use, inside the loop that will run it
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._session = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(
                total=None, connect=self.timeout, sock_read=self.timeout))
        return self._session

    # -- REST ----------------------------------------------------------------------------------
    @asynccontextmanager
    async def _request(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        """The successful answer of one call; error answers raised as their exception, 429 and
        503 retried within the bound."""
        waited = 0.0
        for attempt in itertools.count(1):
            sent = {**kwargs, "data": kwargs["data"]()} if callable(kwargs.get("data")) else kwargs  # a fresh body per try
            try:
                response = await self._http().request(method, self.url + path, **sent)
            except aiohttp.ClientConnectionError as exc:
                raise ServiceUnreachable(f"offload at {self.url} cannot be reached: {exc}") from exc
            except TimeoutError as exc:
                raise ServiceUnreachable(f"offload at {self.url} did not answer within {self.timeout:g}s") from exc
            if response.status < 400:
                try:
                    yield response
                except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                    raise ServiceUnreachable(f"offload at {self.url} stopped answering: {exc!r}") from exc
                finally:
                    response.release()
                return
            try:
                error = error_for(response.status, await response.read(), response.headers)
            finally:
                response.release()
            if isinstance(error, (TooManyRequests, Unavailable)) and attempt < self.max_attempts:
                pause = error.retry_after if error.retry_after is not None else backoff(attempt)
                if waited + pause <= self.max_retry_wait:
                    log.info("offload answered %s %s; retrying %s %s in %.1fs", error.status, error.code,
                             method, path, pause)
                    await asyncio.sleep(pause)
                    waited += pause
                    continue
            raise error

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self._request(method, path, **kwargs) as response:
            return orjson.loads(await response.read())

    async def submit(self, type: str, data: Any, **options: Any) -> Job:
        """Submit a job; returns it as stored. Keywords: `priority`, `max_retries`,
        `retry_delay`, `timeout` and `delay` (seconds), `run_at` (a datetime, naive means
        UTC, or an ISO string), `idempotency_key`, `after` (ids of your jobs it waits for:
        it starts once they all completed) and `after_failed` ("cancel" or "run": what one of
        them failing does to it), and `file`: the path of a file to upload
        with the job, for a type that takes one (`image`), streamed from disk."""
        return await self.get(await self.submit_id(type, data, **options))

    async def submit_id(self, type: str, data: Any, *, priority: str | None = None, max_retries: int | None = None,
                        retry_delay: float | None = None, timeout: float | None = None, delay: float | None = None,
                        run_at: datetime | str | None = None, idempotency_key: str | None = None,
                        after: list[str] | tuple[str, ...] | str | None = None, after_failed: str | None = None,
                        file: str | os.PathLike[str] | None = None) -> str:
        """`submit` without reading the stored job back: the new job's id, one request."""
        options: dict[str, Any] = {"idempotencyKey": idempotency_key or f"client-{uuid.uuid4().hex}"}
        if priority is not None:
            options["priority"] = priority
        if max_retries is not None:
            options["maxRetries"] = max_retries
        for key, seconds in (("retryDelay", retry_delay), ("timeout", timeout), ("delay", delay)):
            if seconds is not None:
                options[key] = round(seconds * 1000)
        if run_at is not None:
            options["runAt"] = _iso(run_at)
        if after:
            options["after"] = [after] if isinstance(after, str) else list(after)
        if after_failed is not None:
            options["afterFailed"] = after_failed
        body = {"type": type, "data": data, "options": options}
        if file is None:
            answer = await self._json("POST", "/api/jobs", json=body)
        else:
            answer = await self._json("POST", "/api/jobs", data=_upload_form(body, Path(file)))
        return str(answer["jobId"])

    async def get(self, job_id: str) -> Job:
        return Job.from_wire(await self._json("GET", f"/api/jobs/{job_id}"))

    async def jobs(self, status: JobStatus | str | None = None, type: str | None = None, *,
                   page_size: int = 100) -> AsyncIterator[Job]:
        """Every job of the caller, newest first, fetching page after page as it goes."""
        params = {"limit": str(page_size)}
        if status is not None:
            params["status"] = JobStatus(status).value
        if type is not None:
            params["type"] = type
        while True:
            page = await self._json("GET", "/api/jobs", params=params)
            for wire in page["jobs"]:
                yield Job.from_wire(wire)
            if not page.get("nextCursor"):
                return
            params["cursor"] = page["nextCursor"]

    async def cancel(self, job_id: str) -> Job:
        """Cancel a pending or running job; the job answered is `cancelled`, or still
        `running` with `cancel_requested` while its attempt stops. `Conflict` once finished."""
        return Job.from_wire(await self._json("DELETE", f"/api/jobs/{job_id}"))

    async def download(self, job_id: str) -> bytes:
        async with self._request("GET", f"/api/jobs/{job_id}/download") as response:
            return await response.read()

    async def download_to(self, job_id: str, path: str | os.PathLike[str]) -> Path:
        """Stream the result file to `path`: written in chunks to a temporary file beside it,
        renamed into place once complete, so `path` never holds a partial file and memory
        never holds the file (a broken connection resumes, see `download_chunks`)."""
        target = Path(path)
        part = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with open(part, "wb") as out:
                async for chunk in self.download_chunks(job_id):
                    out.write(chunk)
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
        return target

    async def download_chunks(self, job_id: str, *, start: int = 0) -> AsyncIterator[bytes]:
        """The result file's bytes from byte `start`, a chunk at a time. A connection that
        breaks mid-file is opened again with `Range: bytes=<received>-` and `If-Range` (the
        file's ETag, so the rest is of the same file), while each attempt gets further and up
        to `max_attempts` times."""
        path = f"/api/jobs/{job_id}/download"
        received, validator = start, None
        for attempt in itertools.count(1):
            headers = {"Range": f"bytes={received}-"} if received else {}
            if received and validator:
                headers["If-Range"] = validator
            before = received
            try:
                async with self._request("GET", path, headers=headers) as response:
                    if received and response.status != 206:
                        raise OffloadClientError(f"the result of {job_id} could not be resumed at byte {received} "
                                                 f"(answered {response.status}, not 206)", code="not_resumable",
                                                 status=response.status)
                    validator = validator or response.headers.get("ETag")
                    async for chunk in response.content.iter_chunked(CHUNK):
                        received += len(chunk)
                        yield chunk
                    return
            except ServiceUnreachable as exc:
                if received == before or attempt >= self.max_attempts:
                    raise
                log.info("the download of %s broke at byte %d (%s); resuming", job_id, received, exc)

    # -- live events --------------------------------------------------------------------------
    async def watch(self, job_id: str | None = None) -> AsyncIterator[Event]:
        """Events of one job (ending after its terminal status) or, with no id, of every job
        of the caller (endless). See the module docstring for reconnects."""
        seen: dict[str, int] = {}
        unfinished: set[str] = set()
        pause, down_since = RECONNECT_FIRST, None
        ws_url = "ws" + self.url.removeprefix("http") + "/api/ws"
        while True:
            hinted = 0.0  # a Retry-After of the refused upgrade
            try:
                async with self._http().ws_connect(ws_url, heartbeat=30.0) as ws:
                    subscriptions = [{"op": "subscribe", "jobId": job_id}] if job_id else \
                        [{"op": "subscribe", "all": True}, *({"op": "subscribe", "jobId": j} for j in unfinished)]
                    for message in subscriptions:
                        await ws.send_str(orjson.dumps(message).decode())
                    async for frame in ws:
                        if frame.type is not aiohttp.WSMsgType.TEXT:
                            break
                        wire = orjson.loads(frame.data)
                        if wire.get("event") == "error":
                            if wire.get("code") == "not_found" and job_id:
                                raise NotFound(wire.get("message", f"no job with id {job_id!r}"), code="not_found")
                            if wire.get("code") != "not_found":  # a store fault: subscribe again shortly
                                log.warning("offload WebSocket error %s: %s", wire.get("code"), wire.get("message"))
                                break
                            continue
                        pause, down_since = RECONNECT_FIRST, None  # the service answers again
                        event = parse_event(wire)
                        if event is None or event.seq <= seen.get(event.job_id, -1):
                            continue
                        seen[event.job_id] = event.seq
                        status = _status_of(event)
                        if status is not None and not job_id:
                            (unfinished.discard if status.terminal else unfinished.add)(event.job_id)
                        yield event
                        if job_id and status is not None and status.terminal:
                            return
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status not in (429, 503):
                    raise _BY_STATUS.get(exc.status, OffloadClientError)(
                        f"the WebSocket was refused: HTTP {exc.status} {exc.message}", status=exc.status) from exc
                headers: Any = exc.headers or {}
                hinted = retry_after(headers.get("Retry-After")) or 0.0
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                log.debug("offload WebSocket dropped: %r", exc)
            now = time.monotonic()
            down_since = down_since if down_since is not None else now
            if now - down_since > self.max_reconnect_wait:
                raise ServiceUnreachable(f"offload at {self.url} has not answered for "
                                         f"{self.max_reconnect_wait:g}s; stopped watching")
            await asyncio.sleep(max(hinted, pause / 2 + random.random() * pause / 2))
            pause = min(RECONNECT_MAX, pause * 2)

    async def wait(self, job_id: str, on_progress: OnProgress | None = None, *, timeout: float | None = None) -> Any:
        """Follow the job to its end: the result (bytes of a file result, downloaded; the JSON
        value otherwise), or `JobFailed` / `JobCancelled`. `on_progress(percent, message)` is
        called (and awaited, if it is a coroutine function) whenever either changes."""
        report = _Reporter(on_progress)
        async with asyncio.timeout(timeout):
            async for event in self.watch(job_id):
                if (called := report(event)) is not None:
                    await called
                job = _final(event)
                if job is not None:
                    return await self.download(job.id) if _has_file(job) else _value(job)
        raise ServiceUnreachable(f"the events of job {job_id} ended before its final status")  # pragma: no cover

    async def run(self, type: str, data: Any, *, on_progress: OnProgress | None = None,
                  wait_timeout: float | None = None, **options: Any) -> Any:
        """`submit` then `wait`; `options` are `submit`'s keywords."""
        return await self.wait(await self.submit_id(type, data, **options), on_progress, timeout=wait_timeout)


def _iso(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    return str(wire_time(value if value.tzinfo else value.replace(tzinfo=timezone.utc)))


def _status_of(event: Event) -> JobStatus | None:
    if isinstance(event, Snapshot):
        return event.job.status
    if isinstance(event, Status):
        return event.status
    return None


def _final(event: Event) -> Job | None:
    """The job of a terminal event, checked: raises for a failed or cancelled job."""
    if isinstance(event, Progress) or not event.job.status.terminal:
        return None
    if event.job.status is JobStatus.FAILED:
        raise JobFailed(event.job)
    if event.job.status is JobStatus.CANCELLED:
        raise JobCancelled(event.job)
    return event.job


def _has_file(job: Job) -> bool:
    return job.result is not None and job.result.is_file


def _value(job: Job) -> Any:
    return job.result.value if job.result is not None else None


class _Reporter:
    """Calls `on_progress` when the percent or the message changed, whatever event told."""

    def __init__(self, on_progress: OnProgress | None) -> None:
        self.on_progress = on_progress
        self.last: tuple[int, str | None] | None = None

    def __call__(self, event: Event) -> Awaitable[None] | None:
        if self.on_progress is None:
            return None
        state = (event.progress, event.message) if isinstance(event, Progress) else \
            (event.job.progress, event.job.message)
        if state == self.last:
            return None
        self.last = state
        called = self.on_progress(*state)
        return called if inspect.isawaitable(called) else None


# ---- the blocking client --------------------------------------------------------------------
class Client:
    """`AsyncClient`'s API for blocking code; its loop runs in a daemon thread (see the module
    docstring for why). Close it (or use it as a context manager) to stop that thread."""

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0,
                 **options: Any) -> None:
        self._client = AsyncClient(url, token, timeout=timeout, **options)
        self.url = self._client.url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="offload-client", daemon=True)
        self._thread.start()
        self._closed = False
        # A script that never closes its client still closes it at exit (no "Unclosed client
        # session" warning); a weak reference, so registering keeps no client alive.
        self._at_exit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._at_exit)
        try:
            self._call(self._client.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except BaseException:  # a timeout or Ctrl-C here stops the work there too
            future.cancel()
            raise

    def _iterate(self, iterator: AsyncIterator[T], deadline: float | None = None) -> Generator[T, None, None]:
        try:
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    yield self._call(_next(iterator), left)
                except StopAsyncIteration:
                    return
        finally:
            close = getattr(iterator, "aclose", None)
            if close is not None and not self._closed:
                try:
                    self._call(close())
                except RuntimeError:  # still running: the cancel above is ending it
                    pass

    def submit(self, type: str, data: Any, **options: Any) -> Job:
        """See `AsyncClient.submit`."""
        return self._call(self._client.submit(type, data, **options))

    def submit_id(self, type: str, data: Any, **options: Any) -> str:
        return self._call(self._client.submit_id(type, data, **options))

    def get(self, job_id: str) -> Job:
        return self._call(self._client.get(job_id))

    def jobs(self, status: JobStatus | str | None = None, type: str | None = None, *,
             page_size: int = 100) -> Iterator[Job]:
        return self._iterate(self._client.jobs(status, type, page_size=page_size))

    def cancel(self, job_id: str) -> Job:
        return self._call(self._client.cancel(job_id))

    def download(self, job_id: str) -> bytes:
        return self._call(self._client.download(job_id))

    def download_to(self, job_id: str, path: str | os.PathLike[str]) -> Path:
        return self._call(self._client.download_to(job_id, path))

    def watch(self, job_id: str | None = None) -> Iterator[Event]:
        return self._iterate(self._client.watch(job_id))

    def wait(self, job_id: str, on_progress: Callable[[int, str | None], Any] | None = None, *,
             timeout: float | None = None) -> Any:
        """See `AsyncClient.wait`; `on_progress` runs in the calling thread."""
        report = _Reporter(on_progress)
        deadline = None if timeout is None else time.monotonic() + timeout
        events = self._iterate(self._client.watch(job_id), deadline)
        try:
            for event in events:
                report(event)
                job = _final(event)
                if job is not None:
                    return self.download(job.id) if _has_file(job) else _value(job)
        finally:
            events.close()
        raise ServiceUnreachable(f"the events of job {job_id} ended before its final status")  # pragma: no cover

    def run(self, type: str, data: Any, *, on_progress: Callable[[int, str | None], Any] | None = None,
            wait_timeout: float | None = None, **options: Any) -> Any:
        return self.wait(self.submit_id(type, data, **options), on_progress, timeout=wait_timeout)


def _upload_form(body: dict[str, Any], path: Path) -> Callable[[], aiohttp.FormData]:
    """The multipart body of a submission with a file, made anew for each try (a form's
    file is read as it is sent, once). `OSError` at once when the file cannot be read."""
    path.stat()

    def form() -> aiohttp.FormData:
        data = aiohttp.FormData()
        data.add_field("job", orjson.dumps(body).decode(), content_type="application/json")
        data.add_field("file", path.open("rb"), filename=path.name, content_type="application/octet-stream")
        return data

    return form


def _close_at_exit(ref: weakref.ref[Client]) -> None:
    client = ref()
    if client is not None:
        client.close()


async def _next(iterator: AsyncIterator[T]) -> T:
    return await iterator.__anext__()
