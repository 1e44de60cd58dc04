"""The invoice's data: `[jobs.settings.pdf]`, payload validation, and the money.

`check_invoice` runs in the service at submit time, on its event loop (so bad input is a
422 naming the field, before anything is stored): the same rules as `parse_invoice`, which
runs in the worker and builds the `invoice_model.Invoice`, at a fraction of the cost per
item. `invoice_schema` states the same rules as a JSON schema for the OpenAPI document.

**Money** is `Decimal` throughout, never a float (a JSON float goes through `str()`, so
`0.335` means 0.335), and is rounded to the currency's ISO 4217 minor units (JPY 0, EUR 2,
KWD 3: `minor_units`), half away from zero (0.005 → 0.01, -0.005 → -0.01), at these
points and nowhere else:

1. each line's gross: `round(quantity × unitPrice)`;
2. its discount: `round(gross × percent / 100)` for a percentage (so a percentage on a
   credit line, whose gross is negative, is negative too), `round(amount)` for an amount;
   the line's net is `gross − discount` (exact, both being rounded already);
3. the tax, once per rate: the lines are grouped by tax rate (the line's `taxRate`, else
   the order's, else 0), and each group's tax is `round(Σ net × rate)` on the group's base;
4. `amountPaid`: `round(amountPaid)`.

Every total is then an exact sum of rounded amounts: subtotal (gross) = Σ line gross,
discounts = Σ line discounts, net = subtotal − discounts, tax = Σ group tax,
total = net + tax, balance due = total − amount paid. This is the EN 16931 rule set
(line net amounts, then VAT per category on the category's base), so the Factur-X XML built
from the same numbers adds up.

`InvoiceSettings` is `[jobs.settings.pdf]`: the seller, the locale, paper and defaults,
and the bounds of one invoice (item count, text lengths), checked at start-up and at
submission, so that the work of one job stays in proportion to what the service is willing
to do for it.

This module imports no reportlab and no Babel: the service process validates with it
alone. The currencies' minor units are a table here, which `tests/test_invoice_money.py`
checks against Babel's (CLDR) for every currency Babel knows; the locales are the names of
Babel's locale data files, listed (not imported) on first use.
"""
from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from offload.workers import invoice_labels
from offload.workers.errors import ValidationError
from offload.workers.invoice_model import (
    BankAccount, Invoice, Kind, Layout, Line, Money, Paper, Party, Seller, TaxGroup, Totals,
)

__all__ = ["DEFAULT_SETTINGS", "Invoice", "InvoiceSettings", "check_invoice", "invoice_schema", "minor_units",
           "parse_invoice", "resolve_paths"]

#: Bound on the lines of an address given as a list of strings.
MAX_ADDRESS_LINES = 20
#: Bound on quantity, unit price, a discount amount and the amount paid, so that every
#: amount fits its column and exact Decimal math.
MAX_AMOUNT = Decimal(1_000_000_000)
#: Longest payment term, in days.
MAX_TERMS_DAYS = 3650
#: Widest page margin, in points (2 inches).
MAX_MARGIN = 144.0
CENT = Decimal("0.01")

#: ISO 4217 digits after the decimal point of every currency that does not have 2, as
#: Babel's CLDR data gives them (`babel.numbers.get_currency_precision`); any other code
#: has 2. A test keeps this table equal to Babel's.
MINOR_UNITS: Mapping[str, int] = {
    "ADP": 0, "AFN": 0, "ALL": 0, "BHD": 3, "BIF": 0, "BYR": 0, "CLF": 4, "CLP": 0, "COP": 0, "DJF": 0,
    "ESP": 0, "GNF": 0, "HUF": 0, "IDR": 0, "IQD": 0, "IRR": 0, "ISK": 0, "ITL": 0, "JOD": 3, "JPY": 0,
    "KMF": 0, "KPW": 0, "KRW": 0, "KWD": 3, "LAK": 0, "LBP": 0, "LUF": 0, "LYD": 3, "MGA": 0, "MGF": 0,
    "MMK": 0, "MRO": 0, "OMR": 3, "PYG": 0, "RWF": 0, "SLL": 0, "SOS": 0, "STD": 0, "SYP": 0, "TMM": 0,
    "TND": 3, "TRL": 0, "UGX": 0, "UYI": 0, "UYW": 4, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "YER": 0, "ZMK": 0, "ZWD": 0,
}

