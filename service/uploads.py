"""Files uploaded with a job, for job types that take one (`registry.FileInput`: `image`).

Two ways in: `POST /api/jobs` as multipart/form-data with a `job` part (the usual JSON) and
a `file` part, streamed to disk in chunks, never held whole; or, for small files, in the
JSON itself as `data.<field> = {"base64": ..., "filename"?}`. Either way the bytes land in
a temporary file in the results folder (`.upload-<random>.part`, fsynced), bounded by
`[limits] max_upload_bytes` / `max_inline_upload_bytes` (413 naming the limit). The type's
`inspect` reads the file's header (422 for a file it refuses) and its answer, with the
name, size and SHA-256, replaces `data.<field>`, so the stored job describes its input
and an idempotent repeat of the same file matches.

Then `Submissions.submit` renames the file to the job's input name (`<job id>-input`,
the folder fsynced) before it inserts the job, and the caller deletes it again if the
insert fails or answers an earlier job: the job and its input both exist or neither. A
crash between the rename and the commit leaves an input file without a job (never a job
without its input). The worker reads it at `ctx.upload`; retention deletes it with the job.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import BodyPartReader, MultipartReader, web

from offload.service.config import Config
from offload.service.errors import Invalid, MalformedJSON, PayloadTooLarge, UnsupportedMediaType
from offload.workers.errors import ValidationError
from offload.workers.registry import Registry, input_name

CHUNK = 256 * 1024
#: How much more of a refused upload is read (and dropped) so that the client, still
#: sending, gets to read the 413 instead of a reset connection.
DRAIN_BYTES = 64 * 1024 * 1024
MAX_FILENAME = 255


@dataclass
class Upload:
    """One uploaded file on disk: a temporary file, then the job's input (`keep`)."""

    path: Path
    filename: str | None = None
    size: int = 0
    sha256: str = ""
    _hash: Any = field(default_factory=hashlib.sha256, repr=False)

    @classmethod
    def create(cls, results: Path, filename: str | None) -> Upload:
        results.mkdir(parents=True, exist_ok=True)
        return cls(results / f".upload-{secrets.token_hex(12)}.part", (filename or None) and filename[:MAX_FILENAME])

    def _write(self, chunks: list[bytes], mode: str = "ab") -> None:
        with open(self.path, mode) as fh:
            for chunk in chunks:
                self._hash.update(chunk)
                fh.write(chunk)
        self.size += sum(map(len, chunks))

    def _finish(self) -> None:
        with open(self.path, "ab") as fh:  # durable before the job that names it is committed
            os.fsync(fh.fileno())
        self.sha256 = self._hash.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"filename": self.filename, "size": self.size, "sha256": self.sha256}

    async def keep(self, results: Path, job_id: str) -> None:
        """Become job `job_id`'s input file, the rename itself durable (the folder fsynced)."""
        target = results / input_name(job_id)

        def move() -> None:
            os.replace(self.path, target)
            folder = os.open(results, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

        await asyncio.to_thread(move)
        self.path = target

    async def discard(self) -> None:
        await asyncio.to_thread(self.path.unlink, missing_ok=True)


async def _receive(part: BodyPartReader, upload: Upload, limit: int) -> None:
    """Stream the part into `upload`'s file; 413 (the file deleted) past `limit` bytes."""
    try:
        await asyncio.to_thread(upload._write, [], "wb")
        while chunk := await part.read_chunk(CHUNK):
            if upload.size + len(chunk) > limit:
                raise PayloadTooLarge(f"the file is larger than {limit:,} bytes ([limits] max_upload_bytes)")
            await asyncio.to_thread(upload._write, [chunk])
        await asyncio.to_thread(upload._finish)
    except PayloadTooLarge:
        await upload.discard()
        dropped = 0
        while dropped < DRAIN_BYTES and (chunk := await part.read_chunk(CHUNK)):
            dropped += len(chunk)
        raise
    except BaseException:
        await upload.discard()
        raise


#: What a submission that is neither JSON nor such a multipart body is told (415).
_SEND = ("send the job as JSON (Content-Type: application/json), or as multipart/form-data with a `job` part "
         "sent as Content-Type: application/json and a `file` part")


async def _next(reader: MultipartReader) -> Any:
    """The next part, or 415 for a body that is not the multipart it says it is."""
    try:
        return await reader.next()
    except (ValueError, AssertionError) as exc:  # aiohttp's words for a missing or wrong boundary
        raise UnsupportedMediaType(f"the multipart/form-data body cannot be read ({exc}); {_SEND}") from None


def _require_json(part: BodyPartReader) -> None:
    """The `job` part must say it is JSON: a plain HTML form's fields carry no content type,
    so a page elsewhere cannot submit a job with one (the Origin check is the first guard)."""
    declared = part.headers.get("Content-Type", "")
    mime, _, parameters = declared.partition(";")
    charset = parameters.strip().lower().removeprefix("charset=").strip('"') if parameters.strip() else "utf-8"
    if mime.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
        found = f"not {declared[:100]!r}" if declared else "none was sent"
        raise UnsupportedMediaType(f"the job part must be sent as Content-Type: application/json ({found}); {_SEND}")


async def read_multipart(request: web.Request, config: Config) -> tuple[Any, Upload | None]:
    """A multipart/form-data submission: the `job` part's JSON and the `file` part, on disk."""
    limits = config.limits
    if (request.content_length or 0) > limits.max_upload_bytes + limits.max_body_bytes:
        raise PayloadTooLarge(f"the request is larger than {limits.max_upload_bytes:,} bytes of file "
                              f"([limits] max_upload_bytes) and {limits.max_body_bytes:,} of job")
    body: Any = None
    upload: Upload | None = None
    try:
        reader = await request.multipart()
        while (part := await _next(reader)) is not None:
            name = getattr(part, "name", None)
            if not isinstance(part, BodyPartReader) or name not in ("job", "file"):
                raise Invalid(name or "multipart", "is not a part of a job submission: send `job` (the JSON "
                                                   '{"type", "data", "options"}) and `file`')
            if (body if name == "job" else upload) is not None:
                raise Invalid(name, "is given twice")
            if name == "file":
                upload = Upload.create(config.results_path, part.filename)
                await _receive(part, upload, limits.max_upload_bytes)
                continue
            _require_json(part)
            raw = bytearray()
            while chunk := await part.read_chunk(CHUNK):
                raw += chunk
                if len(raw) > limits.max_body_bytes:
                    raise PayloadTooLarge(f"the job part is larger than {limits.max_body_bytes} bytes")
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise MalformedJSON(f"the job part is not valid JSON: {exc}") from None
    except BaseException:
        if upload is not None:
            await upload.discard()
        raise
    if body is None:
        if upload is not None:
            await upload.discard()
        raise Invalid("job", 'is required: a part holding the job\'s JSON {"type", "data", "options"}')
    return body, upload


async def _from_base64(value: Any, config: Config, where: str) -> Upload:
    if not isinstance(value, dict) or not isinstance(value.get("base64"), str) or \
            not isinstance(value.get("filename", ""), str) or set(value) - {"base64", "filename"}:
        raise Invalid(where, 'must be {"base64": "<the file, base64>", "filename"?: "..."}, '
                             "or the `file` part of a multipart/form-data POST")
    text: str = value["base64"]
    limit = config.limits.max_inline_upload_bytes
    if len(text) // 4 * 3 > limit + 2:
        raise PayloadTooLarge(f"{where}.base64 is larger than {limit:,} bytes decoded "
                              "([limits] max_inline_upload_bytes); send larger files as multipart/form-data")
    try:
        content = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(f"{where}.base64", "is not base64") from None
    if len(content) > limit:
        raise PayloadTooLarge(f"{where}.base64 is larger than {limit:,} bytes decoded ([limits] max_inline_upload_bytes)")
    upload = Upload.create(config.results_path, value.get("filename"))
    try:
        await asyncio.to_thread(upload._write, [content], "wb")
        await asyncio.to_thread(upload._finish)
    except BaseException:
        await upload.discard()
        raise
    return upload


async def with_upload(body: Any, upload: Upload | None, config: Config, registry: Registry) -> Upload | None:
    """Put the upload's description in `body.data` for a type that takes a file (decoding a
    base64 one to disk first); 422 for a file a type refuses or does not take. On any error
    the upload's file is gone."""
    try:
        name = body.get("type") if isinstance(body, dict) else None
        job_type = registry.get(name) if isinstance(name, str) else None
        if job_type is None:
            return upload  # an unknown type: the submission's own checks answer it
        takes = job_type.upload
        if takes is None:
            if upload is not None:
                raise Invalid("file", f"job type {job_type.name!r} takes no file")
            return None
        data = body.get("data")
        if not isinstance(data, dict):
            raise Invalid("data", "must be an object")
        where = f"data.{takes.field}"
        if upload is not None and takes.field in data:
            raise Invalid(where, "comes from the `file` part; leave it out of the job part")
        field = "file" if upload is not None else where  # what a refusal names
        if upload is None:
            upload = await _from_base64(data.get(takes.field), config, where)
        try:
            described = takes.inspect(str(upload.path), config.jobs.settings.get(job_type.name, {}))
        except ValidationError as exc:
            raise Invalid(field, exc.problem) from None
        body["data"] = {**data, takes.field: {**upload.describe(), **described}}
        return upload
    except BaseException:
        if upload is not None:
            await upload.discard()
        raise


async def submission_of(request: web.Request, config: Config, registry: Registry,
                        read_json: Callable[[web.Request], Awaitable[Any]]) -> tuple[Any, Upload | None]:
    """The body of a `POST /api/jobs` and its uploaded file, if any: multipart/form-data,
    else JSON read by `read_json` (which refuses any other content type)."""
    if request.content_type == "multipart/form-data":
        body, upload = await read_multipart(request, config)
    else:
        body, upload = await read_json(request), None
    return body, await with_upload(body, upload, config, registry)
