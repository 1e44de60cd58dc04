"""The invoice behind the built-in `pdf` job: payload validation, money math, and the PDF.

`check_invoice` runs in the service at submit time, on its event loop (so bad input is a
422 naming the field, before anything is stored): the same rules as `parse_invoice`, which
runs in the worker and builds the invoice, at a fraction of the cost per item. Money is `Decimal` throughout and rounded half-up to cents
per line, then once more for the tax.

`InvoiceSettings` is `[jobs.settings.pdf]`: the default currency and the bounds of one
invoice (item count, text lengths), checked at start-up and at submission, so that the
work of one job stays in proportion to what the service is willing to do for it.
`invoice_schema` states the same rules as a JSON schema for the OpenAPI document.

`render_invoice` lays the page out by hand on a reportlab canvas. Platypus tables are
5-7x slower at a few thousand rows and need a second pass for "Page N of M"; here a
layout pass measures every row first, so the page count is known before anything is drawn.
"""
from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from functools import lru_cache
from itertools import islice
from typing import Any

from reportlab.pdfbase.pdfmetrics import getFont, stringWidth
from reportlab.pdfgen.canvas import Canvas

from offload.workers.errors import ValidationError

#: Bound on the lines of an address given as a list of strings.
MAX_ADDRESS_LINES = 20
#: Bound on quantity and unit price, so every amount fits its column and exact Decimal math.
MAX_AMOUNT = Decimal(1_000_000_000)
CENT = Decimal("0.01")

_MATH = Context(prec=60, rounding=ROUND_HALF_UP, traps=[InvalidOperation])
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CURRENCY = re.compile(r"[A-Za-z]{3}")
#: "Not blank" as a schema pattern: some character that `str.split()` does not count as
#: whitespace (regex dialects disagree on `\\s`, so the class is spelt out).
_NOT_BLANK = "[^" + "".join(f"\\u{c:04x}" for c in range(0x3001) if chr(c).isspace()) + "]"
#: What orjson parses as an integer; a larger JSON integer arrives as a float.
_JSON_INT_MIN, _JSON_INT_MAX = -(2**63), 2**64 - 1


@dataclass(frozen=True, slots=True)
class InvoiceSettings:
    """`[jobs.settings.pdf]`. Every text field is bounded because its cost is not: a name is
    measured and wrapped, notes become pages, and all of it is checked on the event loop."""

    #: The currency of an invoice that names none.
    currency: str = "EUR"
    #: Most line items in one invoice.
    max_items: int = 10_000
    #: Longest text, in characters, of order.number, order.customer.name, .email and
    #: .address (each line, when it is a list), items[].name and items[].sku.
    max_text_length: int = 1_000
    #: Longest order.notes, in characters.
    max_notes_length: int = 10_000

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> InvoiceSettings:
        """Read `[jobs.settings.pdf]`; a `ValueError` names the first bad key. Whole numbers may
        also be strings of digits, as the environment gives them."""
        defaults = {f.name: f.default for f in fields(cls)}
        known = set(defaults)
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        currency = settings.get("currency", defaults["currency"])
        if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
            raise ValueError(f"currency: must be a 3-letter currency code, got {currency!r}")
        values["currency"] = currency.upper()
        for key in ("max_items", "max_text_length", "max_notes_length"):
            value = settings.get(key, defaults[key])
            if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}: must be a whole number of 1 or more, got {value!r}")
            values[key] = value
        return cls(**values)


DEFAULT_SETTINGS = InvoiceSettings()


@dataclass(frozen=True, slots=True)
class Customer:
    name: str
    address: tuple[str, ...] = ()
    email: str | None = None


@dataclass(frozen=True, slots=True)
class Item:
    name: str
    quantity: Decimal
    unit_price: Decimal
    line_total: Decimal
    sku: str | None = None


@dataclass(frozen=True, slots=True)
class Invoice:
    number: str
    date: date
    currency: str
    tax_rate: Decimal
    customer: Customer
    items: tuple[Item, ...]
    subtotal: Decimal
    tax: Decimal
    total: Decimal
    notes: str | None = None


