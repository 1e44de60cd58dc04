"""A job type for tests/test_lazy_fonts.py: which font files this worker process has loaded
(`invoice_text`'s per-process faces), and the bytes of an invoice rendered here."""
from __future__ import annotations

from typing import Any

from offload.workers.registry import job_type


@job_type("test.faces")
def faces(data: Any, ctx: Any) -> dict[str, Any]:
    from offload.workers import invoice_text

    return {"faces": sorted(invoice_text._faces)}
