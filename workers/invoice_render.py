"""The invoice's drawing: what `invoice_layout.lay_out` placed, put on a reportlab canvas,
page by page, with progress reported before each page.

Loaded in worker processes only (and by `offload.invoice` when it renders in-process).
"""
from __future__ import annotations

import io
from collections.abc import Callable

from reportlab.pdfbase.pdfmetrics import getFont, stringWidth
from reportlab.pdfgen.canvas import Canvas

from offload.workers.invoice_data import Invoice
from offload.workers.invoice_layout import (
    BOLD, FONT, HEADER_FILL, HEADER_ROW, INK, LEADING, LEFT, MARGIN, MUTED, NOTES_HEAD, NOTES_LEADING, NOTES_SIZE,
    PAGE_HEIGHT, PAGE_WIDTH, RIGHT, RULE, SIZE, TOP, Layout, Page, lay_out,
)

Progress = Callable[[int, str], None]
_REGULAR = getFont(FONT)


def render_invoice(invoice: Invoice, progress: Progress | None = None) -> bytes:
    """Render `invoice` as an A4 PDF and return its bytes.

    `progress(percent, message)` is called before each page (5..95 as the rows go by) and
    with 95 just before the file is written; whatever it raises (`Cancelled`) aborts the
    render, so a cancelled job stops within one page.
    """
    layout = lay_out(invoice)
    count = len(layout.pages)
    rows = len(layout.rows) or 1
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=(PAGE_WIDTH, PAGE_HEIGHT), pageCompression=1)
    canvas.setTitle(f"Invoice {invoice.number}")
    canvas.setSubject(invoice.customer.name)
    for number, page in enumerate(layout.pages, 1):
        if progress is not None:
            done = page.rows.start if page.table else rows
            progress(5 + 90 * done // rows, f"rendering page {number} of {count}")
        if number == 1:
            _draw_first_header(canvas, invoice, layout)
        else:
            canvas.setFont(BOLD, 10)
            canvas.setFillGray(INK)
            canvas.drawString(LEFT, TOP - 8, f"Invoice {layout.number}")
            canvas.setFont(FONT, 9)
            canvas.setFillGray(MUTED)
            canvas.drawRightString(RIGHT, TOP - 8, layout.customer[0])
        if page.table:
            _draw_rows(canvas, layout, page)
        if page.totals_y is not None:
            _draw_totals(canvas, layout, page.totals_y)
        if page.notes:
            _draw_notes(canvas, layout, page)
        canvas.setFont(FONT, 8)
        canvas.setFillGray(MUTED)
        canvas.drawString(LEFT, MARGIN - 16, f"Invoice {layout.number} \u00b7 {invoice.date.isoformat()}")
        canvas.drawRightString(RIGHT, MARGIN - 16, f"Page {number} of {count}")
        canvas.showPage()
    if progress is not None:
        progress(95, "writing PDF")
    canvas.save()
    return buffer.getvalue()


def _draw_first_header(canvas: Canvas, invoice: Invoice, layout: Layout) -> None:
    canvas.setFillGray(INK)
    canvas.setFont(BOLD, 24)
    canvas.drawString(LEFT, TOP - 22, "INVOICE")
    y = TOP - 6
    for label, value in (("Invoice no.", layout.number), ("Date", invoice.date.isoformat()),
                         ("Currency", invoice.currency)):
        canvas.setFont(FONT, 9)
        canvas.setFillGray(MUTED)
        canvas.drawString(RIGHT - 210, y, label)
        canvas.setFont(BOLD, 9)
        canvas.setFillGray(INK)
        canvas.drawRightString(RIGHT, y, value)
        y -= 14
    canvas.setStrokeGray(RULE)
    canvas.setLineWidth(0.8)
    canvas.line(LEFT, TOP - 50, RIGHT, TOP - 50)
    canvas.setFont(BOLD, 7.5)
    canvas.setFillGray(MUTED)
    canvas.drawString(LEFT, TOP - 68, "BILL TO")
    canvas.setFont(BOLD, 11)
    canvas.setFillGray(INK)
    canvas.drawString(LEFT, TOP - 84, layout.customer[0])
    canvas.setFont(FONT, 9)
    y = TOP - 84
    for line in layout.customer[1:]:
        y -= 12.5
        canvas.drawString(LEFT, y, line)


def _draw_rows(canvas: Canvas, layout: Layout, page: Page) -> None:
    """The table header and this page's rows, all in one text object: a `drawString` per
    cell would open and close a text block and re-measure the string every time."""
    x_index, x_sku, x_name = layout.x_index, layout.x_sku, layout.x_name
    x_qty, x_unit, x_total = layout.x_qty, layout.x_unit, layout.x_total
    y = page.top
    canvas.setFillColorRGB(*HEADER_FILL)
    canvas.rect(LEFT, y - HEADER_ROW, RIGHT - LEFT, HEADER_ROW, stroke=0, fill=1)
    text = canvas.beginText()
    at, out = text.setTextOrigin, text.textLine
    text.setFont(BOLD, SIZE)
    text.setFillGray(1)
    base = y - 12
    for x, label in ((x_index, "#"), (x_qty, "Qty"), (x_unit, "Unit price"), (x_total, "Line total")):
        at(x - stringWidth(label, BOLD, SIZE), base)
        out(label)
    for x, label in ((x_sku, "SKU"), (x_name, "Item")):
        at(x, base)
        out(label)
    y -= HEADER_ROW
    text.setFont(FONT, SIZE)
    text.setFillGray(INK)
    width = _REGULAR.stringWidth
    rows, heights, rules = layout.rows, layout.heights, []
    for i in page.rows:
        index, sku, lines, qty, unit, total = rows[i]
        base = y - 10.5
        at(x_index - width(index, SIZE), base)
        out(index)
        if sku:
            at(x_sku, base)
            out(sku)
        at(x_qty - width(qty, SIZE), base)
        out(qty)
        at(x_unit - width(unit, SIZE), base)
        out(unit)
        at(x_total - width(total, SIZE), base)
        out(total)
        for line in lines:
            at(x_name, base)
            out(line)
            base -= LEADING
        y -= heights[i]
        rules.append((LEFT, y, RIGHT, y))
    canvas.drawText(text)
    canvas.setStrokeGray(RULE)
    canvas.setLineWidth(0.4)
    canvas.lines(rules)


def _draw_totals(canvas: Canvas, layout: Layout, y: float) -> None:
    (subtotal_label, subtotal), (tax_label, tax), (total_label, total) = layout.totals
    canvas.setFillGray(INK)
    canvas.setFont(FONT, 9)
    canvas.drawRightString(layout.x_label, y - 18, subtotal_label)
    canvas.drawRightString(layout.x_total, y - 18, subtotal)
    canvas.drawRightString(layout.x_label, y - 32, tax_label)
    canvas.drawRightString(layout.x_total, y - 32, tax)
    canvas.setStrokeGray(INK)
    canvas.setLineWidth(0.8)
    canvas.line(layout.x_label - 60, y - 40, RIGHT, y - 40)
    canvas.setFont(BOLD, 10.5)
    canvas.drawRightString(layout.x_label, y - 56, total_label)
    canvas.drawRightString(layout.x_total, y - 56, total)


def _draw_notes(canvas: Canvas, layout: Layout, page: Page) -> None:
    y = page.notes_y
    canvas.setFillGray(INK)
    if page.notes.start == 0:
        canvas.setFont(BOLD, 9)
        canvas.drawString(LEFT, y - 16, "Notes")
        y -= NOTES_HEAD
    canvas.setFont(FONT, NOTES_SIZE)
    for i in page.notes:
        y -= NOTES_LEADING
        canvas.drawString(LEFT, y + 3, layout.notes[i])
