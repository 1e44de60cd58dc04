"""Every word the invoice page prints, in English, German and French.

`labels_for(locale, overrides)` gives `Invoice.labels`: a mapping of key → text in the
locale's language (`de_DE` and `de_AT` → German; a language with no set here → English),
with `[jobs.settings.pdf] labels` applied on top. The layout reads only these keys; a text
with `{placeholders}` is formatted by the layout with exactly the names shown here.

| key | English | placeholders |
|---|---|---|
| `invoice` | Invoice | |
| `credit_note` | Credit note | |
| `invoice_number` | Invoice no. | |
| `credit_note_number` | Credit note no. | |
| `credit_note_for` | Credit note for invoice {number} | `number`: the original invoice's |
| `date` | Date | |
| `due_date` | Due date | |
| `payment_terms` | Payment terms | |
| `payable_within` | Payable within {days} days | `days`: whole days |
| `purchase_order` | PO number | |
| `currency` | Currency | |
| `seller` | From | |
| `bill_to` | Bill to | |
| `item` | Description | |
| `sku` | SKU | |
| `quantity` | Qty | |
| `unit` | Unit | |
| `unit_price` | Unit price | |
| `discount` | Discount | |
| `tax` | Tax | |
| `line_total` | Line total | |
| `subtotal` | Subtotal | the sum of quantity × unit price, before discounts |
| `discounts` | Discounts | |
| `net` | Total excl. tax | |
| `tax_base` | Taxable amount | |
| `tax_group` | Tax {rate} on {base} | `rate`: a formatted percentage, `base`: a formatted amount |
| `total` | Total | |
| `amount_paid` | Amount paid | |
| `balance_due` | Balance due | |
| `paid` | PAID | the stamp on an invoice paid in full |
| `page` | Page {page} of {pages} | `page`, `pages`: numbers |
| `continued` | Continued on the next page | |
| `tax_id` | VAT ID | |
| `registration` | Reg. no. | |
| `email` | Email | |
| `phone` | Phone | |
| `website` | Web | |
| `bank` | Bank | |
| `iban` | IBAN | |
| `bic` | BIC | |
| `account` | Account | |
| `notes` | Notes | |

The override table (`[jobs.settings.pdf.labels]`) is checked at start-up: an unknown key,
or a text using a placeholder its key does not have, stops the service with the key named.
A plain `key = "text"` applies whatever the language; a table named by a language code
(`[jobs.settings.pdf.labels.es]`) sets that language's texts, over the English ones for a
language with no set here, so that a deployment can add a language in its config.
This module imports nothing beyond the standard library: the service loads it.
"""
from __future__ import annotations

import re
import string
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

ENGLISH: Mapping[str, str] = MappingProxyType({
    "invoice": "Invoice",
    "credit_note": "Credit note",
    "invoice_number": "Invoice no.",
    "credit_note_number": "Credit note no.",
    "credit_note_for": "Credit note for invoice {number}",
    "date": "Date",
    "due_date": "Due date",
    "payment_terms": "Payment terms",
    "payable_within": "Payable within {days} days",
    "purchase_order": "PO number",
    "currency": "Currency",
    "seller": "From",
    "bill_to": "Bill to",
    "item": "Description",
    "sku": "SKU",
    "quantity": "Qty",
    "unit": "Unit",
    "unit_price": "Unit price",
    "discount": "Discount",
    "tax": "Tax",
    "line_total": "Line total",
    "subtotal": "Subtotal",
    "discounts": "Discounts",
    "net": "Total excl. tax",
    "tax_base": "Taxable amount",
    "tax_group": "Tax {rate} on {base}",
    "total": "Total",
    "amount_paid": "Amount paid",
    "balance_due": "Balance due",
    "paid": "PAID",
    "page": "Page {page} of {pages}",
    "continued": "Continued on the next page",
    "tax_id": "VAT ID",
    "registration": "Reg. no.",
    "email": "Email",
    "phone": "Phone",
    "website": "Web",
    "bank": "Bank",
    "iban": "IBAN",
    "bic": "BIC",
    "account": "Account",
    "notes": "Notes",
})

GERMAN: Mapping[str, str] = MappingProxyType({
    "invoice": "Rechnung",
    "credit_note": "Gutschrift",
    "invoice_number": "Rechnungsnr.",
    "credit_note_number": "Gutschriftnr.",
    "credit_note_for": "Gutschrift zur Rechnung {number}",
    "date": "Datum",
    "due_date": "Fällig am",
    "payment_terms": "Zahlungsbedingungen",
    "payable_within": "Zahlbar innerhalb von {days} Tagen",
    "purchase_order": "Bestellnr.",
    "currency": "Währung",
    "seller": "Von",
    "bill_to": "Rechnung an",
    "item": "Beschreibung",
    "sku": "Art.-Nr.",
    "quantity": "Menge",
    "unit": "Einheit",
    "unit_price": "Einzelpreis",
    "discount": "Rabatt",
    "tax": "USt.",
    "line_total": "Betrag",
    "subtotal": "Zwischensumme",
    "discounts": "Rabatte",
    "net": "Nettobetrag",
    "tax_base": "Bemessungsgrundlage",
    "tax_group": "USt. {rate} auf {base}",
    "total": "Gesamtbetrag",
    "amount_paid": "Bereits bezahlt",
    "balance_due": "Offener Betrag",
    "paid": "BEZAHLT",
    "page": "Seite {page} von {pages}",
    "continued": "Fortsetzung auf der nächsten Seite",
    "tax_id": "USt-IdNr.",
    "registration": "Handelsregister",
    "email": "E-Mail",
    "phone": "Telefon",
    "website": "Web",
    "bank": "Bank",
    "iban": "IBAN",
    "bic": "BIC",
    "account": "Konto",
    "notes": "Hinweise",
})

