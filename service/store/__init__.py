"""Job stores. `open_store(url)` picks the backend by URL scheme and imports its driver
only when it is used: SQLite (`sqlite:///path/to/file.db`, the default, one node) or
PostgreSQL (`postgresql://user@host/db`, one database shared by several nodes)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from offload.service.store.base import Fence, IdempotencyMismatch, Page, SlotRecord, Store

if TYPE_CHECKING:
    from offload.service.config import StoreConfig

_POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_postgres(url: str) -> bool:
    return url.partition("://")[0] in _POSTGRES_SCHEMES


def open_store(url: str, settings: StoreConfig | None = None, **options: Any) -> Store:
    """The backend `url` names, set up from `settings` (the `[store]` section) and `options`;
    nothing is opened until `Store.open()`."""
    scheme, _, rest = url.partition("://")
    if url == ":memory:" or scheme == "sqlite":
        from offload.service.store.sqlite import SQLiteStore

        if settings is not None:
            options = {"synchronous": settings.synchronous, "busy_timeout_ms": settings.busy_timeout_ms, **options}
        path = ":memory:" if url == ":memory:" else rest[1:] if rest.startswith("/") else rest
        return SQLiteStore(path, **options)
    if scheme in _POSTGRES_SCHEMES:
        from offload.service.store.postgres import PostgresStore

        if settings is not None:
            options = {"schema": settings.schema, "pool_min": settings.pool_min, "pool_max": settings.pool_max,
                       "poll_ms": settings.poll_ms, "listen_url": settings.listen_url or None, **options}
        return PostgresStore(url, **options)
    raise ValueError(f"unsupported store URL {url!r} "
                     "(supported: sqlite:///path/to/file.db, postgresql://user@host/database)")


__all__ = ["Fence", "IdempotencyMismatch", "Page", "SlotRecord", "Store", "is_postgres", "open_store"]
