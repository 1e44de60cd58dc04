"""The invoice as drawn: every variant rendered from model objects (tests/invoice_builder.py),
read back with pypdf (text, pages, metadata) and checked against the tests' own arithmetic."""
from __future__ import annotations

import html
import io
import re
import subprocess
import tempfile
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pypdf import PdfReader

from offload.workers.errors import Cancelled
from offload.workers.invoice_layout import CARRY, HEADER_ROW, lay_out
from offload.workers.invoice_model import Layout, Money, Seller
from offload.workers.invoice_money import Formatter
from offload.workers.invoice_render import REPORTS, render_invoice, worker_fonts
from offload.workers.invoice_text import MissingGlyph
from benchmarks.sample import EUR, SELLER, invoice, line


def pages_of(content: bytes) -> list[str]:
    return [page.extract_text() for page in PdfReader(io.BytesIO(content)).pages]


def text_of(content: bytes) -> str:
    return "\n".join(pages_of(content))


def squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)


def words(content: bytes, page: int = 0) -> tuple[list[tuple[float, float, float, str]], float]:
    """(x, top, bottom, word) of every word on a page, in PDF points with y up, and the page's
    height, as poppler's `pdftotext -bbox` finds them (pypdf merges strings that share a text
    object)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "page.pdf"
        path.write_bytes(content)
        out = subprocess.run(["pdftotext", "-bbox", "-f", str(page + 1), "-l", str(page + 1), str(path), "-"],
                             check=True, capture_output=True, text=True).stdout
    height = float(re.search(r'<page width="[\d.]+" height="([\d.]+)"', out).group(1))  # type: ignore[union-attr]
    found = [(float(x0), height - float(y0), height - float(y1), html.unescape(word)) for x0, y0, x1, y1, word in
             re.findall(r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">(.*?)</word>', out)]
    return found, height


def normal(text: str) -> str:
    """Spaces of every kind as one space, bidi marks dropped: how the words compare."""
    return " ".join(re.sub("[\u200e\u200f\u061c]", "", text).split())


def lines_of(content: bytes, page: int = 0) -> list[str]:
    """The words of each baseline, left to right, one string per line, top to bottom."""
    rows: dict[int, list[tuple[float, str]]] = {}
    for x, _, bottom, word in words(content, page)[0]:
        key = next((k for k in rows if abs(k - bottom * 10) <= 15), round(bottom * 10))
        rows.setdefault(key, []).append((x, word))
    return [normal(" ".join(w for _, w in sorted(row))) for _, row in sorted(rows.items(), reverse=True)]


def has_line(content: bytes, expected: str, page: int = 0) -> bool:
    """Whether a line of the page is `expected`, or ends with it (the header shares baselines)."""
    want = normal(expected)
    found = lines_of(content, page)
    return any(line == want or line.endswith(" " + want) for line in found) or bool(print(want, found))


def header_line(content: bytes, page: int = 0) -> str:
    """The table header's labels, left to right (the line of "Description")."""
    return next(line for line in lines_of(content, page) if "Description" in line.split())


FMT = Formatter(EUR)


def basket() -> list[Any]:
    return [line("Espresso beans", 3, "18.50", unit="kg", sku="ESP-1"),
            line("Barista training", 4, "65", unit="h", rate="0.07", percent="10"),
            line("Milk frother", 1, "129.99", discount="9.99")]


def test_seller_header_and_footer_on_every_page() -> None:
    content = render_invoice(invoice([line(f"Part {i}") for i in range(80)]))
    pages = pages_of(content)
    party, bank = SELLER.party, SELLER.bank
    assert bank is not None
    first = pages[0]
    for text in (party.name, *party.address, party.tax_id, party.email, party.phone, party.website, "INVOICE",
                 "Northwind Building Supplies GmbH", "Hafenstraße 114", "DE987654321"):
        assert text is not None and text in first, text
    assert len(pages) > 1
    for number, page in enumerate(pages, 1):
        assert f"Page {number} of {len(pages)}" in page
        for text in (party.registration, bank.iban, bank.bic, bank.bank):
            assert text is not None and text in page, (number, text)


