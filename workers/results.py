"""Result files: how an attempt's file result reaches the results folder, whole or not at all.

An attempt writes its own file, `<job id>-<attempt><ext>`, so an attempt that lost the job
can never overwrite the file of the attempt that replaced it. It is written as
`.<name>.part` and renamed once complete: a download never sees half a file, and an attempt
that fails, is cancelled or is killed leaves no file behind (the runtime discards what it
opened; the pool removes what a killed process left, `remove_partials`).

Three ways in, none of which holds the whole file in memory but the first:
- `FileOutput(filename, content_type, content=bytes)`, written at once;
- `FileOutput(..., content=<iterable of bytes>)`, e.g. a generator, written chunk by chunk;
- `ctx.file(filename, content_type)`: a `ResultFile` opened for writing (with a `path` for
  libraries that write files themselves), returned by the handler when it is complete.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from offload.workers.errors import JobError, PermanentError
from offload.workers.filenames import safe_filename
from offload.workers.registry import FileOutput

#: A media type as RFC 9110 writes it: token/token, then parameters in printable ASCII.
#: Anything else (a CR/LF above all) could not be sent as the download's Content-Type.
_MEDIA_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*;[ \t!-~]*)?")
MAX_MEDIA_TYPE = 255


def is_media_type(value: object) -> bool:
    """Whether `value` can be a file result's Content-Type header as it is."""
    return isinstance(value, str) and len(value) <= MAX_MEDIA_TYPE and _MEDIA_TYPE.fullmatch(value) is not None


def check_media_type(content_type: object, where: str) -> None:
    """`PermanentError` (`BadContentType`) unless `content_type` can be served as it is: the
    same handler would return the same, so the job is not retried."""
    if not is_media_type(content_type):
        raise PermanentError(f"the handler {where} with content type {content_type!r}, which is not a media type "
                             f"(type/subtype[; parameters], printable ASCII, at most {MAX_MEDIA_TYPE} characters)",
                             type="BadContentType")


def result_name(job_id: str, attempt: int, filename: str) -> str:
    """The stored name of an attempt's file: `<job id>-<attempt>` and the extension of `filename`."""
    return f"{job_id}-{attempt}{Path(safe_filename(filename)).suffix[:16]}"


def write_failed(exc: OSError) -> JobError:
    """A full disk, a read-only or vanished folder: the job failed (and may be retried), not the process."""
    return JobError(f"the result file could not be written: {exc.strerror or exc}", type="ResultWriteFailed")


class ResultFile:
    """A job's result file while the handler writes it (`ctx.file`). Write bytes to it, or
    hand `path` to a library that writes a file there; then return it from the handler.

    It is a binary file open at `path`, the attempt's partial file; the runtime closes it,
    renames it into place and reports its size. Returned from nowhere, or left behind by a
    failing handler, it is deleted."""

    def __init__(self, folder: Path, name: str, filename: str, content_type: str) -> None:
        self.filename = filename
        self.content_type = content_type
        self.name = name
        self.folder = folder
        #: Where the bytes are written until the job completes (a library may open it itself).
        self.path = str(folder / f".{name}.part")
        self._fh = open(self.path, "wb")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self._fh.write(data)

    def writelines(self, chunks: Iterable[bytes]) -> None:
        self._fh.writelines(chunks)

    def flush(self) -> None:
        self._fh.flush()

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._fh.tell()

    @property
    def closed(self) -> bool:
        return self._fh.closed

    @property
    def raw(self) -> Any:
        """The underlying file object, for code that needs a real one (`io.TextIOWrapper`)."""
        return self._fh

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ResultFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()  # the result stays: closing is not discarding

    def commit(self) -> dict[str, Any]:
        """Close, rename into place; the stored result (`filename`, `contentType`, `size`, `file`)."""
        try:
            self._fh.close()
            size = os.stat(self.path).st_size
            os.replace(self.path, self.folder / self.name)
        except OSError as exc:
            raise write_failed(exc) from exc
        return {"filename": self.filename, "contentType": self.content_type, "size": size, "file": self.name}

    def discard(self) -> None:
        self._fh.close()
        Path(self.path).unlink(missing_ok=True)


class ResultFiles:
    """The result files of one attempt: `ctx.file` opens one (`__call__`); the runtime turns
    what the handler returned into the stored result (`result_of`) and then discards every
    file not committed (`discard`), whatever happened in between."""

    def __init__(self, job_id: str, attempt: int, folder: str | Path) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.folder = Path(folder)
        self._opened: ResultFile | None = None
        self._committed = False

    def __call__(self, filename: str, content_type: str) -> ResultFile:
        if self._opened is not None:
            raise RuntimeError("ctx.file: a job has one result file, and this attempt already opened it")
        check_media_type(content_type, "opened ctx.file")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._opened = ResultFile(self.folder, result_name(self.job_id, self.attempt, filename), filename, content_type)
        return self._opened

    def result_of(self, value: Any) -> dict[str, Any]:
        """The stored result of what the handler returned: a committed file for a `ResultFile`
        or a `FileOutput`, else `{"value": value}`. Raises `JobError` when the file cannot be
        written; an exception of a `FileOutput`'s chunk iterator comes through as it is."""
        if isinstance(value, ResultFile):
            if value is not self._opened:
                raise PermanentError("the handler returned a result file this attempt did not open", type="BadResult")
            self._committed = True
            return value.commit()
        if isinstance(value, FileOutput):
            check_media_type(value.content_type, "returned a FileOutput")
            self.discard()  # a file opened but not returned is not the result
            return self._write(value)
        self.discard()
        return {"value": value}

    def discard(self) -> None:
        if self._opened is not None and not self._committed:
            self._opened.discard()

    def _write(self, output: FileOutput) -> dict[str, Any]:
        name = result_name(self.job_id, self.attempt, output.filename)
        partial = self.folder / f".{name}.part"
        content = output.content
        chunks = (content,) if isinstance(content, (bytes, bytearray, memoryview)) else content
        size = 0
        try:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                fh = open(partial, "wb")
            except OSError as exc:
                raise write_failed(exc) from exc
            with fh:
                for chunk in chunks:  # a generator's own errors (and Cancelled) pass through as they are
                    try:
                        size += fh.write(chunk)
                    except OSError as exc:
                        raise write_failed(exc) from exc
            os.replace(partial, self.folder / name)
        except OSError as exc:
            raise write_failed(exc) from exc
        finally:  # never leave a partial file behind, whatever stopped the write
            partial.unlink(missing_ok=True)
        return {**(output.meta or {}), "filename": output.filename, "contentType": output.content_type,
                "size": size, "file": name}


def remove_partials(folder: str | Path, job_id: str, attempt: int) -> int:
    """Delete what a killed attempt left of its result (`.<job id>-<attempt>[.ext].part`):
    the process could not. Returns how many files were removed."""
    prefix = f".{job_id}-{attempt}"
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        rest = entry.name[len(prefix):]
        if entry.name.startswith(prefix) and entry.name.endswith(".part") and rest[:1] in (".",):
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed
