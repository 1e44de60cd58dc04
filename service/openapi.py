"""`GET /api/openapi.json`: the REST API described as OpenAPI 3.0, written by hand next to the
contract (DESIGN.md, docs/api.md) so that tools and the schemathesis test can check the
service against it. The WebSocket protocol is described in prose (`/api/ws`'s description)."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from offload.service.validation import MAX_DELAY_MS

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
                     "createdAt", "startedAt", "completedAt", "runAt", "error", "result"],
        "properties": {
            "id": {"type": "string", "pattern": "^job_[a-z2-7]{24}$"},
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "running", "completed", "failed", "cancelled"]},
            "priority": {"type": "string", "enum": ["high", "medium", "low"]},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "message": _nullable({"type": "string"}),
            "attempts": {"type": "integer", "minimum": 0},
            "maxRetries": {"type": "integer", "minimum": 0, "maximum": 10},
            "seq": {"type": "integer", "minimum": 0},
            "createdAt": _ref("schemas", "Time"),
            "startedAt": _nullable(_ref("schemas", "Time")),
            "completedAt": _nullable(_ref("schemas", "Time")),
            "runAt": _nullable(_ref("schemas", "Time")),
            "error": _nullable({"type": "object", "required": ["type", "message"],
                                "properties": {"type": {"type": "string"}, "message": {"type": "string"}}}),
            "result": {"nullable": True, "description": "the job type's JSON result; for a file: filename, "
                       "contentType, size and url (GET it for the bytes)"},
        },
    },
    "Submission": {
        "type": "object", "required": ["type", "data"],
        "properties": {
            "type": {"type": "string", "minLength": 1, "description": "a registered job type, e.g. pdf"},
            "data": {"description": "the job type's input; each type validates its own (422 naming the field)"},
            "options": {"type": "object", "additionalProperties": False, "properties": {
                "priority": {"type": "string", "enum": ["high", "medium", "low"]},
                "maxRetries": {"type": "integer", "minimum": 0, "maximum": 10},
                "retryDelay": {"type": "integer", "minimum": 0, "maximum": 3_600_000, "description": "ms"},
                "timeout": {"type": "integer", "minimum": 1, "maximum": 86_400_000, "description": "ms"},
                "delay": {"type": "integer", "minimum": 0, "maximum": MAX_DELAY_MS, "description": "ms"},
                "runAt": {"type": "string", "format": "date-time"},
                "idempotencyKey": {"type": "string", "minLength": 1, "maxLength": 255},
            }},
        },
        "example": {"type": "pdf", "data": {
            "type": "invoice", "order": {"number": "INV-1001", "customer": {"name": "Ada Lovelace"}},
            "items": [{"name": "Widget", "quantity": 2, "unitPrice": 9.5}]}, "options": {"priority": "high"}},
    },
    "Accepted": {
        "type": "object", "required": ["jobId", "status", "createdAt"],
        "properties": {"jobId": {"type": "string", "pattern": "^job_[a-z2-7]{24}$"}, "status": {"type": "string"},
                       "createdAt": _ref("schemas", "Time")},
    },
    "Stats": {
        "type": "object", "required": ["scope", "jobs"],
        "properties": {
            "scope": {"type": "string", "enum": ["own", "all"],
                      "description": "own: the caller's jobs only; all: the whole service (operators)"},
            "jobs": {"type": "object", "description": "jobs per status",
                     "required": ["pending", "running", "completed", "failed", "cancelled"],
                     "additionalProperties": {"type": "integer", "minimum": 0}},
            "scheduler": {"type": "object", "description": "operators only: node id, running jobs, worker pool"},
            "websocket": {"type": "object", "description": "operators only: subscribers, events published"},
        },
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
                                "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("schemas", "Submission")}}},
                "responses": {
                    "201": _ok("the job is stored", _ref("schemas", "Accepted")),
                    "200": _ok("the job this idempotency key made before", _ref("schemas", "Accepted")),
                    "400": _error("not JSON"), "401": UNAUTHORIZED, "403": FORBIDDEN,
                    "413": _error("the body is too large"), "415": _error("not a JSON content type"),
                    "422": _error("valid JSON that fails validation; the message names the field"),
                    "429": _error("too many submissions, or too many pending jobs", retry_after=True),
                    "503": _error("shutting down, or the store is unavailable", retry_after=True),
                },
            },
            "get": {
                "summary": "Your jobs, newest first",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {
                        "type": "string", "enum": ["pending", "running", "completed", "failed", "cancelled"]}},
                    {"name": "type", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": _ok("a page of jobs", _ref("schemas", "Page")), "401": UNAUTHORIZED,
                              "403": FORBIDDEN, "422": _error("a bad filter, limit or cursor"),
                              "503": _error("the store is unavailable", retry_after=True)},
            },
        },
        "/api/jobs/{jobId}": {
            "parameters": [JOB_ID],
            "get": {"summary": "One job", "responses": {
                "200": _ok("the job", _ref("schemas", "Job")), "401": UNAUTHORIZED, "403": FORBIDDEN,
                "404": NOT_FOUND, "503": _error("the store is unavailable", retry_after=True)}},
            "delete": {"summary": "Cancel a pending or running job", "responses": {
                "200": _ok("the job, now cancelled", _ref("schemas", "Job")), "401": UNAUTHORIZED,
                "403": FORBIDDEN, "404": NOT_FOUND, "409": _error("the job already finished"),
                "503": _error("shutting down, or the store is unavailable", retry_after=True)}},
        },
        "/api/jobs/{jobId}/download": {
            "parameters": [JOB_ID],
            "get": {"summary": "The result file of a completed job", "responses": {
                "200": _ok("the file, with Content-Type and Content-Disposition",
                           {"type": "string", "format": "binary"}, "*/*"),
                "401": UNAUTHORIZED, "403": FORBIDDEN, "404": NOT_FOUND,
                "409": _error("the job is not completed"), "503": _error("the store is unavailable", retry_after=True)}},
        },
        "/api/stats": {"get": {
            "summary": "Job counts: your own; for operators the whole service with queue and worker figures",
            "description": "Operators are the users in `[auth] admins` (in single-user mode, the one user). "
                           "Everyone else gets `scope: own` and their own job counts only.",
            "responses": {
                "200": _ok("statistics", _ref("schemas", "Stats")),
                "401": UNAUTHORIZED, "403": FORBIDDEN, "503": _error("the store is unavailable", retry_after=True)}}},
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
            "description": "Upgrade to a WebSocket (`?token=` may replace the Authorization header). Client ops: "
                           '{"op": "subscribe", "jobId"} | {"op": "subscribe", "all": true} | '
                           '{"op": "unsubscribe", "jobId"} | {"op": "ping"}. Server events: snapshot, progress, '
                           "status, pong, error. A browser Origin must be the service's own or listed in "
                           "[server] allowed_origins. Messages above the size limit close the socket with 1009.",
            "parameters": [{"name": "token", "in": "query", "schema": {"type": "string"}}],
            "responses": {"101": {"description": "switching to the WebSocket protocol"},
                          "400": _error("not a WebSocket upgrade request"), "401": UNAUTHORIZED,
                          "403": _error("a foreign Origin, or a non-loopback Host in single-user mode"),
                          "429": _error("too many WebSocket connections of this user", retry_after=True)}}},
    },
}


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(SPEC)
