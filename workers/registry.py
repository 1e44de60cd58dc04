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
import traceback
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


class ModuleLoadError(ImportError):
    """A job-type module that cannot be imported, for whatever reason (not found, a syntax
    error, an exception while it runs). Its message is one line naming the module, the file
    and line where the import broke (when known) and the error, because start-up prints it
    instead of a traceback."""

    def __init__(self, module: str, error: Exception) -> None:
        self.module = module
        self.error = error
        #: True when the module itself (or a package above it) is not on the import path,
        #: rather than found and broken.
        self.not_found = isinstance(error, ModuleNotFoundError) and error.name is not None and \
            (module == error.name or module.startswith(error.name + "."))
        self.where = _where(error)
        place = f" ({self.where})" if self.where else ""
        detail = error.msg if isinstance(error, SyntaxError) else str(error)
        super().__init__(f"cannot import {module!r}{place}: {type(error).__name__}: {detail}", name=module)


def _where(error: Exception) -> str | None:
    """`file, line N` of where an import broke: a syntax error's own place, else the deepest
    frame of the traceback outside the import machinery; None when the module was not found."""
    if isinstance(error, SyntaxError) and error.filename:
        return f"{error.filename}, line {error.lineno}" if error.lineno else error.filename
    machinery = (__file__, importlib.__file__)
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if not frame.filename.startswith("<frozen") and frame.filename not in machinery]
    if not frames:
        return None
    return f"{frames[-1].filename}, line {frames[-1].lineno}"


def load(modules: tuple[str, ...] | list[str] = ()) -> None:
    """Import the built-in job types and the application's modules (config `workers.modules`).
    Called once in the service and once in each worker process. Raises `ModuleLoadError`."""
    for module in (*BUILTIN_MODULES, *modules):
        try:
            importlib.import_module(module)
        except Exception as exc:  # whatever the module's own code raises while it is imported
            raise ModuleLoadError(module, exc) from exc


def get(name: str) -> JobType | None:
    return _registry.get(name)


def names() -> list[str]:
    return sorted(_registry)
