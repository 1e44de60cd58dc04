"""Turning a `POST /api/jobs` body into a job: shape, options, and the job type's own check.

Everything the client may set is read from `type`, `data` and `options`; anything else in
the body (`status`, `owner`, `attempts`, …) is ignored, never stored.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from offload.service.config import Config
from offload.service.errors import Invalid
from offload.service.limits import check_depth
from offload.service.models import Job, Priority, new_job_id, now_ms
from offload.workers import registry
from offload.workers.errors import ValidationError

OPTION_KEYS = {"priority", "maxRetries", "retryDelay", "timeout", "delay", "runAt", "idempotencyKey"}
MAX_DELAY_MS = 365 * 24 * 3600 * 1000


@dataclass(frozen=True)
class Submission:
    job: Job
    request_hash: str | None


def _int(options: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(f"options.{key}", f"must be a whole number from {low} to {high}")
    return value


def _run_at(value: Any) -> int:
    if not isinstance(value, str):
        raise Invalid("options.runAt", "must be an ISO-8601 date-time string such as 2026-11-28T09:30:00Z")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid("options.runAt", "must be an ISO-8601 date-time string such as 2026-11-28T09:30:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def parse_submission(body: Any, owner: str, config: Config, idempotency_header: str | None = None,
                     now: int | None = None) -> Submission:
    """`now` is the service's clock (`models.Clock`), so due times compare with its claims."""
    if not isinstance(body, dict):
        raise Invalid("body", "must be a JSON object with `type`, `data` and optional `options`")
    type_name = body.get("type")
    if not isinstance(type_name, str) or not type_name:
        raise Invalid("type", "is required and must be a string naming a job type")
    job_type = registry.get(type_name)
    if job_type is None:
        raise Invalid("type", f"unknown job type {type_name!r} (known: {', '.join(registry.names())})")
    if "data" not in body:
        raise Invalid("data", "is required")
    data = body["data"]
    check_depth(data, config.limits.max_json_depth)
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise Invalid("options", "must be an object")
    unknown = sorted(set(options) - OPTION_KEYS)
    if unknown:
        raise Invalid(f"options.{unknown[0]}", f"is not an option (known: {', '.join(sorted(OPTION_KEYS))})")

    priority = Priority.MEDIUM
    if options.get("priority") is not None:
        label = options["priority"]
        if label not in ("high", "medium", "low"):
            raise Invalid("options.priority", "must be one of high, medium, low")
        priority = Priority.parse(label)
    max_retries = _int(options, "maxRetries", 0, 10)
    retry_delay = _int(options, "retryDelay", 0, 3_600_000)
    timeout = _int(options, "timeout", 1, 24 * 3600 * 1000)
    delay = _int(options, "delay", 0, MAX_DELAY_MS)
    if delay is not None and options.get("runAt") is not None:
        raise Invalid("options.delay", "give either delay or runAt, not both")
    key = options.get("idempotencyKey", idempotency_header)
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 255):
        raise Invalid("options.idempotencyKey", "must be a string of 1 to 255 characters")
    if idempotency_header is not None and key != idempotency_header:
        raise Invalid("options.idempotencyKey", "differs from the Idempotency-Key header")

    if job_type.validate is not None:
        try:
            job_type.validate(data, config.jobs.settings.get(type_name, {}))
        except ValidationError as exc:
            raise Invalid(f"data.{exc.field}" if exc.field else "data", exc.problem) from None

    created = now_ms() if now is None else now
    due = created
    if delay is not None:
        due = created + delay
    elif options.get("runAt") is not None:
        due = max(created, _run_at(options["runAt"]))
    job = Job(
        id=new_job_id(), type=type_name, owner=owner, data=data, priority=priority,
        max_retries=config.jobs.max_retries if max_retries is None else max_retries,
        retry_delay_ms=config.jobs.retry_delay_ms if retry_delay is None else retry_delay,
        timeout_ms=timeout, created_at=created, due_at=due, idempotency_key=key,
    )
    fingerprint = None
    if key is not None:  # only a keyed submission is ever compared with an earlier one
        fingerprint = hashlib.sha256(orjson.dumps([type_name, data, {k: v for k, v in options.items()
                                                                      if k != "idempotencyKey"}],
                                                  option=orjson.OPT_SORT_KEYS)).hexdigest()
    return Submission(job, fingerprint)