def parse_invoice(data: Any, settings: InvoiceSettings = DEFAULT_SETTINGS) -> Invoice:
    """Validate an invoice payload (see DESIGN.md, "Built-in job types") into an `Invoice`.

    Raises `ValidationError(field, problem)` for the first field that is missing or of the
    wrong type or over its length limit; `field` is relative to the job's `data`
    (`order.customer.name`, `items[3].quantity`; "" when `data` itself is not an object).
    Unknown fields are ignored. Floats go through `str()` so that `0.335` means 0.335, not its binary
    approximation.
    """
    data = _object(data, "")
    kind = data.get("type")
    if kind != "invoice":
        raise ValidationError("type", "is required" if kind is None else 'must be "invoice"')
    order = _object(data.get("order"), "order")
    number = order.get("number")
    number = _whole_as_text(number)
    limit = settings.max_text_length
    number = _required(number, "order.number", limit)
    invoice_date = _date(order.get("date"))
    currency = _currency(order.get("currency"), settings.currency)
    tax_rate = Decimal(0)
    if order.get("taxRate") is not None:
        tax_rate = _number(order["taxRate"], "order.taxRate", "must be a number between 0 and 1")
        if tax_rate > 1:
            raise ValidationError("order.taxRate", "must be a number between 0 and 1")
    customer_data = _object(order.get("customer"), "order.customer")
    customer = Customer(
        name=_required(customer_data.get("name"), "order.customer.name", limit),
        address=tuple(_lines(_address(customer_data.get("address"), limit))),
        email=_optional(customer_data.get("email"), "order.customer.email", limit),
    )
    notes = _optional(order.get("notes"), "order.notes", settings.max_notes_length, multiline=True,
                      limit_key="max_notes_length")

    items = tuple(_item(entry, f"items[{i}]", limit) for i, entry in enumerate(_items_list(data, settings)))

    subtotal = sum((item.line_total for item in items), Decimal("0.00"))
    tax = _MATH.multiply(subtotal, tax_rate).quantize(CENT, context=_MATH)
    return Invoice(number, invoice_date, currency, tax_rate, customer, items, subtotal, tax, subtotal + tax, notes)


def invoice_schema(settings: InvoiceSettings = DEFAULT_SETTINGS) -> dict[str, Any]:
    """The rules of `parse_invoice` as an OpenAPI 3.0 schema of the job's `data`, with these
    settings' bounds: exactly what is accepted, so that a client (or a fuzzer) can trust it.
    `null` in an optional field means "not given"; unknown fields are allowed and ignored."""
    text, notes = settings.max_text_length, settings.max_notes_length

    def string(limit: int, required: bool = False) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "maxLength": limit}
        return {**schema, "pattern": _NOT_BLANK} if required else {**schema, "nullable": True}

    integer = {"type": "integer", "minimum": _JSON_INT_MIN, "maximum": _JSON_INT_MAX}
    amount = {"type": "number", "maximum": float(MAX_AMOUNT), "exclusiveMaximum": True}
    item = {"type": "object", "required": ["name", "quantity", "unitPrice"], "properties": {
        "name": string(text, required=True),
        "quantity": {**amount, "minimum": 0, "exclusiveMinimum": True},
        "unitPrice": {**amount, "minimum": 0},
        "sku": {"nullable": True, "anyOf": [string(text), integer]},
    }}
    customer = {"type": "object", "required": ["name"], "properties": {
        "name": string(text, required=True),
        "address": {"nullable": True, "anyOf": [string(text), {
            "type": "array", "maxItems": MAX_ADDRESS_LINES, "items": {"type": "string", "maxLength": text}}],
            "description": "one string with line breaks, or a list of lines"},
        "email": string(text),
    }}
    order = {"type": "object", "required": ["number", "customer"], "properties": {
        "number": {"anyOf": [string(text, required=True), integer]},
        "date": {"type": "string", "format": "date", "nullable": True, "description": "default: today (UTC)"},
        "currency": {"type": "string", "pattern": "^[A-Za-z]{3}$", "nullable": True,
                     "description": f"default: {settings.currency}"},
        "taxRate": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True, "description": "default: 0"},
        "customer": customer,
        "notes": string(notes),
    }}
    return {"type": "object", "required": ["type", "order", "items"], "properties": {
        "type": {"type": "string", "enum": ["invoice"]},
        "order": order,
        "items": {"type": "array", "minItems": 1, "maxItems": settings.max_items, "items": item},
    }}


_FAST_MAX = int(MAX_AMOUNT)


