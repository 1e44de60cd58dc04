"""The Formatter writes what Babel writes, at a fraction of the cost: compared with Babel's
own `format_currency`/`format_decimal`/`format_percent` over locales, currencies, signs,
sizes and digits, and pinned on the figures the issue names."""
from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from babel.numbers import format_currency, format_decimal, format_percent

from offload.workers.invoice_data import minor_units
from offload.workers.invoice_model import Money
from offload.workers.invoice_money import Formatter

NBSP = "\u00a0"


def formatter(locale: str, currency: str, display: str = "symbol") -> Formatter:
    return Formatter(Money(currency, minor_units(currency), locale, display))  # type: ignore[arg-type]


@pytest.mark.parametrize(("locale", "currency", "value", "text"), [
    ("de_DE", "EUR", "1999.99", f"1.999,99{NBSP}€"),
    ("en_US", "USD", "1999.99", "$1,999.99"),
    ("ja_JP", "JPY", "2000", "￥2,000"),
    ("en_US", "EUR", "-5.50", "-€5.50"),
    ("fr_FR", "EUR", "1234567.80", f"1\u202f234\u202f567,80{NBSP}€"),
    ("en_IN", "INR", "1234567.50", "₹12,34,567.50"),
    ("de_CH", "CHF", "1999.95", f"CHF{NBSP}1'999.95"),
    ("ar_AE", "KWD", "1.234", f"\u200f1.234{NBSP}د.ك.\u200f"),
    ("en_US", "JPY", "0", "¥0"),
])
def test_amounts_in_the_issues_examples(locale: str, currency: str, value: str, text: str) -> None:
    assert formatter(locale, currency).amount(Decimal(value)) == text


def test_the_currency_code_instead_of_its_symbol() -> None:
    assert formatter("en_US", "EUR", "code").amount(Decimal("1999.99")) == f"EUR{NBSP}1,999.99"
    assert formatter("de_DE", "EUR", "code").amount(Decimal("-1999.99")) == f"-1.999,99{NBSP}EUR"
    assert formatter("ja_JP", "JPY", "code").amount(Decimal("2000")) == f"JPY{NBSP}2,000"


LOCALES = ["en_US", "en_GB", "de_DE", "de_CH", "de_AT", "fr_FR", "fr_CH", "fr_CA", "it_IT", "es_ES", "nl_NL", "pl_PL", "sv_SE",
           "ja_JP", "zh_CN", "ko_KR", "ar_AE", "ar_EG", "he_IL", "hi_IN", "en_IN", "ru_RU", "el_GR", "tr_TR",
           "pt_BR", "fa_IR", "th_TH", "vi_VN"]
CURRENCIES = ["EUR", "USD", "JPY", "KWD", "GBP", "CHF", "INR", "AED"]
VALUES = ["0", "1", "-1", "0.5", "12.34", "-999.99", "1000", "-1234.5", "1234567.891", "999999999.999", "0.0001"]


def babels(text: str, locale: str) -> str:
    """Babel's text as ours: where the group symbol is an apostrophe (de_CH, fr_CH), Babel
    takes a pair of apostrophes for the pattern's quotes and drops them, writing 1234567.50
    for 1'234'567.50; ours keeps them (the CLDR rule), so those are compared without them."""
    return text.replace("'", "") if locale.endswith("_CH") else text


@pytest.mark.parametrize("locale", LOCALES)
def test_amounts_are_babels(locale: str) -> None:
    for currency in CURRENCIES:
        ours = formatter(locale, currency)
        exponent = Decimal(1).scaleb(-minor_units(currency))
        for text in VALUES:
            value = Decimal(text).quantize(exponent)
            assert babels(ours.amount(value), locale) == babels(format_currency(value, currency, locale=locale),
                                                                locale), (currency, value)
            price = Decimal(text)
            assert babels(ours.unit_price(price), locale) == babels(format_currency(
                price, currency, locale=locale, decimal_quantization=False), locale), (currency, price)


@pytest.mark.parametrize("locale", LOCALES)
def test_quantities_and_percentages_are_babels(locale: str) -> None:
    ours = formatter(locale, "EUR")
    for text in ["1", "1.5", "12", "1000", "2.125", "1234567.5", "0.001"]:
        value = Decimal(text)
        assert babels(ours.quantity(value), locale) == babels(
            format_decimal(value, locale=locale, decimal_quantization=False), locale)
    assert ours.quantity(Decimal("7.5"), "h") == format_decimal(Decimal("7.5"), locale=locale) + f"{NBSP}h"
    for rate in ["0", "0.19", "0.075", "0.2", "1", "0.055"]:
        assert ours.percent(Decimal(rate)) == format_percent(Decimal(rate), locale=locale, decimal_quantization=False)


def test_percentages_and_dates_in_a_few_locales() -> None:
    assert formatter("en_US", "USD").percent(Decimal("0.075")) == "7.5%"
    assert formatter("de_DE", "EUR").percent(Decimal("0.19")) == f"19{NBSP}%"
    day = date(2026, 11, 28)
    assert formatter("en_US", "USD").date(day) == "Nov 28, 2026"
    assert formatter("de_DE", "EUR").date(day) == "28.11.2026"
    assert formatter("ja_JP", "JPY").date(day) == "2026/11/28"
    assert formatter("fr_FR", "EUR").date(day) == "28 nov. 2026"


def test_unit_prices_keep_their_sub_unit_digits() -> None:
    ours = formatter("en_US", "EUR")
    assert ours.unit_price(Decimal("0.335")) == "€0.335"
    assert ours.unit_price(Decimal("2")) == "€2.00"
    assert formatter("ja_JP", "JPY").unit_price(Decimal("0.5")) == "￥0.5"
