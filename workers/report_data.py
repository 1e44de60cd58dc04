"""The report's data: `[jobs.settings.pdf.report]`, payload validation, and the `Report` the
renderer draws.

`parse_report` runs twice: in the service at submit time (so bad input is a 422 naming the
field, `sections[2].chart.series[0].values[3]`, before anything is stored) and in the worker,
which draws what it returns. Like `invoice_data`, this module imports no reportlab.

Text is plain: nothing in a paragraph, heading or cell is read as markup (the renderer draws
strings through the invoice's `Fonts`, never through reportlab's paragraph parser), so a user's
`<b>` or `<img src=...>` prints as written. Whitespace runs collapse to one space; control
characters are dropped at drawing.

The limits bound the work of one job (every paragraph is measured and wrapped, every row
laid out), and are read from `[jobs.settings.pdf.report]` (or flat `report_<key>` keys, as the
environment sets them: `OFFLOAD_JOBS_SETTINGS_PDF_REPORT_MAX_SECTIONS=50`). Paper, margins
and fonts are the invoice's (`[jobs.settings.pdf]`): one table for what every PDF shares.

Three rules are beyond what a JSON schema can say (`report_schema` states them in prose): a
table row has at most as many cells as there are columns (fewer are padded with empty cells),
`align` has at most one entry per column, and each series has exactly one value per category.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import date
from typing import Any, Literal

from offload.workers.errors import ValidationError
from offload.workers.invoice_data import InvoiceSettings
from offload.workers.invoice_data import _date as _iso_date
from offload.workers.invoice_model import Paper

Align = Literal["left", "right", "center"]
ALIGNS: tuple[Align, ...] = ("left", "right", "center")
KINDS = ("bar", "line")
#: Bound on a chart value's magnitude, so an axis label stays a number a person can read.
MAX_VALUE = 1e15


@dataclass(frozen=True, slots=True)
class ReportSettings:
    """`[jobs.settings.pdf.report]`: the bounds of one report."""

    #: Most sections in one report.
    max_sections: int = 200
    #: Most paragraphs in one report, all sections together.
    max_paragraphs: int = 2_000
    #: Longest paragraph, in characters.
    max_paragraph_length: int = 10_000
    #: Longest other text (title, subtitle, author, headings, column names, cells, chart
    #: titles, categories, series names), in characters.
    max_text_length: int = 1_000
    #: Most columns of one table.
    max_columns: int = 20
    #: Most table rows in one report, all tables together.
    max_table_rows: int = 10_000
    #: Most series of one chart.
    max_series: int = 12
    #: Most categories (points of each series) of one chart.
    max_points: int = 500

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ReportSettings:
        """Read `[jobs.settings.pdf]`'s `report` table and `report_<key>` keys; a `ValueError`
        names the first bad key. Whole numbers may be strings of digits (the environment's)."""
        raw: dict[str, Any] = {}
        table = settings.get("report")
        if table is not None:
            if not isinstance(table, Mapping):
                raise ValueError(f"report: must be a table, got {table!r}")
            raw.update(table)
        raw.update({key[len("report_"):]: value for key, value in settings.items() if key.startswith("report_")})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"report.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
        values: dict[str, int] = {}
        for key, value in raw.items():
            if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"report.{key}: must be a whole number of 1 or more, got {value!r}")
            values[key] = value
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Table:
    columns: tuple[str, ...]
    #: Every row has exactly `len(columns)` cells (shorter rows padded with "").
    rows: tuple[tuple[str, ...], ...]
    #: One per column: given, else "right" for a column of numbers and "left" for the others.
    align: tuple[Align, ...]


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    #: One per category; None is a gap (no bar, a break in the line).
    values: tuple[float | None, ...]


@dataclass(frozen=True, slots=True)
class Chart:
    kind: Literal["bar", "line"]
    title: str | None
    categories: tuple[str, ...]
    series: tuple[Series, ...]


@dataclass(frozen=True, slots=True)
class Section:
    heading: str
    paragraphs: tuple[str, ...] = ()
    table: Table | None = None
    chart: Chart | None = None