def _items_list(data: Mapping[str, Any], settings: InvoiceSettings) -> list[Any]:
    items = data.get("items")
    if items is None:
        raise ValidationError("items", "is required")
    if not isinstance(items, list):
        raise ValidationError("items", "must be a list")
    if not items:
        raise ValidationError("items", "must not be empty")
    if len(items) > settings.max_items:
        raise ValidationError("items", f"must have at most {settings.max_items:,} entries (max_items), "
                                       f"got {len(items):,}")
    return items


def check_invoice(data: Any, settings: InvoiceSettings = DEFAULT_SETTINGS) -> None:
    """The rules of `parse_invoice` without building the invoice, for the submit path on the
    service's event loop: items that are plainly well-formed are passed over in a few type
    checks (no Decimal, no text clean-up); anything else goes through the full parse of that
    item, which raises the precise error. About ten times cheaper per item."""
    if type(data) is not dict or type(data.get("items")) is not list or not data["items"]:
        parse_invoice(data, settings)
        return
    parse_invoice({**data, "items": data["items"][:1]}, settings)  # everything but the other items
    items = _items_list(data, settings)
    limit = settings.max_text_length
    for index in range(1, len(items)):
        entry = items[index]
        if type(entry) is dict:
            name, sku = entry.get("name"), entry.get("sku")
            quantity: Any = entry.get("quantity")
            price: Any = entry.get("unitPrice")
            if (type(name) is str and 0 < len(name) <= limit and not name.isspace()
                    and type(quantity) in (int, float) and 0 < quantity < _FAST_MAX
                    and type(price) in (int, float) and 0 <= price < _FAST_MAX
                    and (sku is None or (type(sku) is str and len(sku) <= limit))):
                continue
        _item(entry, f"items[{index}]", limit)


def _item(entry: Any, path: str, limit: int) -> Item:
    entry = _object(entry, path)
    name = _required(entry.get("name"), f"{path}.name", limit)
    quantity = _amount(entry.get("quantity"), f"{path}.quantity", "must be a number greater than 0")
    if quantity == 0:
        raise ValidationError(f"{path}.quantity", "must be a number greater than 0")
    unit_price = _amount(entry.get("unitPrice"), f"{path}.unitPrice", "must be a number, 0 or more")
    sku = entry.get("sku")
    sku = _whole_as_text(sku)
    line_total = _MATH.multiply(quantity, unit_price).quantize(CENT, context=_MATH)
    return Item(name, quantity, unit_price, line_total, _optional(sku, f"{path}.sku", limit))


def _whole_as_text(value: Any) -> Any:
    """An integer (also `7.0`, which JSON Schema counts as one) as its digits; else unchanged."""
    if type(value) is float and value.is_integer() and _JSON_INT_MIN <= value <= _JSON_INT_MAX:
        value = int(value)
    return str(value) if type(value) is int else value


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if type(value) is dict:  # JSON's case; an ABC isinstance check costs more than the rest of an item
        return value
    if value is None:
        raise ValidationError(path, "is required")
    if not isinstance(value, Mapping):
        raise ValidationError(path, "must be an object")
    return value


def _required(value: Any, path: str, limit: int) -> str:
    text = _optional(value, path, limit)
    if text is None:
        raise ValidationError(path, "is required" if value is None else "must not be empty")
    return text


