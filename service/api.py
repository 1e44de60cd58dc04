"""REST handlers for `/api`. They speak HTTP only: parsing, the owner, the answer.
Rules live in the scheduler and the store; errors are raised and rendered by the
error middleware."""
from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from offload.service.errors import Conflict, Invalid, MalformedJSON, NotFound, ShuttingDown, UnsupportedMediaType, job_not_found
from offload.service.keys import CONFIG, HUB, LIMITS, OWNER, SCHEDULER, STORE
from offload.service.models import Job, JobStatus
from offload.service.store import IdempotencyMismatch
from offload.service.validation import parse_submission

routes = web.RouteTableDef()
JOB_ID = re.compile(r"^job_[a-z2-7]{24}$")
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
    if request.content_type not in ("application/json", "application/octet-stream", "") and \
            not request.content_type.endswith("+json"):
        raise UnsupportedMediaType(f"send JSON with Content-Type: application/json, not {request.content_type}")
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"the request body is not valid JSON: {exc}") from None


@routes.post("/api/jobs")
async def submit(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    if not scheduler.accepting:
        raise ShuttingDown("the service is shutting down and takes no new jobs; try again shortly")
    await request.app[LIMITS].admit_submission(owner_of(request), request.app[STORE])
    body = await read_json(request)
    submission = parse_submission(body, owner_of(request), request.app[CONFIG],
                                  request.headers.get("Idempotency-Key"), now=scheduler.clock.now())
    await scheduler.admit()
    try:
        job, created = await request.app[STORE].create(submission.job, submission.request_hash)
    except IdempotencyMismatch as exc:
        raise Invalid("idempotencyKey", f"was already used for job {exc.job.id} with a different request") from None
    if created:
        scheduler.submitted(job)
        request.app[LIMITS].submitted(job.owner)
    answer = {"jobId": job.id, "status": job.status.value, "createdAt": job.to_wire()["createdAt"]}
    return json_response(answer, 201 if created else 200)


@routes.get("/api/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    query = request.query
    status = None
    if query.get("status"):
        try:
            status = JobStatus(query["status"])
        except ValueError:
            raise Invalid("status", f"must be one of {', '.join(s.value for s in JobStatus)}") from None
    limit = 50
    if query.get("limit"):
        try:
            limit = int(query["limit"])
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PAGE:
            raise Invalid("limit", f"must be a whole number from 1 to {MAX_PAGE}")
    try:
        page = await request.app[STORE].list_jobs(owner_of(request), status=status, type=query.get("type") or None,
                                             limit=limit, cursor=query.get("cursor") or None)
    except ValueError:
        raise Invalid("cursor", "is not a cursor this service gave out") from None
    return json_response({"jobs": [j.to_wire() for j in page.jobs], "nextCursor": page.next_cursor})


@routes.get("/api/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    return json_response((await own_job(request)).to_wire())


@routes.delete("/api/jobs/{job_id}")
async def cancel_job(request: web.Request) -> web.Response:
    job = await request.app[SCHEDULER].cancel(job_id_of(request), owner_of(request))
    request.app[LIMITS].forget_pending(job.owner)
    return json_response(job.to_wire())


_FILENAME_UNSAFE = re.compile(r'[^A-Za-z0-9._ -]+')


@routes.get("/api/jobs/{job_id}/download")
async def download(request: web.Request) -> web.StreamResponse:
    job = await own_job(request)
    job_id = job.id
    if job.status is not JobStatus.COMPLETED:
        raise Conflict(f"job {job_id} is {job.status.value}; its result can be downloaded once it is completed")
    result = job.result or {}
    if "file" not in result:
        raise NotFound(f"job {job_id} has no file to download; its result is in the job's `result`")
    name = str(result["file"])
    if not name.startswith(f"{job_id}-") or "/" in name or "\\" in name or "\x00" in name:
        raise NotFound(f"the result file of job {job_id} is gone")  # names are <job id>-<attempt><ext>
    path = request.app[CONFIG].results_path / name
    if not path.is_file():
        raise NotFound(f"the result file of job {job_id} is gone")
    filename = _FILENAME_UNSAFE.sub("_", result.get("filename") or path.name).strip() or path.name
    return web.FileResponse(path, headers={
        "Content-Type": result.get("contentType") or "application/octet-stream",
        "Content-Disposition": f'attachment; filename="{filename}"',
    })


@routes.get("/api/stats")
async def stats(request: web.Request) -> web.Response:
    counts = await request.app[STORE].count_by_status()
    scheduler = request.app[SCHEDULER]
    return json_response({"jobs": counts, "scheduler": scheduler.describe(),
                          "websocket": {"subscribers": request.app[HUB].subscriber_count,
                                        "eventsPublished": request.app[HUB].published}})


@routes.get("/api/health")
async def health(request: web.Request) -> web.Response:
    await request.app[STORE].ping()
    workers = request.app[SCHEDULER].pool.describe()
    return json_response({"status": "ok", "accepting": request.app[SCHEDULER].accepting, "workers": workers})