@dataclass(frozen=True, slots=True)
class Report:
    title: str
    subtitle: str | None
    author: str | None
    date: date | None
    sections: tuple[Section, ...]
    paper: Paper = "A4"
    margins: tuple[float, float, float, float] = (42.0, 42.0, 42.0, 42.0)
    fonts: tuple[str, ...] = ()


def parse_report(data: Any, settings: Mapping[str, Any]) -> Report:
    """Validate a report payload (README, "Reports") into a `Report`, under `[jobs.settings.pdf]`.

    Raises `ValidationError(field, problem)` for the first field that is missing, of the wrong
    type or over its limit. Unknown fields are ignored; `null` means "not given" wherever a
    field is optional."""
    pdf = InvoiceSettings.from_settings(settings)
    limits = ReportSettings.from_settings(settings)
    data = _object(data, "")
    if data.get("type") != "report":
        raise ValidationError("type", 'must be "report"')
    text = limits.max_text_length
    sections = _list(data.get("sections"), "sections", limits.max_sections, "max_sections", required=True)
    budget = _Budget(limits)
    return Report(
        title=_text(data.get("title"), "title", text, required=True),
        subtitle=_text(data.get("subtitle"), "subtitle", text),
        author=_text(data.get("author"), "author", text),
        date=_date(data.get("date"), "date"),
        sections=tuple(_section(entry, f"sections[{i}]", limits, budget) for i, entry in enumerate(sections)),
        paper=pdf.paper, margins=pdf.margins, fonts=pdf.fonts,
    )


class _Budget:
    """The report-wide counts (paragraphs, table rows), spent section by section."""

    def __init__(self, limits: ReportSettings) -> None:
        self.paragraphs = limits.max_paragraphs
        self.rows = limits.max_table_rows

    def spend_paragraphs(self, count: int, path: str, limit: int) -> None:
        self.paragraphs -= count
        if self.paragraphs < 0:
            raise ValidationError(path, f"the report has more than {limit:,} paragraphs in all (max_paragraphs)")

    def spend_rows(self, count: int, path: str, limit: int) -> None:
        self.rows -= count
        if self.rows < 0:
            raise ValidationError(path, f"the report has more than {limit:,} table rows in all (max_table_rows)")


def _section(value: Any, path: str, limits: ReportSettings, budget: _Budget) -> Section:
    value = _object(value, path)
    paragraphs = _list(value.get("paragraphs"), f"{path}.paragraphs", limits.max_paragraphs, "max_paragraphs")
    budget.spend_paragraphs(len(paragraphs), f"{path}.paragraphs", limits.max_paragraphs)
    table = chart = None
    if value.get("table") is not None:
        table = _table(value["table"], f"{path}.table", limits, budget)
    if value.get("chart") is not None:
        chart = _chart(value["chart"], f"{path}.chart", limits)
    return Section(
        heading=_text(value.get("heading"), f"{path}.heading", limits.max_text_length, required=True),
        paragraphs=tuple(_text(p, f"{path}.paragraphs[{i}]", limits.max_paragraph_length, required=True,
                               limit_key="max_paragraph_length") for i, p in enumerate(paragraphs)),
        table=table, chart=chart,
    )


def _table(value: Any, path: str, limits: ReportSettings, budget: _Budget) -> Table:
    value = _object(value, path)
    text = limits.max_text_length
    names = _list(value.get("columns"), f"{path}.columns", limits.max_columns, "max_columns", required=True)
    columns = tuple(_text(name, f"{path}.columns[{i}]", text, required=True) for i, name in enumerate(names))
    rows = _list(value.get("rows"), f"{path}.rows", limits.max_table_rows, "max_table_rows")
    budget.spend_rows(len(rows), f"{path}.rows", limits.max_table_rows)
    width = len(columns)
    cells: list[tuple[str, ...]] = []
    numeric = [True] * width
    for r, row in enumerate(rows):
        row_path = f"{path}.rows[{r}]"
        if not isinstance(row, list):
            raise ValidationError(row_path, "must be a list of cells")
        if len(row) > width:
            raise ValidationError(row_path, f"must have at most {width} cells (one per column), got {len(row):,}")
        out = []
        for c, cell in enumerate(row):
            out.append(_cell(cell, f"{row_path}[{c}]", text))
            numeric[c] = numeric[c] and (cell is None or _is_number(cell))
        cells.append((*out, *("",) * (width - len(out))))
    align: list[Align] = ["right" if numeric[c] and rows else "left" for c in range(width)]
    if value.get("align") is not None:
        given = value["align"]
        if not isinstance(given, list):
            raise ValidationError(f"{path}.align", 'must be a list of "left", "right" or "center", one per column')
        if len(given) > width:
            raise ValidationError(f"{path}.align", f"must have at most {width} entries (one per column), "
                                                   f"got {len(given):,}")
        for c, entry in enumerate(given):
            if entry is None:
                continue
            if entry not in ALIGNS:
                raise ValidationError(f"{path}.align[{c}]", 'must be "left", "right" or "center"')
            align[c] = entry
    return Table(columns, tuple(cells), tuple(align))