_MATH = Context(prec=60, rounding=ROUND_HALF_UP, traps=[InvalidOperation])
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CURRENCY = re.compile(r"[A-Za-z]{3}")
_COUNTRY = re.compile(r"[A-Za-z]{2}")
_IBAN = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}")
_BIC = re.compile(r"[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?")
#: The same rules as JSON schema patterns (spaces allowed anywhere in an IBAN, as it is printed).
_IBAN_PATTERN = "^ *[A-Za-z] *[A-Za-z] *[0-9] *[0-9]( *[A-Za-z0-9]){11,30} *$"
_BIC_PATTERN = "^[A-Za-z]{6}[A-Za-z0-9]{2}([A-Za-z0-9]{3})?$"
#: "Not blank" as a schema pattern: some character that `str.split()` does not count as
#: whitespace (regex dialects disagree on `\\s`, so the class is spelt out).
_NOT_BLANK = "[^" + "".join(f"\\u{c:04x}" for c in range(0x3001) if chr(c).isspace()) + "]"
#: What orjson parses as an integer; a larger JSON integer arrives as a float.
_JSON_INT_MIN, _JSON_INT_MAX = -(2**63), 2**64 - 1
_KINDS = ("invoice", "credit_note")
_PAPERS = ("A4", "LETTER")
_DISPLAYS = ("symbol", "code")

#: `[jobs.settings.pdf.seller]` keys → the job's `data.seller` keys.
_SELLER_KEYS = {"name": "name", "address": "address", "country": "country", "tax_id": "taxId",
                "registration": "registration", "email": "email", "phone": "phone", "website": "website",
                "bank": "bank", "iban": "iban", "bic": "bic", "account": "account"}


def minor_units(currency: str) -> int:
    """Digits after the decimal point in `currency` (ISO 4217 code): JPY 0, EUR 2, KWD 3."""
    return MINOR_UNITS.get(currency.upper(), 2)


_locales: frozenset[str] | None = None


def locales() -> frozenset[str]:
    """The locales Babel has data for (`de_DE`, `ja_JP`, `fr`...), from the names of its
    data files: listed once, without importing Babel."""
    global _locales
    if _locales is None:
        spec = importlib.util.find_spec("babel")
        folders = list(spec.submodule_search_locations or []) if spec else []
        names: set[str] = set()
        for folder in folders:
            data = os.path.join(folder, "locale-data")
            if os.path.isdir(data):
                names.update(f[:-4] for f in os.listdir(data) if f.endswith(".dat"))
        names.discard("root")
        _locales = frozenset(names)
    return _locales


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class InvoiceSettings:
    """`[jobs.settings.pdf]`. Every text field is bounded because its cost is not: a name is
    measured and wrapped, notes become pages, and all of it is checked on the event loop."""

    #: The currency of an invoice that names none.
    currency: str = "EUR"
    #: The locale of an invoice that names none: number and date format, and the labels' language.
    locale: str = "en_US"
    #: Amounts with the currency's symbol (`€`, `$`, `￥`) or its ISO code (`EUR`).
    currency_display: Literal["symbol", "code"] = "symbol"
    #: The paper of an invoice that names none.
    paper: Paper = "A4"
    #: Page margins in points: top, right, bottom, left.
    margins: tuple[float, float, float, float] = (42.0, 42.0, 42.0, 42.0)
    #: Days from the issue date to the due date of an invoice that gives neither.
    payment_terms_days: int = 30
    #: The seller printed on every invoice (a job's `data.seller` overrides it field by field).
    seller: Seller | None = None
    #: Label overrides, checked by `invoice_labels.check_overrides`.
    labels: Mapping[str, Any] = field(default_factory=dict)
    #: TrueType/OpenType font files, in order of preference (empty: the system's fonts).
    fonts: tuple[str, ...] = ()
    #: Write PDF/A-3b.
    pdfa: bool = False
    #: Embed the Factur-X (EN 16931) XML (and write PDF/A-3b) unless an order says otherwise.
    facturx: bool = False
    #: Most line items in one invoice.
    max_items: int = 10_000
    #: Longest text, in characters, of every text field but order.notes (order.number,
    #: names, address lines, items[].name, .sku, .unit...).
    max_text_length: int = 1_000
    #: Longest order.notes, in characters.
    max_notes_length: int = 10_000

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> InvoiceSettings:
        """Read `[jobs.settings.pdf]`; a `ValueError` names the first bad key. The result of
        the last call is reused while the settings are equal (they are read at every
        submission, and checking them touches the logo and font files).

        The environment sets one key at a time (`OFFLOAD_JOBS_SETTINGS_PDF_<KEY>`), so a
        nested table's key arrives flat: `seller_iban` is `seller.iban`, `labels_total` is
        `labels.total`, and wins over the table's. Whole numbers may be strings of digits,
        booleans "true"/"false", `margins` "36" or "36,42,36,42", `fonts` a comma-separated
        list."""
        global _last
        if _last is not None and _last[0] is settings and _last[1] == settings:
            return _last[2]
        result = _read_settings(cls, settings)
        _last = (settings, _snapshot(settings), result)
        return result


_last: tuple[Mapping[str, Any], Any, InvoiceSettings] | None = None


