"""The invoice's data: the payload shapes `parse_invoice` accepts (today's, and the seller,
terms, discounts, tax rates and credit notes), its money checked against an independent
computation over a table of tricky cases, `check_invoice` exactly as strict, the labels,
and `[jobs.settings.pdf]` from the file and the environment."""
from __future__ import annotations

import copy
import importlib.util
import math
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from offload.service.config import ConfigError, load_config
from offload.workers.errors import ValidationError
from offload.workers.invoice_data import (
    DEFAULT_SETTINGS, MINOR_UNITS, InvoiceSettings, check_invoice, invoice_schema, locales, parse_invoice,
)
from offload.workers.invoice_labels import ENGLISH, FRENCH, GERMAN, KEYS, labels_for

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
SELLER = {"name": "Trattoria Example GmbH", "address": ["Hauptstraße 1", "10115 Berlin"], "country": "de",
          "tax_id": "DE123456789", "iban": "DE89 3704 0044 0532 0130 00", "bic": "COBADEFFXXX", "bank": "Example Bank"}


def payload() -> dict[str, Any]:
    """Today's request shape (README, DESIGN.md): nothing new in it."""
    return {
        "type": "invoice",
        "order": {"number": "INV-1001", "date": "2026-11-28", "currency": "EUR", "taxRate": 0.2,
                  "customer": {"name": "Ada Lovelace", "address": "12 Analytical Row\nLondon", "email": "ada@example.com"},
                  "notes": "Thank you!"},
        "items": [{"name": "Difference engine gear", "quantity": 2, "unitPrice": 9.5, "sku": "DE-1"},
                  {"name": "Punched card", "quantity": 100, "unitPrice": 0.05},
                  {"name": "Brass crank", "quantity": 1.5, "unitPrice": 12}],
    }


def bench_payload(n: int) -> dict[str, Any]:
    """The shared service benchmark's invoice (bench_offload.py `invoice()`), as it sends it."""
    return {"type": "invoice",
            "order": {"number": "INV-B", "customer": {"name": "Bench"}, "taxRate": 0.2, "currency": "EUR"},
            "items": [{"name": f"Item {i} Margherita", "quantity": 1 + i % 4, "unitPrice": 3.5 + (i % 17) * 1.25}
                      for i in range(n)]}


# ------------------------------------------------------------------ today's payloads


def test_todays_payload_is_read_as_before() -> None:
    invoice = parse_invoice(payload())
    assert (invoice.kind, invoice.number, invoice.issue_date) == ("invoice", "INV-1001", date(2026, 11, 28))
    assert invoice.customer.name == "Ada Lovelace"
    assert invoice.customer.address == ("12 Analytical Row", "London")
    assert invoice.customer.email == "ada@example.com"
    assert invoice.notes == "Thank you!"
    assert invoice.money.currency == "EUR" and invoice.money.minor_units == 2 and invoice.money.locale == "en_US"
    assert [line.net for line in invoice.lines] == [Decimal("19.00"), Decimal("5.00"), Decimal("18.00")]
    assert [line.tax_rate for line in invoice.lines] == [Decimal("0.2")] * 3
    assert invoice.lines[0].sku == "DE-1" and invoice.lines[1].sku is None
    totals = invoice.totals
    assert (totals.gross, totals.discounts, totals.net, totals.tax, totals.total, totals.paid, totals.due) == (
        Decimal("42.00"), Decimal("0.00"), Decimal("42.00"), Decimal("8.40"), Decimal("50.40"), Decimal("0.00"),
        Decimal("50.40"))
    assert [(g.rate, g.base, g.tax) for g in totals.taxes] == [(Decimal("0.2"), Decimal("42.00"), Decimal("8.40"))]
    # the defaults of what the payload does not say
    assert invoice.seller is None and invoice.due_date == date(2026, 12, 28) and invoice.payment_terms_days == 30
    assert invoice.page.paper == "A4" and invoice.labels["invoice"] == "Invoice"
    assert not invoice.facturx and not invoice.pdfa


def test_type_defaults_to_invoice_and_nothing_else_is_one() -> None:
    data = payload()
    del data["type"]
    assert parse_invoice(data) == parse_invoice(payload())
    data["type"] = None
    assert parse_invoice(data) == parse_invoice(payload())
    for check in (parse_invoice, check_invoice):
        with pytest.raises(ValidationError) as caught:
            check({**payload(), "type": "report"})
        assert (caught.value.field, caught.value.problem) == ("type", 'must be "invoice"')


