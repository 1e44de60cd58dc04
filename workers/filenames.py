"""The one rule for file names that reach a path or a header: every run of characters
outside [A-Za-z0-9._-] (and whatever `keep` adds) becomes one "_"."""
from __future__ import annotations

import re
from functools import lru_cache


@lru_cache(maxsize=4)
def _unsafe(keep: str) -> re.Pattern[str]:
    return re.compile(f"[^A-Za-z0-9._{re.escape(keep)}-]+")


def safe_filename(name: str, *, keep: str = "") -> str:
    """`name` with every run of other characters than ASCII letters, digits, `.`, `_`, `-`
    and those in `keep` replaced by "_": safe in a path, and in a quoted header value."""
    return _unsafe(keep).sub("_", name)
