"""`GET /api/openapi.json`: the REST API described as OpenAPI 3.0, written by hand next to the
contract (DESIGN.md, docs/api.md) so that tools and the schemathesis test can check the
service against it, requests and answers alike. The WebSocket protocol is described in
prose (`/api/ws`'s description).

`SPEC` is the fixed part; `build_spec(config)` completes it with what depends on the running
service: the registered job types and each one's `data` schema under its settings (the
invoice's limits come from `[jobs.settings.pdf]`), so the document states exactly the
bounds this server enforces."""
from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from offload.service.config import Config
from offload.service.keys import CONFIG, REGISTRY
from offload.service.models import JOB_ID_PATTERN
from offload.service.validation import INT_OPTIONS, MAX_IDEMPOTENCY_KEY
from offload.workers.registry import Registry

JSON = "application/json"
_REF = "#/components"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"{_REF}/{kind}/{name}"}


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    headers = {"X-Request-Id": _ref("headers", "RequestId")}
    if retry_after:
        headers["Retry-After"] = _ref("headers", "RetryAfter")
    return {"description": description, "headers": headers,
            "content": {JSON: {"schema": _ref("schemas", "Error")}}}


def _ok(description: str, schema: dict[str, Any], content_type: str = JSON) -> dict[str, Any]:
    return {"description": description, "headers": {"X-Request-Id": _ref("headers", "RequestId")},
            "content": {content_type: {"schema": schema}}}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


UNAUTHORIZED = _error("no token, or not a valid one (when [auth] tokens are configured)")
FORBIDDEN = _error("single-user mode answers only to a loopback Host name")
FORBIDDEN_WRITE = _error("a foreign Origin (a page elsewhere; see [server] allowed_origins), or a non-loopback "
                         "Host in single-user mode")
