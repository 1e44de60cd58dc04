"""Where an export's rows come from: the job's own inline rows, or a named query run on the
configured database through a cursor read a chunk at a time (memory holds one chunk,
whatever the row count).

The database is opened read-only. SQLite is the one backend today; `connect` is the seam
where another one (PostgreSQL, with a server-side cursor and its own parameter style)
comes in: a DB-API connection whose cursor takes the query's `:name` parameters.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from offload.workers.errors import JobError, PermanentError, ValidationError
from offload.workers.export_data import ExportSettings, NamedQuery


@dataclass
class Source:
    """Rows in chunks, with their column names (None: arrays with no header) and, when known,
    their count (for progress)."""

    columns: list[str] | None
    total: int | None
    chunks: Iterator[Sequence[Sequence[Any]]]
    close: Callable[[], None] = field(default=lambda: None)


def inline_source(rows: list[Any], columns: list[str] | None, chunk: int) -> Source:
    """Objects become rows of `columns` (default: every key, in order of first appearance;
    a key a row lacks is null). Arrays are written as they are, or, with `columns`, cut or
    padded to them."""
    if rows and isinstance(rows[0], dict):
        if columns is None:
            columns = list({key: None for row in rows for key in row})
        names = columns
        tuples: Iterator[Sequence[Any]] = (tuple(row.get(name) for name in names) for row in rows)
    elif columns is not None:
        width = len(columns)
        tuples = (tuple(row[:width]) + (None,) * (width - len(row)) for row in rows)
    else:
        tuples = iter(rows)
    return Source(columns, len(rows), _chunked(tuples, chunk))


def _chunked(rows: Iterator[Sequence[Any]], size: int) -> Iterator[list[Sequence[Any]]]:
    chunk: list[Sequence[Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def connect(database: str) -> Any:
    """A read-only DB-API connection to the export database."""
    if "://" in database and not database.startswith("sqlite:///"):
        raise PermanentError("[jobs.settings.export] database: only SQLite files are supported "
                             "(a path, or sqlite:///path)", type="ExportDatabase")
    path = Path(database.removeprefix("sqlite:///"))
    try:
        connection = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, check_same_thread=False)
        connection.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        raise JobError(f"the export database cannot be opened ([jobs.settings.export] database): {exc}",
                       type="ExportDatabase") from None
    return connection


def query_source(settings: ExportSettings, query: NamedQuery, params: dict[str, Any],
                 columns: list[str] | None) -> Source:
    """The rows of a named query, `params` bound by the driver, fetched `fetch_rows` at a time."""
    connection = connect(settings.database)
    try:
        total = None
        if query.count:
            total = int(_run(connection, query, query.count, params).fetchone()[0])
        cursor = _run(connection, query, query.sql, params)
        names = [d[0] for d in cursor.description or ()]
        pick = _picked(names, columns, query.name)
    except BaseException:
        connection.close()
        raise

    def chunks() -> Iterator[Sequence[Sequence[Any]]]:
        while True:
            try:
                rows = cursor.fetchmany(settings.fetch_rows)
            except sqlite3.Error as exc:
                raise JobError(f"query {query.name!r} failed while its rows were read: {exc}",
                               type="ExportQuery") from None
            if not rows:
                return
            yield rows if pick is None else [tuple(row[i] for i in pick) for row in rows]

    return Source(columns or names, total, chunks(), connection.close)


def _run(connection: Any, query: NamedQuery, sql: str, params: dict[str, Any]) -> Any:
    try:
        return connection.execute(sql, params)
    except sqlite3.Error as exc:
        error = JobError if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _TRANSIENT else PermanentError
        raise error(f"query {query.name!r} failed: {exc}", type="ExportQuery") from None


#: SQLite's busy, locked, I/O and cannot-open errors: another attempt may do. Any other
#: (a syntax error, no such table) is the configured SQL's, which no attempt can fix.
_TRANSIENT = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN})


def _picked(names: list[str], columns: list[str] | None, query: str) -> list[int] | None:
    """The positions of `columns` among the query's columns; None: all of them, as they are."""
    if columns is None or columns == names:
        return None
    positions = {name: i for i, name in reversed(list(enumerate(names)))}
    for i, name in enumerate(columns):
        if name not in positions:
            raise ValidationError(f"columns[{i}]", f"is not a column of query {query!r} "
                                                   f"(its columns: {', '.join(names)})")
    return [positions[name] for name in columns]
