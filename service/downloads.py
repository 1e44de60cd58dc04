"""How a result file is served: aiohttp's `FileResponse` (streamed from disk with
Content-Length, ETag, Last-Modified, HEAD and byte ranges: 206 with Content-Range, suffix
ranges, 416 with `Content-Range: bytes */size`), and `If-Range` with an entity tag.

aiohttp reads `If-Range` as a date only and applies the range whatever tag it carries. A
client resuming a download sends the ETag it saw; when the file is no longer that one (the
job was retried and completed again, under the same URL), the range must not be applied to
another file's bytes: the answer is the whole new file, 200 (RFC 9110, 13.1.5).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter


def entity_tag(st: os.stat_result) -> str:
    """The strong ETag `FileResponse` gives a file of this size and modification time."""
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


class ResultFileResponse(web.FileResponse):
    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.file_path = path

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        condition = request.headers.get(hdrs.IF_RANGE, "")
        if hdrs.RANGE in request.headers and condition.startswith(('"', "W/")):
            try:
                current = entity_tag(os.stat(self.file_path))
            except OSError:
                current = None  # gone meanwhile: FileResponse answers 404
            if condition != current:  # weak tags never match: If-Range compares strongly
                headers = request.headers.copy()
                del headers[hdrs.RANGE]
                del headers[hdrs.IF_RANGE]
                request = request.clone(headers=headers)
        return await super().prepare(request)