def test_no_seller_still_numbers_the_pages() -> None:
    pages = pages_of(render_invoice(invoice(basket(), seller=None)))
    assert "Page 1 of 1" in pages[0] and "RE-2026-0042" in pages[0]
    assert "IBAN" not in pages[0]


def test_terms_dates_po_and_notes() -> None:
    text = text_of(render_invoice(invoice(basket(), purchase_order="PO-7781", payment_terms="Net 30 days.",
                                          notes="Thank you!\nDeliveries on Tuesdays.")))
    for expected in (FMT.date(date(2026, 11, 28)), FMT.date(date(2026, 12, 28)), "Due date", "PO-7781",
                     "Payment terms", "Net 30 days.", "Notes", "Thank you!", "Deliveries on Tuesdays."):
        assert expected in text, expected


def test_payment_terms_days_are_stated_before_the_terms_text() -> None:
    content = render_invoice(invoice(basket(), payment_terms_days=14, payment_terms="2 % discount within 7 days."))
    assert has_line(content, "Payable within 14 days. 2 % discount within 7 days.")


def test_no_due_date_no_due_line() -> None:
    text = text_of(render_invoice(invoice(basket(), due_date=None)))
    assert "Due date" not in text


def expected_totals(lines: list[Any]) -> dict[str, Decimal]:
    """The totals from the raw numbers, computed here rather than read from the model."""
    cent = Decimal("0.01")
    gross = sum(((li.quantity * li.unit_price).quantize(cent, ROUND_HALF_UP) for li in lines), Decimal(0))
    net = gross - sum((li.discount for li in lines), Decimal(0))
    by_rate: dict[Decimal, Decimal] = {}
    for li in lines:
        by_rate[li.tax_rate] = by_rate.get(li.tax_rate, Decimal(0)) + li.net
    tax = sum(((base * rate).quantize(cent, ROUND_HALF_UP) for rate, base in by_rate.items()), Decimal(0))
    return {"gross": gross, "net": net, "tax": tax, "total": net + tax}


def pct(rate: str) -> str:
    return FMT.percent(Decimal(rate))


def eur(value: str) -> str:
    return FMT.amount(Decimal(value))


def test_printed_totals_match_an_independent_computation() -> None:
    lines = basket()
    content = render_invoice(invoice(lines))
    text = text_of(content)
    want = expected_totals(lines)
    # 55.50 + 260.00 + 129.99 gross; -26.00 -9.99 discounts; 19 % on 175.50, 7 % on 234.00
    assert want == {"gross": Decimal("445.49"), "net": Decimal("409.50"), "tax": Decimal("49.73"),
                    "total": Decimal("459.23")}
    assert has_line(content, f"Subtotal {FMT.amount(want['gross'])}")
    assert has_line(content, f"Discounts {eur('-35.99')}")
    assert has_line(content, f"Total excl. tax {FMT.amount(want['net'])}")
    assert has_line(content, f"Tax {pct('0.07')} on {eur('234.00')} {eur('16.38')}")
    assert has_line(content, f"Tax {pct('0.19')} on {eur('175.50')} {eur('33.35')}")
    assert has_line(content, f"Total {FMT.amount(want['total'])}")
    assert want["tax"] == Decimal("16.38") + Decimal("33.35")
    assert "Balance due" not in text and "PAID" not in text


def test_no_tax_at_all_prints_no_tax_line() -> None:
    content = render_invoice(invoice([line("Book", 2, "12.50", rate=0)]))
    assert "Tax" not in text_of(content)
    assert has_line(content, f"Total {eur('25.00')}")


def test_a_zero_rate_beside_a_taxed_one_is_summarised() -> None:
    content = render_invoice(invoice([line("Book", 1, "10", rate=0), line("Pen", 1, "10")]))
    assert has_line(content, f"Tax {pct('0')} on {eur('10.00')} {eur('0.00')}")
    assert has_line(content, f"Tax {pct('0.19')} on {eur('10.00')} {eur('1.90')}")


