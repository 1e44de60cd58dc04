"""REST handlers for `/api`. They speak HTTP only: parsing, the owner, the answer.
Rules live in the scheduler and the store; errors are raised and rendered by the
error middleware."""
from __future__ import annotations

import asyncio
import re
import unicodedata
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from offload.service.cancels import cancel
from offload.service.errors import (
    Conflict,
    Gone,
    Forbidden,
    Invalid,
    MalformedJSON,
    NotFound,
    ShuttingDown,
    StoreUnavailable,
    Unavailable,
    UnsupportedMediaType,
    job_not_found,
    not_retryable,
)
from offload.service.keys import (
    AUTH, CLOCK, CONFIG, LIMITS, METRICS, OWNER, REGISTRY, RETENTION, SCHEDULER, STATS, STORE, SUBMISSIONS,
)
from offload.service.downloads import ResultFileResponse
from offload.service.metrics import metrics_response
from offload.service.models import JOB_ID_PATTERN, Job, JobStatus, iso, now_ms
from offload.service.store.base import RETRYABLE
from offload.service.uploads import submission_of
from offload.workers.filenames import safe_filename
from offload.workers.results import is_media_type

routes = web.RouteTableDef()
#: `GET /api/jobs?status=scheduled`: the pending jobs not due yet (a filter, not a job status).
SCHEDULED = "scheduled"
#: `GET /api/jobs?status=waiting`: the pending jobs that wait for other jobs (`options.after`).
WAITING = "waiting"
JOB_ID = re.compile(JOB_ID_PATTERN)
MAX_PAGE = 200


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def owner_of(request: web.Request) -> str:
    return request[OWNER]


async def own_job(request: web.Request) -> Job:
    """The job the path names, if the caller owns it; 404 alike for unknown and foreign ids."""
    job_id = job_id_of(request)
    job = await request.app[STORE].get(job_id, owner_of(request))
    if job is None:
        raise job_not_found(job_id)
    return job


def job_id_of(request: web.Request) -> str:
    job_id = request.match_info["job_id"]
    if not JOB_ID.match(job_id):
        raise job_not_found(job_id)
    return job_id


async def read_json(request: web.Request) -> Any:
    """The body as JSON, if it is declared `application/json` (a `charset`, if any, must be
    UTF-8, the only encoding JSON has). Nothing else is read as JSON: not a missing
    Content-Type (aiohttp reports it as application/octet-stream), not text/plain, not
    `+json` types. A cross-site page can send those without a CORS preflight
    (`fetch(url, {mode: "no-cors", body: new Blob([json])})`); `application/json` it cannot."""
    declared = request.headers.get("Content-Type")
    charset = (request.charset or "utf-8").lower()
    if declared is None or request.content_type != "application/json" or charset not in ("utf-8", "utf8"):
        found = f"not {declared[:100]!r}" if declared is not None else "none was sent"
        raise UnsupportedMediaType(f"the body must be JSON sent as Content-Type: application/json ({found})")
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"the request body is not valid JSON: {exc}") from None


@routes.post("/api/ws-ticket")
async def ws_ticket(request: web.Request) -> web.Response:
    """A single-use credential for one `/api/ws?ticket=` upgrade, so that a browser need not
    put its long-lived token in a URL."""
    ticket, ttl = request.app[AUTH].tickets.issue(owner_of(request))
    return json_response({"ticket": ticket, "expiresAt": iso(now_ms() + int(ttl * 1000))}, 201)


@routes.post("/api/jobs")
async def submit(request: web.Request) -> web.Response:
    """JSON, or multipart/form-data with a file for a type that takes one (`uploads`)."""
    submissions = request.app[SUBMISSIONS]
    await submissions.admit(owner_of(request))
    body, upload = await submission_of(request, request.app[CONFIG], request.app[REGISTRY], read_json)
    try:
        job, created = await submissions.submit(owner_of(request), body, request.headers.get("Idempotency-Key"),
                                                upload=upload)
    except BaseException:
        if upload is not None:  # nothing stored: neither is its file
            await upload.discard()
        raise
    if upload is not None and not created:  # the answer to an earlier job, which has its own
        await upload.discard()
    answer = {"jobId": job.id, "status": job.status.value, "createdAt": iso(job.created_at)}
    return json_response(answer, 201 if created else 200)


@routes.post("/api/jobs/batch")
async def submit_batch(request: web.Request) -> web.Response:
    """Many jobs in one request and one transaction, all or none (`Submissions.submit_many`):
    one answer per job, in order; 201 when any is new, 200 when each answers an earlier job."""
    submissions = request.app[SUBMISSIONS]
    submissions.accepting()
    bodies = submissions.batch_jobs(await read_json(request))
    await submissions.admit(owner_of(request), len(bodies))
    answers = await submissions.submit_many(owner_of(request), bodies)
    jobs = [{"jobId": job.id, "status": job.status.value, "createdAt": iso(job.created_at), "created": created}
            for job, created in answers]
    return json_response({"jobs": jobs}, 201 if any(created for _, created in answers) else 200)


