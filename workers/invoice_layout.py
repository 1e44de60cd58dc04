"""The invoice's layout: every string checked, measured, wrapped and placed, and every row
given its page, before anything is drawn.

`invoice_render` draws what `lay_out` decides. Laying the page out by hand, in one pass that
measures every row first, is what makes the page count ("Page N of M") known before the
first page is drawn; Platypus tables are 5-7x slower at a few thousand rows and need a
second pass for it. Coordinates are PDF points, origin bottom left; y runs up the page.

Text goes through `invoice_text.Fonts` only (check, width, wrap; the drawing uses its
`draw_into`, one text object per block), numbers and dates through `invoice_money.Formatter`,
every label through `Invoice.labels`, with `invoice_labels`' English where one is missing.
Nothing is cut:
a string wider than its place wraps over as many lines as it needs, and the page breaks
follow (`_paginate`): a line item is never split over two pages, unless it is taller than a
whole page, and the totals never stand alone on a page: the last line items come with them.

Measuring needs reportlab's font metrics, so this module is loaded in worker processes only.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from PIL import Image
from reportlab.lib.utils import ImageReader

from offload.workers.errors import PermanentError
from offload.workers.invoice_labels import ENGLISH
from offload.workers.invoice_model import Invoice, Line
from offload.workers.invoice_money import Formatter
from offload.workers.invoice_text import Align, Fonts

PAPERS = {"A4": (595.2756, 841.8898), "LETTER": (612.0, 792.0)}
SIZE, LEADING, ROW, HEADER_ROW, PAD = 8.5, 10.5, 15.0, 18.0, 5.0
SMALL, SMALL_LEADING = 7.0, 9.0
NOTES_SIZE, NOTES_LEADING = 9.0, 12.0
TITLE_SIZE = 20.0
SKU_MAX = 80.0
#: The widest the logo is drawn, and the tallest; its aspect ratio is kept.
LOGO_BOX = (160.0, 56.0)
LOGO_DPI = 300  # pixels per inch a logo keeps at its drawn size
#: Line items that go to the next page with the totals when the totals do not fit.
CARRY = 2
INK, MUTED, RULE = 0.1, 0.42, 0.82
HEADER_FILL = (0.16, 0.22, 0.31)
PAID_INK = (0.1, 0.5, 0.25)
PAID_INSET = 8.0  # the PAID mark's frame reaches the right margin

#: Where `Invoice.labels` lacks a key: `invoice_labels`' English, and "#" for the number column.
DEFAULT_LABELS: Mapping[str, str] = {**ENGLISH, "number": "#"}

_LEFT: Align = "left"
_RIGHT: Align = "right"
#: Where a string goes: x, y, text, size, bold, align, grey level. In a `Block` y is relative
#: to the block's top (0 and below); elsewhere it is the baseline on the page.
Piece = tuple[float, float, str, float, bool, Align, float]
#: A cell of the table: x, drop of the baseline below the row's top, text, align.
Cell = tuple[float, float, str, Align]


@dataclass(slots=True)
class Block:
    height: float
    pieces: list[Piece] = field(default_factory=list)
    #: Horizontal rules: x0, x1, y (relative like the pieces), width, grey.
    rules: list[tuple[float, float, float, float, float]] = field(default_factory=list)


@dataclass(slots=True)
class Page:
    """What one page holds: the rows (table header at `top`), the totals block's top, and
    the note lines from `after_y` down."""

    top: float
    rows: range = range(0)
    totals_y: float | None = None
    after: range = range(0)
    after_y: float = 0.0


@dataclass(slots=True)
class Column:
    label: str
    x: float  # where the header label starts (left) or ends (right)
    align: Align


@dataclass(slots=True)
class Logo:
    path: str
    x: float
    y: float
    width: float
    height: float


@dataclass(slots=True)
class Plan:
    """Everything measured before the first page is drawn: the strings, where they go,
    and which page each row lands on."""

    size: tuple[float, float]
    left: float
    right: float
    bottom: float  # lowest a row, the totals or a note line may reach
    header: list[Piece]  # page 1
    logo: Logo | None
    paid: Piece | None  # the PAID mark, drawn in a frame
    continued: list[Piece]  # pages 2 and on
    more: tuple[float, float, str]  # "continued on the next page": x (right end), baseline, text
    footer: list[Piece]  # every page
    page_label: tuple[float, float, str]  # x (right end), baseline, template with {page} and {pages}
    columns: list[Column]
    rows: list[list[Cell]]
    heights: list[float]
    first_top: float
    continued_top: float
    totals: Block
    after: list[Piece]  # payment terms and notes, a line each (y unused: `_paginate` places them; "" is blank)
    pages: list[Page] = field(default_factory=list)


class _Stack:
    """Text stacked downwards from `y`, wrapped to `width`; every string checked first."""

    def __init__(self, fonts: Fonts, x: float, width: float, y: float, align: Align = "left") -> None:
        self.fonts, self.x, self.width, self.y, self.align = fonts, x, width, y, align
        self.pieces: list[Piece] = []

    def add(self, text: str | None, field: str, size: float, leading: float, bold: bool = False,
            gray: float = INK, gap: float = 0.0) -> None:
        if not text:
            return
        self.fonts.check(text, field)
        self.y -= gap
        fits = self.fonts.width(text, size, bold) <= self.width  # most do: no word-by-word wrap
        for line in [text] if fits else self.fonts.wrap(text, size, self.width, bold):
            self.y -= leading
            self.pieces.append((self.x, self.y + (leading - size) * 0.5 + size * 0.2, line, size, bold, self.align,
                                gray))


def lay_out(invoice: Invoice, fonts: Fonts) -> Plan:
    """Check, measure, wrap and place every string of `invoice`, then assign the rows, the
    totals and the note lines to pages (`_paginate`): the drawing needs no measuring of its own."""
    labels = invoice.labels

    def label(key: str) -> str:
        return labels.get(key) or DEFAULT_LABELS[key]

    fmt = Formatter(invoice.money)
    width, height = PAPERS.get(invoice.page.paper.upper(), PAPERS["A4"])
    m_top, m_right, m_bottom, m_left = invoice.page.margins
    left, right, top = m_left, width - m_right, height - m_top

    footer, page_label, bottom = _footer(invoice, fonts, label, left, right, m_bottom)
    header, logo, paid, first_top = _header(invoice, fonts, fmt, label, left, right, top)
    continued = _Stack(fonts, left, right - left, top)
    continued.add(f"{label(_number_key(invoice))} {invoice.number}", "number", 10, 13, bold=True)
    more = label("continued")
    fonts.check(more, "labels.continued")
    columns, rows, heights = _table(invoice, fonts, fmt, label, left, right)
    totals = _totals(invoice, fonts, fmt, label, left, right)
    plan = Plan(
        size=(width, height), left=left, right=right, bottom=bottom, header=header, logo=logo, paid=paid,
        continued=continued.pieces, more=(right, bottom - 10, more), footer=footer, page_label=page_label,
        columns=columns, rows=rows, heights=heights, first_top=first_top, continued_top=continued.y - 12, totals=totals,
        after=_after(invoice, fonts, label, left, right),
    )
    _split_tall_rows(plan)
    plan.pages = _paginate(plan)
    return plan


def _header(invoice: Invoice, fonts: Fonts, fmt: Formatter, label: Callable[[str], str], left: float,
            right: float, top: float) -> tuple[list[Piece], Logo | None, Piece | None, float]:
    """Seller (logo, name, address, contacts, tax ids) on the left; the title, the PAID mark
    and the number/dates block on the right; then the customer over the full width."""
    content = right - left
    details_width = min(220.0, content * 0.42)
    seller_block = _Stack(fonts, left, content - details_width - 24, top)
    logo = None
    seller = invoice.seller
    if seller is not None:
        if seller.logo:
            w, h = _logo_size(seller.logo)
            scale = min(LOGO_BOX[0] / w, LOGO_BOX[1] / h, 1.0) if w and h else 1.0
            logo = Logo(seller.logo, left, top - h * scale, w * scale, h * scale)
            seller_block.y -= h * scale + 8
        party = seller.party
        seller_block.add(party.name, "seller.name", 12, 15, bold=True)
        for i, line in enumerate(party.address):
            seller_block.add(line, f"seller.address[{i}]", 8.5, 11, gray=MUTED)
        for key, value in (("phone", party.phone), ("email", party.email), ("website", party.website)):
            if value:
                seller_block.add(f"{label(key)} {value}", f"seller.{key}", 8.5, 11, gray=MUTED)
        if party.tax_id:
            seller_block.add(f"{label('tax_id')} {party.tax_id}", "seller.tax_id", 8.5, 11, gray=MUTED)

    title = label("credit_note" if invoice.kind == "credit_note" else "invoice").upper()
    right_block = _Stack(fonts, right, details_width, top, align="right")
    right_block.add(title, "title", TITLE_SIZE, 24, bold=True)
    paid: Piece | None = None
    if invoice.totals.due == 0 and invoice.totals.paid > 0:
        mark = label("paid")
        fonts.check(mark, "labels.paid")
        right_block.y -= 22
        paid = (right - fonts.width(mark, 12, True) - PAID_INSET, right_block.y, mark, 12.0, True, "left", 0.0)
    details: list[tuple[str, str, str]] = [
        (_number_key(invoice), invoice.number, "number"),
        ("date", fmt.date(invoice.issue_date), "issue_date"),
    ]
    if invoice.due_date is not None:
        details.append(("due_date", fmt.date(invoice.due_date), "due_date"))
    if invoice.purchase_order:
        details.append(("purchase_order", invoice.purchase_order, "purchase_order"))
    pieces = [*seller_block.pieces, *right_block.pieces]
    y = right_block.y - 8
    x_label = right - details_width
    for key, value, field_name in details:
        name = label(key)
        fonts.check(name, f"labels.{key}")
        fonts.check(value, field_name)
        room = details_width - fonts.width(name, 9) - 10
        y -= 13
        pieces.append((x_label, y, name, 9.0, False, "left", MUTED))
        for i, line in enumerate(fonts.wrap(value, 9, room, True)):
            if i:
                y -= 11
            pieces.append((right, y, line, 9.0, True, "right", INK))
    if invoice.kind == "credit_note" and invoice.original_number:
        fonts.check(invoice.original_number, "original_number")
        note = _Stack(fonts, right, details_width, y - 4, align="right")
        note.add(label("credit_note_for").replace("{number}", invoice.original_number), "original_number",
                 9, 12, gray=MUTED)
        pieces += note.pieces
        y = note.y

    # The customer gets the full width: nothing stands beside it.
    customer = invoice.customer
    bill = _Stack(fonts, left, content, min(seller_block.y, y) - 22)
    bill.add(label("bill_to").upper(), "labels.bill_to", 7.5, 10, bold=True, gray=MUTED)
    bill.add(customer.name, "customer.name", 11, 14, bold=True, gap=2)
    for i, line in enumerate(customer.address):
        bill.add(line, f"customer.address[{i}]", 9, 12)
    for key, value in (("email", customer.email), ("phone", customer.phone)):
        bill.add(value, f"customer.{key}", 9, 12)
    if customer.tax_id:
        bill.add(f"{label('tax_id')} {customer.tax_id}", "customer.tax_id", 9, 12)
    return [*pieces, *bill.pieces], logo, paid, bill.y - 18


def _footer(invoice: Invoice, fonts: Fonts, label: Callable[[str], str], left: float, right: float,
            margin: float) -> tuple[list[Piece], tuple[float, float, str], float]:
    """The seller's legal and bank lines, and "Page N of M", at the foot of every page; the
    space they take is kept free of the table."""
    page = label("page")
    fonts.check(page, "labels.page")
    page_width = fonts.width(page.replace("{page}", "0000").replace("{pages}", "0000"), SMALL)
    parts: list[list[tuple[str, str]]] = []
    seller = invoice.seller
    if seller is not None:
        party = seller.party
        parts.append([(party.name, "seller.name"), *((line, f"seller.address[{i}]")
                                                     for i, line in enumerate(party.address))])
        legal = [(f"{label('tax_id')} {party.tax_id}", "seller.tax_id")] if party.tax_id else []
        if party.registration:
            legal.append((f"{label('registration')} {party.registration}", "seller.registration"))
        parts.append(legal)
        bank = seller.bank
        if bank is not None:
            parts.append([(f"{label(key)} {value}", f"seller.bank.{key}") for key, value in (
                ("bank", bank.bank), ("iban", bank.iban), ("bic", bank.bic), ("account", bank.account)) if value])
    else:
        parts.append([(f"{label(_number_key(invoice))} {invoice.number}", "number")])
    stack = _Stack(fonts, left, right - left - page_width - 12, 0.0)
    for part in parts:
        for text, field_name in part:
            fonts.check(text, field_name)
        if part:
            stack.add(" \u00b7 ".join(text for text, _ in part), part[0][1], SMALL, SMALL_LEADING, gray=MUTED)
    base = margin - 14  # the last footer line's baseline sits in the bottom margin
    lift = base - stack.pieces[-1][1] if stack.pieces else 0.0
    footer = [(x, y + lift, text, size, bold, align, gray) for x, y, text, size, bold, align, gray in stack.pieces]
    first_base = footer[0][1] if footer else base
    return footer, (right, first_base, page), max(margin, first_base + SMALL + 16)


def _number_key(invoice: Invoice) -> str:
    return "credit_note_number" if invoice.kind == "credit_note" else "invoice_number"


@lru_cache(maxsize=16)
def logo_image(path: str) -> ImageReader:
    """The seller's logo, decoded once per worker process: every invoice draws the same one.
    An image with more pixels than the logo box holds at `LOGO_DPI` is scaled down once, here
    (reportlab compresses a PNG's pixels again for every document, so a 4,000-pixel logo
    would cost every invoice). A file that cannot be read fails the job naming the setting."""
    try:
        with Image.open(path) as image:
            scale = min(LOGO_BOX[0] * LOGO_DPI / 72 / image.width, LOGO_BOX[1] * LOGO_DPI / 72 / image.height)
            if scale >= 1:
                return ImageReader(path)  # a JPEG as it is: embedded without decoding
            small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.LANCZOS)
        if small.mode == "RGB" or small.mode == "L":  # no transparency: stays a JPEG
            encoded = io.BytesIO()
            small.save(encoded, "JPEG", quality=92)
            encoded.seek(0)
            return ImageReader(encoded)
        return ImageReader(small)
    except Exception as error:  # reportlab wraps OSError and PIL's errors alike
        raise PermanentError(f"seller.logo: cannot read the image {path!r}: {error}", type="BadLogo") from error


def _logo_size(path: str) -> tuple[float, float]:
    width, height = logo_image(path).getSize()
    return float(width), float(height)


def _table(invoice: Invoice, fonts: Fonts, fmt: Formatter, label: Callable[[str], str], left: float,
           right: float) -> tuple[list[Column], list[list[Cell]], list[float]]:
    """The columns a reader needs and no more: SKU only when some line has one, discount only
    when some line has one, tax rate only when the rates differ."""
    lines = invoice.lines
    check, width, wrap, rtl = fonts.check, fonts.width, fonts.wrap, fonts.rtl
    show_sku = any(line.sku for line in lines)
    show_discount = any(line.discount for line in lines)
    show_tax = len({line.tax_rate for line in lines}) > 1
    numbers = [str(i) for i in range(1, len(lines) + 1)]
    quantities = [fmt.quantity(line.quantity, line.unit) for line in lines]
    prices = [fmt.unit_price(line.unit_price) for line in lines]
    nets = [fmt.amount(line.net) for line in lines]
    discounts = [_discount(fmt, line) for line in lines] if show_discount else []
    rates = [fmt.percent(line.tax_rate) for line in lines] if show_tax else []
    for i, line in enumerate(lines):
        check(line.name, f"items[{i}].name")
        if line.sku:
            check(line.sku, f"items[{i}].sku")
        if line.unit:
            check(line.unit, f"items[{i}].unit")
    # What the formatter writes is the same few characters in every row (digits, separators,
    # sign, currency): each distinct one is checked once.
    for values, name in ((quantities, "quantity"), (prices, "unitPrice"), (nets, "amount"), (discounts, "discount"),
                         (rates, "taxRate")):
        check("".join(dict.fromkeys("".join(values))), f"items[].{name}")

    # Right-aligned columns, from the right edge leftwards: (key, texts, their widths).
    numeric: list[tuple[str, list[str]]] = [("quantity", quantities), ("unit_price", prices)]
    if show_discount:
        numeric.append(("discount", discounts))
    if show_tax:
        numeric.append(("tax", rates))
    numeric.append(("line_total", nets))
    measured = []
    for key, texts in numeric:
        head = label(key)
        check(head, f"labels.{key}")
        widths = [width(text, SIZE) for text in texts]
        measured.append((head, texts, widths, max(max(widths, default=0.0), width(head, SIZE, True)) + 2 * PAD))
    head_number = label("number")
    w_number = max(width(numbers[-1], SIZE) if numbers else 0.0, width(head_number, SIZE, True)) + 2 * PAD
    w_sku = 0.0
    if show_sku:
        head_sku = label("sku")
        sku_widths = [width(line.sku, SIZE) if line.sku else 0.0 for line in lines]
        widest = max(sku_widths)
        w_sku = min(max(widest, width(head_sku, SIZE, True)), SKU_MAX) + 2 * PAD
    x_name = left + w_number + w_sku + PAD
    name_width = right - sum(m[3] for m in measured) - PAD - x_name

    columns = [Column(head_number, left + w_number - PAD, "right")]
    if show_sku:
        columns.append(Column(label("sku"), left + w_number + PAD, "left"))
    columns.append(Column(label("item"), x_name, "left"))
    edges = []
    x = right
    for head, texts, widths, column_width in reversed(measured):
        edges.append((x - PAD, texts, widths))
        columns.append(Column(head, x - PAD, "right"))
        x -= column_width
    edges.reverse()

    rows: list[list[Cell]] = []
    heights: list[float] = []
    x_number, x_sku = left + w_number - PAD, left + w_number + PAD
    w_numbers = [width(n, SIZE) for n in numbers]
    base = ROW - 4.5
    for i, line in enumerate(lines):
        cells: list[Cell] = [(x_number - w_numbers[i], base, numbers[i], "left")]
        for edge, texts, widths in edges:
            cells.append((edge - widths[i], base, texts[i], "left"))
        name_lines = [line.name] if width(line.name, SIZE) <= name_width else wrap(line.name, SIZE, name_width)
        drop = base
        # A right-to-left name (Arabic, Hebrew) is set flush right in its column, as its reader expects.
        x, align = (x_name + name_width, _RIGHT) if rtl(line.name) else (x_name, _LEFT)
        for text in name_lines:
            cells.append((x, drop, text, align))
            drop += LEADING
        count = len(name_lines)
        if show_sku and line.sku:
            room = w_sku - 2 * PAD + 0.01  # (x + 2p) - 2p may be just below x
            sku_lines = [line.sku] if sku_widths[i] <= room else wrap(line.sku, SIZE, room)
            drop = base
            for text in sku_lines:
                cells.append((x_sku, drop, text, "left"))
                drop += LEADING
            count = max(count, len(sku_lines))
        rows.append(cells)
        heights.append(ROW + LEADING * (count - 1))
    return columns, rows, heights


def _discount(fmt: Formatter, line: Line) -> str:
    if not line.discount:
        return ""
    if line.discount_percent is not None:  # a percentage (10 for 10 %), as parse_invoice keeps it
        return fmt.percent(line.discount_percent / 100)
    return fmt.amount(-line.discount)


def _totals(invoice: Invoice, fonts: Fonts, fmt: Formatter, label: Callable[[str], str], left: float,
            right: float) -> Block:
    """Subtotal, discounts, the tax summary by rate (base and tax per rate), total, paid and
    balance due: label right-aligned left of the amount column."""
    totals = invoice.totals
    rows: list[tuple[str, str, str, bool]] = []  # label key (for errors), label, amount, bold
    if totals.discounts:
        rows.append(("subtotal", label("subtotal"), fmt.amount(totals.gross), False))
        rows.append(("discounts", label("discounts"), fmt.amount(-totals.discounts), False))
        rows.append(("net", label("net"), fmt.amount(totals.net), False))
    else:
        rows.append(("subtotal", label("subtotal"), fmt.amount(totals.net), False))
    if totals.tax or any(group.rate for group in totals.taxes):
        template = label("tax_group")
        for group in totals.taxes:
            text = template.replace("{rate}", fmt.percent(group.rate)).replace("{base}", fmt.amount(group.base))
            rows.append(("tax", text, fmt.amount(group.tax), False))
    total_at = len(rows)
    rows.append(("total", label("total"), fmt.amount(totals.total), True))
    if totals.paid:
        rows.append(("amount_paid", label("amount_paid"), fmt.amount(-totals.paid), False))
        rows.append(("balance_due", label("balance_due"), fmt.amount(totals.due), True))
    amount_width = max(fonts.width(amount, 10.5, True) for _, _, amount, _ in rows)
    x_amount = right - PAD
    x_label = x_amount - max(amount_width, 70.0) - 16
    label_width = x_label - (left + (right - left) * 0.35)
    block = Block(0.0)
    y = -6.0
    for i, (key, text, amount, bold) in enumerate(rows):
        fonts.check(text, f"labels.{key}")
        fonts.check(amount, f"totals.{key}")
        size = 10.5 if bold else 9.0
        if i == total_at or key == "balance_due":
            y -= 6
            block.rules.append((x_label - 60, right, y, 0.8, INK))
        wrapped = fonts.wrap(text, size, label_width, bold)
        y -= size + 5
        block.pieces.append((x_amount, y, amount, size, bold, "right", INK))
        for j, line in enumerate(wrapped):
            if j:
                y -= size + 2
            block.pieces.append((x_label, y, line, size, bold, "right", INK))
    block.height = -y + 10
    return block


def _after(invoice: Invoice, fonts: Fonts, label: Callable[[str], str], left: float, right: float) -> list[Piece]:
    """Payment terms and notes, one piece per line of NOTES_LEADING (they may run over pages);
    an empty piece is a blank line."""
    lines: list[Piece] = []
    room = right - left
    terms = invoice.payment_terms
    days = invoice.payment_terms_days
    if days is not None:
        within = label("payable_within").replace("{days}", str(days))
        terms = f"{within}. {terms}" if terms else within
    for key, text in (("payment_terms", terms), ("notes", invoice.notes)):
        if not text:
            continue
        head = label(key)
        fonts.check(head, f"labels.{key}")
        lines.append((left, 0.0, "", NOTES_SIZE, False, "left", INK))
        lines.extend((left, 0.0, line, 9.0, True, "left", INK) for line in fonts.wrap(head, 9, room, True))
        for paragraph in text.split("\n"):
            if paragraph:
                fonts.check(paragraph, key)
                lines.extend((left, 0.0, line, NOTES_SIZE, False, "left", INK)
                             for line in fonts.wrap(paragraph, NOTES_SIZE, room))
    return lines


def _split_tall_rows(plan: Plan) -> None:
    """A line item taller than a whole page is the one kind that goes over a page break: it is
    split between the lines of its description, as if it were several rows."""
    room = plan.continued_top - HEADER_ROW - plan.bottom - 1
    if not plan.heights or max(plan.heights) <= room:
        return
    rows, heights = [], []
    for cells, height in zip(plan.rows, plan.heights, strict=True):
        if height <= room:
            rows.append(cells)
            heights.append(height)
            continue
        per = max(1, int((room - ROW) // LEADING) + 1)  # lines in one piece
        first = ROW - 4.5
        chunks: dict[int, list[Cell]] = {}
        for x, drop, text, align in cells:
            index = int(round((drop - first) / LEADING))
            chunks.setdefault(index // per, []).append((x, drop - (index // per) * per * LEADING, text, align))
        for k in sorted(chunks):
            piece = chunks[k]
            lines = max(int(round((drop - first) / LEADING)) for _, drop, _, _ in piece) + 1
            rows.append(piece)
            heights.append(ROW + LEADING * (lines - 1))
    plan.rows, plan.heights = rows, heights


def _paginate(plan: Plan) -> list[Page]:
    """Assign rows, then the totals (with at least the last rows), then the note lines to pages."""
    pages: list[Page] = []
    bottom, heights = plan.bottom, plan.heights
    page = Page(plan.first_top)
    y, start = plan.first_top - HEADER_ROW, 0
    room = plan.continued_top - HEADER_ROW - bottom
    for i, height in enumerate(heights):
        if y - height < bottom and (i > start or (not pages and height <= room)):
            page.rows = range(start, i)
            pages.append(page)
            page, y, start = Page(plan.continued_top), plan.continued_top - HEADER_ROW, i
        y -= height
    page.rows = range(start, len(heights))
    totals = plan.totals.height
    if y - totals < bottom:
        # Carry the last rows over with the totals, as many as CARRY, as fit, and as leave a
        # row behind; the totals go alone only after a row that fills a page by itself.
        carry = 0
        while (carry < CARRY and carry < len(page.rows) - 1
               and sum(heights[page.rows.stop - carry - 1:page.rows.stop]) <= room - totals):
            carry += 1
        stop = page.rows.stop
        page.rows = range(start, stop - carry)
        pages.append(page)
        page = Page(plan.continued_top, rows=range(stop - carry, stop))
        y = plan.continued_top - (HEADER_ROW + sum(heights[stop - carry:stop]) if carry else 0.0)
    page.totals_y, y = y, y - totals
    after = plan.after
    first, count = 0, len(after)
    while first < count:
        stop = min(count, first + max(0, int((y - bottom) // NOTES_LEADING)))
        # A heading (bold) or the blank line before it does not end a page: it goes with its text,
        # unless a fresh page holds nothing else.
        while first < stop < count and (not after[stop - 1][2] or after[stop - 1][4]) and (
                page.rows or page.totals_y is not None or stop - first > 1):
            stop -= 1
        if stop > first:
            page.after, page.after_y = range(first, stop), y
            first = stop
        if first < count:
            pages.append(page)
            page, y = Page(plan.continued_top), plan.continued_top
    pages.append(page)
    return pages
