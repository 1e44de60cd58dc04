from __future__ import annotations

import copy
import io
from dataclasses import fields
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from benchmarks.sample import make_logo
from offload.service.config import ConfigError, load_config
from offload.workers.registry import Registry
from offload.workers.context import Context
from offload.workers.errors import Cancelled, ValidationError
from offload.workers.invoice_data import DEFAULT_SETTINGS, InvoiceSettings, check_invoice, parse_invoice
from offload.workers.invoice_money import Formatter
from offload.workers.pdf import invoice_filename, pdf, validate_pdf
from tests.test_invoice_render import has_line


def reference_payload() -> dict[str, Any]:
    return {
        "type": "invoice",
        "order": {
            "number": "INV-1001",
            "date": "2026-11-28",
            "currency": "EUR",
            "taxRate": 0.2,
            "customer": {"name": "Ada Lovelace", "address": "12 Analytical Row\nLondon", "email": "ada@example.com"},
            "notes": "Thank you!",
        },
        "items": [
            {"name": "Difference engine gear", "quantity": 2, "unitPrice": 9.5, "sku": "DE-1"},
            {"name": "Punched card", "quantity": 100, "unitPrice": 0.05},
            {"name": "Brass crank", "quantity": 1.5, "unitPrice": 12},
        ],
    }


def read_pages(content: bytes) -> list[str]:
    return [page.extract_text() for page in PdfReader(io.BytesIO(content)).pages]


def test_parse_reference_payload_into_decimal_money() -> None:
    invoice = parse_invoice(reference_payload())

    assert invoice.number == "INV-1001"
    assert invoice.issue_date == date(2026, 11, 28)
    assert invoice.money.currency == "EUR"
    assert {line.tax_rate for line in invoice.lines} == {Decimal("0.2")}
    assert invoice.customer.name == "Ada Lovelace"
    assert invoice.customer.address == ("12 Analytical Row", "London")
    assert invoice.customer.email == "ada@example.com"
    assert invoice.notes == "Thank you!"
    assert [item.sku for item in invoice.lines] == ["DE-1", None, None]
    assert [item.net for item in invoice.lines] == [Decimal("19.00"), Decimal("5.00"), Decimal("18.00")]
    totals = invoice.totals
    assert (totals.net, totals.tax, totals.total) == (Decimal("42.00"), Decimal("8.40"), Decimal("50.40"))
    assert all(isinstance(item.quantity, Decimal) for item in invoice.lines)


def test_parse_ignores_unknown_fields() -> None:
    data = reference_payload()
    data["source"] = "shop"
    data["order"]["shipping"] = {"method": "courier"}
    data["order"]["customer"]["vip"] = True
    data["items"][0]["color"] = "brass"

    assert parse_invoice(data) == parse_invoice(reference_payload())