def test_the_benchmarks_payload_and_the_sample_are_accepted() -> None:
    from benchmarks.sample import make_invoice

    invoice = parse_invoice(bench_payload(500))
    assert len(invoice.lines) == 500 and invoice.totals.total == invoice.totals.net + invoice.totals.tax
    check_invoice(bench_payload(500))
    assert len(parse_invoice(make_invoice(100)).lines) == 100


def test_a_date_defaults_to_today_in_utc() -> None:
    data = payload()
    del data["order"]["date"]
    before = datetime.now(UTC).date()
    issued = parse_invoice(data).issue_date
    assert before <= issued <= datetime.now(UTC).date()


# ------------------------------------------------------------------ money


def _round(value: Fraction, digits: int) -> Fraction:
    """Half away from zero, by integer arithmetic on exact fractions."""
    scale = 10 ** digits
    magnitude = math.floor(abs(value) * scale + Fraction(1, 2))
    return Fraction(magnitude if value >= 0 else -magnitude, scale)


def _exact(number: Any) -> Fraction:
    return Fraction(str(number)) if isinstance(number, float) else Fraction(number)


def expected_totals(data: dict[str, Any]) -> dict[str, Any]:
    """The invoice's money computed independently of invoice_data: fractions, not Decimal;
    minor units from Babel itself; the documented rule written out again."""
    from babel.numbers import get_currency_precision

    order = data["order"]
    digits = get_currency_precision(order.get("currency", "EUR").upper())
    default_rate = _exact(order.get("taxRate", 0))
    bases: dict[Fraction, Fraction] = {}
    gross_sum = discount_sum = Fraction(0)
    for item in data["items"]:
        gross = _round(_exact(item["quantity"]) * _exact(item["unitPrice"]), digits)
        discount = Fraction(0)
        if "percent" in (item.get("discount") or {}):
            discount = _round(gross * _exact(item["discount"]["percent"]) / 100, digits)
        elif "amount" in (item.get("discount") or {}):
            discount = _round(_exact(item["discount"]["amount"]), digits)
        rate = _exact(item["taxRate"]) if item.get("taxRate") is not None else default_rate
        bases[rate] = bases.get(rate, Fraction(0)) + gross - discount
        gross_sum += gross
        discount_sum += discount
    taxes = {rate: _round(base * rate, digits) for rate, base in bases.items()}
    total = gross_sum - discount_sum + sum(taxes.values())
    paid = _round(_exact(order.get("amountPaid", 0)), digits)
    return {"gross": gross_sum, "discounts": discount_sum, "net": gross_sum - discount_sum,
            "taxes": sorted((rate, bases[rate], tax) for rate, tax in taxes.items()),
            "tax": sum(taxes.values()), "total": total, "paid": paid, "due": total - paid, "digits": digits}


def _order(currency: str = "EUR", **extra: Any) -> dict[str, Any]:
    return {"number": "T-1", "date": "2026-01-31", "currency": currency, "customer": {"name": "C"}, **extra}


def _item(quantity: Any, price: Any, **extra: Any) -> dict[str, Any]:
    return {"name": "x", "quantity": quantity, "unitPrice": price, **extra}