NOT_FOUND = _error("no such job (also: a job of another user)")
JOB_ID = {"name": "jobId", "in": "path", "required": True,
          "schema": {"type": "string", "example": "job_abcdefghijklmnopqrstuvwx"}}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string", "pattern": "^[a-z_]+$"}, "message": {"type": "string"}}}},
    },
    "Time": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$",
             "description": "ISO-8601 UTC with milliseconds and Z"},
    "Job": {
        "type": "object",
        "required": ["id", "type", "status", "priority", "progress", "message", "attempts", "maxRetries", "seq",
                     "createdAt", "startedAt", "completedAt", "runAt", "error", "result", "cancelRequested",
                     "after", "afterFailed", "waitingFor"],
        "properties": {
            "id": {"type": "string", "pattern": JOB_ID_PATTERN},
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "running", "completed", "failed", "cancelled"]},
            "priority": {"type": "string", "enum": ["high", "medium", "low"]},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "message": _nullable({"type": "string"}),
            "attempts": {"type": "integer", "minimum": 0},
            "maxRetries": {"type": "integer", "minimum": 0, "maximum": 10},
            "seq": {"type": "integer", "minimum": 0},
            "cancelRequested": {"type": "boolean",
                                "description": "a cancel was requested while the job ran; its attempt is stopping"},
            "createdAt": _ref("schemas", "Time"),
            "startedAt": _nullable(_ref("schemas", "Time")),
            "completedAt": _nullable(_ref("schemas", "Time")),
            "runAt": _nullable(_ref("schemas", "Time")),
            "error": _nullable({"type": "object", "required": ["type", "message"],
                                "properties": {"type": {"type": "string"}, "message": {"type": "string"},
                                               "traceback": {"type": "string", "description":
                                                             "where a handler raised an unexpected exception: its "
                                                             "innermost 50 frames, at most the last 8192 characters"}}}),
            "result": {"nullable": True, "description": "the job type's JSON result; for a file: filename, "
                       "contentType, size and url (GET it for the bytes)"},
            "after": {"type": "array", "items": {"type": "string", "pattern": JOB_ID_PATTERN},
                      "description": "the jobs this one follows (options.after, then those its data names)"},
            "afterFailed": {"type": "string", "enum": ["cancel", "run"],
                            "description": "what a parent that failed or was cancelled does to this job"},
            "waitingFor": {"type": "array", "items": {"type": "string", "pattern": JOB_ID_PATTERN},
                           "description": "while pending: the parents it still waits for (it is not due before)"},
        },
    },
    "Submission": {
        "description": "`type` and `data` are required and never null; other fields are ignored. One "
                       "branch per registered job type (see `build_spec`).",
        "oneOf": [],
        "example": {"type": "pdf", "data": {
            "type": "invoice", "order": {"number": "INV-1001", "customer": {"name": "Ada Lovelace"}},
            "items": [{"name": "Widget", "quantity": 2, "unitPrice": 9.5}]}, "options": {"priority": "high"}},
    },
    "Options": {
        "type": "object", "nullable": True, "additionalProperties": False,
        "description": "null, as absent, means no options; so does null in each option (the default applies)",
        "properties": {
            "priority": {"type": "string", "enum": ["high", "medium", "low"], "nullable": True,
                         "description": "default: medium"},
            **{key: {"type": "integer", "minimum": low, "maximum": high, "nullable": True,
                     **({"description": "ms"} if key != "maxRetries" else {})}
               for key, (low, high) in INT_OPTIONS.items()},
            "runAt": {"type": "string", "format": "date-time", "nullable": True,
                      "description": "RFC 3339 with an offset; not together with delay"},
            "idempotencyKey": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY,
                               "nullable": True,
                               "description": "must equal the Idempotency-Key header when both are given"},
            "after": {"type": "array", "nullable": True, "maxItems": 50,
                      "items": {"type": "string", "pattern": r"^(job_[a-z2-7]{24}|#(0|[1-9][0-9]{0,8}))$"},
                      "description": "ids of your jobs this one waits for: it starts once all completed. In a "
                                     "batch, #i names the batch's job i, which must come before this one. An "
                                     "id that is not one of your jobs is a 422. At most [limits] max_after"},
            "afterFailed": {"type": "string", "enum": ["cancel", "run"], "nullable": True,
                            "description": "cancel (default): a parent that failed or was cancelled cancels this "
                                           "job (DependencyFailed); run: it runs anyway"},
        },
        # delay and runAt exclude each other (a null one is not given)
        "not": {"required": ["delay", "runAt"],
                "properties": {"delay": {"type": "integer"}, "runAt": {"type": "string"}}},
    },
    "Accepted": {
        "type": "object", "required": ["jobId", "status", "createdAt"],
        "properties": {"jobId": {"type": "string", "pattern": JOB_ID_PATTERN}, "status": {"type": "string"},
                       "createdAt": _ref("schemas", "Time")},
    },
    "Batch": {
        "type": "object", "required": ["jobs"],
        "description": "1 to `[limits] max_batch_jobs` jobs (see `build_spec`); all are stored or none",
        "properties": {"jobs": {"type": "array", "minItems": 1, "items": _ref("schemas", "Submission")}},
    },
    "BatchAccepted": {
        "type": "object", "required": ["jobs"],
        "properties": {"jobs": {"type": "array", "description": "one answer per job, in the order sent",
                                "items": {"allOf": [_ref("schemas", "Accepted"), {
                                    "type": "object", "required": ["created"],
                                    "properties": {"created": {
                                        "type": "boolean",
                                        "description": "false: the job this idempotency key made before"}}}]}}},
    },
    "Stats": {
        "type": "object", "required": ["scope", "jobs"],
        "properties": {
            "scope": {"type": "string", "enum": ["own", "all"],
                      "description": "own: the caller's jobs only; all: the whole service (operators)"},
            "jobs": {"type": "object", "description": "jobs per status",
                     "required": ["pending", "running", "completed", "failed", "cancelled"],
                     "additionalProperties": {"type": "integer", "minimum": 0}},
            "byPriority": {"type": "object", "description": "pending and running jobs per priority"},
            "queue": {"type": "object", "description": "pending jobs due now, per priority",
                      "additionalProperties": {"type": "integer", "minimum": 0}},
            "delayed": {"type": "integer", "minimum": 0, "description": "pending jobs not yet due"},
            "waiting": {"type": "integer", "minimum": 0,
                        "description": "pending jobs that wait for other jobs (options.after)"},
            "recent": {"type": "object", "description": "jobs finished in the last hour and today (UTC), by "
                                                        "status, with the error rate (failed / completed + failed)"},
            "types": {"type": "object", "description": "per job type, over the recent window: jobs finished and "
                                                       "started, mean and p95 run time and queue wait (ms)"},
            "window": {"type": "object", "description": "the recent window: seconds, samples per user and type"},
            "scheduler": {"type": "object", "description": "operators only: node id, running jobs, worker pool "
                                                           "with each process's pid, job, CPU % and memory"},
            "websocket": {"type": "object", "description": "operators only: subscribers, connections, events "
                                                           "published, sent, coalesced and dropped"},
            "uptimeSeconds": {"type": "number", "minimum": 0},
            "version": {"type": "string"},
        },
    },
    "Ticket": {
        "type": "object", "required": ["ticket", "expiresAt"],
        "properties": {"ticket": {"type": "string", "minLength": 32,
                                  "description": "pass it as /api/ws?ticket=; good for one upgrade"},
                       "expiresAt": _ref("schemas", "Time")},
    },
    "Page": {
        "type": "object", "required": ["jobs", "nextCursor"],
        "properties": {"jobs": {"type": "array", "items": _ref("schemas", "Job")},
                       "nextCursor": _nullable({"type": "string"})},
    },
}

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "offload", "version": "1",
             "description": "Background jobs with live progress. With [auth] tokens configured every call needs "
                            "`Authorization: Bearer <token>`; without, the service is single-user on loopback."},
    "security": [{"bearer": []}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "headers": {
            "RequestId": {"description": "quote it when reporting a problem", "required": True,
                          "schema": {"type": "string", "minLength": 1}},
            "RetryAfter": {"description": "seconds to wait", "required": True,
                           "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"}},
        },
        "schemas": SCHEMAS,
    },
    "paths": {
        "/api/jobs": {
            "post": {
                "summary": "Submit a job; durable when answered",
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "description": "as options.idempotencyKey; both given must be equal",
                                "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY}}],
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("schemas", "Submission")}}},
                "responses": {
                    "201": _ok("the job is stored", _ref("schemas", "Accepted")),
                    "200": _ok("the job this idempotency key made before", _ref("schemas", "Accepted")),
                    "400": _error("not JSON"), "401": UNAUTHORIZED, "403": FORBIDDEN_WRITE,
                    "413": _error("the body is too large"), "415": _error("not sent as Content-Type: application/json"),
                    "422": _error("valid JSON that fails validation; the message names the field"),
                    "429": _error("too many submissions, or too many pending jobs", retry_after=True),
                    "503": _error("shutting down, or the store is unavailable", retry_after=True),
                },
            },
            "get": {
                "summary": "Your jobs, newest first",
                "parameters": [
                    # An empty value means "not given", as in an HTML form: any status, any type,
                    # the default limit (50), the first page.
                    {"name": "status", "in": "query", "schema": {
                        "type": "string",
                        "enum": ["", "pending", "running", "completed", "failed", "cancelled", "scheduled",
                                 "waiting"]},
                     "description": "`scheduled`: the pending jobs not due yet (`delay`, `runAt`, a retry's "
                                    "backoff); `waiting`: the pending jobs that wait for other jobs (`after`)"},
                    {"name": "type", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"anyOf": [
                        {"type": "integer", "minimum": 1, "maximum": 200}, {"type": "string", "enum": [""]}]}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"},
                     "description": "the nextCursor of the page before (anything else is a 422)"},
                ],
                "responses": {"200": _ok("a page of jobs", _ref("schemas", "Page")), "401": UNAUTHORIZED,
                              "403": FORBIDDEN, "422": _error("a bad filter, limit or cursor"),
                              "503": _error("the store is unavailable", retry_after=True)},
            },
        },
        "/api/jobs/batch": {
            "post": {
                "summary": "Submit many jobs in one transaction; all are durable when answered, or none is stored",
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("schemas", "Batch")}}},
                "responses": {
                    "201": _ok("the jobs are stored; one answer per job, in order", _ref("schemas", "BatchAccepted")),
                    "200": _ok("every job is one its idempotency key made before", _ref("schemas", "BatchAccepted")),
                    "400": _error("not JSON"), "401": UNAUTHORIZED, "403": FORBIDDEN_WRITE,
                    "413": _error("the body is too large"), "415": _error("not sent as Content-Type: application/json"),
                    "422": _error("too many or no jobs, or a job fails validation (the message names jobs[i] and "
                                  "the field); nothing is stored"),
                    "429": _error("too many submissions, or the jobs would exceed a pending cap", retry_after=True),
                    "503": _error("shutting down, or the store is unavailable", retry_after=True),
                },
            },
        },
        "/api/jobs/{jobId}": {
            "parameters": [JOB_ID],
            "get": {"summary": "One job", "responses": {
                "200": _ok("the job", _ref("schemas", "Job")), "401": UNAUTHORIZED, "403": FORBIDDEN,
                "404": NOT_FOUND, "503": _error("the store is unavailable", retry_after=True)}},
            "delete": {"summary": "Cancel a pending or running job", "responses": {
                "200": _ok("the job, now cancelled", _ref("schemas", "Job")),
                "202": _ok("the job, still running with `cancelRequested`: its attempt (on this node or "
                           "another) is still stopping; a `cancelled` status event follows", _ref("schemas", "Job")),
                "401": UNAUTHORIZED,
                "403": FORBIDDEN_WRITE, "404": NOT_FOUND, "409": _error("the job already finished"),
                "503": _error("shutting down, or the store is unavailable", retry_after=True)}},
        },
        "/api/jobs/{jobId}/download": {
            "parameters": [JOB_ID],
            "get": {"summary": "The result file of a completed job", "responses": {
                "200": _ok("the file, with Content-Type and Content-Disposition",
                           {"type": "string", "format": "binary"}, "*/*"),
                "401": UNAUTHORIZED, "403": FORBIDDEN, "404": NOT_FOUND,
                "409": _error("the job is not completed"),
                "410": _error("the result file expired ([retention] results) and was deleted; the job is kept"),
                "503": _error("the store is unavailable", retry_after=True)}},
        },
        "/api/jobs/{jobId}/retry": {
            "parameters": [JOB_ID],
            "post": {"summary": "Queue a failed or cancelled job again (same id, attempts from zero)", "responses": {
                "200": _ok("the job, pending again with a new seq", _ref("schemas", "Job")),
                "401": UNAUTHORIZED, "403": FORBIDDEN_WRITE, "404": NOT_FOUND,
                "409": _error("the job is pending, running or completed (the message names its status)"),
                "429": _error("too many submissions, or too many pending jobs", retry_after=True),
                "503": _error("shutting down, or the store is unavailable", retry_after=True)}},
        },
        "/api/ws-ticket": {"post": {
            "summary": "A single-use WebSocket credential for browsers",
            "description": "Answers a ticket for one `/api/ws?ticket=` upgrade within about 30 seconds, as the "
                           "caller's user, so that a page need not put its long-lived token in a URL. Used once "
                           "(successful or not), it is gone. Tickets are kept by the node that issued them.",
            "responses": {"201": _ok("the ticket", _ref("schemas", "Ticket")), "401": UNAUTHORIZED,
                          "403": FORBIDDEN_WRITE,
                          "429": _error("too many unused tickets of this user", retry_after=True)}}},
        "/api/stats": {"get": {
            "summary": "Job counts: your own; for operators the whole service with queue and worker figures",
            "description": "Operators are the users in `[auth] admins` (in single-user mode, the one user). "
                           "Everyone else gets `scope: own` and their own job counts only.",
            "responses": {
                "200": _ok("statistics", _ref("schemas", "Stats")),
                "401": UNAUTHORIZED, "403": FORBIDDEN, "503": _error("the store is unavailable", retry_after=True)}}},
        "/api/schedules": {"get": {
            "summary": "The [[schedules]] of config.toml with their next run and latest slot",
            "description": "Operators see every schedule; other users the ones whose jobs they own.",
            "responses": {
                "200": _ok("the schedules", {"type": "object", "required": ["schedules"], "properties": {
                    "schedules": {"type": "array", "items": {"type": "object", "required": [
                        "name", "cron", "timezone", "type", "user", "catchUp", "nextRunAt", "lastSlot", "lastJobId"],
                        "properties": {
                            "name": {"type": "string"}, "cron": {"type": "string"}, "timezone": {"type": "string"},
                            "type": {"type": "string"}, "user": {"type": "string"},
                            "catchUp": {"type": "string", "enum": ["one", "skip"]},
                            "nextRunAt": {"type": "string", "format": "date-time", "nullable": True},
                            "lastSlot": {"type": "string", "format": "date-time", "nullable": True,
                                         "description": "the latest slot fired or passed over"},
                            "lastJobId": {"type": "string", "nullable": True,
                                          "description": "the job of lastSlot; null when it was passed over"}}}}}}),
                "401": UNAUTHORIZED, "403": FORBIDDEN}}},
        "/api/health": {"get": {
            "summary": "Health: the store takes writes and the workers run (with a token)",
            "responses": {
                "200": _ok("healthy", {"type": "object", "required": ["status", "accepting"], "properties": {
                    "status": {"type": "string", "enum": ["ok"]}, "accepting": {"type": "boolean"},
                    "workers": {"type": "object", "description": "operators only: the worker pool"}}}),
                "401": UNAUTHORIZED, "403": FORBIDDEN,
                "503": _error("the store refuses writes (the message says why), or the workers are stopping",
                              retry_after=True)}}},
        "/api/health/live": {"get": {
            "summary": "Liveness probe, no token: the process answers", "security": [],
            "responses": {"200": _ok("alive", {"type": "object", "required": ["status"], "properties": {
                "status": {"type": "string", "enum": ["alive"]}}})}}},
        "/api/health/ready": {"get": {
            "summary": "Readiness probe, no token: the store takes writes, the workers run, jobs are accepted",
            "security": [],
            "responses": {
                "200": _ok("ready", {"type": "object", "required": ["status"], "properties": {
                    "status": {"type": "string", "enum": ["ready"]}}}),
                "503": _error("not ready: shutting_down, store_unavailable (the message says why) or unavailable",
                              retry_after=True)}}},
        "/api/openapi.json": {"get": {"summary": "This document", "responses": {
            "200": _ok("OpenAPI 3.0", {"type": "object"}), "401": UNAUTHORIZED, "403": FORBIDDEN}}},
        "/api/ws": {"get": {
            "summary": "The WebSocket: live job events",
            "description": "Upgrade to a WebSocket (`?ticket=` from POST /api/ws-ticket, or `?token=`, may "
                           "replace the Authorization header). Client ops: "
                           '{"op": "subscribe", "jobId"} | {"op": "subscribe", "all": true} | '
                           '{"op": "unsubscribe", "jobId"} | {"op": "subscribe", "stats": true} | '
                           '{"op": "unsubscribe", "stats": true} | {"op": "ping"}. Server events: snapshot, '
                           "progress, status, stats (every [stats] interval_s after subscribing to them), pong, error. A browser Origin must be the service's own or listed in "
                           "[server] allowed_origins. Messages above the size limit close the socket with 1009.",
            "parameters": [{"name": "ticket", "in": "query", "schema": {"type": "string"},
                            "description": "a single-use ticket from POST /api/ws-ticket"},
                           {"name": "token", "in": "query", "schema": {"type": "string"},
                            "description": "the bearer token (kept for compatibility; prefer a ticket)"}],
            "responses": {"101": {"description": "switching to the WebSocket protocol"},
                          "400": _error("not a WebSocket upgrade request"), "401": UNAUTHORIZED,
                          "403": _error("a foreign Origin, or a non-loopback Host in single-user mode"),
                          "429": _error("too many WebSocket connections of this user", retry_after=True)}}},
    },
}


