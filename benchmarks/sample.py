"""Deterministic invoice payloads for benchmarks: the same `n_items` gives the same JSON.

Shared by the render benchmark and the end-to-end service benchmark, so their numbers
describe the same document. Names vary in length (about one in twelve wraps onto a second
line in the PDF), prices have cents, a few quantities are fractional.

`invoice()` and `line()` build the renderer's input (`invoice_model` objects) directly, with
their own arithmetic (per line, rounded half up to the currency's minor units, then summed;
tax per rate on the rate's base): the render benchmark, the sample picture and the
renderer's tests use them, independently of the payload parser. `sample_invoice` is
`make_invoice`'s order as such an invoice, optionally with a logo, two tax rates and
Arabic names.
"""
from __future__ import annotations

import random
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
        off = _round(gross * Decimal(str(percent)) / 100, units)  # a percentage: 10 for 10 %
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


def sample_invoice(n_items: int, *, logo: str | None = None, two_rates: bool = False,
                   arabic: bool = False) -> Invoice:
    """`make_invoice(n_items)` as the renderer's input; with `two_rates` every third line is
    at 7 % (the rest at the order's 20 %), with `arabic` the customer and every fifth item
    are named in Arabic, with `logo` the seller draws that image file."""
    data = make_invoice(n_items)
    lines = []
    for i, item in enumerate(data["items"]):
        name = item["name"]
        if arabic and i % 5 == 0:
            name = f"{_ARABIC[i % len(_ARABIC)]} {i}"
        lines.append(line(name, item["quantity"], item["unitPrice"], sku=item["sku"],
                          rate="0.07" if two_rates and i % 3 == 0 else data["order"]["taxRate"]))
    order = data["order"]
    customer = CUSTOMER if not arabic else replace(CUSTOMER, name="مطعم الواحة للمأكولات الشرقية ذ.م.م",
                                                  address=("شارع الشيخ زايد", "دبي", "United Arab Emirates"))
    return invoice(lines, number=order["number"], notes=order["notes"], customer=customer,
                   seller=replace(SELLER, logo=logo), payment_terms="Payable within 30 days, net.")


_ARABIC = ("قهوة عربية محمصة", "تمر مجدول فاخر", "زيت زيتون بكر ممتاز", "هيل أخضر مطحون")


def make_logo(path: str) -> str:
    """A small PNG logo (an emblem and a band), drawn here so nothing binary is checked in."""
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (480, 160), (255, 255, 255, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 8, 152, 152), fill=(40, 56, 79, 255))
    draw.ellipse((48, 48, 112, 112), fill=(214, 160, 60, 255))
    draw.rounded_rectangle((176, 56, 472, 104), radius=20, fill=(40, 56, 79, 255))
    image.save(path)
    return path


_ADJECTIVES = (
    "Stainless", "Heavy-duty", "Compact", "Ergonomic", "Galvanised", "Recycled", "Insulated",
    "Adjustable", "Weatherproof", "Industrial", "Lightweight", "Reinforced", "Anodised",
)
_PRODUCTS = (
    "hex bolt M8x40", "cable tie 300 mm", "LED panel 60x60", "shelf bracket", "copper pipe 15 mm",
    "wall plug 6 mm", "safety gloves", "drill bit set", "extension cord 10 m", "pallet wrap",
    "hinge 75 mm", "door handle", "junction box IP65", "paint roller", "masking tape 50 m",
    "ratchet strap", "storage bin 40 l", "work lamp", "cable drum", "measuring tape 8 m",
)
_DETAILS = (
    "zinc plated, box of 100",
    "for indoor and outdoor use, certified to EN 60598 with a five-year manufacturer warranty",
    "black",
    "pack of 25",
    "with mounting kit and installation guide, suitable for concrete, brick and plasterboard walls",
    "grade A",
)


def make_invoice(n_items: int, *, seed: int = 1001) -> dict[str, Any]:
    """The JSON `data` of a `pdf` job with `n_items` line items."""
    rng = random.Random(seed + n_items)
    items = []
    for _ in range(n_items):
        name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_PRODUCTS)}"
        if rng.random() < 0.35:
            name += f", {rng.choice(_DETAILS)}"
        quantity: float | int = rng.choice((1, 1, 2, 3, 4, 5, 10, 12, 24, 50, 100))
        if rng.random() < 0.05:
            quantity = rng.choice((0.5, 1.25, 2.5, 7.75))
        items.append({
            "sku": f"{rng.choice('ABCDEFGHKLMNPRST')}{rng.choice('ABCDEFGHKLMNPRST')}-{rng.randrange(10000, 99999)}",
            "name": name,
            "quantity": quantity,
            "unitPrice": round(rng.uniform(0.15, 480.0), 2),
        })
    return {
        "type": "invoice",
        "order": {
            "number": f"INV-{2026_0000 + n_items}",
            "date": "2026-11-28",
            "currency": "EUR",
            "taxRate": 0.2,
            "customer": {
                "name": "Northwind Building Supplies GmbH",
                "address": "Attn. Accounts Payable\nHafenstraße 114\n20457 Hamburg\nGermany",
                "email": "payables@northwind.example",
            },
            "notes": "Payment due within 30 days of the invoice date. "
                     "Please quote the invoice number with your transfer.",
        },
        "items": items,
    }
