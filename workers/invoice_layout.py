"""The invoice's layout: every string measured, wrapped and placed, and every row given its
page, before anything is drawn.

`invoice_render` draws what `lay_out` decides. Laying the page out by hand, in one pass that
measures every row first, is what makes the page count ("Page N of M") known before the
first page is drawn; Platypus tables are 5-7x slower at a few thousand rows and need a
second pass for it. Coordinates are PDF points, origin bottom left; y runs up the page.

Measuring needs reportlab's font metrics, so this module is loaded in worker processes only.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from itertools import islice

from reportlab.pdfbase.pdfmetrics import getFont, stringWidth

from offload.workers.invoice_data import Invoice

PAGE_WIDTH, PAGE_HEIGHT = 595.2756, 841.8898  # A4
MARGIN = 42.0
LEFT, RIGHT, TOP = MARGIN, PAGE_WIDTH - MARGIN, PAGE_HEIGHT - MARGIN
CONTINUED_TOP = TOP - 24
TABLE_BOTTOM = MARGIN + 10
FONT, BOLD = "Helvetica", "Helvetica-Bold"
SIZE, LEADING, ROW, HEADER_ROW, PAD = 8.5, 10.0, 15.0, 18.0, 5.0
SKU_MAX, NAME_LINES, ADDRESS_LINES = 80.0, 3, 6
TOTALS_HEIGHT, NOTES_HEAD, NOTES_SIZE, NOTES_LEADING = 64.0, 24.0, 9.0, 12.0
INK, MUTED, RULE = 0.1, 0.42, 0.82
HEADER_FILL = (0.16, 0.22, 0.31)
ELLIPSIS = "\u2026"
_REGULAR = getFont(FONT)

Row = tuple[str, str, list[str], str, str, str]  # #, sku, name lines, qty, unit price, line total


@dataclass(slots=True)
class Page:
    top: float
    table: bool
    rows: range = range(0)
    totals_y: float | None = None
    notes: range = range(0)
    notes_y: float = 0.0


@dataclass(slots=True)
class Layout:
    """Everything measured before the first page is drawn: the strings, where they go,
    and which page each row lands on."""

    rows: list[Row]
    heights: list[float]
    x_index: float
    x_sku: float
    x_name: float
    x_qty: float
    x_unit: float
    x_total: float
    x_label: float
    number: str
    customer: list[str]
    first_top: float
    totals: list[tuple[str, str]]
    notes: list[str]
    pages: list[Page] = field(default_factory=list)


def lay_out(invoice: Invoice) -> Layout:
    """Measure, wrap and place every string of `invoice`, then assign the rows, the totals
    and the note lines to pages (`_paginate`): the drawing needs no measuring of its own."""
    currency, items = invoice.currency, invoice.items
    index = [str(i) for i in range(1, len(items) + 1)]
    skus = [item.sku or "" for item in items]
    sku_widths = [_width(sku) for sku in skus]
    qtys = [_quantity(item.quantity) for item in items]
    units = [_price(currency, item.unit_price) for item in items]
    totals = [_money(currency, item.line_total) for item in items]

    def column(widest: float, header: str) -> float:
        return max(widest, stringWidth(header, BOLD, SIZE)) + 2 * PAD

    w_index = column(_widest(index), "#")
    w_sku = column(min(max(sku_widths, default=0.0), SKU_MAX), "SKU")
    w_qty, w_unit, w_total = column(_widest(qtys), "Qty"), column(_widest(units), "Unit price"), column(
        _widest(totals), "Line total")
    x_name = LEFT + w_index + w_sku + PAD
    name_width = RIGHT - w_total - w_unit - w_qty - PAD - x_name
    sku_width = w_sku - 2 * PAD

    rows: list[Row] = []
    heights: list[float] = []
    for i, item in enumerate(items):
        name, sku = item.name, skus[i]
        lines = [name] if _width(name) <= name_width else _wrap(name, FONT, SIZE, name_width, NAME_LINES)
        if sku_widths[i] > sku_width:
            sku = _fit(sku, FONT, SIZE, sku_width)
        rows.append((index[i], sku, lines, qtys[i], units[i], totals[i]))
        heights.append(ROW + LEADING * (len(lines) - 1))

    rate = format((invoice.tax_rate * 100).normalize(), "f")
    summary = [
        ("Subtotal", _money(currency, invoice.subtotal)),
        (f"Tax ({rate}%)", _money(currency, invoice.tax)),
        ("Total", _money(currency, invoice.total)),
    ]
    x_total = RIGHT - PAD
    widest_sum = max(stringWidth(value, BOLD, 10.5) for _, value in summary)
    half = (RIGHT - LEFT) / 2
    customer = invoice.customer
    details = [*customer.address[:ADDRESS_LINES], *([customer.email] if customer.email else [])]
    layout = Layout(
        rows=rows,
        heights=heights,
        x_index=LEFT + w_index - PAD,
        x_sku=LEFT + w_index + PAD,
        x_name=x_name,
        x_qty=RIGHT - w_total - w_unit - PAD,
        x_unit=RIGHT - w_total - PAD,
        x_total=x_total,
        x_label=min(RIGHT - w_total - PAD, x_total - widest_sum - 24),
        number=_fit(invoice.number, BOLD, 9, 150),
        customer=[_fit(customer.name, BOLD, 11, half), *(_fit(line, FONT, 9, half) for line in details)],
        first_top=TOP - 86 - 12.5 * len(details) - 22,
        totals=summary,
        notes=[line for paragraph in (invoice.notes or "").split("\n") if paragraph
               for line in _wrap(paragraph, FONT, NOTES_SIZE, RIGHT - LEFT)],
    )
    layout.pages = _paginate(layout)
    return layout


def _paginate(layout: Layout) -> list[Page]:
    """Assign rows, then the totals (kept together), then the note lines to pages."""
    pages: list[Page] = []
    page = Page(layout.first_top, table=True)
    y, start = layout.first_top - HEADER_ROW, 0
    for i, height in enumerate(layout.heights):
        if y - height < TABLE_BOTTOM:
            page.rows = range(start, i)
            pages.append(page)
            page, y, start = Page(CONTINUED_TOP, table=True), CONTINUED_TOP - HEADER_ROW, i
        y -= height
    page.rows = range(start, len(layout.heights))
    if y - TOTALS_HEIGHT < TABLE_BOTTOM:
        pages.append(page)
        page, y = Page(CONTINUED_TOP, table=False), CONTINUED_TOP
    page.totals_y, y = y, y - TOTALS_HEIGHT
    first, count = 0, len(layout.notes)
    while first < count:
        fits = int((y - (NOTES_HEAD if first == 0 else 0) - TABLE_BOTTOM) // NOTES_LEADING)
        if fits > 0:
            page.notes, page.notes_y = range(first, min(count, first + fits)), y
            first = page.notes.stop
        if first < count:
            pages.append(page)
            page, y = Page(CONTINUED_TOP, table=False), CONTINUED_TOP
    pages.append(page)
    return pages


def _width(text: str) -> float:
    return _REGULAR.stringWidth(text, SIZE)


def _widest(numbers: list[str]) -> float:
    """Width of the widest of these formatted numbers, measuring only one: Helvetica's digits
    are all 556 units wide and its comma and point 278, so width follows this key."""
    return _width(max(numbers, key=lambda text: 2 * len(text) - text.count(",") - text.count("."), default=""))


def _wrap(text: str, font: str, size: float, width: float, max_lines: int = 0) -> list[str]:
    """Greedy word wrap, linear in the length of `text`. Standard-font widths simply add up
    (reportlab does not kern), so each word is measured once and a word wider than the line
    is broken by characters, each measured once (re-measuring what is left of the word after
    each line made one long word quadratic); text beyond `max_lines` is not laid out at all,
    and the last line ends with an ellipsis."""
    lines = list(islice(_wrapped(text, font, size, width), max_lines + 1 if max_lines else None))
    if max_lines and len(lines) > max_lines:
        lines[max_lines - 1] = _fit(" ".join(lines[max_lines - 1:]), font, size, width)
        del lines[max_lines:]
    return lines


def _wrapped(text: str, font: str, size: float, width: float) -> Iterator[str]:
    space = _word_width(" ", font, size)
    line: list[str] = []
    used = 0.0
    for word in text.split(" "):
        w = _word_width(word, font, size)
        if line and used + space + w <= width:
            line.append(word)
            used += space + w
            continue
        if line:
            yield " ".join(line)
        if w > width:
            pieces = _break(word, font, size, width)
            word, w = next(pieces)
            for piece, piece_width in pieces:
                yield word
                word, w = piece, piece_width
        line, used = [word], w
    yield " ".join(line)


def _break(word: str, font: str, size: float, width: float) -> Iterator[tuple[str, float]]:
    """`word` in pieces that each fit in `width` (at least one character each), with their
    widths: one pass over its characters, and lazily, so a caller that needs three lines of a
    long word reads only the start of it."""
    start, used = 0, 0.0
    for i, char in enumerate(word):
        w = _char_width(char, font, size)
        if used + w > width and i > start:
            yield word[start:i], used
            start, used = i, 0.0
        used += w
    yield word[start:], used


@lru_cache(maxsize=4096)
def _char_width(char: str, font: str, size: float) -> float:
    return stringWidth(char, font, size)


@lru_cache(maxsize=8192)
def _word_width(word: str, font: str, size: float) -> float:
    """Item names share most of their words, and a worker keeps this cache across jobs."""
    return stringWidth(word, font, size)


def _fit(text: str, font: str, size: float, width: float, mark: str = ELLIPSIS) -> str:
    """`text`, or its longest prefix that fits in `width` followed by `mark`."""
    if stringWidth(text, font, size) <= width:
        return text
    room, used = width - stringWidth(mark, font, size), 0.0
    for i, char in enumerate(text):
        used += stringWidth(char, font, size)
        if used > room:
            return text[: max(i, 1)].rstrip() + mark
    return text


def _money(currency: str, amount: Decimal) -> str:
    return f"{currency} {amount:,.2f}"


def _price(currency: str, amount: Decimal) -> str:
    """Unit prices keep their sub-cent digits (0.335), so the line totals can be checked."""
    exact = amount.normalize()
    if exact.as_tuple().exponent < -2:  # type: ignore[operator]
        return f"{currency} {exact:,f}"
    return f"{currency} {amount:,.2f}"


def _quantity(quantity: Decimal) -> str:
    if quantity == quantity.to_integral_value():
        return f"{int(quantity):,}"
    return f"{quantity.normalize():,f}"