def _snapshot(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _snapshot(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_snapshot(v) for v in value]
    return value


def _read_settings(cls: type[InvoiceSettings], settings: Mapping[str, Any]) -> InvoiceSettings:
    defaults = {f.name: f.default for f in fields(cls)}
    known = set(defaults)
    raw = dict(settings)
    seller_raw = _table(raw.pop("seller", None), "seller")
    labels_raw = _table(raw.pop("labels", None), "labels")
    raw.pop("report", None)  # the report's own limits: `report_data.ReportSettings` reads them
    for key in list(raw):
        if key.startswith("report_"):
            del raw[key]
        elif key not in known and key.startswith("seller_"):
            seller_raw[key[len("seller_"):]] = raw.pop(key)
        elif key not in known and key.startswith("labels_"):
            labels_raw[key[len("labels_"):]] = raw.pop(key)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    currency = raw.get("currency", defaults["currency"])
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise ValueError(f"currency: must be a 3-letter currency code, got {currency!r}")
    values["currency"] = currency.upper()
    locale = raw.get("locale", defaults["locale"])
    if not isinstance(locale, str) or locale not in locales():
        raise ValueError(f"locale: must be a locale such as en_US, de_DE or ja_JP, got {locale!r}")
    values["locale"] = locale
    for key, choices in (("currency_display", _DISPLAYS), ("paper", _PAPERS)):
        value = raw.get(key, defaults[key])
        if value not in choices:
            raise ValueError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
        values[key] = value
    values["margins"] = _margins(raw.get("margins", defaults["margins"]))
    for key in ("pdfa", "facturx"):
        value = raw.get(key, defaults[key])
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            value = value.strip().lower() == "true"
        if not isinstance(value, bool):
            raise ValueError(f"{key}: must be true or false, got {value!r}")
        values[key] = value
    for key, low, high in (("max_items", 1, None), ("max_text_length", 1, None), ("max_notes_length", 1, None),
                           ("payment_terms_days", 0, MAX_TERMS_DAYS)):
        value = raw.get(key, defaults[key])
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
            bounds = f"from {low} to {high}" if high else f"of {low} or more"
            raise ValueError(f"{key}: must be a whole number {bounds}, got {value!r}")
        values[key] = value
    values["fonts"] = _fonts(raw.get("fonts", ()))
    values["labels"] = invoice_labels.check_overrides(labels_raw)
    values["seller"] = _config_seller(seller_raw, values["max_text_length"]) if seller_raw else None
    result = cls(**values)
    if result.facturx and not _facturx_possible(result):
        raise ValueError("facturx: a Factur-X invoice needs a seller: set [jobs.settings.pdf.seller] name and country")
    return result


def _facturx_possible(settings: InvoiceSettings) -> bool:
    """Factur-X needs the seller's name and country (EN 16931 BT-27, BT-40); a job may change
    them but not remove them, so the configured seller decides whether a job may ask for it."""
    return settings.seller is not None and settings.seller.party.country is not None


def _table(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{key}: must be a table, got {value!r}")
    return dict(value)


def _margins(value: Any) -> tuple[float, float, float, float]:
    given = value
    if isinstance(value, str):
        try:
            value = [float(part) for part in value.split(",")]
        except ValueError:
            raise ValueError(f"margins: must be a number of points or a list of 4 (top, right, bottom, left), "
                             f"got {given!r}") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or len(value) not in (1, 4) \
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise ValueError(f"margins: must be a number of points or a list of 4 (top, right, bottom, left), got {given!r}")
    if any(not 0 <= v <= MAX_MARGIN for v in value):
        raise ValueError(f"margins: each must be from 0 to {MAX_MARGIN:g} points, got {given!r}")
    top, right, bottom, left = (float(v) for v in (value * 4 if len(value) == 1 else value))
    return top, right, bottom, left


def _fonts(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"fonts: must be a list of font file paths, got {value!r}")
    for i, path in enumerate(value):
        if not Path(path).expanduser().is_file():
            raise ValueError(f"fonts[{i}]: no such file: {path!r}")
    return tuple(str(Path(path).expanduser()) for path in value)


def _config_seller(raw: Mapping[str, Any], limit: int) -> Seller:
    known = {*_SELLER_KEYS, "logo"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"seller.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    for key, value in raw.items():
        if key == "address" and isinstance(value, list):
            continue
        if not isinstance(value, str):
            hint = (" (a value set in the environment that reads as a number arrives as one: "
                    "set this one in config.toml)" if isinstance(value, (int, float)) else "")
            raise ValueError(f"seller.{key}: must be a string, got {value!r}{hint}")
    try:
        seller = _seller({_SELLER_KEYS[k]: v for k, v in raw.items() if k != "logo"}, None, "seller", limit)
    except ValidationError as exc:
        where = exc.field.replace("taxId", "tax_id")  # the config's spelling of the one two-word key
        raise ValueError(f"{where}: {exc.problem}") from None
    if seller.bank and seller.bank.iban and not _iban_checksum_ok(seller.bank.iban):
        raise ValueError(f"seller.iban: {seller.bank.iban} is not a valid IBAN (its check digits do not match)")
    logo = raw.get("logo")
    if logo is not None:
        logo = _logo(logo)
    return Seller(seller.party, seller.bank, logo)


def _logo(value: str) -> str:
    path = Path(value).expanduser()
    try:
        head = path.read_bytes()[:8] if path.is_file() else None
    except OSError as exc:
        raise ValueError(f"seller.logo: cannot read {value!r}: {exc.strerror}") from None
    if head is None:
        raise ValueError(f"seller.logo: no such file: {value!r}")
    if not (head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff")):
        raise ValueError(f"seller.logo: {value!r} is not a PNG or JPEG image")
    return str(path)


def _iban_checksum_ok(iban: str) -> bool:
    digits = "".join(str(int(c, 36)) for c in iban[4:] + iban[:4])
    return int(digits) % 97 == 1


def resolve_paths(settings: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    """`[jobs.settings.pdf]` with its file paths (seller.logo, fonts) made absolute against
    `base_dir`, the config file's folder, as every relative path in the config is; the
    config loader calls it, so that a worker reads the same files whatever its directory."""
    out = dict(settings)

    def absolute(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            return str(base_dir / Path(value).expanduser())
        return value

    if isinstance(out.get("seller"), Mapping) and "logo" in out["seller"]:
        out["seller"] = {**out["seller"], "logo": absolute(out["seller"]["logo"])}
    if "seller_logo" in out:
        out["seller_logo"] = absolute(out["seller_logo"])
    fonts = out.get("fonts")
    if isinstance(fonts, str):
        fonts = [part.strip() for part in fonts.split(",") if part.strip()]
    if isinstance(fonts, list):
        out["fonts"] = [absolute(v) for v in fonts]
    return out


DEFAULT_SETTINGS = InvoiceSettings()


# ---------------------------------------------------------------------------- parsing


def parse_invoice(data: Any, settings: InvoiceSettings = DEFAULT_SETTINGS) -> Invoice:
    """Validate an invoice payload (docs/api.md, "The invoice") into an `Invoice`.

    Raises `ValidationError(field, problem)` for the first field that is missing or of the
    wrong type or over its limit; `field` is relative to the job's `data`
    (`order.customer.name`, `items[3].quantity`; "" when `data` itself is not an object).
    Unknown fields are ignored; `null` means "not given" wherever a field is optional.
    """
    data = _object(data, "")
    doc_type = data.get("type")
    if doc_type is not None and doc_type != "invoice":
        raise ValidationError("type", 'must be "invoice"')
    kind: Kind = "invoice"
    if data.get("kind") == "credit_note":
        kind = "credit_note"
    elif data.get("kind") not in (None, "invoice"):
        raise ValidationError("kind", 'must be "invoice" or "credit_note"')
    limit = settings.max_text_length
    seller = _job_seller(data.get("seller"), settings, limit)
    order = _object(data.get("order"), "order")
    number = _required(_whole_as_text(order.get("number")), "order.number", limit)
    issue_date = _date(order.get("date"), "order.date")
    currency = _currency(order.get("currency"), settings.currency)
    default_rate = Decimal(0)
    if order.get("taxRate") is not None:
        default_rate = _rate(order["taxRate"], "order.taxRate")
    customer = _party(_object(order.get("customer"), "order.customer"), "order.customer", limit)
    notes = _optional(order.get("notes"), "order.notes", settings.max_notes_length, multiline=True,
                      limit_key="max_notes_length")
    due_date = _date(order["dueDate"], "order.dueDate") if order.get("dueDate") is not None else None
    terms_days = None
    if order.get("paymentTermsDays") is not None:
        terms_days = _days(order["paymentTermsDays"], "order.paymentTermsDays")
    elif due_date is None and kind == "invoice":
        terms_days = settings.payment_terms_days
    if due_date is not None:
        terms_days = None  # the due date given wins (paymentTermsDays is still checked)
    elif terms_days is not None:
        due_date = issue_date + timedelta(days=terms_days)
    payment_terms = _optional(order.get("paymentTerms"), "order.paymentTerms", limit)
    purchase_order = _optional(_whole_as_text(order.get("purchaseOrder")), "order.purchaseOrder", limit)
    original = _optional(_whole_as_text(order.get("originalNumber")), "order.originalNumber", limit)
    locale = order.get("locale")
    if locale is None:
        locale = settings.locale
    elif not isinstance(locale, str) or locale not in locales():
        raise ValidationError("order.locale", "must be a locale such as en_US, de_DE or ja_JP")
    paper: Paper = settings.paper
    if order.get("paper") == "LETTER" or order.get("paper") == "A4":
        paper = order["paper"]
    elif order.get("paper") is not None:
        raise ValidationError("order.paper", 'must be "A4" or "LETTER"')
    facturx = order.get("facturx")
    if facturx is None:
        facturx = settings.facturx
    elif type(facturx) is not bool:
        raise ValidationError("order.facturx", "must be true or false")
    if facturx and not _facturx_possible(settings):  # (settings.facturx needs it: only the order can ask)
        raise ValidationError("order.facturx", "cannot be true on this server: a Factur-X invoice needs "
                                               "[jobs.settings.pdf.seller] with a name and a country")
    digits = minor_units(currency)
    unit = Decimal(1).scaleb(-digits)
    paid = Decimal(0).quantize(unit)
    if order.get("amountPaid") is not None:
        paid = _amount(order["amountPaid"], "order.amountPaid", "must be a number, 0 or more").quantize(
            unit, context=_MATH)

    entries = _items_list(data, settings)
    lines = tuple(_plain_line(entry, default_rate, unit) if _plain(entry, limit)
                  else _line(entry, f"items[{i}]", limit, default_rate, unit) for i, entry in enumerate(entries))
    return Invoice(
        kind=kind, number=number, issue_date=issue_date, due_date=due_date,
        money=Money(currency, digits, locale, settings.currency_display),
        seller=seller, customer=customer, lines=lines, totals=_totals(lines, paid, unit),
        labels=invoice_labels.labels_for(locale, settings.labels),
        payment_terms=payment_terms, purchase_order=purchase_order, original_number=original, notes=notes,
        page=Layout(paper, settings.margins), facturx=facturx, pdfa=settings.pdfa or facturx,
        payment_terms_days=terms_days, fonts=settings.fonts,
    )


def _totals(lines: tuple[Line, ...], paid: Decimal, unit: Decimal) -> Totals:
    zero = Decimal(0).quantize(unit)
    bases: dict[Decimal, Decimal] = {}
    gross = discounts = zero
    for line in lines:
        gross += line.net + line.discount
        discounts += line.discount
        bases[line.tax_rate] = bases.get(line.tax_rate, zero) + line.net
    groups = tuple(TaxGroup(rate, base, _MATH.multiply(base, rate).quantize(unit, context=_MATH))
                   for rate, base in sorted(bases.items()))
    net = gross - discounts
    tax = sum((group.tax for group in groups), zero)
    total = net + tax
    return Totals(gross=gross, discounts=discounts, net=net, taxes=groups, tax=tax, total=total,
                  paid=paid, due=total - paid)


def _line(entry: Any, path: str, limit: int, default_rate: Decimal, unit: Decimal) -> Line:
    entry = _object(entry, path)
    name = _required(entry.get("name"), f"{path}.name", limit)
    quantity = _amount(entry.get("quantity"), f"{path}.quantity", "must be a number greater than 0")
    if quantity == 0:
        raise ValidationError(f"{path}.quantity", "must be a number greater than 0")
    unit_price = _signed_amount(entry.get("unitPrice"), f"{path}.unitPrice")
    sku = _optional(_whole_as_text(entry.get("sku")), f"{path}.sku", limit)
    unit_name = _optional(entry.get("unit"), f"{path}.unit", limit)
    rate = default_rate if entry.get("taxRate") is None else _rate(entry["taxRate"], f"{path}.taxRate")
    gross = _MATH.multiply(quantity, unit_price).quantize(unit, context=_MATH)
    discount, percent = _discount(entry.get("discount"), f"{path}.discount", gross, unit)
    return Line(name=name, quantity=quantity, unit=unit_name, unit_price=unit_price, discount=discount,
                discount_percent=percent, tax_rate=rate, net=gross - discount, sku=sku)


_ZEROS = {Decimal(1).scaleb(-digits): Decimal(0).scaleb(-digits) for digits in range(5)}


def _discount(value: Any, path: str, gross: Decimal, unit: Decimal) -> tuple[Decimal, Decimal | None]:
    if value is None:
        return _ZEROS[unit], None
    value = _object(value, path)
    has_percent, has_amount = "percent" in value, "amount" in value
    if has_percent == has_amount:
        raise ValidationError(path, 'must have one of "percent" or "amount"')
    if has_percent:
        percent = _number(value["percent"], f"{path}.percent", "must be a number from 0 to 100")
        if percent > 100:
            raise ValidationError(f"{path}.percent", "must be a number from 0 to 100")
        amount = _MATH.divide(_MATH.multiply(gross, percent), Decimal(100)).quantize(unit, context=_MATH)
        return amount, percent
    amount = _amount(value["amount"], f"{path}.amount", "must be a number, 0 or more")
    return amount.quantize(unit, context=_MATH), None


def _party(value: Mapping[str, Any], path: str, limit: int) -> Party:
    return Party(
        name=_required(value.get("name"), f"{path}.name", limit),
        address=tuple(_lines(_address(value.get("address"), f"{path}.address", limit))),
        country=_country(value.get("country"), f"{path}.country"),
        tax_id=_optional(value.get("taxId"), f"{path}.taxId", limit),
        email=_optional(value.get("email"), f"{path}.email", limit),
        phone=_optional(value.get("phone"), f"{path}.phone", limit),
    )


def _seller(value: Mapping[str, Any], base: Seller | None, path: str, limit: int) -> Seller:
    """A seller from `value` (the job's `data.seller` keys), each field given overriding
    `base`'s (the config's)."""
    party = base.party if base else None
    bank = base.bank if base and base.bank else BankAccount()

    def text(key: str, current: str | None) -> str | None:
        given = _optional(value.get(key), f"{path}.{key}", limit)
        return current if given is None else given

    name = text("name", party.name if party else None)
    if name is None:
        raise ValidationError(f"{path}.name", "is required" if value.get("name") is None else "must not be empty")
    address = _lines(_address(value.get("address"), f"{path}.address", limit))
    country = _country(value.get("country"), f"{path}.country")
    new_party = Party(
        name=name,
        address=tuple(address) if address else (party.address if party else ()),
        country=country or (party.country if party else None),
        tax_id=text("taxId", party.tax_id if party else None),
        registration=text("registration", party.registration if party else None),
        email=text("email", party.email if party else None),
        phone=text("phone", party.phone if party else None),
        website=text("website", party.website if party else None),
    )
    iban = _iban(value.get("iban"), f"{path}.iban", limit)
    bic = _bic(value.get("bic"), f"{path}.bic")
    new_bank = BankAccount(bank=text("bank", bank.bank), iban=iban or bank.iban, bic=bic or bank.bic,
                           account=text("account", bank.account))
    return Seller(new_party, new_bank if any((new_bank.bank, new_bank.iban, new_bank.bic, new_bank.account))
                  else None, base.logo if base else None)


def _job_seller(value: Any, settings: InvoiceSettings, limit: int) -> Seller | None:
    if value is None:
        return settings.seller
    value = _object(value, "seller")
    if "logo" in value:
        raise ValidationError("seller.logo", "cannot be given in a job (a job cannot name a file on the server): "
                                             "set it in [jobs.settings.pdf.seller]")
    return _seller(value, settings.seller, "seller", limit)


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
    service's event loop: items that are plainly well-formed (name, quantity, unitPrice and
    a text SKU, nothing else given) are passed over in a few type checks (no Decimal, no text
    clean-up); anything else goes through the full parse of that item, which raises the
    precise error. About ten times cheaper per item."""
    if type(data) is not dict or type(data.get("items")) is not list or not data["items"]:
        parse_invoice(data, settings)
        return
    parse_invoice({**data, "items": data["items"][:1]}, settings)  # everything but the other items
    items = _items_list(data, settings)
    limit = settings.max_text_length
    order = data["order"]
    default_rate = Decimal(0) if order.get("taxRate") is None else _rate(order["taxRate"], "order.taxRate")
    unit = Decimal(1).scaleb(-minor_units(_currency(order.get("currency"), settings.currency)))
    for index in range(1, len(items)):
        entry = items[index]
        if not _plain(entry, limit):
            _line(entry, f"items[{index}]", limit, default_rate, unit)


def _plain(entry: Any, limit: int) -> bool:
    """Whether an item is plainly well-formed: a name, a quantity and a unit price within
    bounds, at most a text SKU, nothing else given. Such an item passes `_line`'s every check,
    so `check_invoice` passes over it and `parse_invoice` builds it without them
    (`_plain_line`)."""
    if type(entry) is not dict:
        return False
    name, sku = entry.get("name"), entry.get("sku")
    quantity: Any = entry.get("quantity")
    price: Any = entry.get("unitPrice")
    return (type(name) is str and 0 < len(name) <= limit and not name.isspace()
            and type(quantity) in (int, float) and 0 < quantity < _FAST_MAX
            and type(price) in (int, float) and -_FAST_MAX < price < _FAST_MAX
            and (sku is None or (type(sku) is str and len(sku) <= limit))
            and entry.get("unit") is None and entry.get("discount") is None
            and entry.get("taxRate") is None)


def _plain_line(entry: dict[str, Any], default_rate: Decimal, unit: Decimal) -> Line:
    """`_line` of an item `_plain` accepts, without the checks it is known to pass (an item's
    checks cost about as much as its share of the rendering): the same Line, value for value."""
    quantity, price, sku = entry["quantity"], entry["unitPrice"], entry.get("sku")
    quantity = Decimal(quantity) if type(quantity) is int else Decimal(str(quantity))
    price = Decimal(price) if type(price) is int else Decimal(str(price))
    gross = _MATH.multiply(quantity, price).quantize(unit, context=_MATH)
    discount = _ZEROS[unit]
    # Positional: a frozen dataclass's keyword call costs a quarter more, 500 times an invoice.
    return Line(" ".join(entry["name"].split()), quantity, None, price, discount, None, default_rate,
                gross - discount, None if sku is None else " ".join(sku.split()) or None)


# ---------------------------------------------------------------------------- schema


def invoice_schema(settings: InvoiceSettings = DEFAULT_SETTINGS) -> dict[str, Any]:
    """The rules of `parse_invoice` as an OpenAPI 3.0 schema of the job's `data`, with these
    settings' bounds: exactly what is accepted, so that a client (or a fuzzer) can trust it.
    `null` in an optional field means "not given"; unknown fields are allowed and ignored."""
    text, notes = settings.max_text_length, settings.max_notes_length

    def string(limit: int, required: bool = False, description: str | None = None) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "maxLength": limit}
        schema = {**schema, "pattern": _NOT_BLANK} if required else {**schema, "nullable": True}
        return {**schema, "description": description} if description else schema

    def described(schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {**schema, "description": description}

    integer = {"type": "integer", "minimum": _JSON_INT_MIN, "maximum": _JSON_INT_MAX}
    amount = {"type": "number", "maximum": float(MAX_AMOUNT), "exclusiveMaximum": True}
    rate = {"type": "number", "minimum": 0, "maximum": 1, "nullable": True}
    date_ = {"type": "string", "format": "date", "nullable": True}
    address = {"nullable": True, "anyOf": [string(text), {
        "type": "array", "maxItems": MAX_ADDRESS_LINES, "items": {"type": "string", "maxLength": text}}],
        "description": "one string with line breaks, or a list of lines"}
    country = {"type": "string", "pattern": "^[A-Za-z]{2}$", "nullable": True,
               "description": "ISO 3166-1 alpha-2 code (DE, FR, JP)"}
    discount = {"nullable": True, "description": "a percentage of the line's amount, or an amount taken off it",
                "anyOf": [
                    {"type": "object", "required": ["percent"], "not": {"required": ["amount"]},
                     "properties": {"percent": {"type": "number", "minimum": 0, "maximum": 100}}},
                    {"type": "object", "required": ["amount"], "not": {"required": ["percent"]},
                     "properties": {"amount": {**amount, "minimum": 0}}}]}
    item = {"type": "object", "required": ["name", "quantity", "unitPrice"], "properties": {
        "name": string(text, required=True),
        "quantity": {**amount, "minimum": 0, "exclusiveMinimum": True},
        "unit": string(text, description='the quantity\'s unit: "h", "kg", "pcs"'),
        "unitPrice": described({**amount, "minimum": -float(MAX_AMOUNT), "exclusiveMinimum": True},
                               "negative for a credit line"),
        "discount": discount,
        "taxRate": {**rate, "description": "a fraction (0.19 for 19 %); default: the order's taxRate"},
        "sku": {"nullable": True, "anyOf": [string(text), integer]},
    }}
    customer = {"type": "object", "required": ["name"], "properties": {
        "name": string(text, required=True),
        "address": address,
        "country": country,
        "taxId": string(text, description="VAT or other tax identification number"),
        "email": string(text),
        "phone": string(text),
    }}
    seller_name = string(text, required=True) if settings.seller is None else string(text)
    seller = {"type": "object", "description": "the seller, each field given replacing the configured one "
                                               "([jobs.settings.pdf.seller]); the logo is configured only",
              "properties": {
                  "name": seller_name, "address": address, "country": country,
                  "taxId": string(text, description="VAT or other tax identification number"),
                  "registration": string(text, description="company register number"),
                  "email": string(text), "phone": string(text), "website": string(text),
                  "bank": string(text, description="the bank's name"),
                  "iban": {"type": "string", "maxLength": text, "pattern": _IBAN_PATTERN, "nullable": True},
                  "bic": {"type": "string", "pattern": _BIC_PATTERN, "nullable": True},
                  "account": string(text, description="an account number where there is no IBAN"),
                  "logo": {"not": {}, "description": "not allowed: a job cannot name a file on the server"},
              }}
    if settings.seller is None:
        seller["required"] = ["name"]
    number = {"anyOf": [string(text, required=True), integer]}
    reference = {"nullable": True, "anyOf": [string(text), integer]}
    order = {"type": "object", "required": ["number", "customer"], "properties": {
        "number": number,
        "date": {**date_, "description": "the issue date; default: today (UTC)"},
        "dueDate": {**date_, "description": "default: date + paymentTermsDays"},
        "paymentTermsDays": {"type": "integer", "minimum": 0, "maximum": MAX_TERMS_DAYS, "nullable": True,
                             "description": f"default: {settings.payment_terms_days} for an invoice, "
                                            "none for a credit note; ignored when dueDate is given"},
        "paymentTerms": string(text, description="payment terms in words"),
        "purchaseOrder": {**reference, "description": "the buyer's purchase-order reference"},
        "originalNumber": {**reference, "description": "a credit note's: the number of the invoice it corrects"},
        "currency": {"type": "string", "pattern": "^[A-Za-z]{3}$", "nullable": True,
                     "description": f"ISO 4217 code; default: {settings.currency}"},
        "locale": {"type": "string", "enum": sorted(locales()), "nullable": True,
                   "description": f"number and date format and the labels' language; default: {settings.locale}"},
        "paper": {"type": "string", "enum": list(_PAPERS), "nullable": True,
                  "description": f"default: {settings.paper}"},
        "taxRate": {**rate, "description": "a fraction (0.2 for 20 %), the rate of every item that gives none; "
                                           "default: 0"},
        "amountPaid": {**amount, "minimum": 0, "nullable": True, "description": "default: 0"},
        "facturx": {"type": "boolean", "nullable": True, **({} if _facturx_possible(settings) else {"enum": [False]}),
                    "description": f"embed the Factur-X XML; default: {str(settings.facturx).lower()}"
                                   + ("" if _facturx_possible(settings) else
                                      " (true needs [jobs.settings.pdf.seller] with a name and a country)")},
        "customer": customer,
        "notes": string(notes),
    }}
    schema: dict[str, Any] = {"type": "object", "required": ["order", "items"], "properties": {
        "type": {"type": "string", "enum": ["invoice"], "nullable": True, "description": 'default: "invoice"'},
        "kind": {"type": "string", "enum": list(_KINDS), "nullable": True, "description": 'default: "invoice"'},
        "seller": {**seller, "nullable": True},
        "order": order,
        "items": {"type": "array", "minItems": 1, "maxItems": settings.max_items, "items": item},
    }}
    return schema


# ---------------------------------------------------------------------------- fields


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


def _address(value: Any, path: str, limit: int) -> str | None:
    """A string, or a list of lines (at most `MAX_ADDRESS_LINES`, each within `limit`)."""
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


def _country(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _COUNTRY.fullmatch(value):
        raise ValidationError(path, "must be a 2-letter country code (ISO 3166-1: DE, FR, JP)")
    return value.upper()


def _iban(value: Any, path: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(path, "must be a string")
    iban = value.replace(" ", "").upper()
    if len(value) > limit:
        raise ValidationError(path, f"must be at most {limit:,} characters long (max_text_length), got {len(value):,}")
    if not value.isascii() or not _IBAN.fullmatch(iban):
        raise ValidationError(path, "must be an IBAN: country code, 2 check digits, then 11 to 30 letters or digits")
    return iban


def _bic(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.isascii() or not _BIC.fullmatch(value.upper()):
        raise ValidationError(path, "must be a BIC of 8 or 11 letters and digits")
    return value.upper()


def _number(value: Any, path: str, problem: str) -> Decimal:
    """A finite number, 0 or more. Bools are refused although Python counts them as ints."""
    number = _signed(value, path, problem)
    if number < 0:
        raise ValidationError(path, problem)
    return number


def _signed(value: Any, path: str, problem: str) -> Decimal:
    kind = type(value)  # JSON's two number types first: an ABC isinstance check costs more
    if kind is int:
        return Decimal(value)
    if kind is float and value - value == 0:  # finite
        return Decimal(str(value))
    if value is None:
        raise ValidationError(path, "is required")
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ValidationError(path, problem)
    number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    if not number.is_finite():
        raise ValidationError(path, problem)
    return number


def _amount(value: Any, path: str, problem: str) -> Decimal:
    number = _number(value, path, problem)
    if number >= MAX_AMOUNT:
        raise ValidationError(path, f"must be less than {MAX_AMOUNT:,}")
    return number


def _signed_amount(value: Any, path: str) -> Decimal:
    number = _signed(value, path, "must be a number (negative for a credit line)")
    if abs(number) >= MAX_AMOUNT:
        raise ValidationError(path, f"must be between -{MAX_AMOUNT:,} and {MAX_AMOUNT:,}")
    return number


def _rate(value: Any, path: str) -> Decimal:
    rate = _number(value, path, "must be a number between 0 and 1")
    if rate > 1:
        raise ValidationError(path, "must be a number between 0 and 1")
    return rate.normalize() if rate else Decimal(0)


def _days(value: Any, path: str) -> int:
    value = int(value) if type(value) is float and value.is_integer() else value
    if type(value) is not int or not 0 <= value <= MAX_TERMS_DAYS:
        raise ValidationError(path, f"must be a whole number of days from 0 to {MAX_TERMS_DAYS}")
    return value


def _date(value: Any, path: str) -> date:
    if value is None:
        return datetime.now(UTC).date()
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ValidationError(path, "must be a date as YYYY-MM-DD")


def _currency(value: Any, default: str) -> str:
    if value is None:
        return default.upper()
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise ValidationError("order.currency", "must be a 3-letter currency code")
    return value.upper()