def _chart(value: Any, path: str, limits: ReportSettings) -> Chart:
    value = _object(value, path)
    text = limits.max_text_length
    kind = value.get("kind")
    if kind is None:
        raise ValidationError(f"{path}.kind", "is required")
    if kind not in KINDS:
        raise ValidationError(f"{path}.kind", 'must be "bar" or "line"')
    names = _list(value.get("categories"), f"{path}.categories", limits.max_points, "max_points", required=True)
    categories = tuple(_text(name, f"{path}.categories[{i}]", text) or "" for i, name in enumerate(names))
    entries = _list(value.get("series"), f"{path}.series", limits.max_series, "max_series", required=True)
    series = []
    for s, entry in enumerate(entries):
        series_path = f"{path}.series[{s}]"
        entry = _object(entry, series_path)
        name = _text(entry.get("name"), f"{series_path}.name", text, required=True)
        values = _list(entry.get("values"), f"{series_path}.values", limits.max_points, "max_points", required=True)
        if len(values) != len(categories):
            raise ValidationError(f"{series_path}.values", f"must have one value per category ({len(categories)}), "
                                                           f"got {len(values):,}")
        series.append(Series(name, tuple(_value(v, f"{series_path}.values[{i}]") for i, v in enumerate(values))))
    return Chart(kind, _text(value.get("title"), f"{path}.title", text), categories, tuple(series))


# ---------------------------------------------------------------------------- fields


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        raise ValidationError(path, "is required")
    if not isinstance(value, Mapping):
        raise ValidationError(path, "must be an object")
    return value


def _list(value: Any, path: str, limit: int, limit_key: str, *, required: bool = False) -> list[Any]:
    if value is None:
        if required:
            raise ValidationError(path, "is required")
        return []
    if not isinstance(value, list):
        raise ValidationError(path, "must be a list")
    if required and not value:
        raise ValidationError(path, "must not be empty")
    if len(value) > limit:
        raise ValidationError(path, f"must have at most {limit:,} entries ({limit_key}), got {len(value):,}")
    return value


def _text(value: Any, path: str, limit: int, *, required: bool = False,
          limit_key: str = "max_text_length") -> Any:
    """The string with its whitespace collapsed, or None when absent or blank (an error if
    `required`). The length is checked first, on the text as sent."""
    if value is None:
        if required:
            raise ValidationError(path, "is required")
        return None
    if not isinstance(value, str):
        raise ValidationError(path, "must be a string")
    if len(value) > limit:
        raise ValidationError(path, f"must be at most {limit:,} characters long ({limit_key}), got {len(value):,}")
    text = " ".join(value.split())
    if required and not text:
        raise ValidationError(path, "must not be empty")
    return text or None


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _cell(value: Any, path: str, limit: int) -> str:
    """A cell: a string, a number (printed as JSON wrote it: 7, 2.5, 1e+20) or null (empty)."""
    if value is None:
        return ""
    if type(value) is int:
        return str(value)
    if type(value) is float:
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return _text(value, path, limit) or ""


def _value(value: Any, path: str) -> float | None:
    if value is None:
        return None
    if not _is_number(value) or not -MAX_VALUE <= value <= MAX_VALUE:
        raise ValidationError(path, f"must be a number from -{MAX_VALUE:.0e} to {MAX_VALUE:.0e}, or null")
    return float(value)


def _date(value: Any, path: str) -> date | None:
    """YYYY-MM-DD as the invoice reads it; no date (not today's) when none is given."""
    return None if value is None else _iso_date(value, path)
