"""Turning a `POST /api/jobs` body into a job: shape, options, and the job type's own check.

Everything the client may set is read from `type`, `data` and `options`; anything else in
the body (`status`, `owner`, `attempts`, …) is ignored, never stored.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from offload.service.config import Config
from offload.service.errors import Invalid
from offload.service.models import JOB_ID_PATTERN, Job, Priority, new_job_id, now_ms
from offload.workers.registry import Registry
from offload.workers.errors import ValidationError

OPTION_KEYS = {"priority", "maxRetries", "retryDelay", "timeout", "delay", "runAt", "idempotencyKey", "after",
               "afterFailed"}
#: What a parent that failed or was cancelled does to a job that follows it (`options.afterFailed`).
AFTER_FAILED = ("cancel", "run")
_JOB_ID = re.compile(JOB_ID_PATTERN)
_BATCH_REF = re.compile(r"#(0|[1-9][0-9]{0,8})")
MAX_DELAY_MS = 365 * 24 * 3600 * 1000
#: The bounds of the whole-number options, in one place for the check and the OpenAPI document.
INT_OPTIONS = {"maxRetries": (0, 10), "retryDelay": (0, 3_600_000), "timeout": (1, 24 * 3600 * 1000),
               "delay": (0, MAX_DELAY_MS)}
MAX_IDEMPOTENCY_KEY = 255
#: RFC 3339 `date-time` (what OpenAPI's `format: date-time` means): the offset is required.
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d)[Tt](\d\d:\d\d):(\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)", re.ASCII)
_RUN_AT_PROBLEM = "must be an RFC 3339 date-time string with an offset, such as 2026-11-28T09:30:00Z"


@dataclass(frozen=True)
class Submission:
    job: Job
    request_hash: str | None
    #: The field that named each of `job.after`, for a 422 about it (`after_field`).
    after_fields: tuple[str, ...] = ()

    def after_field(self, position: int) -> str:
        return self.after_fields[position] if position < len(self.after_fields) else "options.after"


def _after(options: dict[str, Any], needs: list[str], max_after: int,
           batch_index: int | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The jobs a submission follows, `options.after` then those its type's `needs` found in
    its data, each once in the order first named, with the field that named each. Ids are
    checked for shape only here; whether each is the owner's job is known in the store's
    transaction (`store.base.UnknownParent`). In a batch (`batch_index`), `#i` names the
    batch's job `i`, which must come before this one."""
    given = options.get("after")
    if given is None:
        given = []
    if not isinstance(given, list):
        raise Invalid("options.after", 'must be an array of job ids, such as ["job_…"]')
    named: dict[str, str] = {}
    for position, job_id in enumerate(given):
        field = f"options.after[{position}]"
        if isinstance(job_id, str) and _BATCH_REF.fullmatch(job_id):
            if batch_index is None:
                raise Invalid(field, "#i names a job of the same batch; use it in POST /api/jobs/batch")
            if int(job_id[1:]) >= batch_index:
                raise Invalid(field, f"{job_id} is not an earlier job of this batch: a job can follow only the "
                                     "jobs before it (no cycles)")
        elif not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise Invalid(field, "must be a job id (job_…)")
        named.setdefault(job_id, field)
    for job_id in needs:
        if not isinstance(job_id, str) or not (_JOB_ID.match(job_id) or
                                               (batch_index is not None and _BATCH_REF.fullmatch(job_id)
                                                and int(job_id[1:]) < batch_index)):
            raise Invalid("data", f"names {str(job_id)[:80]!r}, which is not a job id")
        named.setdefault(job_id, "data")
    if len(named) > max_after:
        raise Invalid("options.after", f"a job may follow {max_after:,} jobs at most ([limits] max_after); this one "
                                       f"names {len(named):,} (with those its data names)")
    return tuple(named), tuple(named.values())


def _int(options: dict[str, Any], key: str) -> int | None:
    """A whole number within `INT_OPTIONS[key]`, or None when not given (absent or null).
    `3.0` is a whole number, as JSON Schema's `integer` says; `"3"` and `true` are not."""
    value = options.get(key)
    if value is None:
        return None
    low, high = INT_OPTIONS[key]
    if type(value) is float and value.is_integer() and low <= value <= high:
        value = int(value)
    if type(value) is not int or not low <= value <= high:
        raise Invalid(f"options.{key}", f"must be a whole number from {low} to {high}")
    return value


def _run_at(value: Any) -> int:
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise Invalid("options.runAt", _RUN_AT_PROBLEM)
    day, minutes, seconds, fraction, offset = match.groups()
    seconds = min(seconds, "59")  # a leap second (:60) is the last second of its minute
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        moment = datetime.fromisoformat(f"{day}T{minutes}:{seconds}{(fraction or '')[:7]}{offset}")
    except ValueError:
        raise Invalid("options.runAt", _RUN_AT_PROBLEM) from None
    return int(moment.timestamp() * 1000)


