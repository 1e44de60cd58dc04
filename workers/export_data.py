"""The `export` job type's data and settings: what a client may ask for, checked before it
is stored (422 naming the field), and the named queries an operator configured.

Clients never send SQL. They name a query of `[jobs.settings.export.queries]` and give its
parameters, which are bound by the database driver, never written into the SQL. The
parameters a query takes are the `:name` placeholders of its SQL, read once from the
configuration; a missing or an extra one is refused at submission.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from offload.workers.errors import ValidationError

FORMATS = ("csv", "jsonl", "xlsx")
#: What each format is served as.
CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/jsonl",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
QUERY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_FILENAME = 200
#: An XLSX sheet name: what XlsxWriter (and Excel) take.
SHEET_NAME = re.compile(r"^(?!')[^\[\]:*?/\\]{1,31}(?<!')$")
#: A `:name` placeholder; the scanner below skips quoted text and comments, where a colon means nothing.
_SQL_TOKENS = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/|::|:([A-Za-z_][A-Za-z0-9_]*)""", re.S)


def sql_params(sql: str) -> tuple[str, ...]:
    """The named parameters (`:since`) of `sql`, in order of first use."""
    seen: dict[str, None] = {}
    for match in _SQL_TOKENS.finditer(sql):
        if match.group(1):
            seen[match.group(1)] = None
    return tuple(seen)


@dataclass(frozen=True)
class NamedQuery:
    name: str
    sql: str
    #: A query whose one value is the row count of `sql`, for progress; None: no total known.
    count: str | None
    params: tuple[str, ...]
    count_params: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExportSettings:
    """`[jobs.settings.export]`. `database` is a SQLite file path (or `sqlite:///path`),
    relative to the config file's folder; `postgresql://` is reserved for that backend."""

    database: str = "data/export.db"
    queries: Mapping[str, NamedQuery] = field(default_factory=dict)
    #: The most inline rows one job may carry (422 beyond).
    max_rows: int = 100_000
    #: The most bytes the inline rows may take as JSON (422 beyond).
    max_bytes: int = 8 * 1024 * 1024
    #: The most columns a row may have.
    max_columns: int = 1000
    #: Rows fetched from the database at a time (memory is this many rows, whatever the total).
    fetch_rows: int = 2000

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ExportSettings:
        """Raises `ValueError` naming the key; the service checks it at start-up."""
        known = {"database", "queries", "max_rows", "max_bytes", "max_columns", "fetch_rows"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        for key in ("max_rows", "max_bytes", "max_columns", "fetch_rows"):
            if key in settings:
                value = settings[key]
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"{key} must be a whole number >= 1")
                values[key] = value
        if "database" in settings:
            if not isinstance(settings["database"], str) or not settings["database"].strip():
                raise ValueError("database must be a SQLite file path (or sqlite:///path)")
            values["database"] = settings["database"]
            if "://" in values["database"] and not values["database"].startswith("sqlite:///"):
                raise ValueError("database: only a SQLite file is supported (a path, or sqlite:///path); "
                                 "postgresql:// comes with the PostgreSQL store")
        raw = settings.get("queries", {})
        if not isinstance(raw, Mapping):
            raise ValueError("queries must be a table of [queries.<name>] tables")
        values["queries"] = {name: _query(name, spec) for name, spec in raw.items()}
        return cls(**values)


def _query(name: str, spec: Any) -> NamedQuery:
    where = f"queries.{name}"
    if not QUERY_NAME.fullmatch(name):
        raise ValueError(f"{where}: a query name is 1-64 letters, digits, '.', '_' or '-'")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("sql"), str) or not spec["sql"].strip():
        raise ValueError(f"{where}: needs sql = \"select ...\"")
    unknown = sorted(set(spec) - {"sql", "count"})
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: count, sql)")
    count = spec.get("count")
    if count is not None and (not isinstance(count, str) or not count.strip()):
        raise ValueError(f"{where}.count: must be a query returning one number")
    params = sql_params(spec["sql"])
    count_params = sql_params(count) if count else ()
    extra = [p for p in count_params if p not in params]
    if extra:
        raise ValueError(f"{where}.count: uses :{extra[0]}, which the sql does not take (its parameters: "
                         f"{', '.join(params) or 'none'})")
    return NamedQuery(name, spec["sql"], count, params, count_params)


def resolve_database(settings: Mapping[str, Any], base_dir: Path) -> Mapping[str, Any]:
    """`database` relative to the config file's folder (as every path in the config is)."""
    database = settings.get("database", ExportSettings.database)
    if not isinstance(database, str) or "://" in database and not database.startswith("sqlite:///"):
        return settings
    path = Path(database.removeprefix("sqlite:///")).expanduser()
    return {**settings, "database": str(path if path.is_absolute() else base_dir / path)}


_ABSENT = object()