MONEY_CASES: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "0.005 rounds half up": ({"order": _order(), "items": [_item(1, 0.005)]}, {"total": "0.01"}),
    "0.015 as a float is 0.015, not its binary value": ({"order": _order(), "items": [_item(1, 0.015)]},
                                                        {"total": "0.02"}),
    "3 x 0.335 = 1.005 rounds to 1.01": ({"order": _order(), "items": [_item(3, 0.335)]}, {"total": "1.01"}),
    "-0.005 rounds away from zero": ({"order": _order(), "items": [_item(1, 1), _item(1, -0.005)]},
                                     {"total": "0.99"}),
    "tax is rounded once per rate, not per line": (
        {"order": _order(taxRate=0.1), "items": [_item(1, 0.05)] * 3}, {"tax": "0.02", "total": "0.17"}),
    "many small lines, each rounded": (
        {"order": _order(taxRate=0.19), "items": [_item(1, 0.333)] * 999 + [_item(1, 0.004)]},
        {"net": "329.67", "tax": "62.64"}),
    "JPY has no minor units": ({"order": _order("JPY", taxRate=0.1), "items": [_item(3, 0.34), _item(1, 1999.5)]},
                               {"net": "2001", "tax": "200", "total": "2201"}),
    "KWD has three": ({"order": _order("kwd", taxRate=0.05), "items": [_item(1, 1.2345), _item(2, 0.0005)]},
                      {"net": "1.236", "tax": "0.062", "total": "1.298"}),
    "BHD credit line": ({"order": _order("BHD", taxRate=0.1), "items": [_item(1, 10), _item(1, -0.0005)]},
                        {"net": "9.999", "total": "10.999"}),
    "a credit line with a percentage discount": (
        {"order": _order(taxRate=0.2), "items": [_item(2, 10), _item(1, -10, discount={"percent": 10})]},
        {"discounts": "-1.00", "net": "11.00", "total": "13.20"}),
    "100 % discount": ({"order": _order(taxRate=0.19), "items": [_item(2, 9.99, discount={"percent": 100}),
                                                                  _item(1, 5)]},
                       {"discounts": "19.98", "net": "5.00", "total": "5.95"}),
    "amount discount, rounded": ({"order": _order(), "items": [_item(1, 10, discount={"amount": 2.345})]},
                                 {"discounts": "2.35", "net": "7.65"}),
    "mixed rates, one of them 0": (
        {"order": _order(taxRate=0.19), "items": [_item(1, 100), _item(3, 3.33, taxRate=0.07),
                                                   _item(1, 50, taxRate=0), _item(1, 0.01, taxRate=0.07)]},
        {"tax": "19.70", "total": "179.70"}),
    "paid in full leaves nothing due": (
        {"order": _order(taxRate=0.19, amountPaid=119), "items": [_item(1, 100)]}, {"due": "0.00", "paid": "119.00"}),
    "partly paid": ({"order": _order(taxRate=0.2, amountPaid=0.005), "items": [_item(1, 10)]},
                    {"paid": "0.01", "due": "11.99"}),
    "an amount discount over the line makes it negative": (
        {"order": _order(), "items": [_item(1, 1, discount={"amount": 3})]}, {"net": "-2.00"}),
}


@pytest.mark.parametrize("case", MONEY_CASES, ids=list(MONEY_CASES))
def test_money_matches_an_independent_computation(case: str) -> None:
    data, pinned = MONEY_CASES[case]
    invoice = parse_invoice(copy.deepcopy(data), InvoiceSettings(max_items=1000))
    check_invoice(copy.deepcopy(data), InvoiceSettings(max_items=1000))
    want = expected_totals(data)
    totals = invoice.totals
    got = {name: Fraction(getattr(totals, name)) for name in ("gross", "discounts", "net", "tax", "total", "paid", "due")}
    assert got == {name: want[name] for name in got}
    assert [(Fraction(g.rate), Fraction(g.base), Fraction(g.tax)) for g in totals.taxes] == want["taxes"]
    # every amount carries exactly the currency's minor units
    amounts = [*(getattr(totals, name) for name in got), *(g.base for g in totals.taxes), *(g.tax for g in totals.taxes),
               *(line.net for line in invoice.lines), *(line.discount for line in invoice.lines)]
    assert {a.as_tuple().exponent for a in amounts} == {-want["digits"]}
    assert invoice.money.minor_units == want["digits"]
    for name, text in pinned.items():  # and a few figures worked out by hand
        assert str(getattr(totals, name)) == text, name


def test_the_minor_units_table_is_babels() -> None:
    from babel.numbers import get_currency_precision, list_currencies

    ours = {code: digits for code in sorted(list_currencies()) if (digits := get_currency_precision(code)) != 2}
    assert ours == dict(MINOR_UNITS)
    assert (MINOR_UNITS["JPY"], MINOR_UNITS["KWD"], MINOR_UNITS["BHD"]) == (0, 3, 3) and "EUR" not in MINOR_UNITS


