"""The job-type registry: `@job_type("name")` marks a function as a job type, and a
`Registry` that loads its module collects it. Each app owns its registry; nothing here is
shared between apps of one process.

A plain function runs in a worker process; an `async def` runs on the service's event
loop (for I/O-bound work such as mail). Either is called as `handler(data, ctx)` with the
job's JSON `data` and a `Context`, and returns a JSON-able value, a `FileOutput`, or None.

An optional `validate(data, settings)` runs in the service when a job is submitted, before
it is stored, and raises `ValidationError` naming the field; a job that passes is stored
as sent. Keep it fast: it runs on the event loop. An optional `schema(settings)` gives the
same rules as an OpenAPI 3.0 schema of `data`, for `/api/openapi.json`. An optional
`warm_up()` runs once in each worker process before its first job, never in the service
(see `runtime.warm_up`): for set-up that would otherwise slow a type's first job. An
optional `needs(data)` names the job ids a valid `data` refers to (an `email`'s
attachments): the job waits for them as if they were in `options.after`. An optional
`upload` (`FileInput`) makes the type take an uploaded file (the built-in `image`).
"""
from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import Any, Callable, Mapping

Validator = Callable[[Any, Mapping[str, Any]], None]
DataSchema = Callable[[Mapping[str, Any]], dict[str, Any]]
WarmUp = Callable[[], None]
Needs = Callable[[Any], "list[str]"]
#: `inspect(path, settings)`: what an uploaded file is (see `FileInput`).
Inspect = Callable[[str, Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class FileOutput:
    """A file result. The worker writes it under the results folder; the service serves it
    at `/api/jobs/{id}/download` with this filename and content type."""

    filename: str
    content_type: str
    #: The bytes, or an iterable of bytes chunks (a generator) written one by one, so a
    #: large file never sits in memory whole.
    content: bytes | Iterable[bytes]
    #: More of the result's metadata, beside `filename`, `contentType` and `size` (JSON; the
    #: `image` type lists its outputs here).
    meta: Mapping[str, Any] | None = None


#: The name of a job's uploaded input file in the results folder: `<job id>` then this.
INPUT_SUFFIX = "-input"


def input_name(job_id: str) -> str:
    """Where a job's uploaded file lives, named after the job alone (never after anything a
    client sent), so retention finds it by the job id and no job can name another's."""
    return f"{job_id}{INPUT_SUFFIX}"


@dataclass(frozen=True)
class FileInput:
    """A job type that takes a file uploaded with the job: `POST /api/jobs` as
    multipart/form-data with a `file` part beside the `job` part, or in JSON as
    `data.<field> = {"base64": ..., "filename"?}`. The service stores the bytes as the
    job's input file (`input_name`) before it stores the job, and puts what
    `inspect(path, settings)` says of them (raising `ValidationError` for a file it
    refuses, before the job is stored) in `data.<field>`; the handler reads the file at
    `ctx.upload`. `inspect` runs in the service: it reads headers, never whole files."""

    field: str
    inspect: Inspect


@dataclass(frozen=True)
class JobType:
    name: str
    handler: Callable[..., Any]
    validate: Validator | None = None
    #: The OpenAPI schema of `data` under the type's settings; None: any JSON value but null.
    schema: DataSchema | None = None
    #: Runs in worker processes at start-up (imports, fonts, caches a first job would pay for).
    warm_up: WarmUp | None = None
    #: The job ids `data` refers to, which the job waits for as for `options.after`.
    needs: Needs | None = None
    #: The file the type takes with each job, if it takes one.
    upload: FileInput | None = None
    #: An `async def` handler runs on the service's event loop instead of in a process.
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.handler))
        if self.is_async and self.warm_up is not None:
            raise ValueError(f"job type {self.name!r}: warm_up is for types that run in worker processes; "
                             "an async def type runs on the service's event loop")


#: Modules holding the built-in job types; every registry loads them first.
BUILTIN_MODULES = ("offload.workers.pdf", "offload.workers.email", "offload.workers.image",
                   "offload.workers.export")