def test_parse_fills_defaults() -> None:
    data = reference_payload()
    for key in ("date", "currency", "taxRate", "notes"):
        del data["order"][key]
    data["order"]["number"] = 1001

    invoice = parse_invoice(data, InvoiceSettings.from_settings({"currency": "chf"}))

    assert invoice.number == "1001"
    assert invoice.issue_date == datetime.now(UTC).date()
    assert invoice.money.currency == "CHF"
    assert {line.tax_rate for line in invoice.lines} == {Decimal(0)}
    assert (invoice.totals.tax, invoice.totals.total) == (Decimal("0.00"), Decimal("42.00"))
    assert invoice.notes is None


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = data
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is KeyError:
            del target[int(last) if isinstance(target, list) else last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        (_set("order.number", KeyError), "order.number", "is required"),
        (_set("order.number", "  "), "order.number", "must not be empty"),
        (_set("order.customer.name", KeyError), "order.customer.name", "is required"),
        (_set("order.customer", KeyError), "order.customer", "is required"),
        (_set("order", KeyError), "order", "is required"),
        (_set("type", "receipt"), "type", 'must be "invoice"'),
        (_set("items", []), "items", "must not be empty"),
        (_set("items", {"0": {}}), "items", "must be a list"),
        (_set("items.2.quantity", "3"), "items[2].quantity", "must be a number greater than 0"),
        (_set("items.1.quantity", 0), "items[1].quantity", "must be a number greater than 0"),
        (_set("items.0.quantity", True), "items[0].quantity", "must be a number greater than 0"),
        (_set("items.0.unitPrice", False), "items[0].unitPrice", "must be a number (negative for a credit line)"),
        (_set("items.1.unitPrice", float("nan")), "items[1].unitPrice", "must be a number (negative for a credit line)"),
        (_set("items.0.unitPrice", 1e12), "items[0].unitPrice", "must be between -1,000,000,000 and 1,000,000,000"),
        (_set("items.0.name", KeyError), "items[0].name", "is required"),
        (_set("items.2", "brass crank"), "items[2]", "must be an object"),
        (_set("order.date", "28/11/2026"), "order.date", "must be a date as YYYY-MM-DD"),
        (_set("order.date", "2026-02-30"), "order.date", "must be a date as YYYY-MM-DD"),
        (_set("order.taxRate", 1.5), "order.taxRate", "must be a number between 0 and 1"),
        (_set("order.taxRate", "20%"), "order.taxRate", "must be a number between 0 and 1"),
        (_set("order.currency", "EURO"), "order.currency", "must be a 3-letter currency code"),
        (_set("order.customer.email", 42), "order.customer.email", "must be a string"),
        (_set("items", [{"name": "x", "quantity": 1, "unitPrice": 1}] * (DEFAULT_SETTINGS.max_items + 1)), "items",
         "must have at most 10,000 entries (max_items), got 10,001"),
        (_set("order.number", "N" * 1001), "order.number", "must be at most 1,000 characters long (max_text_length), "
                                                           "got 1,001"),
        (_set("order.customer.name", "n" * 1001), "order.customer.name",
         "must be at most 1,000 characters long (max_text_length), got 1,001"),
        (_set("order.customer.email", "e" * 1001), "order.customer.email",
         "must be at most 1,000 characters long (max_text_length), got 1,001"),
        (_set("order.customer.address", "a" * 1001), "order.customer.address",
         "must be at most 1,000 characters long (max_text_length), got 1,001"),
        (_set("order.customer.address", ["ok", "a" * 1001]), "order.customer.address[1]",
         "must be at most 1,000 characters long (max_text_length), got 1,001"),
        (_set("order.customer.address", ["line"] * 21), "order.customer.address", "must have at most 20 lines, got 21"),
        (_set("order.customer.address", ["line", 7]), "order.customer.address[1]", "must be a string"),
        (_set("order.notes", "w" * 10_001), "order.notes",
         "must be at most 10,000 characters long (max_notes_length), got 10,001"),
        (_set("items.2.name", "w" * 1001), "items[2].name",
         "must be at most 1,000 characters long (max_text_length), got 1,001"),
        (_set("items.0.sku", "s" * 1001), "items[0].sku",
         "must be at most 1,000 characters long (max_text_length), got 1,001"),
        (_set("items.2.sku", "s" * 1001), "items[2].sku",
         "must be at most 1,000 characters long (max_text_length), got 1,001"),
        (_set("order.date", "\u0662\u0660\u0662\u0666-11-28"), "order.date", "must be a date as YYYY-MM-DD"),
    ],
)
@pytest.mark.parametrize("check", [parse_invoice, check_invoice], ids=["parse", "check"])
def test_parse_names_the_bad_field(check: Callable[..., Any], change: Callable[[dict[str, Any]], None],
                                   field: str, problem: str) -> None:
    data = reference_payload()
    change(data)

    with pytest.raises(ValidationError) as caught:
        check(data)

    assert (caught.value.field, caught.value.problem) == (field, problem)


def test_check_accepts_what_parse_accepts() -> None:
    data = reference_payload()
    data["items"] += [{"name": "odd", "quantity": 0.5, "unitPrice": 0, "sku": 7},
                      {"name": "even", "quantity": 1, "unitPrice": 0, "sku": 8.0},
                      {"name": "  spaced  ", "quantity": 2, "unitPrice": 1.25, "sku": None}]
    data["order"]["number"] = 1001.0  # a whole number, as JSON Schema's integer
    invoice = parse_invoice(data)
    check_invoice(data)
    assert (invoice.number, invoice.lines[3].sku, invoice.lines[4].sku) == ("1001", "7", "8")


def test_parse_refuses_data_that_is_not_an_object() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_invoice(["invoice"])
    assert (caught.value.field, caught.value.problem) == ("", "must be an object")


def test_line_totals_round_half_up_to_cents() -> None:
    data = reference_payload()
    data["items"] = [
        {"name": "a", "quantity": 3, "unitPrice": 0.335},   # 1.005 -> 1.01 (half-even would give 1.00)
        {"name": "b", "quantity": 1, "unitPrice": 0.125},   # 0.125 -> 0.13
        {"name": "c", "quantity": 0.1, "unitPrice": 0.2},   # binary floats would give 0.020000000000000004
    ]
    data["order"]["taxRate"] = 0.1

    invoice = parse_invoice(data)

    assert [item.net for item in invoice.lines] == [Decimal("1.01"), Decimal("0.13"), Decimal("0.02")]
    assert invoice.totals.net == Decimal("1.16")
    assert invoice.totals.tax == Decimal("0.12")   # 0.116 -> 0.12
    assert invoice.totals.total == Decimal("1.28")