def test_the_service_side_imports_no_babel() -> None:
    """Nor reportlab, nor the CLI's rich: `offload serve` keeps its memory for jobs."""
    code = ("import sys; import offload.service.cli, offload.workers.pdf, offload.workers.invoice_data as d; "
            "d.parse_invoice({'order': {'number': 1, 'locale': 'de_DE', 'customer': {'name': 'x'}}, "
            "'items': [{'name': 'x', 'quantity': 1, 'unitPrice': 1}]}); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('babel', 'reportlab', 'facturx', 'lxml', 'rich')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


def test_locales_are_babels() -> None:
    from babel.localedata import locale_identifiers

    assert locales() == frozenset(locale_identifiers())
    assert {"en_US", "de_DE", "ja_JP", "fr", "ar_AE"} <= locales()
    assert importlib.util.find_spec("babel") is not None


# ------------------------------------------------------------------ the new fields


def test_lines_carry_unit_discount_tax_rate_and_credits() -> None:
    data = payload()
    data["items"] = [
        {"name": "Consulting", "quantity": 7.5, "unit": "h", "unitPrice": 80, "taxRate": 0.19,
         "discount": {"percent": 12.5}},
        {"name": "Book", "quantity": 2, "unitPrice": 12.5, "taxRate": 0.07, "discount": {"amount": 5}},
        {"name": "Shipping", "quantity": 1, "unitPrice": 4.9},
        {"name": "Voucher", "quantity": 1, "unitPrice": -10, "sku": 77},
    ]
    lines = parse_invoice(data).lines
    assert [(line.unit, line.discount, line.discount_percent, line.tax_rate, line.net) for line in lines] == [
        ("h", Decimal("75.00"), Decimal("12.5"), Decimal("0.19"), Decimal("525.00")),
        (None, Decimal("5.00"), None, Decimal("0.07"), Decimal("20.00")),
        (None, Decimal("0.00"), None, Decimal("0.2"), Decimal("4.90")),
        (None, Decimal("0.00"), None, Decimal("0.2"), Decimal("-10.00")),
    ]
    assert lines[3].sku == "77" and lines[3].unit_price == Decimal(-10)
    rates = [g.rate for g in parse_invoice(data).totals.taxes]
    assert rates == sorted(rates) == [Decimal("0.07"), Decimal("0.19"), Decimal("0.2")]


def test_terms_due_date_and_references() -> None:
    data = payload()
    data["order"].update(paymentTermsDays=14, paymentTerms="Net 14, 2 % discount within 7 days",
                         purchaseOrder=4711, amountPaid=10)
    invoice = parse_invoice(data)
    assert invoice.due_date == date(2026, 12, 12) and invoice.payment_terms_days == 14
    assert invoice.payment_terms == "Net 14, 2 % discount within 7 days" and invoice.purchase_order == "4711"
    assert invoice.totals.paid == Decimal("10.00") and invoice.totals.due == Decimal("40.40")
    data["order"]["dueDate"] = "2027-01-15"  # a due date wins over the days
    invoice = parse_invoice(data)
    assert invoice.due_date == date(2027, 1, 15) and invoice.payment_terms_days is None
    settings = InvoiceSettings.from_settings({"payment_terms_days": 0})
    assert parse_invoice(payload(), settings).due_date == date(2026, 11, 28)


def test_a_credit_note_names_its_invoice_and_has_no_due_date_of_its_own() -> None:
    data = {**payload(), "kind": "credit_note"}
    data["order"]["originalNumber"] = "INV-0999"
    invoice = parse_invoice(data)
    assert invoice.kind == "credit_note" and invoice.original_number == "INV-0999"
    assert invoice.due_date is None and invoice.totals.total == Decimal("50.40")
    assert invoice.labels["credit_note_for"].format(number=invoice.original_number) == \
        "Credit note for invoice INV-0999"
    data["order"]["paymentTermsDays"] = 7
    assert parse_invoice(data).due_date == date(2026, 12, 5)


def test_locale_and_paper_per_order() -> None:
    data = payload()
    data["order"].update(locale="de_DE", paper="LETTER")
    invoice = parse_invoice(data)
    assert invoice.money.locale == "de_DE" and invoice.page.paper == "LETTER"
    assert invoice.labels["invoice"] == "Rechnung" and invoice.labels["balance_due"] == "Offener Betrag"


def test_the_seller_comes_from_the_config_and_a_job_overrides_it_field_by_field(tmp_path: Path) -> None:
    logo = tmp_path / "logo.png"
    logo.write_bytes(PNG)
    settings = InvoiceSettings.from_settings({"seller": {**SELLER, "logo": str(logo)}})
    seller = parse_invoice(payload(), settings).seller
    assert seller is not None and seller.logo == str(logo)
    assert seller.party.name == "Trattoria Example GmbH" and seller.party.country == "DE"
    assert seller.party.address == ("Hauptstraße 1", "10115 Berlin") and seller.party.tax_id == "DE123456789"
    assert seller.bank is not None and seller.bank.iban == "DE89370400440532013000" and seller.bank.bic == "COBADEFFXXX"
    data = {**payload(), "seller": {"name": "Trattoria Filiale Süd", "iban": "de44 5001 0517 5407 3249 31",
                                    "phone": "+49 89 1", "taxId": None}}
    seller = parse_invoice(data, settings).seller
    assert seller is not None and seller.party.name == "Trattoria Filiale Süd" and seller.party.phone == "+49 89 1"
    assert seller.party.tax_id == "DE123456789" and seller.party.address == ("Hauptstraße 1", "10115 Berlin")
    assert seller.bank is not None and seller.bank.iban == "DE44500105175407324931" and seller.bank.bic == "COBADEFFXXX"
    assert seller.logo == str(logo)
    # no configured seller: the job's is the whole seller, and needs a name
    assert parse_invoice({**payload(), "seller": {"name": "Solo"}}).seller.party.name == "Solo"  # type: ignore[union-attr]
    for check in (parse_invoice, check_invoice):
        with pytest.raises(ValidationError) as caught:
            check({**payload(), "seller": {"email": "a@b.c"}})
        assert (caught.value.field, caught.value.problem) == ("seller.name", "is required")


@pytest.mark.parametrize("check", [parse_invoice, check_invoice], ids=["parse", "check"])
def test_a_job_cannot_name_a_logo(check: Callable[..., Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        check({**payload(), "seller": {"name": "X", "logo": "/etc/passwd"}})
    assert caught.value.field == "seller.logo" and "cannot be given in a job" in caught.value.problem


@pytest.mark.parametrize("check", [parse_invoice, check_invoice], ids=["parse", "check"])
def test_facturx_per_order_needs_a_configured_seller_with_a_country(check: Callable[..., Any]) -> None:
    data = payload()
    data["order"]["facturx"] = True
    with pytest.raises(ValidationError) as caught:
        check(data)
    assert caught.value.field == "order.facturx"
    settings = InvoiceSettings.from_settings({"seller": SELLER})
    check(data, settings)
    if check is parse_invoice:
        invoice = parse_invoice(data, settings)
        assert invoice.facturx and invoice.pdfa
        data["order"]["facturx"] = False
        assert not parse_invoice(data, InvoiceSettings.from_settings({"seller": SELLER, "facturx": True})).facturx


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return change


BAD: list[tuple[str, Any, str, str]] = [
    ("kind", "quote", "kind", 'must be "invoice" or "credit_note"'),
    ("order.locale", "xx_YY", "order.locale", "must be a locale such as en_US, de_DE or ja_JP"),
    ("order.paper", "letter", "order.paper", 'must be "A4" or "LETTER"'),
    ("order.dueDate", "2026-02-30", "order.dueDate", "must be a date as YYYY-MM-DD"),
    ("order.paymentTermsDays", 3651, "order.paymentTermsDays", "must be a whole number of days from 0 to 3650"),
    ("order.paymentTermsDays", 1.5, "order.paymentTermsDays", "must be a whole number of days from 0 to 3650"),
    ("order.amountPaid", -1, "order.amountPaid", "must be a number, 0 or more"),
    ("order.facturx", "yes", "order.facturx", "must be true or false"),
    ("order.customer.country", "DEU", "order.customer.country",
     "must be a 2-letter country code (ISO 3166-1: DE, FR, JP)"),
    ("seller", [], "seller", "must be an object"),
    ("seller.iban", "DE89 3704", "seller.iban",
     "must be an IBAN: country code, 2 check digits, then 11 to 30 letters or digits"),
    ("seller.bic", "COBADEFFX", "seller.bic", "must be a BIC of 8 or 11 letters and digits"),
    ("items.2.unitPrice", -1e9, "items[2].unitPrice", "must be between -1,000,000,000 and 1,000,000,000"),
    ("items.2.unitPrice", True, "items[2].unitPrice", "must be a number (negative for a credit line)"),
    ("items.2.taxRate", 19, "items[2].taxRate", "must be a number between 0 and 1"),
    ("items.2.unit", 5, "items[2].unit", "must be a string"),
    ("items.2.discount", 10, "items[2].discount", "must be an object"),
    ("items.2.discount", {}, "items[2].discount", 'must have one of "percent" or "amount"'),
    ("items.2.discount", {"percent": 10, "amount": 1}, "items[2].discount", 'must have one of "percent" or "amount"'),
    ("items.2.discount", {"percent": 101}, "items[2].discount.percent", "must be a number from 0 to 100"),
    ("items.2.discount", {"percent": None}, "items[2].discount.percent", "is required"),
    ("items.2.discount", {"amount": -1}, "items[2].discount.amount", "must be a number, 0 or more"),
    ("items.1.quantity", 0, "items[1].quantity", "must be a number greater than 0"),
]


@pytest.mark.parametrize("check", [parse_invoice, check_invoice], ids=["parse", "check"])
@pytest.mark.parametrize(("path", "value", "field", "problem"), BAD, ids=[f"{b[0]}={b[1]!r}" for b in BAD])
def test_bad_fields_are_named_by_parse_and_check_alike(check: Callable[..., Any], path: str, value: Any,
                                                       field: str, problem: str) -> None:
    data = payload()
    if path.startswith("seller."):
        data["seller"] = {"name": "S"}
    _set(path, value)(data)
    with pytest.raises(ValidationError) as caught:
        check(data)
    assert (caught.value.field, caught.value.problem) == (field, problem)


def test_check_passes_what_parse_passes() -> None:
    data = payload()
    data["items"] += [_item(1, -3, unit="pcs", discount={"amount": 1}, taxRate=0.07), _item(2, 1, sku=5)]
    parse_invoice(data)
    check_invoice(data)


# ------------------------------------------------------------------ labels


def test_every_language_has_every_label() -> None:
    assert set(GERMAN) == set(FRENCH) == set(ENGLISH) == KEYS
    assert labels_for("de_AT")["invoice"] == "Rechnung" and labels_for("fr_CA")["invoice"] == "Facture"
    assert labels_for("ja_JP") == dict(ENGLISH)
    for labels in (ENGLISH, GERMAN, FRENCH):
        assert labels["page"].format(page=1, pages=2) and labels["tax_group"].format(rate="19 %", base="1 €")


def test_label_overrides_apply_to_every_language_or_to_one() -> None:
    settings = InvoiceSettings.from_settings({"labels": {"invoice": "Tax invoice", "es": {"invoice": "Factura"},
                                                         "de": {"total": "Summe"}}})
    data = payload()
    assert parse_invoice(data, settings).labels["invoice"] == "Tax invoice"
    data["order"]["locale"] = "es_ES"
    assert parse_invoice(data, settings).labels["invoice"] == "Factura"
    data["order"]["locale"] = "de_DE"
    labels = parse_invoice(data, settings).labels
    assert (labels["invoice"], labels["total"], labels["date"]) == ("Tax invoice", "Summe", "Datum")


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(("settings", "message"), [
    ({"locale": "xx"}, "locale: must be a locale such as en_US, de_DE or ja_JP, got 'xx'"),
    ({"paper": "A5"}, "paper: must be one of A4, LETTER, got 'A5'"),
    ({"currency_display": "name"}, "currency_display: must be one of symbol, code, got 'name'"),
    ({"margins": [1, 2]}, "margins: must be a number of points or a list of 4 (top, right, bottom, left), got [1, 2]"),
    ({"margins": 200}, "margins: each must be from 0 to 144 points, got 200"),
    ({"payment_terms_days": -1}, "payment_terms_days: must be a whole number from 0 to 3650, got -1"),
    ({"pdfa": "yes"}, "pdfa: must be true or false, got 'yes'"),
    ({"fonts": "/nonexistent/font.ttf"}, "fonts[0]: no such file: '/nonexistent/font.ttf'"),
    ({"fonts": [1]}, "fonts: must be a list of font file paths, got [1]"),
    ({"facturx": True}, "facturx: a Factur-X invoice needs a seller: set [jobs.settings.pdf.seller] name and country"),
    ({"seller": {"email": "a@b.c"}}, "seller.name: is required"),
    ({"seller": {"name": "X", "fax": "1"}}, "seller.fax: unknown key (known: account, address, bank, bic, country, "
                                            "email, iban, logo, name, phone, registration, tax_id, website)"),
    ({"seller": {"name": "X", "iban": "DE00 3704 0044 0532 0130 00"}},
     "seller.iban: DE00370400440532013000 is not a valid IBAN (its check digits do not match)"),
    ({"seller": {"name": "X", "tax_id": 5}}, "seller.tax_id: must be a string, got 5 (a value set in the environment "
                                             "that reads as a number arrives as one: set this one in config.toml)"),
    ({"seller": {"name": "X", "logo": "/nonexistent.png"}}, "seller.logo: no such file: '/nonexistent.png'"),
    ({"labels": {"totl": "T"}}, "labels.totl: unknown label (known: " + ", ".join(sorted(KEYS))
     + "; a table must be named by a language code such as de or es)"),
    ({"labels": {"page": "Seite {seite}"}}, "labels.page: unknown placeholder {seite} (this label has: {page}, {pages})"),
    ({"labels": {"de": {"total": 1}}}, "labels.de.total: must be a string, got 1"),
])
def test_bad_pdf_settings_are_named(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        InvoiceSettings.from_settings(settings)
    assert str(caught.value) == message


def test_a_logo_must_be_a_png_or_a_jpeg(tmp_path: Path) -> None:
    (tmp_path / "logo.gif").write_bytes(b"GIF89a" + b"\x00" * 20)
    (tmp_path / "logo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 20)
    with pytest.raises(ValueError, match="is not a PNG or JPEG image"):
        InvoiceSettings.from_settings({"seller": {"name": "X", "logo": str(tmp_path / "logo.gif")}})
    seller = InvoiceSettings.from_settings({"seller": {"name": "X", "logo": str(tmp_path / "logo.jpg")}}).seller
    assert seller is not None and seller.logo == str(tmp_path / "logo.jpg")


def test_the_config_file_names_the_seller_and_its_relative_logo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "logo.png").write_bytes(PNG)
    (tmp_path / "conf" / "Font.ttf").write_bytes(b"\x00\x01\x00\x00")
    file = tmp_path / "conf" / "config.toml"
    file.write_text('[jobs.settings.pdf]\nlocale = "de_DE"\nmargins = 36\nfonts = ["Font.ttf"]\n'
                    '[jobs.settings.pdf.seller]\nname = "ACME"\ncountry = "DE"\nlogo = "logo.png"\n'
                    '[jobs.settings.pdf.labels]\ninvoice = "Faktura"\n')
    monkeypatch.chdir(tmp_path)  # not the config's folder
    loaded = load_config(file, environ={})
    settings = InvoiceSettings.from_settings(loaded.jobs.settings["pdf"])
    assert settings.seller is not None and settings.seller.logo == str(tmp_path / "conf" / "logo.png")
    assert settings.fonts == (str(tmp_path / "conf" / "Font.ttf"),)
    assert settings.locale == "de_DE" and settings.margins == (36.0, 36.0, 36.0, 36.0)
    assert settings.labels == {"invoice": "Faktura"}
    (tmp_path / "conf" / "logo.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError) as stopped:
        load_config(file, environ={})
    assert str(stopped.value) == f"[jobs.settings.pdf] seller.logo: '{tmp_path / 'conf' / 'logo.png'}' is not a PNG or JPEG image"


def test_the_environment_sets_table_keys_flat() -> None:
    loaded = load_config(ROOT / "config.toml", environ={
        "OFFLOAD_JOBS_SETTINGS_PDF_SELLER_NAME": "ACME GmbH",
        "OFFLOAD_JOBS_SETTINGS_PDF_SELLER_COUNTRY": "DE",
        "OFFLOAD_JOBS_SETTINGS_PDF_SELLER_IBAN": "DE89 3704 0044 0532 0130 00",
        "OFFLOAD_JOBS_SETTINGS_PDF_LABELS_TOTAL": "Total due",
        "OFFLOAD_JOBS_SETTINGS_PDF_MARGINS": "36,40,36,40",
        "OFFLOAD_JOBS_SETTINGS_PDF_FACTURX": "true",
        "OFFLOAD_JOBS_SETTINGS_PDF_PAYMENT_TERMS_DAYS": "14",
        "OFFLOAD_JOBS_SETTINGS_PDF_PAPER": "LETTER",
    })
    settings = InvoiceSettings.from_settings(loaded.jobs.settings["pdf"])
    assert settings.seller is not None and settings.seller.party.name == "ACME GmbH"
    assert settings.seller.bank is not None and settings.seller.bank.iban == "DE89370400440532013000"
    assert settings.labels == {"total": "Total due"} and settings.margins == (36.0, 40.0, 36.0, 40.0)
    assert settings.facturx and settings.payment_terms_days == 14 and settings.paper == "LETTER"
    with pytest.raises(ConfigError) as stopped:
        load_config(ROOT / "config.toml", environ={"OFFLOAD_JOBS_SETTINGS_PDF_SELLER_NAME": "A",
                                                   "OFFLOAD_JOBS_SETTINGS_PDF_SELLER_PHONE": "+4930123"})
    assert "seller.phone: must be a string, got 4930123 (a value set in the environment" in str(stopped.value)


def test_the_shipped_config_is_the_defaults() -> None:
    shipped = load_config(ROOT / "config.toml", environ={})
    assert InvoiceSettings.from_settings(shipped.jobs.settings["pdf"]) == DEFAULT_SETTINGS
    documented = {line.split("=")[0].strip() for line in (ROOT / "config.toml").read_text().split("[jobs.settings.pdf]")[1]
                  .split("\n[auth]")[0].splitlines() if "=" in line and not line.startswith("#")}
    from dataclasses import fields
    assert documented | {"seller", "labels"} == {f.name for f in fields(InvoiceSettings)}


def test_settings_are_read_once_while_they_do_not_change(tmp_path: Path) -> None:
    logo = tmp_path / "logo.png"
    logo.write_bytes(PNG)
    raw = {"seller": {"name": "X", "logo": str(logo)}}
    first = InvoiceSettings.from_settings(raw)
    assert InvoiceSettings.from_settings(raw) is first  # the submit path pays no file check per job
    raw["seller"]["name"] = "Y"
    assert InvoiceSettings.from_settings(raw).seller.party.name == "Y"  # type: ignore[union-attr]


def test_the_schema_follows_the_settings() -> None:
    plain = invoice_schema(DEFAULT_SETTINGS)
    assert plain["properties"]["seller"]["required"] == ["name"]
    assert plain["properties"]["order"]["properties"]["facturx"]["enum"] == [False]
    assert "type" not in plain["required"] and "de_DE" in plain["properties"]["order"]["properties"]["locale"]["enum"]
    configured = invoice_schema(InvoiceSettings.from_settings({"seller": SELLER}))
    assert "required" not in configured["properties"]["seller"]
    assert "enum" not in configured["properties"]["order"]["properties"]["facturx"]


def test_a_due_date_may_be_before_today() -> None:
    data = payload()
    data["order"]["dueDate"] = (date(2026, 11, 28) - timedelta(days=1)).isoformat()
    assert parse_invoice(data).due_date == date(2026, 11, 27)


def test_the_documented_example_is_accepted_and_every_field_is_documented() -> None:
    import json

    doc = (ROOT / "docs" / "api.md").read_text().split("## The invoice's data", 1)[1]
    example = json.loads(doc.split("```json", 1)[1].split("```", 1)[0])
    check_invoice(example)
    invoice = parse_invoice(example)
    assert invoice.labels["invoice"] == "Rechnung" and invoice.due_date == date(2026, 12, 12)
    want = expected_totals(example)
    assert (Fraction(invoice.totals.total), Fraction(invoice.totals.due)) == (want["total"], want["due"])
    # every property of the schema has its row in the table
    schema = invoice_schema()
    documented = doc.split("| field |", 1)[1]

    def names(properties: dict[str, Any], prefix: str) -> set[str]:
        out = set()
        for key, value in properties.items():
            out.add(prefix + key)
            out |= names(value.get("properties", {}), prefix + key + ".")
            out |= names(value.get("items", {}).get("properties", {}), prefix + key + "[].")
        return out

    for name in names(schema["properties"], ""):
        last = name.rsplit(".", 1)[-1]
        assert f"`{name}`" in documented or f"`.{last}`" in documented, name
