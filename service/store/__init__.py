"""Job stores. `open_store(url)` picks the backend by URL scheme and imports its driver
only when it is used."""
from __future__ import annotations

from offload.service.store.base import Fence, IdempotencyMismatch, Page, SlotRecord, Store


def open_store(url: str, **options: object) -> Store:
    scheme, _, rest = url.partition("://")
    if url == ":memory:" or scheme == "sqlite":
        from offload.service.store.sqlite import SQLiteStore

        path = ":memory:" if url == ":memory:" else rest[1:] if rest.startswith("/") else rest
        return SQLiteStore(path, **options)  # type: ignore[arg-type]
    raise ValueError(f"unsupported store URL {url!r} (supported: sqlite:///path/to/file.db)")


__all__ = ["Fence", "IdempotencyMismatch", "Page", "SlotRecord", "Store", "open_store"]