def check_export(data: Any, settings: ExportSettings) -> None:
    """Raises `ValidationError(field, problem)` for the first thing wrong with `data`."""
    if not isinstance(data, dict):
        raise ValidationError("", "must be an object with format and rows or query")
    unknown = sorted(set(data) - {"format", "filename", "columns", "rows", "query", "params", "sheet"})
    if unknown:
        raise ValidationError(unknown[0], "is not a field of an export (fields: format, filename, columns, rows, "
                                          "query, params, sheet)")
    if data.get("format") not in FORMATS:
        raise ValidationError("format", f"must be one of {', '.join(FORMATS)}")
    filename = data.get("filename")
    if "filename" in data and (not isinstance(filename, str) or not filename.strip() or len(filename) > MAX_FILENAME):
        raise ValidationError("filename", f"must be a non-empty string of at most {MAX_FILENAME} characters")
    sheet = data.get("sheet")
    if "sheet" in data and (not isinstance(sheet, str) or not SHEET_NAME.fullmatch(sheet)):
        raise ValidationError("sheet", "must be 1-31 characters, none of [ ] : * ? / \\, not starting or ending "
                                       "with ' (an XLSX sheet name)")
    columns = data.get("columns")
    if "columns" in data:
        if not isinstance(columns, list) or not 1 <= len(columns) <= settings.max_columns:
            raise ValidationError("columns", f"must be a list of 1 to {settings.max_columns} column names")
        for i, name in enumerate(columns):
            if not isinstance(name, str) or not name:
                raise ValidationError(f"columns[{i}]", "must be a non-empty string")
        if len(set(columns)) != len(columns):
            raise ValidationError("columns", "names each column once")
    if ("rows" in data) == ("query" in data):
        raise ValidationError("rows", "give either rows (inline) or query (a named query), not both" if "rows" in data
                              else "is required unless a named query is given (query)")
    if "rows" in data:
        if "params" in data:
            raise ValidationError("params", "belongs to a named query (query); inline rows take none")
        _check_rows(data["rows"], settings)
    else:
        _check_query(data.get("query"), data.get("params", _ABSENT), settings)


def _check_rows(rows: Any, settings: ExportSettings) -> None:
    if not isinstance(rows, list):
        raise ValidationError("rows", "must be a list of objects or a list of arrays")
    if len(rows) > settings.max_rows:
        raise ValidationError("rows", f"has {len(rows)} rows; at most {settings.max_rows} may be sent inline "
                                      "([jobs.settings.export] max_rows); export more from a named query")
    if not rows:
        return
    kind = dict if isinstance(rows[0], dict) else list
    for i, row in enumerate(rows):
        if not isinstance(row, kind):
            expected = "an object, as rows[0] is" if kind is dict else "an array, as rows[0] is"
            raise ValidationError(f"rows[{i}]", f"must be {expected}")
        if len(row) > settings.max_columns:
            raise ValidationError(f"rows[{i}]", f"has {len(row)} columns; at most {settings.max_columns}")
    size = len(orjson.dumps(rows))
    if size > settings.max_bytes:
        raise ValidationError("rows", f"take {size} bytes as JSON; at most {settings.max_bytes} may be sent inline "
                                      "([jobs.settings.export] max_bytes); export more from a named query")


def _check_query(name: Any, params: Any, settings: ExportSettings) -> None:
    if not isinstance(name, str) or name not in settings.queries:
        configured = ", ".join(sorted(settings.queries)) or "none are configured"
        raise ValidationError("query", f"names no query of [jobs.settings.export.queries] ({configured})")
    query = settings.queries[name]
    if params is _ABSENT:
        params = {}
    if not isinstance(params, dict):
        raise ValidationError("params", "must be an object of the query's parameters")
    for key, value in params.items():
        if key not in query.params:
            raise ValidationError(f"params.{key}", f"is not a parameter of query {name!r} "
                                                   f"(it takes: {', '.join(query.params) or 'none'})")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ValidationError(f"params.{key}", "must be a string, a number, a boolean or null")
    for key in query.params:
        if key not in params:
            raise ValidationError(f"params.{key}", f"is required by query {name!r}")


def export_schema(settings: ExportSettings) -> dict[str, Any]:
    """The OpenAPI 3.0 schema of an export's `data`: one branch for inline rows and one per
    named query, each with exactly the parameters its SQL takes."""
    scalar = {"nullable": True, "anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}
    common = {
        "format": {"type": "string", "enum": list(FORMATS)},
        "filename": {"type": "string", "minLength": 1, "maxLength": MAX_FILENAME, "pattern": r"\S"},
        "sheet": {"type": "string", "pattern": SHEET_NAME.pattern},
        "columns": {"type": "array", "minItems": 1, "maxItems": settings.max_columns, "uniqueItems": True,
                    "items": {"type": "string", "minLength": 1}},
    }
    inline = {"type": "object", "required": ["format", "rows"], "additionalProperties": False, "properties": {
        **common,
        "rows": {"anyOf": [
            {"type": "array", "maxItems": settings.max_rows,
             "items": {"type": "object", "maxProperties": settings.max_columns}},
            {"type": "array", "maxItems": settings.max_rows,
             "items": {"type": "array", "maxItems": settings.max_columns}},
        ]}}}
    branches = [inline]
    for name, query in sorted(settings.queries.items()):
        params = {"type": "object", "additionalProperties": False,
                  "properties": {param: scalar for param in query.params}}
        if query.params:
            params["required"] = list(query.params)
        branches.append({"type": "object", "required": ["format", "query", *(["params"] if query.params else [])],
                         "additionalProperties": False, "properties": {
                             **common, "query": {"type": "string", "enum": [name]}, "params": params}})
    return {"anyOf": branches} if len(branches) > 1 else inline