#: The attribute `@job_type` sets on the function it marks: its `JobType`.
MARK = "__offload_job_type__"
#: The list, in each module's own namespace, of the job types its functions declared.
DECLARED = "__offload_job_types__"


def job_type(name: str, *, validate: Validator | None = None,
             schema: DataSchema | None = None, warm_up: WarmUp | None = None,
             needs: Needs | None = None, upload: FileInput | None = None) -> Callable[[Callable], Callable]:
    """Mark the decorated function as the handler of job type `name`. Nothing is
    registered here: a `Registry` that loads the function's module collects it."""

    def mark(handler: Callable) -> Callable:
        declared = JobType(name, handler, validate, schema, warm_up, needs, upload)
        setattr(handler, MARK, declared)
        module = sys.modules.get(handler.__module__)
        if module is not None:  # the module being imported: it keeps its own list
            module.__dict__.setdefault(DECLARED, []).append(declared)
        return handler

    return mark


class ModuleLoadError(ImportError):
    """A job-type module that cannot be imported, for whatever reason (not found, a syntax
    error, an exception while it runs). Its message is one line naming the module, the file
    and line where the import broke (when known) and the error, because start-up prints it
    instead of a traceback."""

    def __init__(self, module: str, error: Exception, where: str | None = None) -> None:
        self.module = module
        self.error = error
        #: True when the module itself (or a package above it) is not on the import path,
        #: rather than found and broken.
        self.not_found = isinstance(error, ModuleNotFoundError) and error.name is not None and \
            (module == error.name or module.startswith(error.name + "."))
        self.where = where or _where(error)
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


class Registry:
    """The job types one app (or one worker process) knows, by name.

    `Registry.from_modules(config.workers.modules)` loads the built-ins, then the
    application's modules; worker processes build theirs from the same module list
    (`modules`), so a type added with `add` alone is known to this process only."""

    def __init__(self) -> None:
        self._types: dict[str, JobType] = {}
        #: The modules loaded, in load order (a dict for order and quick membership).
        self._modules: dict[str, None] = {}

    @classmethod
    def from_modules(cls, modules: tuple[str, ...] | list[str] = ()) -> Registry:
        registry = cls()
        registry.load((*BUILTIN_MODULES, *modules))
        return registry

    @property
    def modules(self) -> tuple[str, ...]:
        """The modules loaded, built-ins included, in load order."""
        return tuple(self._modules)

    def load(self, modules: tuple[str, ...] | list[str]) -> None:
        """Import each module and register the job types its functions declared; a module
        loaded before is not registered again. Raises `ModuleLoadError` (a name another
        module registered names the place of the second declaration)."""
        for name in modules:
            if name in self._modules:
                continue
            try:
                module = importlib.import_module(name)
            except Exception as exc:  # whatever the module's own code raises while it is imported
                raise ModuleLoadError(name, exc) from exc
            for declared_type in getattr(module, DECLARED, ()):
                try:
                    self.add(declared_type)
                except ValueError as exc:
                    code = declared_type.handler.__code__
                    raise ModuleLoadError(name, exc, f"{code.co_filename}, line {code.co_firstlineno}") from exc
            self._modules[name] = None

    def add(self, declared: JobType | Callable[..., Any]) -> None:
        """Register a job type, or a function `@job_type` marked. A name taken by another
        function (not a reload of the same one) is an error naming both."""
        if not isinstance(declared, JobType):
            marked = getattr(declared, MARK, None)
            if not isinstance(marked, JobType):
                raise ValueError(f"{declared!r} is not marked with @job_type")
            declared = marked
        existing = self._types.get(declared.name)
        if existing is not None and existing.handler is not declared.handler and (
                (existing.handler.__module__, existing.handler.__qualname__)
                != (declared.handler.__module__, declared.handler.__qualname__)):
            raise ValueError(f"job type {declared.name!r} is already registered by {existing.handler.__module__}")
        self._types[declared.name] = declared

    def get(self, name: str) -> JobType | None:
        return self._types.get(name)

    def names(self) -> list[str]:
        return sorted(self._types)

    def types(self) -> list[JobType]:
        """Every registered type, by name."""
        return [self._types[name] for name in self.names()]
