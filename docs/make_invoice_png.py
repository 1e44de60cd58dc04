"""Render the README's invoice example and write `docs/invoice.png` (its first page).

    .venv/bin/python docs/make_invoice_png.py [--pdf out.pdf]

The configuration and the request are read from the README's "Invoices" section itself
(its ```toml and ```json blocks), so the picture always shows what the README says; the
seller's logo path there is replaced by a logo drawn here (`benchmarks.sample.make_logo`).
The page is rasterised with poppler's `pdftoppm -r 80 -png -singlefile` (Debian's
poppler-utils). tests/test_invoice.py renders the same example and checks its totals.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.sample import make_logo  # noqa: E402
from offload.workers.invoice_data import InvoiceSettings, parse_invoice  # noqa: E402
from offload.workers.invoice_render import render_invoice  # noqa: E402


def readme_example(readme: Path = ROOT / "README.md") -> tuple[dict[str, Any], dict[str, Any]]:
    """`[jobs.settings.pdf]` (as a dict) and the request's `data`, from the README's Invoices section."""
    text = readme.read_text(encoding="utf-8")
    section = text[text.index("\n## Invoices"):]
    section = section[:section.index("\n## ", 1)]
    toml = re.search(r"```toml\n(.*?)```", section, re.S)
    request = re.search(r"```json\n(.*?)```", section, re.S)
    assert toml is not None and request is not None, "the README's Invoices section lost its examples"
    settings = tomllib.loads(toml.group(1))["jobs"]["settings"]["pdf"]
    return settings, json.loads(request.group(1))["data"]


def render_example(logo_dir: Path) -> bytes:
    settings, data = readme_example()
    settings["seller"]["logo"] = make_logo(str(logo_dir / "logo.png"))
    return render_invoice(parse_invoice(data, InvoiceSettings.from_settings(settings)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pdf", help="also keep the PDF here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        pdf = Path(args.pdf or Path(folder) / "invoice.pdf")
        pdf.write_bytes(render_example(Path(folder)))
        subprocess.run(["pdftoppm", "-r", "80", "-png", "-singlefile", "-f", "1", str(pdf),
                        str(ROOT / "docs" / "invoice")], check=True)
    print(ROOT / "docs" / "invoice.png")


if __name__ == "__main__":
    main()
