"""Exceptions a job handler raises to tell the service how its job ended.

They live on the worker side and carry only plain data; the worker runtime turns them
into the JSON outcome it sends to the service.
"""
from __future__ import annotations


class JobError(Exception):
    """A handler failure; retried while attempts remain."""

    permanent = False

    def __init__(self, message: str, *, type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.type = type or self.__class__.__name__


class PermanentError(JobError):
    """A failure that another attempt cannot fix (bad input, missing resource):
    the job fails at once, without retries."""

    permanent = True


class ValidationError(PermanentError):
    """Job data that does not fit the job type. `field` is a dotted path such as
    `order.customer.name` or `items[3].quantity`; the service answers 422 with it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", type="ValidationError")
        self.field = field
        self.problem = problem


class Cancelled(Exception):
    """Raised inside a handler by `ctx.progress()` / `ctx.check_cancelled()` once the
    job was cancelled or timed out, so a cooperative handler stops early."""