@routes.get("/api/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    query = request.query
    status = None
    waiting = query.get("status") == WAITING
    scheduled = query.get("status") == SCHEDULED or waiting
    if query.get("status") and not scheduled:
        try:
            status = JobStatus(query["status"])
        except ValueError:
            raise Invalid("status", f"must be one of {', '.join(s.value for s in JobStatus)}, "
                                    f"{SCHEDULED} or {WAITING}") from None
    limit = 50
    if query.get("limit"):
        digits = query["limit"]  # ASCII digits only: int() would also take " 5", "+5", "1_0"
        limit = int(digits) if digits.isascii() and digits.isdigit() else 0
        if not 1 <= limit <= MAX_PAGE:
            raise Invalid("limit", f"must be a whole number from 1 to {MAX_PAGE}")
    try:
        if scheduled:
            page = await request.app[STORE].list_scheduled(owner_of(request), request.app[CLOCK].now(),
                                                           type=query.get("type") or None, limit=limit,
                                                           cursor=query.get("cursor") or None, waiting=waiting)
        else:
            page = await request.app[STORE].list_jobs(owner_of(request), status=status,
                                                      type=query.get("type") or None, limit=limit,
                                                      cursor=query.get("cursor") or None)
    except ValueError:
        raise Invalid("cursor", "is not a cursor this service gave out") from None
    return json_response({"jobs": [j.to_wire() for j in page.jobs], "nextCursor": page.next_cursor})


@routes.get("/api/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    return json_response((await own_job(request)).to_wire())


@routes.delete("/api/jobs/{job_id}")
async def cancel_job(request: web.Request) -> web.Response:
    """200 with the job once it is cancelled; 202 with it (`cancelRequested`) while the attempt
    is still stopping, wherever it runs; 409 when it finished (`cancels.cancel`)."""
    config = request.app[CONFIG]
    answer = await cancel(request.app[STORE], job_id_of(request), owner_of(request),
                          request.app[SCHEDULER].clock.now(), wait=config.workers.stop_grace + 1)
    request.app[LIMITS].forget_pending(answer.job.owner)
    return json_response(answer.job.to_wire(), 200 if answer.done else 202)


@routes.post("/api/jobs/{job_id}/retry")
async def retry_job(request: web.Request) -> web.Response:
    """Queue a failed or cancelled job again: the same id goes pending with its attempts from
    zero (`Store.retry`), as a submission would (admission: 503 draining, 429 at a cap). 200
    with the job; 409 for a pending, running or completed one; 404 for an unknown or foreign id."""
    job = await own_job(request)
    owner = owner_of(request)
    if job.status not in RETRYABLE:
        raise not_retryable(job.id, job.status.value)
    await request.app[SUBMISSIONS].admit(owner)
    retried = await request.app[STORE].retry(job.id, owner, request.app[SCHEDULER].clock.now())
    if retried is None:  # it changed meanwhile: retried by another request, or deleted by retention
        now = await request.app[STORE].get(job.id, owner)
        if now is None:
            raise job_not_found(job.id)
        raise not_retryable(job.id, now.status.value)
    request.app[LIMITS].pending.add(owner)
    request.app[SCHEDULER].submitted(retried)
    return json_response(retried.to_wire())


#: Never part of a file name in any form: path separators and control characters.
_FILENAME_NEVER = re.compile(r'[\x00-\x1f\x7f/\\]+')
#: RFC 5987 attr-char besides letters and digits: what `filename*` keeps unescaped.
_ATTR_CHARS = "!#$&+-.^_`|~"


def content_disposition(filename: str, fallback: str) -> str:
    """`attachment` with an ASCII `filename` every client understands and, for a name that
    is not plain ASCII, the exact name as RFC 6266/5987 `filename*=UTF-8''…`. A name that
    is empty or only dots (`..`, `/..`) after cleaning becomes `fallback` (the stored file's own name)."""
    exact = _FILENAME_NEVER.sub("_", filename).strip()[:200]
    if not exact.strip("._ "):
        exact = fallback
    ascii_name = unicodedata.normalize("NFKD", exact).encode("ascii", "ignore").decode()
    ascii_name = safe_filename(ascii_name, keep=" ").strip()  # what an ASCII `filename=` may hold
    if not ascii_name.strip("._ "):
        ascii_name = fallback
    header = f'attachment; filename="{ascii_name}"'
    if exact != ascii_name:
        header += f"; filename*=UTF-8''{quote(exact, safe=_ATTR_CHARS)}"
    return header


@routes.get("/api/jobs/{job_id}/download")
async def download(request: web.Request) -> web.StreamResponse:
    job = await own_job(request)
    job_id = job.id
    if job.status is not JobStatus.COMPLETED:
        raise Conflict(f"job {job_id} is {job.status.value}; its result can be downloaded once it is completed")
    result = job.result or {}
    if "file" not in result:
        raise NotFound(f"job {job_id} has no file to download; its result is in the job's `result`")
    expired = request.app[RETENTION].result_expired_at(job.completed_at)
    if expired is not None and expired <= request.app[CLOCK].now():
        raise Gone(f"the result file of job {job_id} expired at {iso(expired)} and was deleted "
                   f"(result files are kept for {request.app[CONFIG].retention.results} after the job completed, "
                   "[retention] results); the job itself is kept")
    name = str(result["file"])
    if not name.startswith(f"{job_id}-") or "/" in name or "\\" in name or "\x00" in name:
        raise NotFound(f"the result file of job {job_id} is gone")  # names are <job id>-<attempt><ext>
    path = request.app[CONFIG].results_path / name
    if not path.is_file():
        raise NotFound(f"the result file of job {job_id} is gone")
    # Workers refuse a bad content type; a row written before they did is served as bytes.
    content_type = str(result.get("contentType") or "")
    if not is_media_type(content_type):
        content_type = "application/octet-stream"
    return ResultFileResponse(path, headers={
        "Content-Type": content_type,
        "Content-Disposition": content_disposition(str(result.get("filename") or ""), path.name),
        "X-Content-Type-Options": "nosniff",  # never rendered as anything but its declared type
    })


def is_operator(request: web.Request) -> bool:
    """Operators see the whole service (global counts, node id, worker pids): the users in
    `[auth] admins`, and the one user of single-user mode."""
    return request.app[AUTH].single_user or owner_of(request) in request.app[CONFIG].auth.admins


def stats_scope(request: web.Request) -> str | None:
    """Whose figures the caller sees: their own (their user), or the whole service's (None)."""
    return None if is_operator(request) else owner_of(request)


@routes.get("/api/stats")
async def stats(request: web.Request) -> web.Response:
    """A user's own figures, or the whole service's for an operator (`stats.Statistics.read`)."""
    figures = await request.app[STATS].read(stats_scope(request))
    if is_operator(request) and RETENTION in request.app:
        figures["retention"] = request.app[RETENTION].stats()  # what the cleanup deleted
    return json_response(figures)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format, for operators (`metrics.Metrics`)."""
    if not is_operator(request):
        raise Forbidden("/metrics is for operators: users named in [auth] admins")
    return metrics_response(await request.app[METRICS].render())


#: How long a health probe waits for its write to commit before it calls the store unavailable.
PROBE_TIMEOUT_S = 2.0


async def check_store_and_workers(request: web.Request) -> None:
    """Raise 503 (with its reason and Retry-After) unless the store commits a write now and
    the worker pool runs. A read would not do: a locked, read-only or full database answers
    reads while it refuses every job."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await request.app[STORE].writable()
    except TimeoutError:
        why = ("the database does not answer" if not request.app[STORE].exclusive
               else "locked by another process, or slow storage")
        raise StoreUnavailable(f"job store unavailable: a write did not commit within {PROBE_TIMEOUT_S:g} s "
                               f"({why}); try again shortly") from None
    if request.app[SCHEDULER].workers_stopping:
        raise Unavailable("the worker pool is stopping")


@routes.get("/api/health")
async def health(request: web.Request) -> web.Response:
    await check_store_and_workers(request)
    scheduler = request.app[SCHEDULER]
    answer: dict[str, Any] = {"status": "ok", "accepting": scheduler.accepting}
    if is_operator(request):
        answer["workers"] = scheduler.workers()
    return json_response(answer)


@routes.get("/api/health/live")
async def live(request: web.Request) -> web.Response:
    """For liveness probes, no token: the process answers. Says nothing else."""
    return json_response({"status": "alive"})


@routes.get("/api/health/ready")
async def ready(request: web.Request) -> web.Response:
    """For readiness probes, no token: 200 while the store takes writes, the workers run and
    new jobs are accepted; otherwise 503 naming the reason, with Retry-After. Shows nothing
    about jobs, users or processes."""
    if not request.app[SCHEDULER].accepting:
        raise ShuttingDown("the service is shutting down and takes no new jobs")
    await check_store_and_workers(request)
    return json_response({"status": "ready"})
