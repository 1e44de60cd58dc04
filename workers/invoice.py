"""The invoice in one import, for rendering in this process (`offload.invoice`'s fallback,
benchmarks): `parse_invoice` from `invoice_data`, `render_invoice` from `invoice_render`.
It imports reportlab; the service process never imports this module."""
from __future__ import annotations

from offload.workers.invoice_data import InvoiceSettings, parse_invoice
from offload.workers.invoice_render import render_invoice

__all__ = ["InvoiceSettings", "parse_invoice", "render_invoice"]
