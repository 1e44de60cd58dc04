"""Deterministic invoice payloads for benchmarks: the same `n_items` gives the same JSON.

Shared by the render benchmark and the end-to-end service benchmark, so their numbers
describe the same document. Names vary in length (about one in twelve wraps onto a second
line in the PDF), prices have cents, a few quantities are fractional.
"""
from __future__ import annotations

import random
from typing import Any

_ADJECTIVES = (
    "Stainless", "Heavy-duty", "Compact", "Ergonomic", "Galvanised", "Recycled", "Insulated",
    "Adjustable", "Weatherproof", "Industrial", "Lightweight", "Reinforced", "Anodised",
)
_PRODUCTS = (
    "hex bolt M8x40", "cable tie 300 mm", "LED panel 60x60", "shelf bracket", "copper pipe 15 mm",
    "wall plug 6 mm", "safety gloves", "drill bit set", "extension cord 10 m", "pallet wrap",
    "hinge 75 mm", "door handle", "junction box IP65", "paint roller", "masking tape 50 m",
    "ratchet strap", "storage bin 40 l", "work lamp", "cable drum", "measuring tape 8 m",
)
_DETAILS = (
    "zinc plated, box of 100",
    "for indoor and outdoor use, certified to EN 60598 with a five-year manufacturer warranty",
    "black",
    "pack of 25",
    "with mounting kit and installation guide, suitable for concrete, brick and plasterboard walls",
    "grade A",
)


def make_invoice(n_items: int, *, seed: int = 1001) -> dict[str, Any]:
    """The JSON `data` of a `pdf` job with `n_items` line items."""
    rng = random.Random(seed + n_items)
    items = []
    for _ in range(n_items):
        name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_PRODUCTS)}"
        if rng.random() < 0.35:
            name += f", {rng.choice(_DETAILS)}"
        quantity: float | int = rng.choice((1, 1, 2, 3, 4, 5, 10, 12, 24, 50, 100))
        if rng.random() < 0.05:
            quantity = rng.choice((0.5, 1.25, 2.5, 7.75))
        items.append({
            "sku": f"{rng.choice('ABCDEFGHKLMNPRST')}{rng.choice('ABCDEFGHKLMNPRST')}-{rng.randrange(10000, 99999)}",
            "name": name,
            "quantity": quantity,
            "unitPrice": round(rng.uniform(0.15, 480.0), 2),
        })
    return {
        "type": "invoice",
        "order": {
            "number": f"INV-{2026_0000 + n_items}",
            "date": "2026-11-28",
            "currency": "EUR",
            "taxRate": 0.2,
            "customer": {
                "name": "Northwind Building Supplies GmbH",
                "address": "Attn. Accounts Payable\nHafenstraße 114\n20457 Hamburg\nGermany",
                "email": "payables@northwind.example",
            },
            "notes": "Payment due within 30 days of the invoice date. "
                     "Please quote the invoice number with your transfer.",
        },
        "items": items,
    }