def test_tax_rounds_half_up() -> None:
    data = reference_payload()
    data["items"] = [{"name": "a", "quantity": 1, "unitPrice": 0.25}]
    data["order"]["taxRate"] = 0.1   # 0.025 -> 0.03 (half-even would give 0.02)

    invoice = parse_invoice(data)

    totals = invoice.totals
    assert (totals.net, totals.tax, totals.total) == (Decimal("0.25"), Decimal("0.03"), Decimal("0.28"))


@pytest.mark.parametrize("check", [parse_invoice, check_invoice], ids=["parse", "check"])
def test_the_limits_are_the_settings(check: Callable[..., Any]) -> None:
    settings = InvoiceSettings.from_settings({"max_items": "3", "max_text_length": 30, "max_notes_length": 8})
    data = reference_payload()
    data["order"]["notes"] = "12345678"
    data["items"][2]["name"] = "n" * 30
    check(data, settings)  # every limit reached, none passed
    for field, change, problem in (
        ("items", _set("items.3", {"name": "x", "quantity": 1, "unitPrice": 1}),
         "must have at most 3 entries (max_items), got 4"),
        ("items[2].name", _set("items.2.name", "n" * 31),
         "must be at most 30 characters long (max_text_length), got 31"),
        ("order.notes", _set("order.notes", "123456789"),
         "must be at most 8 characters long (max_notes_length), got 9"),
    ):
        bad = copy.deepcopy(data)
        if field == "items":
            bad["items"].append({})
        change(bad)
        with pytest.raises(ValidationError) as caught:
            check(bad, settings)
        assert (caught.value.field, caught.value.problem) == (field, problem)


