"""How the invoice writes amounts, quantities, rates and dates in its locale.

`Formatter` is the interface the layout uses; nothing else formats a number for the page.
This first implementation writes English-style numbers with the currency code in front and
ISO dates whatever the locale; the ISO 4217 minor units come from `Money.minor_units`.
"""
from __future__ import annotations

from datetime import date
from decimal import Decimal

from offload.workers.invoice_model import Money


class Formatter:
    def __init__(self, money: Money) -> None:
        self.money = money

    def amount(self, value: Decimal) -> str:
        """An amount in the invoice's currency: `EUR 1,999.99`, `JPY 2,000`."""
        return f"{self.money.currency} {value:,.{self.money.minor_units}f}"

    def unit_price(self, value: Decimal) -> str:
        """Like `amount`, but sub-unit digits beyond the currency's are kept (0.335), so that
        a reader can check the line totals."""
        exact = value.normalize()
        digits = max(self.money.minor_units, -exact.as_tuple().exponent)  # type: ignore[operator]
        return f"{self.money.currency} {value:,.{digits}f}"

    def quantity(self, value: Decimal, unit: str | None = None) -> str:
        text = f"{int(value):,}" if value == value.to_integral_value() else f"{value.normalize():,f}"
        return f"{text} {unit}" if unit else text

    def percent(self, rate: Decimal) -> str:
        """A fraction as a percentage: 0.19 -> `19%`, 0.075 -> `7.5%`."""
        return f"{format((rate * 100).normalize(), 'f')}%"

    def date(self, value: date) -> str:
        return value.isoformat()