@pytest.mark.parametrize(("lines", "shown", "hidden"), [
    ([line("a", sku="S-1"), line("b")], {"SKU"}, {"Discount", "Tax"}),
    ([line("a"), line("b")], set(), {"SKU", "Discount", "Tax"}),
    ([line("a", percent="10"), line("b")], {"Discount"}, {"SKU", "Tax"}),
    ([line("a", rate="0.07"), line("b")], {"Tax"}, {"SKU", "Discount"}),
    ([line("a", rate="0.07", discount=1, sku="X"), line("b")], {"SKU", "Discount", "Tax"}, set()),
])
def test_columns_appear_only_when_needed(lines: list[Any], shown: set[str], hidden: set[str]) -> None:
    header = header_line(render_invoice(invoice(lines)))
    labels = {label for label in ("#", "SKU", "Description", "Qty", "Unit price", "Discount", "Tax", "Line total")
              if re.search(rf"(^| ){re.escape(label)}( |$)", header)}
    assert {"#", "Description", "Qty", "Unit price", "Line total"} <= labels
    assert shown <= labels and not hidden & labels, header


def test_quantities_with_units_discounts_and_rates_in_their_columns() -> None:
    content = render_invoice(invoice(basket()))
    assert has_line(content, f"1 ESP-1 Espresso beans 3 kg {FMT.unit_price(Decimal('18.50'))} {pct('0.19')} "
                             f"{eur('55.50')}")
    assert has_line(content, f"2 Barista training 4 h {FMT.unit_price(Decimal('65'))} {pct('0.1')} {pct('0.07')} "
                             f"{eur('234.00')}")
    assert has_line(content, f"3 Milk frother 1 {FMT.unit_price(Decimal('129.99'))} {eur('-9.99')} {pct('0.19')} "
                             f"{eur('120.00')}")


def test_paid_invoice_is_marked_and_shows_balance() -> None:
    lines = [line("Pen", 1, "10")]
    paid = render_invoice(invoice(lines, paid="11.90"))
    assert "PAID" in text_of(paid)
    assert has_line(paid, f"Amount paid {eur('-11.90')}")
    assert has_line(paid, f"Balance due {eur('0.00')}")
    part = render_invoice(invoice(lines, paid="5"))
    assert "PAID" not in text_of(part) and has_line(part, f"Balance due {eur('6.90')}")


def test_credit_note_title_reference_and_negative_lines() -> None:
    content = render_invoice(invoice([line("Returned frother", 1, "-129.99")], kind="credit_note",
                                     number="GS-2026-0007", original_number="RE-2026-0042"))
    text = text_of(content)
    assert "CREDIT NOTE" in text and "INVOICE" not in text
    assert has_line(content, "Credit note no. GS-2026-0007")
    assert "Credit note for invoice RE-2026-0042" in text
    assert has_line(content, f"1 Returned frother 1 {FMT.unit_price(Decimal('-129.99'))} {eur('-129.99')}")
    assert has_line(content, f"Total {eur('-154.69')}")
    assert PdfReader(io.BytesIO(content)).metadata.title == "Credit note GS-2026-0007"


@pytest.mark.parametrize(("paper", "size"), [("A4", (595.2756, 841.8898)), ("LETTER", (612.0, 792.0))])
def test_paper_size_and_margins(paper: str, size: tuple[float, float]) -> None:
    content = render_invoice(invoice(basket(), page=Layout(paper=paper, margins=(30.0, 30.0, 50.0, 60.0))))  # type: ignore[arg-type]
    box = PdfReader(io.BytesIO(content)).pages[0].mediabox
    assert (float(box.width), float(box.height)) == pytest.approx(size, abs=0.01)
    found, height = words(content)
    assert height == pytest.approx(size[1], abs=0.5)
    assert min(x for x, _, _, _ in found) == pytest.approx(60.0, abs=0.5)  # the left margin
    # (a word's box reaches the font's ascent, a few points above its capitals)
    assert max(top for _, top, _, _ in found) < size[1] - 30.0 + 6