def _optional(value: Any, path: str, limit: int, *, multiline: bool = False,
              limit_key: str = "max_text_length") -> str | None:
    """The string with its whitespace collapsed (line breaks kept if `multiline`), or None
    when absent or blank. Control characters would otherwise reach the PDF as stray glyphs.
    The length is checked first, on the text as sent, before any work is done on it."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(path, "must be a string")
    if len(value) > limit:
        raise ValidationError(path, f"must be at most {limit:,} characters long ({limit_key}), got {len(value):,}")
    if multiline:
        return "\n".join(" ".join(line.split()) for line in value.strip().splitlines()) or None
    return " ".join(value.split()) or None


def _address(value: Any, limit: int) -> str | None:
    """A string, or a list of lines (at most `MAX_ADDRESS_LINES`, each within `limit`)."""
    path = "order.customer.address"
    if not isinstance(value, list):
        return _optional(value, path, limit, multiline=True)
    if len(value) > MAX_ADDRESS_LINES:
        raise ValidationError(path, f"must have at most {MAX_ADDRESS_LINES} lines, got {len(value):,}")
    lines = []
    for i, line in enumerate(value):
        if not isinstance(line, str):
            raise ValidationError(f"{path}[{i}]", "must be a string")
        lines.append(_optional(line, f"{path}[{i}]", limit) or "")
    return "\n".join(line for line in lines if line) or None


def _lines(text: str | None) -> list[str]:
    return [line for line in text.split("\n") if line] if text else []


def _number(value: Any, path: str, problem: str) -> Decimal:
    """A finite number, 0 or more. Bools are refused although Python counts them as ints."""
    if value is None:
        raise ValidationError(path, "is required")
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ValidationError(path, problem)
    number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    if not number.is_finite() or number < 0:
        raise ValidationError(path, problem)
    return number


def _amount(value: Any, path: str, problem: str) -> Decimal:
    number = _number(value, path, problem)
    if number >= MAX_AMOUNT:
        raise ValidationError(path, f"must be less than {MAX_AMOUNT:,}")
    return number


def _date(value: Any) -> date:
    if value is None:
        return datetime.now(UTC).date()
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ValidationError("order.date", "must be a date as YYYY-MM-DD")


def _currency(value: Any, default: str) -> str:
    if value is None:
        return default.upper()
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise ValidationError("order.currency", "must be a 3-letter currency code")
    return value.upper()



# Rendering. Coordinates are PDF points, origin bottom left; y runs up the page.

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

Progress = Callable[[int, str], None]
_Row = tuple[str, str, list[str], str, str, str]  # #, sku, name lines, qty, unit price, line total


@dataclass(slots=True)
class _Page:
    top: float
    table: bool
    rows: range = range(0)
    totals_y: float | None = None
    notes: range = range(0)
    notes_y: float = 0.0


@dataclass(slots=True)
class _Layout:
    """Everything measured before the first page is drawn: the strings, where they go,
    and which page each row lands on."""

    rows: list[_Row]
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
    pages: list[_Page] = field(default_factory=list)


def render_invoice(invoice: Invoice, progress: Progress | None = None) -> bytes:
    """Render `invoice` as an A4 PDF and return its bytes.

    `progress(percent, message)` is called before each page (5..95 as the rows go by) and
    with 95 just before the file is written; whatever it raises (`Cancelled`) aborts the
    render, so a cancelled job stops within one page.
    """
    layout = _layout(invoice)
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


def _layout(invoice: Invoice) -> _Layout:
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

    rows: list[_Row] = []
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
    layout = _Layout(
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


def _paginate(layout: _Layout) -> list[_Page]:
    """Assign rows, then the totals (kept together), then the note lines to pages."""
    pages: list[_Page] = []
    page = _Page(layout.first_top, table=True)
    y, start = layout.first_top - HEADER_ROW, 0
    for i, height in enumerate(layout.heights):
        if y - height < TABLE_BOTTOM:
            page.rows = range(start, i)
            pages.append(page)
            page, y, start = _Page(CONTINUED_TOP, table=True), CONTINUED_TOP - HEADER_ROW, i
        y -= height
    page.rows = range(start, len(layout.heights))
    if y - TOTALS_HEIGHT < TABLE_BOTTOM:
        pages.append(page)
        page, y = _Page(CONTINUED_TOP, table=False), CONTINUED_TOP
    page.totals_y, y = y, y - TOTALS_HEIGHT
    first, count = 0, len(layout.notes)
    while first < count:
        fits = int((y - (NOTES_HEAD if first == 0 else 0) - TABLE_BOTTOM) // NOTES_LEADING)
        if fits > 0:
            page.notes, page.notes_y = range(first, min(count, first + fits)), y
            first = page.notes.stop
        if first < count:
            pages.append(page)
            page, y = _Page(CONTINUED_TOP, table=False), CONTINUED_TOP
    pages.append(page)
    return pages


def _draw_first_header(canvas: Canvas, invoice: Invoice, layout: _Layout) -> None:
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


def _draw_rows(canvas: Canvas, layout: _Layout, page: _Page) -> None:
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


def _draw_totals(canvas: Canvas, layout: _Layout, y: float) -> None:
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


def _draw_notes(canvas: Canvas, layout: _Layout, page: _Page) -> None:
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