#: The `data` of a job type that gives no schema: any JSON value but null (its own validator,
#: if it has one, may still refuse it with a 422).
ANY_DATA = {"anyOf": [{"type": t} for t in ("object", "array", "string", "number", "boolean")]}


def submission_branches(config: Config, registry: Registry) -> list[dict[str, Any]]:
    """One `Submission` branch per job type with a `data` schema, and one for all the others."""
    branches, plain = [], []
    for name in registry.names():
        job_type = registry.get(name)
        assert job_type is not None
        if job_type.schema is None:
            plain.append(name)
            continue
        data = job_type.schema(config.jobs.settings.get(name, {}))
        branches.append(_branch([name], data))
    if plain:
        branches.append(_branch(plain, ANY_DATA))
    return branches


def _branch(names: list[str], data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["type", "data"], "properties": {
        "type": {"type": "string", "enum": names}, "data": data, "options": _ref("schemas", "Options")}}


def build_spec(config: Config, registry: Registry) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    spec["components"]["schemas"]["Submission"]["oneOf"] = submission_branches(config, registry)
    spec["components"]["schemas"]["Batch"]["properties"]["jobs"]["maxItems"] = config.limits.max_batch_jobs
    spec["components"]["schemas"]["Options"]["properties"]["after"]["maxItems"] = config.limits.max_after
    return spec


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(build_spec(request.app[CONFIG], request.app[REGISTRY]))