def test_600_items_last_page_holds_line_items_with_the_totals() -> None:
    # About 600 items, as many as make the totals spill past the last full page.
    for count in range(590, 660):
        lines = [line(f"Part {i:03d}", 1, "2.50") for i in range(count)]
        plan = lay_out(invoice(lines), worker_fonts())
        if len(plan.pages[-1].rows) <= CARRY:
            break
    else:
        pytest.fail("no count from 590 to 660 made the totals spill")
    pages = pages_of(render_invoice(invoice(lines)))
    assert f"Part {count - 1}" in pages[-1] and "Total" in pages[-1]
    assert "Description" in pages[-1]  # the table goes on on the totals' page
    joined = "\n".join(pages)
    assert all(f"Part {i:03d}" in joined for i in range(count))


@pytest.mark.parametrize("count", range(20, 140, 1))
def test_totals_never_alone_and_rows_never_split(count: int) -> None:
    plan = lay_out(invoice([line(f"Part {i}", 1, "2.50", sku="S" if i % 7 else None) for i in range(count)],
                           notes="n"), worker_fonts())
    with_totals = [page for page in plan.pages if page.totals_y is not None]
    assert len(with_totals) == 1 and with_totals[0].rows, count
    placed = [i for page in plan.pages for i in page.rows]
    assert placed == list(range(count))
    for page in plan.pages:  # nothing drawn below the footer line
        used = sum(plan.heights[i] for i in page.rows)
        assert page.top - (18.0 if page.rows else 0) - used >= plan.bottom - 0.01


@pytest.mark.parametrize("count", range(30, 80, 1))
def test_a_heading_is_never_the_last_line_of_a_page(count: int) -> None:
    plan = lay_out(invoice([line(f"Part {i}") for i in range(count)], payment_terms="Net 30 days.",
                           notes="\n".join(f"Note {i}" for i in range(8))), worker_fonts())
    placed = [i for page in plan.pages for i in page.after]
    assert placed == list(range(len(plan.after)))
    for page in plan.pages:
        if page.after and page.after.stop < len(plan.after):
            _, _, text, _, bold, _, _ = plan.after[page.after.stop - 1]
            assert text and not bold, (count, text)
        if page.after:  # and above the footer
            assert page.after_y - len(page.after) * 12.0 >= plan.bottom - 0.01


def test_long_texts_wrap_in_full_never_cut() -> None:
    name = " ".join(f"Customer{i}" for i in range(60))
    item = " ".join(f"word{i:03d}" for i in range(400))
    sku = "SKU-" + "X" * 60 + "-END"
    address = "Very long street name " * 12
    content = render_invoice(invoice([line(item, sku=sku), line("b")],
                                     customer=replace(invoice([]).customer, name=name, address=(address,))))
    text = text_of(content)
    assert "\u2026" not in text
    flat = squeezed(text)
    for whole in (name, item, sku, address):
        assert squeezed(whole) in flat, whole[:30]
    # The customer block uses the full width: the name takes half the lines it would at half width.
    name_lines = [t for t in lines_of(content) if t.startswith("Customer")]
    half = worker_fonts().wrap(name, 11, (595.2756 - 84) / 2, True)
    assert " ".join(name_lines) == name and len(name_lines) <= len(half) * 0.6, (len(name_lines), len(half))


def test_an_item_taller_than_a_page_goes_on_over_the_break() -> None:
    item = " ".join(f"w{i:05d}" for i in range(6000))
    content = render_invoice(invoice([line("first"), line(item), line("last")]))
    pages = pages_of(content)
    assert re.findall(r"w\d{5}", "\n".join(pages)) == item.split()
    assert len(pages) > 2 and "last" in pages[-1]
    for page in range(len(pages)):  # every piece of it on the page, above the footer
        assert all(bottom > 60 for _, _, bottom, word in words(content, page)[0] if re.fullmatch(r"w\d{5}", word))


