"""`parse_invoice` builds a plainly well-formed item (name, quantity, unit price, at most a
SKU) without re-running the checks the service ran at submit time. The line it builds must be
the general path's line, value for value and digit for digit (a Decimal's exponent shows in
the PDF), for every currency precision and tax rate, or invoices would change."""
from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest

from offload.workers import invoice_data
from offload.workers.invoice_data import InvoiceSettings, parse_invoice

NUMBERS = [1, 2, 7, 0.1, 0.3, 2.675, 1e-7, 5e-324, 3.5, 123456.789, 999_999_999, 999_999_999.99, 1e8]
PRICES = [*NUMBERS, 0, 0.0, -0.0, -0.005, -3, -1.25]
NAMES = ["Item 1 Margherita", "  spaced\u3000 out\t ", "東京タワー", "x"]
SKUS = [None, "SKU-1", "  A  B ", "   "]


def items() -> list[dict[str, Any]]:
    grid = itertools.product(NUMBERS, PRICES, NAMES, SKUS)
    return [{"name": name, "quantity": q, "unitPrice": p, **({} if sku is None else {"sku": sku})}
            for q, p, name, sku in grid]


def fields(line: Any) -> tuple[str, ...]:
    return tuple(repr(getattr(line, name)) for name in line.__slots__)


@pytest.mark.parametrize("currency", ["EUR", "JPY", "KWD", "CLF"])
@pytest.mark.parametrize("rate", [None, 0, 0.2, 0.07])
def test_plain_items_are_built_as_the_general_path_builds_them(currency: str, rate: float | None) -> None:
    entries = items()
    order: dict[str, Any] = {"number": "1", "date": "2026-12-01", "currency": currency,
                             "customer": {"name": "Ada"}}
    if rate is not None:
        order["taxRate"] = rate
    settings = InvoiceSettings(max_items=len(entries))
    invoice = parse_invoice({"order": order, "items": entries}, settings)
    unit = Decimal(1).scaleb(-invoice.money.minor_units)
    default_rate = invoice_data._rate(rate, "order.taxRate") if rate is not None else Decimal(0)
    assert all(invoice_data._plain(entry, settings.max_text_length) for entry in entries)
    for i, (entry, line) in enumerate(zip(entries, invoice.lines, strict=True)):
        general = invoice_data._line(entry, f"items[{i}]", settings.max_text_length, default_rate, unit)
        assert fields(line) == fields(general), entry


def test_items_the_fast_path_does_not_take_still_get_the_full_checks() -> None:
    """Anything beyond the plain shape (a discount, a unit, an int SKU, a bool) is parsed by
    the general path: its results and its errors are unchanged."""
    order = {"number": "1", "date": "2026-12-01", "customer": {"name": "Ada"}}
    mixed = [{"name": "a", "quantity": 2, "unitPrice": 3.5, "discount": {"percent": 10}},
             {"name": "b", "quantity": 1, "unitPrice": 1, "unit": "h", "sku": 12},
             {"name": "c", "quantity": 1.5, "unitPrice": 2}]
    lines = parse_invoice({"order": order, "items": mixed}).lines
    assert [str(line.net) for line in lines] == ["6.30", "1.00", "3.00"]
    assert lines[1].sku == "12" and lines[1].unit == "h" and lines[0].discount_percent == 10
    with pytest.raises(invoice_data.ValidationError, match=r"items\[1\]\.quantity"):
        parse_invoice({"order": order, "items": [mixed[2], {"name": "d", "quantity": True, "unitPrice": 1}]})
