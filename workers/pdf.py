"""The built-in `pdf` job type: an invoice payload in, an invoice PDF out.

The service imports this module to validate submissions, which takes `invoice_data` alone.
The renderer, and reportlab with it, is imported where it runs, in the handler and in the
warm-up: in worker processes only, never in the service. The warm-up renders a one-line
invoice at worker start-up, so that a worker's first job does not pay for reportlab's
imports and font set-up.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from offload.workers.context import Context
from offload.workers.invoice_data import InvoiceSettings, check_invoice, invoice_schema, parse_invoice
from offload.workers.filenames import safe_filename
from offload.workers.registry import FileOutput, job_type


def validate_pdf(data: Any, settings: Mapping[str, Any]) -> None:
    """Runs in the service at submit time: a bad payload is refused with a 422 naming the
    field instead of failing later in a worker."""
    check_invoice(data, InvoiceSettings.from_settings(settings))


def pdf_schema(settings: Mapping[str, Any]) -> dict[str, Any]:
    return invoice_schema(InvoiceSettings.from_settings(settings))


def warm_up_pdf() -> None:
    from offload.workers.invoice_render import render_invoice  # worker side only: see the module docstring

    render_invoice(parse_invoice({
        "type": "invoice",
        "order": {"number": "0", "date": "2000-01-01", "customer": {"name": "warm-up"}},
        "items": [{"name": "warm-up", "quantity": 1, "unitPrice": 1}],
    }))


@job_type("pdf", validate=validate_pdf, schema=pdf_schema, warm_up=warm_up_pdf)
def pdf(data: Any, ctx: Context) -> FileOutput:
    from offload.workers.invoice_render import render_invoice  # loaded by the warm-up; a dict lookup here

    ctx.progress(0, "laying out invoice")
    invoice = parse_invoice(data, InvoiceSettings.from_settings(ctx.settings))
    # The fonts of `invoice.fonts` are loaded once per worker; progress goes out at most a
    # score of times whatever the page count, and cancellation is checked on every page.
    content = render_invoice(invoice, progress=ctx.progress, check=ctx.check_cancelled)
    return FileOutput(invoice_filename(invoice.number), "application/pdf", content)


def invoice_filename(number: str) -> str:
    """`invoice-<number>.pdf` with anything outside [A-Za-z0-9._-] replaced, so the name is
    safe in a path and in a Content-Disposition header."""
    safe = safe_filename(number).strip("._")[:100] or "unnamed"
    return f"invoice-{safe}.pdf"