def logo_file(tmp_path: Path, size: tuple[int, int], kind: str = "png") -> str:
    path = tmp_path / f"logo.{kind}"
    Image.new("RGBA" if kind == "png" else "RGB", size, (20, 90, 160)).save(path)
    return str(path)


@pytest.mark.parametrize(("kind", "size", "drawn_size"), [
    ("png", (600, 150), (160.0, 40.0)),   # wide: the box's width
    ("jpeg", (100, 200), (28.0, 56.0)),   # tall: the box's height
    ("png", (40, 20), (40.0, 20.0)),      # small: never enlarged
])
def test_logo_is_drawn_scaled_into_its_box_keeping_its_aspect(tmp_path: Path, kind: str, size: tuple[int, int],
                                                              drawn_size: tuple[float, float]) -> None:
    seller = Seller(SELLER.party, SELLER.bank, logo=logo_file(tmp_path, size, kind))
    content = render_invoice(invoice(basket(), seller=seller))
    page = PdfReader(io.BytesIO(content)).pages[0]
    images = [x.get_object() for x in page["/Resources"]["/XObject"].values()]
    images = [x for x in images if x["/Subtype"] == "/Image"]
    assert len(images) == 1 and (images[0]["/Width"], images[0]["/Height"]) == size
    drawn = re.search(rb"([\d.]+) 0 0 ([\d.]+) [\d.]+ [\d.]+ cm\s*/FormXob", page.get_contents().get_data())
    assert drawn is not None
    assert (float(drawn.group(1)), float(drawn.group(2))) == pytest.approx(drawn_size)
    assert "Lindenhof Feinkost GmbH" in pages_of(content)[0]


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_a_large_logo_is_embedded_at_the_resolution_its_box_needs(tmp_path: Path, kind: str) -> None:
    seller = Seller(SELLER.party, SELLER.bank, logo=logo_file(tmp_path, (4000, 1000), kind))
    content = render_invoice(invoice(basket(), seller=seller))
    page = PdfReader(io.BytesIO(content)).pages[0]
    image, = [x.get_object() for x in page["/Resources"]["/XObject"].values()
              if x.get_object()["/Subtype"] == "/Image"]
    assert (image["/Width"], image["/Height"]) == (667, 167)  # 160 pt at 300 dpi
    drawn = re.search(rb"([\d.]+) 0 0 ([\d.]+) [\d.]+ [\d.]+ cm\s*/FormXob", page.get_contents().get_data())
    assert drawn is not None and (float(drawn.group(1)), float(drawn.group(2))) == pytest.approx((160.0, 40.0), abs=0.1)
    assert len(content) < 100_000


def test_an_unreadable_logo_fails_naming_the_setting(tmp_path: Path) -> None:
    bad = tmp_path / "logo.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(Exception) as caught:
        render_invoice(invoice(basket(), seller=Seller(SELLER.party, logo=str(bad))))
    assert "seller.logo" in str(caught.value)


def test_metadata_title_author_creator_subject_and_date() -> None:
    meta = PdfReader(io.BytesIO(render_invoice(invoice(basket())))).metadata
    assert meta.title == "Invoice RE-2026-0042"
    assert meta.author == "Lindenhof Feinkost GmbH"
    assert meta.creator == "offload"
    assert meta.subject == "Invoice RE-2026-0042: Northwind Building Supplies GmbH"
    assert meta.creation_date == datetime(2026, 11, 28, tzinfo=UTC)
    at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    again = PdfReader(io.BytesIO(render_invoice(invoice(basket()), created=at))).metadata
    assert again.creation_date == at


def test_the_same_invoice_gives_the_same_bytes() -> None:
    assert render_invoice(invoice(basket())) == render_invoice(invoice(basket()))


