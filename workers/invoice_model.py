"""The invoice as the renderer sees it: every amount computed, every text cleaned, every
setting resolved. `invoice_data.parse_invoice` builds it from a job's `data` and
`[jobs.settings.pdf]`; `invoice_layout` and `invoice_render` only read it; the Factur-X
XML is built from it too, so the picture and the machine-readable invoice cannot disagree.

Money is `Decimal`, already rounded to the currency's minor units (`Money.minor_units`:
JPY 0, EUR 2, KWD 3) as `invoice_data` documents. Labels are resolved to the invoice's
language; numbers, amounts and dates are formatted by `invoice_money.Formatter`, never here.

This module imports neither reportlab nor Babel: it is plain data, picklable, and loaded
in the service process as well as in workers.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Literal, NamedTuple

Kind = Literal["invoice", "credit_note"]
Paper = Literal["A4", "LETTER"]


@dataclass(frozen=True, slots=True)
class Party:
    """The seller or the customer. `country` is ISO 3166-1 alpha-2 (needed by e-invoices)."""

    name: str
    address: tuple[str, ...] = ()
    country: str | None = None
    tax_id: str | None = None  # VAT or other tax identification number
    registration: str | None = None  # company register number
    email: str | None = None
    phone: str | None = None
    website: str | None = None


@dataclass(frozen=True, slots=True)
class BankAccount:
    bank: str | None = None
    iban: str | None = None
    bic: str | None = None
    account: str | None = None  # an account number where there is no IBAN


@dataclass(frozen=True, slots=True)
class Seller:
    party: Party
    bank: BankAccount | None = None
    #: Path of a PNG or JPEG, from the service's configuration only (a job's data can never
    #: name a file on the server).
    logo: str | None = None


class Line(NamedTuple):
    """One line of the table. `unit_price` and `net` may be negative (a credit line).

    A named tuple, not a frozen dataclass like the rest of the model: an invoice builds one
    per item, and a tuple is made in a quarter of the time (0.3 against 1.0 us; 500 items,
    a fifth of the worker's parse)."""

    name: str
    quantity: Decimal
    unit: str | None  # "h", "kg", "pcs"...
    unit_price: Decimal
    #: Amount taken off this line (already computed from a percentage if one was given),
    #: in minor units, 0 when none; `discount_percent` is kept for display.
    discount: Decimal
    discount_percent: Decimal | None
    tax_rate: Decimal  # a fraction: 0.19 for 19 %
    #: quantity x unit_price, rounded to minor units, minus the discount: the line's taxable base.
    net: Decimal
    sku: str | None = None


@dataclass(frozen=True, slots=True)
class TaxGroup:
    """The tax summary by rate that EU invoices must show: base and tax per rate."""

    rate: Decimal
    base: Decimal
    tax: Decimal


@dataclass(frozen=True, slots=True)
class Totals:
    gross: Decimal  # sum of quantity x unit_price per line, before discounts
    discounts: Decimal  # sum of the lines' discounts (0 or more)
    net: Decimal  # gross - discounts: the sum of the lines' net
    taxes: tuple[TaxGroup, ...]  # one per rate in use, by rate ascending
    tax: Decimal  # sum of the groups' tax
    total: Decimal  # net + tax
    paid: Decimal  # amount already paid
    due: Decimal  # total - paid: the balance due


@dataclass(frozen=True, slots=True)
class Money:
    """How the invoice's amounts are written."""

    currency: str  # ISO 4217 code
    minor_units: int  # digits after the decimal point for this currency
    locale: str  # "de_DE", "en_US", "ja_JP"...
    display: Literal["symbol", "code"] = "symbol"


@dataclass(frozen=True, slots=True)
class Layout:
    paper: Paper = "A4"
    #: Page margins in points: top, right, bottom, left.
    margins: tuple[float, float, float, float] = (42.0, 42.0, 42.0, 42.0)


@dataclass(frozen=True, slots=True)
class Invoice:
    kind: Kind
    number: str
    issue_date: date
    due_date: date | None
    money: Money
    seller: Seller | None
    customer: Party
    lines: tuple[Line, ...]
    totals: Totals
    #: Every label the page prints, resolved to the invoice's language ("Invoice", "Due date"...).
    labels: Mapping[str, str]
    payment_terms: str | None = None
    purchase_order: str | None = None
    #: For a credit note: the number of the invoice it corrects.
    original_number: str | None = None
    notes: str | None = None
    page: Layout = field(default_factory=Layout)
    #: Embed the Factur-X (EN 16931) XML and write PDF/A-3b.
    facturx: bool = False
    #: Write PDF/A-3b even without Factur-X.
    pdfa: bool = False
    #: The days of payment the due date was computed from (the order's paymentTermsDays or
    #: the configured default), None when the order gave a due date or it is a credit note.
    payment_terms_days: int | None = None
    #: `[jobs.settings.pdf] fonts`: font files in order of preference (empty: the system's).
    fonts: tuple[str, ...] = ()
