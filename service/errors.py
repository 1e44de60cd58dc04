"""One exception root for the service. Each error knows its HTTP status and its code;
handlers raise, and the error middleware renders the contract's error shape."""
from __future__ import annotations


class OffloadError(Exception):
    status = 500
    code = "internal_error"
    #: Seconds a client should wait before trying again; every 429 and 503 sends it as an
    #: integer `Retry-After` (RFC 9110), which is how client libraries know to back off.
    retry_after: int | None = None

    def __init__(self, message: str, *, headers: dict[str, str] | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        wait = self.retry_after if retry_after is None else retry_after
        if wait is not None:
            self.headers["Retry-After"] = str(max(1, int(wait)))

    def to_wire(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(OffloadError):
    status, code = 400, "bad_request"


class MalformedJSON(BadRequest):
    code = "malformed_json"


class Unauthorized(OffloadError):
    status, code = 401, "unauthorized"


class Forbidden(OffloadError):
    """Refused whoever asks (a foreign WebSocket Origin, a non-loopback Host in
    single-user mode). Never used for another user's job: that is a 404."""

    status, code = 403, "forbidden"


class NotFound(OffloadError):
    status, code = 404, "not_found"


class Conflict(OffloadError):
    status, code = 409, "conflict"


def already_finished(job_id: str, status: str) -> Conflict:
    """The one wording of 409 for a job that ended before a cancel could reach it."""
    return Conflict(f"job {job_id} already {status}; only pending or running jobs can be cancelled")


class Gone(OffloadError):
    """It existed and was deleted on purpose (an expired result file): asking again will not help."""

    status, code = 410, "gone"


class PayloadTooLarge(OffloadError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(OffloadError):
    status, code = 415, "unsupported_media_type"


class Invalid(OffloadError):
    """Valid JSON that fails validation; the message names the field."""

    status, code = 422, "validation_error"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class TooManyRequests(OffloadError):
    status, code = 429, "too_many_requests"
    retry_after = 1

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message, retry_after=retry_after)


class Unavailable(OffloadError):
    """Temporarily unable to serve: the answer says when to come back (`Retry-After`)."""

    status, code = 503, "unavailable"
    retry_after = 5


class ShuttingDown(Unavailable):
    """Draining: a restarted service (or another node) takes the request in a few seconds."""

    code = "shutting_down"
    retry_after = 5


class StoreUnavailable(Unavailable):
    """A locked, read-only or full database: such faults usually clear within seconds."""

    code = "store_unavailable"
    retry_after = 2


def not_retryable(job_id: str, status: str) -> Conflict:
    """The one wording of 409 for a retry of a job that did not fail and was not cancelled."""
    return Conflict(f"job {job_id} is {status}; only failed or cancelled jobs can be retried")


def job_not_found(job_id: str) -> NotFound:
    return NotFound(f"no job with id {job_id!r}")