def test_pdfa_has_an_srgb_output_intent_and_xmp_metadata() -> None:
    plain = PdfReader(io.BytesIO(render_invoice(invoice(basket()))))
    assert "/OutputIntents" not in plain.trailer["/Root"]
    reader = PdfReader(io.BytesIO(render_invoice(invoice(basket(), pdfa=True))))
    root = reader.trailer["/Root"]
    intent = root["/OutputIntents"][0].get_object()
    assert intent["/S"] == "/GTS_PDFA1"
    profile = intent["/DestOutputProfile"].get_object()
    assert profile["/N"] == 3 and profile.get_data()[36:40] == b"acsp"
    xmp = root["/Metadata"].get_object().get_data().decode()
    assert "<pdfaid:part>3</pdfaid:part>" in xmp and "<pdfaid:conformance>B</pdfaid:conformance>" in xmp
    assert "Lindenhof Feinkost GmbH" in xmp and "2026-11-28T00:00:00Z" in xmp
    for page in reader.pages:  # every font embedded (no standard Helvetica, not even the canvas's initial one)
        for font in page["/Resources"]["/Font"].values():
            font = font.get_object()
            descriptor = (font["/DescendantFonts"][0].get_object() if "/DescendantFonts" in font else font)
            assert "/FontFile2" in descriptor["/FontDescriptor"].get_object(), font["/BaseFont"]


BAD = "bad \U000f0001"  # a private-use character: no font has it


@pytest.mark.parametrize(("build", "field"), [
    (lambda: invoice([line("ok"), line(BAD)]), "items[1].name"),
    (lambda: invoice([line("ok", sku=BAD)]), "items[0].sku"),
    (lambda: invoice([line("ok", unit=BAD)]), "items[0].unit"),
    (lambda: invoice(basket(), customer=replace(invoice([]).customer, name=BAD)), "customer.name"),
    (lambda: invoice(basket(), customer=replace(invoice([]).customer, address=("ok", BAD))), "customer.address[1]"),
    (lambda: invoice(basket(), seller=replace(SELLER, party=replace(SELLER.party, name=BAD))), "seller.name"),
    (lambda: invoice(basket(), notes=BAD), "notes"),
    (lambda: invoice(basket(), purchase_order=BAD), "purchase_order"),
    (lambda: invoice(basket(), labels={"total": BAD}), "labels.total"),
])
def test_a_character_no_font_has_fails_naming_the_field(build: Any, field: str) -> None:
    with pytest.raises(MissingGlyph) as caught:
        render_invoice(build())
    assert caught.value.field == field


def test_progress_is_bounded_and_cancellation_checked_on_every_page() -> None:
    lines = [line(f"Part {i}", 1, "2.50") for i in range(2500)]
    reports: list[tuple[int, str]] = []
    checks: list[int] = []
    content = render_invoice(invoice(lines), progress=lambda *report: reports.append(report),
                             check=lambda: checks.append(1))
    pages = len(PdfReader(io.BytesIO(content)).pages)
    assert pages > 40
    assert len(reports) <= 20 and reports[-1] == (95, "writing PDF")
    assert REPORTS <= 19
    assert reports[0] == (5, f"rendering page 1 of {pages}")
    assert [p for p, _ in reports] == sorted(p for p, _ in reports)
    assert len(checks) == pages

    calls = 0

    def cancel() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise Cancelled("job_1")

    with pytest.raises(Cancelled):
        render_invoice(invoice(lines), check=cancel)
    assert calls == 3


def test_three_decimal_currency_amounts() -> None:
    kwd = Money("KWD", 3, "ar_KW", "code")
    content = render_invoice(invoice([line("Tea", 3, "0.335", rate=0, units=3)], money=kwd))
    text = text_of(content)
    # ar_KW writes amounts right to left ("\u200f1.005 KWD"): on the page, in visual order
    assert normal(Formatter(kwd).amount(Decimal("1.005"))) == "1.005 KWD"
    assert "1.005" in text and has_line(content, "Total KWD 1.005") and has_line(content, "1 Tea 3 KWD 0.335 KWD 1.005")