@pytest.mark.parametrize(("settings", "message"), [
    ({"max_items": 0}, "max_items: must be a whole number of 1 or more, got 0"),
    ({"max_text_length": "many"}, "max_text_length: must be a whole number of 1 or more, got 'many'"),
    ({"max_notes_length": True}, "max_notes_length: must be a whole number of 1 or more, got True"),
    ({"currency": "EURO"}, "currency: must be a 3-letter currency code, got 'EURO'"),
    ({"max_item": 5}, "max_item: unknown key (known: currency, currency_display, facturx, fonts, labels, locale, "
                      "margins, max_items, max_notes_length, max_text_length, paper, payment_terms_days, pdfa, seller)"),
])
def test_bad_pdf_settings_stop_start_up_naming_the_key(tmp_path: Path, settings: dict[str, Any],
                                                       message: str) -> None:
    with pytest.raises(ValueError) as caught:
        InvoiceSettings.from_settings(settings)
    assert str(caught.value) == message
    file = tmp_path / "config.toml"
    lines = [f"{key} = {value!r}".replace("True", "true").replace("'", '"') for key, value in settings.items()]
    file.write_text("[jobs.settings.pdf]\n" + "\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as stopped:
        load_config(file, environ={})
    assert str(stopped.value) == f"[jobs.settings.pdf] {message}"


def test_the_shipped_config_states_the_invoice_limits() -> None:
    shipped = load_config(Path(__file__).resolve().parent.parent / "config.toml", environ={})
    assert InvoiceSettings.from_settings(shipped.jobs.settings["pdf"]) == DEFAULT_SETTINGS
    # every setting is stated, but the seller and label tables, which it shows commented out
    assert set(shipped.jobs.settings["pdf"]) == {f.name for f in fields(InvoiceSettings)} - {"seller", "labels"}


def test_pdf_job_returns_named_file_and_reports_progress() -> None:
    data = reference_payload()
    data["order"]["number"] = "INV/1001 ü"
    sent: list[tuple[int, str | None]] = []
    ctx = Context("job_1", 1, {"currency": "USD"}, lambda percent, message: sent.append((percent, message)))

    output = pdf(copy.deepcopy(data), ctx)

    assert output.filename == "invoice-INV_1001.pdf"
    assert output.content_type == "application/pdf"
    assert "INV/1001 ü" in read_pages(output.content)[0]
    assert sent[0] == (0, "laying out invoice")
    assert sent[-1] == (95, "writing PDF")


def test_pdf_job_is_registered_with_its_validator() -> None:
    job = Registry.from_modules().get("pdf")
    data = reference_payload()
    del data["order"]["customer"]["name"]

    assert job is not None and job.handler is pdf and job.validate is validate_pdf
    with pytest.raises(ValidationError) as caught:
        job.validate(data, {"currency": "USD"})
    assert caught.value.field == "order.customer.name"


@pytest.mark.parametrize(
    ("number", "filename"),
    [
        ("INV-1001", "invoice-INV-1001.pdf"),
        ("../../etc/passwd", "invoice-etc_passwd.pdf"),
        ("日本", "invoice-unnamed.pdf"),
    ],
)
def test_invoice_filename_is_safe(number: str, filename: str) -> None:
    assert invoice_filename(number) == filename


def test_pdf_settings_from_the_environment_are_checked_too() -> None:
    loaded = load_config(None, environ={"OFFLOAD_JOBS_SETTINGS_PDF_MAX_TEXT_LENGTH": "2000"})
    assert InvoiceSettings.from_settings(loaded.jobs.settings["pdf"]).max_text_length == 2000
    with pytest.raises(ConfigError) as stopped:
        load_config(None, environ={"OFFLOAD_JOBS_SETTINGS_PDF_MAX_ITEMS": "0"})
    assert str(stopped.value) == "[jobs.settings.pdf] max_items: must be a whole number of 1 or more, got 0"


def test_the_readme_example_renders_with_its_totals(tmp_path: Path) -> None:
    from docs.make_invoice_png import readme_example

    settings, data = readme_example()
    settings["seller"]["logo"] = make_logo(str(tmp_path / "logo.png"))
    sent: list[tuple[int, str | None]] = []
    output = pdf(copy.deepcopy(data), Context("job_1", 1, settings, lambda *report: sent.append(report)))

    # The totals from the request itself: per line round(quantity x price) less its discount,
    # then the tax per rate on that rate's base.
    cent, default = Decimal("0.01"), Decimal(str(data["order"]["taxRate"]))
    bases: dict[Decimal, Decimal] = {}
    for item in data["items"]:
        gross = (Decimal(str(item["quantity"])) * Decimal(str(item["unitPrice"]))).quantize(cent, ROUND_HALF_UP)
        off = (gross * Decimal(item.get("discount", {}).get("percent", 0)) / 100).quantize(cent, ROUND_HALF_UP)
        rate = Decimal(str(item.get("taxRate", default)))
        bases[rate] = bases.get(rate, Decimal(0)) + gross - off
    taxes = {rate: (base * rate).quantize(cent, ROUND_HALF_UP) for rate, base in bases.items()}
    total = sum(bases.values(), Decimal(0)) + sum(taxes.values(), Decimal(0))
    assert total == Decimal("641.04")

    invoice = parse_invoice(data, InvoiceSettings.from_settings(settings))
    fmt = Formatter(invoice.money)
    assert output.filename == "invoice-RE-2026-0042.pdf"
    assert has_line(output.content, f"Gesamtbetrag {fmt.amount(total)}")
    for rate, base in bases.items():
        label = f"USt. {fmt.percent(rate)} auf {fmt.amount(base)}"
        assert has_line(output.content, f"{label} {fmt.amount(taxes[rate])}")
    text = "\n".join(read_pages(output.content))
    for expected in ("RECHNUNG", "Lindenhof Feinkost GmbH", "DE02200505501015871393", "Restaurant Zur Alten Mühle GmbH",
                     "PO-7781", "Zahlbar innerhalb von 30 Tagen", "Seite 1 von 1"):
        assert expected in text, expected
    page = PdfReader(io.BytesIO(output.content)).pages[0]
    assert any(x.get_object()["/Subtype"] == "/Image" for x in page["/Resources"]["/XObject"].values())
    assert PdfReader(io.BytesIO(output.content)).metadata.author == "Lindenhof Feinkost GmbH"
    assert sent[0] == (0, "laying out invoice") and sent[-1] == (95, "writing PDF")


def test_pdf_job_reports_a_bounded_number_of_times_and_stops_within_a_page() -> None:
    data = reference_payload()
    data["items"] = [{"name": f"Part {i}", "quantity": 1, "unitPrice": 2.5} for i in range(3000)]
    sent: list[tuple[int, str | None]] = []
    output = pdf(copy.deepcopy(data), Context("job_1", 1, {}, lambda *report: sent.append(report)))
    assert len(PdfReader(io.BytesIO(output.content)).pages) > 50
    assert len(sent) <= 21, len(sent)

    asked = 0

    def cancelled() -> bool:
        nonlocal asked
        asked += 1
        return asked > 4  # the first calls are the layout's report and pages 1..3

    with pytest.raises(Cancelled):
        pdf(copy.deepcopy(data), Context("job_1", 1, {}, lambda *report: None, cancelled))
    assert asked == 5