FRENCH: Mapping[str, str] = MappingProxyType({
    "invoice": "Facture",
    "credit_note": "Avoir",
    "invoice_number": "N° de facture",
    "credit_note_number": "N° d'avoir",
    "credit_note_for": "Avoir sur la facture {number}",
    "date": "Date",
    "due_date": "Échéance",
    "payment_terms": "Conditions de paiement",
    "payable_within": "Payable sous {days} jours",
    "purchase_order": "N° de commande",
    "currency": "Devise",
    "seller": "De",
    "bill_to": "Facturé à",
    "item": "Désignation",
    "sku": "Réf.",
    "quantity": "Qté",
    "unit": "Unité",
    "unit_price": "Prix unitaire",
    "discount": "Remise",
    "tax": "TVA",
    "line_total": "Montant",
    "subtotal": "Sous-total",
    "discounts": "Remises",
    "net": "Total HT",
    "tax_base": "Base HT",
    "tax_group": "TVA {rate} sur {base}",
    "total": "Total TTC",
    "amount_paid": "Déjà réglé",
    "balance_due": "Reste à payer",
    "paid": "PAYÉE",
    "page": "Page {page} sur {pages}",
    "continued": "Suite à la page suivante",
    "tax_id": "N° TVA",
    "registration": "N° d'immatriculation",
    "email": "E-mail",
    "phone": "Tél.",
    "website": "Web",
    "bank": "Banque",
    "iban": "IBAN",
    "bic": "BIC",
    "account": "Compte",
    "notes": "Remarques",
})

#: The shipped sets, by language code.
LANGUAGES: Mapping[str, Mapping[str, str]] = MappingProxyType({"en": ENGLISH, "de": GERMAN, "fr": FRENCH})
KEYS = frozenset(ENGLISH)
_LANGUAGE = re.compile(r"[a-z]{2,3}")


def placeholders(text: str) -> set[str]:
    """The `{names}` a label uses; a `ValueError` for a malformed one (`{`, `{0}`, `{a.b}`)."""
    names = set()
    for _, name, spec, conversion in string.Formatter().parse(text):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"{{{name}}} is not a placeholder (write {{name}}, or {{{{ for a brace)")
        names.add(name)
    return names


_PLACEHOLDERS = {key: placeholders(text) for key, text in ENGLISH.items()}


def check_overrides(overrides: Any) -> dict[str, Any]:
    """`[jobs.settings.pdf] labels`, checked: `{key: text}` for every language and
    `{language: {key: text}}` for one. A `ValueError` names the first bad entry."""
    if not isinstance(overrides, Mapping):
        raise ValueError(f"labels: must be a table of label texts, got {overrides!r}")
    checked: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, Mapping) and _LANGUAGE.fullmatch(key) and key not in KEYS:
            checked[key] = {k: _check_label(f"labels.{key}.{k}", k, v) for k, v in value.items()}
        else:
            checked[key] = _check_label(f"labels.{key}", key, value)
    return checked


def _check_label(where: str, key: str, text: Any) -> str:
    if key not in KEYS:
        raise ValueError(f"{where}: unknown label (known: {', '.join(sorted(KEYS))}; "
                         "a table must be named by a language code such as de or es)")
    if not isinstance(text, str):
        raise ValueError(f"{where}: must be a string, got {text!r}")
    try:
        extra = placeholders(text) - _PLACEHOLDERS[key]
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if extra:
        allowed = ", ".join(f"{{{name}}}" for name in sorted(_PLACEHOLDERS[key])) or "none"
        raise ValueError(f"{where}: unknown placeholder {{{sorted(extra)[0]}}} (this label has: {allowed})")
    return text


def language(locale: str) -> str:
    """`de_DE` → `de`, `sr_Latn_RS` → `sr`."""
    return locale.replace("-", "_").split("_", 1)[0].lower()


def labels_for(locale: str, overrides: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The labels for `locale`'s language: English, then the shipped set of that language,
    then the config's plain overrides, then its table for that language. A plain dict, so
    that the invoice stays picklable."""
    lang = language(locale)
    labels = dict(ENGLISH)
    labels.update(LANGUAGES.get(lang, {}))
    for key, value in (overrides or {}).items():
        if isinstance(value, str):
            labels[key] = value
    extra = (overrides or {}).get(lang)
    if isinstance(extra, Mapping):
        labels.update(extra)
    return labels
