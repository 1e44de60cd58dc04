"""The built-in `export` job type: rows (inline, or from a named query) to a CSV, JSON Lines
or XLSX file, streamed into the job's result file with constant memory.

The service imports this module to validate submissions (`export_data` alone); the
writers, and XlsxWriter with them, are imported in worker processes only, by the first
export that needs them. Progress follows
the rows written, out of the inline row count or the named query's `count`; cancellation
is checked at every chunk.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from offload.workers.context import Context
from offload.workers.export_data import CONTENT_TYPES, ExportSettings, check_export, export_schema
from offload.workers.registry import job_type

#: The least time between two progress reports with the same percentage (the row count moves on).
REPORT_EVERY_S = 0.5


def validate_export(data: Any, settings: Mapping[str, Any]) -> None:
    check_export(data, ExportSettings.from_settings(settings))


def schema_export(settings: Mapping[str, Any]) -> dict[str, Any]:
    return export_schema(ExportSettings.from_settings(settings))


# No warm-up: XlsxWriter's import (~0.1-0.2 s) would slow every worker's start, and a first
# XLSX export, which takes seconds anyway, hardly notices it.
@job_type("export", validate=validate_export, schema=schema_export)
def export(data: Any, ctx: Context) -> Any:
    from offload.workers.export_sources import inline_source, query_source
    from offload.workers.export_writers import open_writer

    settings = ExportSettings.from_settings(ctx.settings)
    fmt = data["format"]
    columns = data.get("columns")
    ctx.progress(0, "reading rows")
    if "rows" in data:
        source = inline_source(data["rows"], columns, settings.fetch_rows)
    else:
        source = query_source(settings, settings.queries[data["query"]], data.get("params") or {}, columns)
    try:
        out = ctx.file(export_filename(data.get("filename"), fmt), CONTENT_TYPES[fmt])
        writer = open_writer(fmt, out, data.get("sheet"))
        try:
            if source.columns is not None:
                writer.header(source.columns)
            report = Progress(ctx, source.total, 95 if fmt == "xlsx" else 99)
            for chunk in source.chunks:
                ctx.check_cancelled()
                writer.write(chunk)
                report.rows(len(chunk))
            if fmt == "xlsx":
                ctx.progress(95, f"{report.written:,} rows written; assembling the workbook")
            writer.close()
        except BaseException:
            writer.discard()
            raise
    finally:
        source.close()
    ctx.progress(100, f"{report.written:,} rows written")
    return out


class Progress:
    """Rows written, reported as a percentage of `total` up to `share` (the rest is the
    file's finishing), at most once per percent or every `REPORT_EVERY_S` seconds."""

    def __init__(self, ctx: Context, total: int | None, share: int) -> None:
        self.ctx, self.total, self.share = ctx, total, share
        self.written = 0
        self._percent = -1
        self._at = 0.0

    def rows(self, n: int) -> None:
        self.written += n
        percent = min(self.share, self.written * self.share // self.total) if self.total else 0
        now = time.monotonic()
        if percent == self._percent and now - self._at < REPORT_EVERY_S:
            return
        self._percent, self._at = percent, now
        of = f" of {self.total:,}" if self.total else ""
        self.ctx.progress(percent, f"{self.written:,}{of} rows written")


def export_filename(filename: str | None, fmt: str) -> str:
    """The download's name: the one asked for, with the format's extension (added when it has
    another), or `export.<format>`."""
    name = (filename or "").strip() or "export"
    return name if PurePath(name).suffix.lower() == f".{fmt}" else f"{name}.{fmt}"