def parse_submission(body: Any, owner: str, config: Config, idempotency_header: str | None = None,
                     now: int | None = None, *, registry: Registry, batch_index: int | None = None) -> Submission:
    """`type` and `data` are required and never null; `options` and each option may be
    null, which means "not given" (the default applies), as absent does. `now` is the
    service's clock (`models.Clock`), so due times compare with its claims."""
    if not isinstance(body, dict):
        raise Invalid("body", "must be a JSON object with `type`, `data` and optional `options`")
    type_name = body.get("type")
    if type_name is None:
        raise Invalid("type", "is required: the name of a job type")
    if not isinstance(type_name, str):
        raise Invalid("type", "must be a string naming a job type")
    job_type = registry.get(type_name)
    if job_type is None:
        raise Invalid("type", f"unknown job type {type_name!r} (known: {', '.join(registry.names())})")
    if "data" not in body:
        raise Invalid("data", "is required")
    data = body["data"]
    if data is None:
        raise Invalid("data", "must not be null (send {} for a job without input)")
    check_depth(data, config.limits.max_json_depth)
    options = body.get("options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise Invalid("options", "must be an object")
    unknown = sorted(set(options) - OPTION_KEYS)
    if unknown:
        raise Invalid(f"options.{unknown[0]}", f"is not an option (known: {', '.join(sorted(OPTION_KEYS))})")

    priority = Priority.MEDIUM
    label = options.get("priority")
    if label is not None:
        if label not in ("high", "medium", "low"):
            raise Invalid("options.priority", "must be one of high, medium, low")
        priority = Priority.parse(label)
    max_retries = _int(options, "maxRetries")
    retry_delay = _int(options, "retryDelay")
    timeout = _int(options, "timeout")
    delay = _int(options, "delay")
    run_at = None if options.get("runAt") is None else _run_at(options["runAt"])
    if delay is not None and run_at is not None:
        raise Invalid("options.delay", "give either delay or runAt, not both")
    if idempotency_header is not None and not 1 <= len(idempotency_header) <= MAX_IDEMPOTENCY_KEY:
        raise Invalid("Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    key = options.get("idempotencyKey")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY):
        raise Invalid("options.idempotencyKey", f"must be a string of 1 to {MAX_IDEMPOTENCY_KEY} characters")
    if idempotency_header is not None and key is not None and key != idempotency_header:
        raise Invalid("options.idempotencyKey", "differs from the Idempotency-Key header")
    key = idempotency_header if key is None else key

    after_failed = options.get("afterFailed")
    if after_failed is not None and after_failed not in AFTER_FAILED:
        raise Invalid("options.afterFailed", "must be cancel (the default) or run")

    if job_type.validate is not None:
        try:
            job_type.validate(data, config.jobs.settings.get(type_name, {}))
        except ValidationError as exc:
            raise Invalid(f"data.{exc.field}" if exc.field else "data", exc.problem) from None
    needs = list(job_type.needs(data)) if job_type.needs is not None else []
    after, after_fields = _after(options, needs, config.limits.max_after, batch_index)

    created = now_ms() if now is None else now
    due = created
    if delay is not None:
        due = created + delay
    elif run_at is not None:
        due = max(created, run_at)
    job = Job(
        id=new_job_id(), type=type_name, owner=owner, data=data, priority=priority,
        max_retries=config.jobs.max_retries if max_retries is None else max_retries,
        retry_delay_ms=config.jobs.retry_delay_ms if retry_delay is None else retry_delay,
        timeout_ms=timeout, created_at=created, due_at=due, idempotency_key=key,
        after=after, after_failed=after_failed or "cancel",
    )
    fingerprint = None
    if key is not None:  # only a keyed submission is ever compared with an earlier one
        fingerprint = hashlib.sha256(orjson.dumps([type_name, data, {k: v for k, v in options.items()
                                                                      if k != "idempotencyKey" and v is not None}],
                                                  option=orjson.OPT_SORT_KEYS)).hexdigest()
    return Submission(job, fingerprint, after_fields)


def check_depth(value: Any, max_depth: int, field: str = "data") -> None:
    """422 when `value` nests arrays/objects deeper than `max_depth` levels. Level by level
    rather than recursive, so hostile input cannot exhaust the stack here; scalars are
    passed over with one type check each (a 5,000-line invoice costs about a millisecond)."""
    level = [value] if type(value) in _CONTAINERS else []
    depth = 1
    while level:
        if depth > max_depth:
            raise Invalid(field, f"nests objects and arrays deeper than {max_depth} levels")
        below = []
        for item in level:
            for child in (item.values() if type(item) is dict else item):
                if type(child) in _CONTAINERS:
                    below.append(child)
        level = below
        depth += 1


_CONTAINERS = (dict, list)
