"""How the invoice writes amounts, quantities, rates and dates in its locale.

`Formatter` is the interface the layout uses; nothing else formats a number for the page.
The rules are Babel's (CLDR): `de_DE` writes `1.999,99 €`, `en_US` `$1,999.99`, `ja_JP`
`￥2,000`, `en_IN` `₹12,34,567.50`; amounts carry the currency's symbol or, with
`currency_display = "code"`, its ISO code (`EUR 1,999.99`, `1.999,99 EUR`); dates are the
locale's medium format (`Nov 28, 2026`, `28.11.2026`, `2026/11/28`).

Babel's own `format_currency` costs about 0.1 ms a call, which at three numbers per line
would be most of the time of a 500-line invoice. So a `Formatter` asks Babel once, for its
locale and currency, for the pieces of the pattern (the text before and after the number
for either sign, the group and decimal symbols, the grouping sizes), and then writes each
number with `str.format` and those pieces: the same output as Babel's (tests/
test_invoice_money.py compares them over locales, signs, sizes and digits), in a few
microseconds. One difference, on purpose: where the group symbol is an apostrophe (de_CH,
fr_CH), Babel mistakes it for the pattern's quoting and drops it (`1234567.50`); this
writes `1'234'567.50`, as CLDR means. Amounts arrive already rounded (`invoice_data`), so no rounding happens here.

This module imports Babel, which costs about 10 ms and 3 MB, plus the locale data it
loads (a few MB more): it is imported by the layout, in worker processes only; the
service validates with `invoice_data`, which needs neither.
"""
from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from functools import lru_cache

from babel.core import Locale
from babel.dates import format_date
from babel.numbers import format_currency, format_decimal, format_percent

from offload.workers.invoice_model import Money

_DIGITS = re.compile(r"[0-9]")
#: Between an ISO code and a digit, when a pattern puts them side by side (`EUR1.00`).
_CODE_SPACE = "\u00a0"


class _NumberStyle:
    """One locale's way of writing one kind of number: `prefix`/`suffix` by sign (0 for
    positive, 1 for negative), the symbols and the grouping sizes."""

    __slots__ = ("prefix", "suffix", "group", "decimal", "primary", "secondary", "plain_groups")

    def __init__(self, positive: str, negative: str, group: str, decimal: str, grouping: tuple[int, int]) -> None:
        self.prefix = (_before_number(positive), _before_number(negative))
        self.suffix = (_after_number(positive), _after_number(negative))
        self.group, self.decimal = group, decimal
        self.primary, self.secondary = grouping
        self.plain_groups = grouping == (3, 3)

    def write(self, value: Decimal, digits: int) -> str:
        negative = value < 0
        if self.plain_groups:
            text = f"{abs(value):,.{digits}f}"
            whole, _, fraction = text.partition(".")
            whole = whole.replace(",", self.group)
        else:
            text = f"{abs(value):.{digits}f}"
            whole, _, fraction = text.partition(".")
            whole = self._grouped(whole)
        number = f"{whole}{self.decimal}{fraction}" if fraction else whole
        return f"{self.prefix[negative]}{number}{self.suffix[negative]}"

    def _grouped(self, whole: str) -> str:
        if len(whole) <= self.primary:
            return whole
        head, tail = whole[:-self.primary], [whole[-self.primary:]]
        while len(head) > self.secondary:
            tail.insert(0, head[-self.secondary:])
            head = head[:-self.secondary]
        return self.group.join([head, *tail]) if head else self.group.join(tail)


def _before_number(text: str) -> str:
    return text[:_DIGITS.search(text).start()]  # type: ignore[union-attr]


def _after_number(text: str) -> str:
    last = max(match.end() for match in _DIGITS.finditer(text))
    return text[last:]


def _symbols(locale: Locale) -> tuple[str, str]:
    """The group and decimal symbols, read off a number Babel writes (the layout of the
    symbols table differs between Babel releases; its output does not)."""
    text = format_decimal(Decimal("1234.5"), locale=locale, format="#,##0.0", decimal_quantization=False)
    digits = [m.start() for m in _DIGITS.finditer(text)]
    return text[digits[0] + 1:digits[1]], text[digits[3] + 1:digits[4]]


@lru_cache(maxsize=64)
def _styles(locale_name: str, currency: str, display: str) -> tuple[_NumberStyle, _NumberStyle, _NumberStyle]:
    """Amount, decimal and percent styles for a locale and currency, asked of Babel once."""
    locale = Locale.parse(locale_name)
    group, decimal = _symbols(locale)
    pattern = locale.currency_formats["standard"]
    if display == "code":
        fmt = pattern.pattern.replace("¤", "¤¤").replace("¤¤¤¤", "¤¤")

        def money(value: Decimal) -> str:
            text = format_currency(value, currency, locale=locale, format=fmt, currency_digits=False,
                                   decimal_quantization=False)
            return re.sub(rf"(?<={currency})(?=[-0-9])|(?<=[0-9])(?={currency})", _CODE_SPACE, text)
    else:
        def money(value: Decimal) -> str:
            return format_currency(value, currency, locale=locale, currency_digits=False, decimal_quantization=False)

    amount = _NumberStyle(money(Decimal(1)), money(Decimal(-1)), group, decimal, pattern.grouping)
    numbers = locale.decimal_formats[None]
    plain = _NumberStyle(format_decimal(Decimal(1), locale=locale), format_decimal(Decimal(-1), locale=locale),
                         group, decimal, numbers.grouping)
    percents = locale.percent_formats[None]
    percent = _NumberStyle(format_percent(Decimal(1), locale=locale), format_percent(Decimal(-1), locale=locale),
                           group, decimal, percents.grouping)
    return amount, plain, percent


def _places(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


class Formatter:
    def __init__(self, money: Money) -> None:
        self.money = money
        self._locale = Locale.parse(money.locale)
        self._amount, self._decimal, self._percent = _styles(money.locale, money.currency, money.display)

    def amount(self, value: Decimal) -> str:
        """An amount in the invoice's currency, with the currency's minor units:
        `1.999,99 €` (de_DE), `$1,999.99` (en_US), `￥2,000` (ja_JP)."""
        return self._amount.write(value, self.money.minor_units)

    def unit_price(self, value: Decimal) -> str:
        """Like `amount`, but sub-unit digits beyond the currency's are kept (`€0.335`), so
        that a reader can check the line totals."""
        return self._amount.write(value, max(self.money.minor_units, _places(value.normalize())))

    def quantity(self, value: Decimal, unit: str | None = None) -> str:
        """A quantity with as many decimals as it has (`1.5`, `1,5`, `12,000`), and its unit."""
        text = self._decimal.write(value, _places(value.normalize()))
        return f"{text}\u00a0{unit}" if unit else text

    def percent(self, rate: Decimal) -> str:
        """A fraction as a percentage: 0.19 → `19%` (en), `19 %` (de); 0.075 → `7.5%`."""
        hundred = (rate * 100).normalize()
        return self._percent.write(hundred, _places(hundred))

    def date(self, value: date) -> str:
        """The locale's medium date: `Nov 28, 2026`, `28.11.2026`, `2026/11/28`."""
        return format_date(value, "medium", locale=self._locale)
