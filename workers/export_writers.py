"""The three file formats of the `export` job type, each written chunk by chunk into the
job's result file, so memory holds one chunk of rows whatever the total.

Cells keep their types: numbers stay numbers, null stays empty (CSV, XLSX) or null
(JSONL), booleans are booleans, ISO dates and times become XLSX dates; a nested object or
list is written as JSON text (as itself in JSONL), bytes as base64.
"""
from __future__ import annotations

import base64
import csv
import io
import re
from collections.abc import Sequence
from datetime import date, datetime, timezone
from typing import Any, Protocol

import orjson

from offload.workers.results import ResultFile

#: What `csv.writer` writes right as it is (None as an empty field).
_CSV_NATIVE = frozenset({str, int, float, type(None)})
#: XLSX holds numbers as doubles: integers beyond this lose digits, so they are written as text.
_EXACT_INTEGER = 2 ** 53
#: The most rows of one XLSX sheet (the header included); an export goes on in a next sheet.
XLSX_MAX_ROWS = 1_048_576
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:?\d{2})?")


class RowWriter(Protocol):
    def header(self, columns: Sequence[str]) -> None: ...

    def write(self, rows: Sequence[Sequence[Any]]) -> None: ...

    def close(self) -> None:
        """Finish the file (an XLSX workbook is assembled here)."""

    def discard(self) -> None:
        """Give up: release what the writer holds; the result file itself is discarded by the runtime."""


def text(value: Any) -> str:
    """A cell that is not a number, a boolean or text, as text: bytes as base64, others as JSON."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    return orjson.dumps(value, default=str).decode()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError


class CsvWriter:
    """RFC 4180 CSV in UTF-8 (the csv module's quoting), `\\r\\n` line ends; booleans as true/false."""

    def __init__(self, out: ResultFile) -> None:
        self._text = io.TextIOWrapper(out.raw, encoding="utf-8", newline="", write_through=False)
        self._csv = csv.writer(self._text)

    def header(self, columns: Sequence[str]) -> None:
        self._csv.writerow(columns)

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        native = _CSV_NATIVE.issuperset
        self._csv.writerows(row if native(map(type, row)) else [_csv_cell(v) for v in row] for row in rows)

    def close(self) -> None:
        self._text.flush()
        self._text.detach()  # the result file stays open for the runtime to commit

    def discard(self) -> None:
        self._text.detach()


def _csv_cell(value: Any) -> Any:
    if type(value) in _CSV_NATIVE:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    return text(value)


class JsonlWriter:
    """JSON Lines: one JSON value a line, an object per row when the columns are known
    (else the row's array as it is)."""

    def __init__(self, out: ResultFile) -> None:
        self._out = out
        self._columns: Sequence[str] | None = None

    def header(self, columns: Sequence[str]) -> None:
        self._columns = columns

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        dumps, columns = orjson.dumps, self._columns
        if columns is None:
            lines = [dumps(row, default=_jsonable) for row in rows]
        else:
            lines = [dumps(dict(zip(columns, row, strict=False)), default=_jsonable) for row in rows]
        lines.append(b"")
        self._out.write(b"\n".join(lines))

    def close(self) -> None:
        pass

    def discard(self) -> None:
        pass


class XlsxWriter:
    """An XLSX workbook written with XlsxWriter in constant-memory mode: each row goes to a
    temporary file beside the result as it is written, and `close` zips the parts into the
    result. Past a sheet's 1,048,576 rows the export goes on in a next sheet, header repeated."""

    def __init__(self, out: ResultFile, sheet: str | None) -> None:
        import xlsxwriter  # worker side only, on the first XLSX export

        self._book = xlsxwriter.Workbook(out.path, {
            "constant_memory": True, "tmpdir": str(out.folder), "nan_inf_to_errors": True,
            "strings_to_numbers": False, "strings_to_formulas": False, "strings_to_urls": False})
        self._bold = self._book.add_format({"bold": True})
        self._date = self._book.add_format({"num_format": "yyyy-mm-dd"})
        self._datetime = self._book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
        self._name = sheet or "Sheet1"
        self._sheets = 0
        self._columns: Sequence[str] | None = None
        self._new_sheet()

    def _new_sheet(self) -> None:
        self._sheets += 1
        name = self._name if self._sheets == 1 else f"{self._name[:26]} ({self._sheets})"
        self._sheet = self._book.add_worksheet(name)
        self._row = 0
        if self._columns is not None:
            self.header(self._columns)

    def header(self, columns: Sequence[str]) -> None:
        self._columns = columns
        self._sheet.write_row(0, 0, columns, self._bold)
        self._sheet.freeze_panes(1, 0)
        self._row = 1

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        for row in rows:
            if self._row >= XLSX_MAX_ROWS:
                self._new_sheet()
            self._cells(self._row, row)
            self._row += 1

    def _cells(self, r: int, row: Sequence[Any]) -> None:
        sheet = self._sheet
        for c, value in enumerate(row):
            kind = type(value)
            if value is None:
                continue
            if kind is str:
                when = _when(value) if len(value) <= 32 and value[:1].isdigit() else None
                if when is None:
                    sheet.write_string(r, c, value)
                else:
                    sheet.write_datetime(r, c, when, self._datetime if isinstance(when, datetime) else self._date)
            elif kind is float or kind is int and -_EXACT_INTEGER <= value <= _EXACT_INTEGER:
                sheet.write_number(r, c, value)
            elif kind is bool:
                sheet.write_boolean(r, c, value)
            elif kind is int:
                sheet.write_string(r, c, str(value))
            else:
                sheet.write_string(r, c, text(value))

    def close(self) -> None:
        self._book.close()

    def discard(self) -> None:
        self._book.fileclosed = True  # not assembled: nothing to zip, and no complaint when it is collected


def _when(value: str) -> date | datetime | None:
    """An ISO date or date-time (a zone turned into UTC, which XLSX cannot keep), or None."""
    try:
        if _DATE.fullmatch(value):
            day = date.fromisoformat(value)
            return day if day.year >= 1900 else None
        if _DATETIME.fullmatch(value):
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is not None:
                moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
            return moment if moment.year >= 1900 else None
    except ValueError:  # 2026-02-30: text that only looks like a date
        return None
    return None


def open_writer(format: str, out: ResultFile, sheet: str | None = None) -> RowWriter:
    if format == "csv":
        return CsvWriter(out)
    if format == "jsonl":
        return JsonlWriter(out)
    if format == "xlsx":
        return XlsxWriter(out, sheet)
    raise ValueError(f"no export format {format!r}")
