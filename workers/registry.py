"""The job-type registry: `@job_type("name")` turns a function into a job type.

A plain function runs in a worker process; an `async def` runs on the service's event
loop (for I/O-bound work such as mail). Either is called as `handler(data, ctx)` with the
job's JSON `data` and a `Context`, and returns a JSON-able value, a `FileOutput`, or None.

An optional `validate(data, settings)` runs in the service when a job is submitted, before
it is stored, and raises `ValidationError` naming the field; a job that passes is stored
as sent. Keep it fast: it runs on the event loop. An optional `schema(settings)` gives the
same rules as an OpenAPI 3.0 schema of `data`, for `/api/openapi.json`. An optional
`warm_up()` runs once in each worker process before its first job, never in the service
(see `runtime.warm_up`): for set-up that would otherwise slow a type's first job.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

Validator = Callable[[Any, Mapping[str, Any]], None]
DataSchema = Callable[[Mapping[str, Any]], dict[str, Any]]
WarmUp = Callable[[], None]


@dataclass(frozen=True)
class FileOutput:
    """A file result. The worker writes it under the results folder; the service serves it
    at `/api/jobs/{id}/download` with this filename and content type."""

    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True)
class JobType:
    name: str
    handler: Callable[..., Any]
    validate: Validator | None = None
    #: The OpenAPI schema of `data` under the type's settings; None: any JSON value but null.
    schema: DataSchema | None = None
    #: Runs in worker processes at start-up (imports, fonts, caches a first job would pay for).
    warm_up: WarmUp | None = None
    #: An `async def` handler runs on the service's event loop instead of in a process.
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.handler))
        if self.is_async and self.warm_up is not None:
            raise ValueError(f"job type {self.name!r}: warm_up is for types that run in worker processes; "
                             "an async def type runs on the service's event loop")


_registry: dict[str, JobType] = {}

#: Modules holding the built-in job types; imported by `load()`.
BUILTIN_MODULES = ("offload.workers.pdf",)


def job_type(name: str, *, validate: Validator | None = None, schema: DataSchema | None = None,
             warm_up: WarmUp | None = None) -> Callable[[Callable], Callable]:
    """Register the decorated function as the handler of job type `name`."""

    def register(handler: Callable) -> Callable:
        existing = _registry.get(name)
        if existing is not None and existing.handler is not handler:
            if (existing.handler.__module__, existing.handler.__qualname__) != (
                handler.__module__,
                handler.__qualname__,
            ):
                raise ValueError(f"job type {name!r} is already registered by {existing.handler.__module__}")
        _registry[name] = JobType(name, handler, validate, schema, warm_up)
        return handler

    return register


def load(modules: tuple[str, ...] | list[str] = ()) -> None:
    """Import the built-in job types and the application's modules (config `workers.modules`).
    Called once in the service and once in each worker process."""
    for module in (*BUILTIN_MODULES, *modules):
        importlib.import_module(module)


def get(name: str) -> JobType | None:
    return _registry.get(name)


def names() -> list[str]:
    return sorted(_registry)