def test_facturx_invoice_is_pdfa_with_the_xml_attached() -> None:
    reader = PdfReader(io.BytesIO(render_invoice(invoice(basket(), facturx=True))))
    assert list(reader.attachments) == ["factur-x.xml"]
    root = reader.trailer["/Root"]
    assert root["/OutputIntents"][0].get_object()["/S"] == "/GTS_PDFA1"
    assert "<pdfaid:part>3</pdfaid:part>" in root["/Metadata"].get_object().get_data().decode()
    assert reader.metadata.author == "Lindenhof Feinkost GmbH"
    assert "RE-2026-0042" in reader.pages[0].extract_text()


def test_progress_never_goes_back_over_pages_of_notes() -> None:
    notes = "\n".join(f"Note line {i}: deliveries are made on Tuesdays and Thursdays." for i in range(200))
    reports: list[tuple[int, str]] = []
    content = render_invoice(invoice([line(f"Part {i}") for i in range(60)], notes=notes),
                             progress=lambda *report: reports.append(report))
    pages = pages_of(content)
    assert len(pages) >= 4 and "Note line 199" in pages[-1] and "Description" not in pages[-1]
    percents = [percent for percent, _ in reports]
    assert percents == sorted(percents) and len(reports) == len(pages) + 1, reports


def test_a_right_to_left_name_is_set_flush_right_in_its_column() -> None:
    names = ["Espresso beans", "قهوة عربية محمصة", "שמן זית"]
    plan = lay_out(invoice([line(name) for name in names]), worker_fonts())
    name_x = next(column.x for column in plan.columns if column.label == "Description")
    qty_right = next(column.x for column in plan.columns if column.label == "Qty")
    placed = [next((x, align) for x, _, text, align in row if text == name) for row, name in
              zip(plan.rows, names, strict=True)]
    assert placed[0] == (name_x, "left")
    for x, align in placed[1:]:
        assert align == "right" and name_x + 100 < x < qty_right


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(words=st.lists(st.one_of(st.integers(min_value=1, max_value=60), st.integers(min_value=1500, max_value=3000)),
                     min_size=1, max_size=80),
       notes=st.integers(min_value=0, max_value=120), paper=st.sampled_from(["A4", "LETTER"]),
       bottom=st.sampled_from([20.0, 42.0, 90.0]))
def test_pagination_invariants_for_any_mix_of_rows(words: list[int], notes: int, paper: str, bottom: float) -> None:
    """Rows of 1 to 60 words and of 1,500 to 3,000 (taller than a page), notes of any length: every row and
    note line placed once and in order, the totals once and with rows, nothing below the foot."""
    lines = [line(" ".join(["word"] * n), sku="S-1" if n % 3 else None) for n in words]
    inv = invoice(lines, notes="\n".join(f"Note {i}" for i in range(notes)) or None,
                  page=Layout(paper=paper, margins=(42.0, 42.0, bottom, 42.0)))  # type: ignore[arg-type]
    plan = lay_out(inv, worker_fonts())
    assert [i for page in plan.pages for i in page.rows] == list(range(len(plan.rows)))
    assert [i for page in plan.pages for i in page.after] == list(range(len(plan.after)))
    with_totals = [page for page in plan.pages if page.totals_y is not None]
    assert len(with_totals) == 1
    assert with_totals[0].rows or plan.heights[-1] > 300  # alone only after a row that filled a page
    assert all(not page.rows for page in plan.pages[plan.pages.index(with_totals[0]) + 1:])
    for page in plan.pages:
        used = sum(plan.heights[i] for i in page.rows)
        assert page.top - (HEADER_ROW if page.rows else 0) - used >= plan.bottom - 0.01
        if page.totals_y is not None:
            assert page.totals_y - plan.totals.height >= plan.bottom - 0.01
        if page.after:
            assert page.after_y - len(page.after) * 12.0 >= plan.bottom - 0.01
