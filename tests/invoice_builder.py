"""Invoices built directly as `invoice_model` objects, for the renderer's tests and the
sample picture: the arithmetic here is the tests' own (per line, rounded half up to the
currency's minor units, then summed; tax per rate on the rate's base), independent of the
parser's, so a printed total can be checked against it."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from offload.workers.invoice_model import (
    BankAccount, Invoice, Layout, Line, Money, Party, Seller, TaxGroup, Totals,
)

EUR = Money("EUR", 2, "de_DE")
SELLER = Seller(
    party=Party("Lindenhof Feinkost GmbH", ("Marktstraße 7", "20095 Hamburg", "Germany"), "DE",
                tax_id="DE123456789", registration="HRB 123456, Amtsgericht Hamburg",
                email="rechnung@lindenhof.example", phone="+49 40 1234567", website="lindenhof.example"),
    bank=BankAccount("Hamburger Sparkasse", "DE02200505501015871393", "HASPDEHHXXX"),
)
CUSTOMER = Party("Northwind Building Supplies GmbH", ("Attn. Accounts Payable", "Hafenstraße 114", "20457 Hamburg"),
                 "DE", tax_id="DE987654321", email="payables@northwind.example")


def _round(value: Decimal, units: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-units), rounding=ROUND_HALF_UP)


def line(name: str, quantity: Any = 1, unit_price: Any = "10", *, unit: str | None = None, sku: str | None = None,
         rate: Any = "0.19", percent: Any = None, discount: Any = None, units: int = 2) -> Line:
    q, p, r = Decimal(str(quantity)), Decimal(str(unit_price)), Decimal(str(rate))
    gross = _round(q * p, units)
    off = Decimal(0)
    if percent is not None:
        off = _round(gross * Decimal(str(percent)), units)
    elif discount is not None:
        off = _round(Decimal(str(discount)), units)
    return Line(name, q, unit, p, off, Decimal(str(percent)) if percent is not None else None, r, gross - off, sku)


def invoice(lines: Iterable[Line], *, paid: Any = 0, money: Money = EUR, labels: Mapping[str, str] | None = None,
            **fields: Any) -> Invoice:
    lines = tuple(lines)
    units = money.minor_units
    gross = sum((_round(li.quantity * li.unit_price, units) for li in lines), Decimal(0))
    discounts = sum((li.discount for li in lines), Decimal(0))
    net = sum((li.net for li in lines), Decimal(0))
    groups = []
    for rate in sorted({li.tax_rate for li in lines}):
        base = sum((li.net for li in lines if li.tax_rate == rate), Decimal(0))
        groups.append(TaxGroup(rate, base, _round(base * rate, units)))
    tax = sum((g.tax for g in groups), Decimal(0))
    paid = Decimal(str(paid))
    totals = Totals(gross, discounts, net, tuple(groups), tax, net + tax, paid, net + tax - paid)
    values: dict[str, Any] = {
        "kind": "invoice", "number": "RE-2026-0042", "issue_date": date(2026, 11, 28),
        "due_date": date(2026, 12, 28), "money": money, "seller": SELLER, "customer": CUSTOMER,
        "lines": lines, "totals": totals, "labels": dict(labels or {}), "page": Layout(),
    }
    values.update(fields)
    return Invoice(**values)


def with_paper(inv: Invoice, paper: str) -> Invoice:
    return replace(inv, page=Layout(paper=paper))  # type: ignore[arg-type]
