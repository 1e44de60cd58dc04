"""The built-in `pdf` job type: `data.type` picks the document. `"invoice"` (also when no
type is given) renders an invoice (`invoice_*`); `"report"` a report with sections of
paragraphs, tables and charts (`report_*`).

The service imports this module to validate submissions, which takes `invoice_data` and
`report_data` alone. The renderers, and reportlab with them, are imported where they run, in
the handler and in the warm-up: in worker processes only, never in the service. The warm-up
renders a one-line invoice at worker start-up, so that a worker's first job does not pay for
reportlab's imports and font set-up.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from offload.workers.context import Context
from offload.workers.errors import ValidationError
from offload.workers.invoice_data import InvoiceSettings, check_invoice, invoice_schema, parse_invoice
from offload.workers.filenames import safe_filename
from offload.workers.registry import FileOutput, job_type
from offload.workers.report_data import ReportSettings, parse_report
from offload.workers.report_schema import report_schema

#: The documents `data.type` can name.
DOCUMENTS = ("invoice", "report")


def document_of(data: Any) -> str:
    """The document `data` asks for; anything but a known `type` is refused naming the field
    (no type, or null, is an invoice, as it always was)."""
    kind = data.get("type") if isinstance(data, Mapping) else None
    if kind is None:
        return "invoice"
    if kind not in DOCUMENTS:
        raise ValidationError("type", 'must be "invoice" or "report"')
    return kind


def validate_pdf(data: Any, settings: Mapping[str, Any]) -> None:
    """Runs in the service at submit time: a bad payload is refused with a 422 naming the
    field instead of failing later in a worker."""
    if document_of(data) == "report":
        parse_report(data, settings)
    else:
        check_invoice(data, InvoiceSettings.from_settings(settings))


def pdf_schema(settings: Mapping[str, Any]) -> dict[str, Any]:
    """One branch per document. The invoice's `type` is optional, so the branches are told
    apart by its enum (a report's is required and "report") rather than by an OpenAPI
    `discriminator`, which needs the property in every branch."""
    return {"oneOf": [invoice_schema(InvoiceSettings.from_settings(settings)),
                      report_schema(ReportSettings.from_settings(settings))],
            "description": 'data.type picks the document: "invoice" (the default) or "report"'}


def warm_up_pdf() -> None:
    from offload.workers.invoice_render import render_invoice  # worker side only: see the module docstring

    render_invoice(parse_invoice({
        "type": "invoice",
        "order": {"number": "0", "date": "2000-01-01", "customer": {"name": "warm-up"}},
        "items": [{"name": "warm-up", "quantity": 1, "unitPrice": 1}],
    }))


@job_type("pdf", validate=validate_pdf, schema=pdf_schema, warm_up=warm_up_pdf)
def pdf(data: Any, ctx: Context) -> FileOutput:
    if document_of(data) == "report":
        return report(data, ctx)
    from offload.workers.invoice_render import render_invoice  # loaded by the warm-up; a dict lookup here

    ctx.progress(0, "laying out invoice")
    invoice = parse_invoice(data, InvoiceSettings.from_settings(ctx.settings))
    # The fonts of `invoice.fonts` are loaded once per worker; progress goes out at most a
    # score of times whatever the page count, and cancellation is checked on every page.
    content = render_invoice(invoice, progress=ctx.progress, check=ctx.check_cancelled)
    return FileOutput(invoice_filename(invoice.number), "application/pdf", content)


def report(data: Any, ctx: Context) -> FileOutput:
    from offload.workers.report_render import render_report  # worker side only: see the module docstring

    ctx.progress(0, "laying out report")
    document = parse_report(data, ctx.settings)
    # Progress as each section is rendered; cancellation checked between sections and pages.
    content = render_report(document, progress=ctx.progress, check=ctx.check_cancelled)
    return FileOutput(report_filename(document.title), "application/pdf", content)


def report_filename(title: str) -> str:
    """`report-<title>.pdf`, made safe as `invoice_filename` makes the number."""
    return _pdf_name("report", title, "untitled")


def invoice_filename(number: str) -> str:
    """`invoice-<number>.pdf` with anything outside [A-Za-z0-9._-] replaced, so the name is
    safe in a path and in a Content-Disposition header."""
    return _pdf_name("invoice", number, "unnamed")


def _pdf_name(kind: str, name: str, fallback: str) -> str:
    safe = safe_filename(name).strip("._")[:100] or fallback
    return f"{kind}-{safe}.pdf"
