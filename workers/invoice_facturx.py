"""Factur-X / ZUGFeRD: the invoice as EN 16931 CII XML, embedded in its PDF.

`facturx_xml(invoice)` writes the Cross Industry Invoice (UN/CEFACT D16B, Factur-X profile
EN 16931) from the same `invoice_model.Invoice` the page is drawn from, so the picture and
the machine-readable invoice cannot disagree; `embed_facturx(pdf, invoice)` attaches it to
a rendered PDF with the `factur-x` library, which checks the XML against the profile's XSD,
attaches it as `factur-x.xml` (AFRelationship Data) and writes the PDF/A-3 XMP metadata
that announces it.

How the model maps onto EN 16931:
- type code 380 (commercial invoice) or 381 (credit note, with the original invoice's
  number as the preceding invoice reference, BG-3);
- every amount with the currency's minor units, as `invoice_data` computed them: a line's
  net amount (BT-131) is quantity × net price (BT-146) minus its allowance (BG-27, the
  discount), the tax per rate (BG-23) is the group's base and tax, and the document totals
  (BG-22) are the model's `Totals`, amount paid as the prepaid amount (BT-113);
- a credit line (negative unit price) is written with a negative quantity and a positive
  price, since EN 16931 forbids a negative item price (BR-27);
- VAT category S (standard rate) for a rate above 0, Z (zero rated) for 0;
- units by UN/ECE recommendation 20 (`h` → HUR, `kg` → KGM, `pcs` → H87, ...); a unit
  with no code here is written as C62, "one";
- payment means 58 (SEPA credit transfer) with the seller's IBAN and BIC for EUR, 30
  (credit transfer) otherwise, and none without bank details; the due date and payment
  terms text as the payment terms (BT-9, BT-20);
- a postal address needs a country code (BT-40, BT-55): the customer's address is written
  only when `order.customer.country` is given. Address lines go to lines one to three.

Imported in worker processes only (it loads lxml and the factur-x library).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from decimal import Decimal

from offload.workers.invoice_model import Invoice, Line, Party

RSM = "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
RAM = "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"
QDT = "urn:un:unece:uncefact:data:standard:QualifiedDataType:100"
UDT = "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100"
#: The EN 16931 profile's guideline identifier (BT-24).
EN16931 = "urn:cen.eu:en16931:2017"

#: UN/ECE recommendation 20 codes of the units an invoice commonly names.
UNIT_CODES = {
    "h": "HUR", "hr": "HUR", "hrs": "HUR", "hour": "HUR", "hours": "HUR", "std": "HUR", "std.": "HUR",
    "min": "MIN", "minute": "MIN", "minutes": "MIN", "d": "DAY", "day": "DAY", "days": "DAY",
    "tag": "DAY", "tage": "DAY", "jour": "DAY", "jours": "DAY", "week": "WEE", "weeks": "WEE",
    "month": "MON", "months": "MON", "monat": "MON", "mois": "MON", "year": "ANN", "years": "ANN",
    "kg": "KGM", "g": "GRM", "mg": "MGM", "t": "TNE", "lb": "LBR", "oz": "ONZ",
    "l": "LTR", "ml": "MLT", "cl": "CLT", "m": "MTR", "cm": "CMT", "mm": "MMT", "km": "KMT",
    "m2": "MTK", "m²": "MTK", "m3": "MTQ", "m³": "MTQ", "kwh": "KWH",
    "pcs": "H87", "pc": "H87", "piece": "H87", "pieces": "H87", "stk": "H87", "stk.": "H87", "stück": "H87",
    "pce": "H87", "pièce": "H87", "pièces": "H87", "unit": "C62", "units": "C62", "ea": "EA", "each": "EA",
    "set": "SET", "sets": "SET", "pair": "PR", "box": "BX", "pack": "PK", "pkg": "PK",
}

for _prefix, _uri in (("rsm", RSM), ("ram", RAM), ("qdt", QDT), ("udt", UDT)):
    ET.register_namespace(_prefix, _uri)


def _ram(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, f"{{{RAM}}}{tag}", attributes)
    if text is not None:
        element.text = text
    return element


def _date(parent: ET.Element, tag: str, value: object) -> None:
    holder = _ram(parent, tag)
    ET.SubElement(holder, f"{{{UDT}}}DateTimeString", {"format": "102"}).text = value.strftime("%Y%m%d")  # type: ignore[attr-defined]


def _plain(value: Decimal) -> str:
    """A decimal without exponent or trailing zeros beyond the point (`2`, `1.5`, `0.335`)."""
    text = format(value.normalize(), "f")
    return text


def _percent(rate: Decimal) -> str:
    return _plain(rate * 100)


def _category(rate: Decimal) -> str:
    return "S" if rate > 0 else "Z"


def unit_code(unit: str | None) -> str:
    return UNIT_CODES.get((unit or "").strip().lower(), "C62")


def _party(parent: ET.Element, tag: str, party: Party) -> None:
    element = _ram(parent, tag)
    _ram(element, "Name", party.name)
    if party.registration:
        _ram(_ram(element, "SpecifiedLegalOrganization"), "ID", party.registration)
    if party.phone or party.email:
        contact = _ram(element, "DefinedTradeContact")
        if party.phone:
            _ram(_ram(contact, "TelephoneUniversalCommunication"), "CompleteNumber", party.phone)
        if party.email:
            _ram(_ram(contact, "EmailURIUniversalCommunication"), "URIID", party.email)
    if party.country:
        address = _ram(element, "PostalTradeAddress")
        lines = list(party.address)
        if len(lines) > 3:
            lines = [*lines[:2], ", ".join(lines[2:])]
        for tag_name, line in zip(("LineOne", "LineTwo", "LineThree"), lines, strict=False):
            _ram(address, tag_name, line)
        _ram(address, "CountryID", party.country)
    if party.email:
        _ram(_ram(element, "URIUniversalCommunication"), "URIID", party.email, schemeID="EM")
    if party.tax_id:
        _ram(_ram(element, "SpecifiedTaxRegistration"), "ID", party.tax_id, schemeID="VA")


def _line(parent: ET.Element, index: int, line: Line, amount: str, reason: str) -> None:
    item = _ram(parent, "IncludedSupplyChainTradeLineItem")
    _ram(_ram(item, "AssociatedDocumentLineDocument"), "LineID", str(index))
    product = _ram(item, "SpecifiedTradeProduct")
    if line.sku:
        _ram(product, "SellerAssignedID", line.sku)
    _ram(product, "Name", line.name)
    credit = line.unit_price < 0
    price = -line.unit_price if credit else line.unit_price
    quantity = -line.quantity if credit else line.quantity
    agreement = _ram(item, "SpecifiedLineTradeAgreement")
    _ram(_ram(agreement, "NetPriceProductTradePrice"), "ChargeAmount", _plain(price))
    _ram(_ram(item, "SpecifiedLineTradeDelivery"), "BilledQuantity", _plain(quantity), unitCode=unit_code(line.unit))
    settlement = _ram(item, "SpecifiedLineTradeSettlement")
    tax = _ram(settlement, "ApplicableTradeTax")
    _ram(tax, "TypeCode", "VAT")
    _ram(tax, "CategoryCode", _category(line.tax_rate))
    _ram(tax, "RateApplicablePercent", _percent(line.tax_rate))
    if line.discount:
        allowance = _ram(settlement, "SpecifiedTradeAllowanceCharge")
        ET.SubElement(_ram(allowance, "ChargeIndicator"), f"{{{UDT}}}Indicator").text = "false"
        if line.discount_percent is not None:
            _ram(allowance, "CalculationPercent", _plain(line.discount_percent))
            _ram(allowance, "BasisAmount", amount.format(line.net + line.discount))
        _ram(allowance, "ActualAmount", amount.format(line.discount))
        _ram(allowance, "ReasonCode", "95")  # UNTDID 5189: discount
        _ram(allowance, "Reason", reason)
    _ram(_ram(settlement, "SpecifiedTradeSettlementLineMonetarySummation"), "LineTotalAmount", amount.format(line.net))


def facturx_xml(invoice: Invoice) -> bytes:
    """The invoice as Factur-X EN 16931 CII XML (UTF-8). Needs `invoice.seller`."""
    if invoice.seller is None:
        raise ValueError("a Factur-X invoice needs a seller")
    digits = invoice.money.minor_units
    amount = "{:." + str(digits) + "f}"
    currency = invoice.money.currency
    root = ET.Element(f"{{{RSM}}}CrossIndustryInvoice")
    context = ET.SubElement(root, f"{{{RSM}}}ExchangedDocumentContext")
    _ram(_ram(context, "GuidelineSpecifiedDocumentContextParameter"), "ID", EN16931)
    document = ET.SubElement(root, f"{{{RSM}}}ExchangedDocument")
    _ram(document, "ID", invoice.number)
    _ram(document, "TypeCode", "381" if invoice.kind == "credit_note" else "380")
    _date(document, "IssueDateTime", invoice.issue_date)
    if invoice.notes:
        _ram(_ram(document, "IncludedNote"), "Content", invoice.notes)

    transaction = ET.SubElement(root, f"{{{RSM}}}SupplyChainTradeTransaction")
    for index, line in enumerate(invoice.lines, 1):
        _line(transaction, index, line, amount, invoice.labels.get("discount", "Discount"))

    agreement = _ram(transaction, "ApplicableHeaderTradeAgreement")
    _party(agreement, "SellerTradeParty", invoice.seller.party)
    _party(agreement, "BuyerTradeParty", invoice.customer)
    if invoice.purchase_order:
        _ram(_ram(agreement, "BuyerOrderReferencedDocument"), "IssuerAssignedID", invoice.purchase_order)
    _ram(transaction, "ApplicableHeaderTradeDelivery")

    settlement = _ram(transaction, "ApplicableHeaderTradeSettlement")
    _ram(settlement, "PaymentReference", invoice.number)
    _ram(settlement, "InvoiceCurrencyCode", currency)
    bank = invoice.seller.bank
    if bank and (bank.iban or bank.account):
        means = _ram(settlement, "SpecifiedTradeSettlementPaymentMeans")
        _ram(means, "TypeCode", "58" if bank.iban and currency == "EUR" else "30")
        account = _ram(means, "PayeePartyCreditorFinancialAccount")
        if bank.iban:
            _ram(account, "IBANID", bank.iban)
        _ram(account, "AccountName", invoice.seller.party.name)
        if bank.account and not bank.iban:
            _ram(account, "ProprietaryID", bank.account)
        if bank.bic:
            _ram(_ram(means, "PayeeSpecifiedCreditorFinancialInstitution"), "BICID", bank.bic)
    totals = invoice.totals
    for group in totals.taxes:
        tax = _ram(settlement, "ApplicableTradeTax")
        _ram(tax, "CalculatedAmount", amount.format(group.tax))
        _ram(tax, "TypeCode", "VAT")
        _ram(tax, "BasisAmount", amount.format(group.base))
        _ram(tax, "CategoryCode", _category(group.rate))
        _ram(tax, "RateApplicablePercent", _percent(group.rate))
    if invoice.due_date or invoice.payment_terms:
        terms = _ram(settlement, "SpecifiedTradePaymentTerms")
        if invoice.payment_terms:
            _ram(terms, "Description", invoice.payment_terms)
        if invoice.due_date:
            _date(terms, "DueDateDateTime", invoice.due_date)
    summation = _ram(settlement, "SpecifiedTradeSettlementHeaderMonetarySummation")
    _ram(summation, "LineTotalAmount", amount.format(totals.net))
    _ram(summation, "TaxBasisTotalAmount", amount.format(totals.net))
    _ram(summation, "TaxTotalAmount", amount.format(totals.tax), currencyID=currency)
    _ram(summation, "GrandTotalAmount", amount.format(totals.total))
    if totals.paid:
        _ram(summation, "TotalPrepaidAmount", amount.format(totals.paid))
    _ram(summation, "DuePayableAmount", amount.format(totals.due))
    if invoice.original_number:
        _ram(_ram(settlement, "InvoiceReferencedDocument"), "IssuerAssignedID", invoice.original_number)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def embed_facturx(pdf: bytes, invoice: Invoice) -> bytes:
    """`pdf` with the invoice's Factur-X XML attached and the PDF/A-3 XMP metadata that
    declares it (profile EN 16931). The XML is checked against the profile's XSD first: an
    invoice the library's schema refuses fails the job instead of being sent."""
    import facturx  # worker side only, and only for a Factur-X invoice

    xml = facturx_xml(invoice)
    seller = invoice.seller.party.name if invoice.seller else ""
    title = invoice.labels.get("credit_note" if invoice.kind == "credit_note" else "invoice", "Invoice")
    metadata = {
        "author": seller,
        "keywords": "Factur-X, " + title,
        "title": f"{seller}: {title} {invoice.number}",
        "subject": f"{title} {invoice.number} {invoice.issue_date.isoformat()} {invoice.customer.name}",
    }
    result: bytes = facturx.generate_from_binary(
        pdf, xml, flavor="factur-x", level="en16931", check_xsd=True, pdf_metadata=metadata,
        lang=invoice.money.locale.replace("_", "-"))
    return result
