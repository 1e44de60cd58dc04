"""The invoice's data: `[jobs.settings.pdf]`, payload validation, and the money.

`check_invoice` runs in the service at submit time, on its event loop (so bad input is a
422 naming the field, before anything is stored): the same rules as `parse_invoice`, which
runs in the worker and builds the invoice, at a fraction of the cost per item. Money is
`Decimal` throughout and rounded half-up to cents per line, then once more for the tax.

`InvoiceSettings` is `[jobs.settings.pdf]`: the default currency and the bounds of one
invoice (item count, text lengths), checked at start-up and at submission, so that the
work of one job stays in proportion to what the service is willing to do for it.
`invoice_schema` states the same rules as a JSON schema for the OpenAPI document.

This module imports no reportlab: the service process validates with it alone, and the
renderer (`invoice_layout`, `invoice_render`) is loaded in worker processes only.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Any

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
