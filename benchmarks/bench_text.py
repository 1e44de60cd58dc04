"""The invoice's text primitives, warm, in one process: what a 500-row invoice costs in
`Fonts.wrap`, `Fonts.width` and `Fonts.draw_into`, with the embedded TrueType fonts against
the PDF standard Helvetica, beside the same work done with reportlab directly.

    .venv/bin/python benchmarks/bench_text.py [--rows 500] [--runs 7]

Each row wraps its item name to the name column and sets six cells (three right-aligned,
so measured), 40 rows to a page, every page's cells in one text object, as the renderer
does; the PDF is written at the end. "cold" is the first document with a fresh `Fonts`
(every string measured and split into runs), "warm" the median of the next `--runs`.
The last rows are the same invoice with Arabic, Hebrew, Japanese and Chinese item names.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reportlab.pdfbase.pdfmetrics import stringWidth  # noqa: E402
from reportlab.pdfgen.canvas import Canvas  # noqa: E402

from benchmarks.sample import make_invoice  # noqa: E402
from offload.workers.invoice_text import Fonts  # noqa: E402

SIZE, NAME_WIDTH, ROWS_PER_PAGE = 8.5, 230.0, 40
Row = tuple[str, str, str, str, str, str]
_NAMES = ("مطعم الريف، وجبة عائلية كبيرة", "שלום עליכם, ארוחת ערב", "株式会社テストの弁当セット",
          "北京烤鸭半只配薄饼和酱")


def rows(n: int, scripts: bool = False) -> list[Row]:
    items = make_invoice(n)["items"]
    out = []
    for i, item in enumerate(items, 1):
        name = _NAMES[i % len(_NAMES)] + f" {i}" if scripts and i % 3 == 0 else item["name"]
        out.append((str(i), item["sku"], name, f"{item['quantity']}", f"EUR {item['unitPrice']:,.2f}",
                    f"EUR {item['unitPrice'] * item['quantity']:,.2f}"))
    return out


def with_fonts(fonts: Fonts, data: list[Row]) -> bytes:
    canvas = Canvas(io.BytesIO(), pageCompression=1)
    for start in range(0, len(data), ROWS_PER_PAGE):
        text = canvas.beginText()
        y = 780.0
        for index, sku, name, qty, unit, total in data[start:start + ROWS_PER_PAGE]:
            fonts.draw_into(text, 60, y, index, SIZE, align="right")
            fonts.draw_into(text, 70, y, sku, SIZE)
            fonts.draw_into(text, 400, y, qty, SIZE, align="right")
            fonts.draw_into(text, 470, y, unit, SIZE, align="right")
            fonts.draw_into(text, 550, y, total, SIZE, align="right")
            for line in fonts.wrap(name, SIZE, NAME_WIDTH):
                fonts.draw_into(text, 140, y, line, SIZE)
                y -= 10
            y -= 5
        canvas.drawText(text)
        canvas.showPage()
    return canvas.getpdfdata()


def with_reportlab(data: list[Row]) -> bytes:
    """What the renderer did before `Fonts`: Helvetica, stringWidth and textLine."""
    canvas = Canvas(io.BytesIO(), pageCompression=1)
    for start in range(0, len(data), ROWS_PER_PAGE):
        text = canvas.beginText()
        text.setFont("Helvetica", SIZE)
        at, out = text.setTextOrigin, text.textLine
        y = 780.0
        for index, sku, name, qty, unit, total in data[start:start + ROWS_PER_PAGE]:
            for x, cell in ((60, index), (400, qty), (470, unit), (550, total)):
                at(x - stringWidth(cell, "Helvetica", SIZE), y)
                out(cell)
            at(70, y)
            out(sku)
            at(140, y)
            out(name)
            y -= 15
        canvas.drawText(text)
        canvas.showPage()
    return canvas.getpdfdata()


def measure(render: Callable[[], bytes], runs: int) -> tuple[float, float]:
    start = time.perf_counter()
    render()
    cold = time.perf_counter() - start
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        render()
        times.append(time.perf_counter() - start)
    return cold, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    latin, mixed = rows(args.rows), rows(args.rows, scripts=True)
    start = time.perf_counter()
    Fonts.from_paths()
    print(f"Fonts.from_paths() (system fonts, primary loaded): {(time.perf_counter() - start) * 1e3:.1f}ms\n")
    print(f"{args.rows} rows, six cells each{'':<28} {'cold':>8} {'warm':>8}")
    cases: list[tuple[str, Callable[[], Callable[[], bytes]]]] = [
        ("reportlab Helvetica, no wrap (baseline)", lambda: lambda: with_reportlab(latin)),
        ("Fonts, Helvetica only (Fonts([]))", lambda: (lambda f: lambda: with_fonts(f, latin))(Fonts([]))),
        ("Fonts, TrueType (system fonts), Latin", lambda: (lambda f: lambda: with_fonts(f, latin))(Fonts.from_paths())),
        ("Fonts, TrueType, 1/3 Arabic/Hebrew/CJK names", lambda: (lambda f: lambda: with_fonts(f, mixed))(Fonts.from_paths())),
    ]
    for label, make in cases:
        cold, warm = measure(make(), args.runs)
        print(f"{label:<52} {cold * 1e3:>6.1f}ms {warm * 1e3:>6.1f}ms", flush=True)


if __name__ == "__main__":
    main()
