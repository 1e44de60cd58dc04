"""Invoice render time, warm, in one process: offload's canvas renderer against platypus.

    .venv/bin/python benchmarks/bench_render.py [--sizes 10,100,500,5000] [--runs 7] [--no-baseline]
                                                [--words 10000,100000,1000000]

Each size is rendered once to warm up, then `--runs` times; the table shows medians (wall
time, and the process CPU time beside it for offload and for platypus plain). Its
last row is the 500-item invoice with a logo, two tax rates (a tax column and two summary
lines) and Arabic names (shaped and ordered runs in a fallback font). After the table, the
500-item invoice again with one item name that is a single word of each `--words` length:
nothing is cut, so the word wraps over as many lines and pages as it needs, and the wrap is
linear, so the extra time grows with the word's length, not its square. The invoices are
built as the renderer's input (`benchmarks.sample.sample_invoice`), so the parse is not
timed. The
baselines build the same document the obvious platypus way: a `Table` with `repeatRows=1`
for the header on every page, and "Page N of M" from a canvasmaker that holds every page
until `save()` (the usual two-pass recipe). "plain" passes the item names as strings
(no wrapping, like PERFORMANCE.md's middle column); "para" wraps them in `Paragraph`s,
which is what matching offload's wrapped names costs in platypus.
"""
from __future__ import annotations

import argparse
import functools
import io
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import reportlab  # noqa: E402
from reportlab.lib import colors, rl_accel  # noqa: E402
from reportlab.lib.pagesizes import A4  # noqa: E402
from reportlab.lib.styles import getSampleStyleSheet  # noqa: E402
from reportlab.lib.units import mm  # noqa: E402
from reportlab.pdfgen.canvas import Canvas  # noqa: E402
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle  # noqa: E402

from benchmarks.sample import make_logo, sample_invoice  # noqa: E402
from offload.workers.invoice_model import Invoice  # noqa: E402
from offload.workers.invoice_render import render_invoice  # noqa: E402

_PAGE = re.compile(rb"/Type /Page\b(?!s)")


class NumberedCanvas(Canvas):
    """Keeps every page until `save()`, when the page count is finally known."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pages: list[dict[str, Any]] = []

    def showPage(self) -> None:  # noqa: N802 (reportlab's name)
        self._pages.append(dict(self.__dict__))
        self._startPage()

    def save(self) -> None:
        for state in self._pages:
            self.__dict__.update(state)
            self.setFont("Helvetica", 8)
            self.drawRightString(A4[0] - 15 * mm, 10 * mm, f"Page {self._pageNumber} of {len(self._pages)}")
            super().showPage()
        super().save()


def render_platypus(invoice: Invoice, paragraphs: bool) -> bytes:
    styles = getSampleStyleSheet()
    cell = styles["BodyText"].clone("cell", fontSize=8.5, leading=10)
    cur, totals = invoice.money.currency, invoice.totals
    rows: list[list[Any]] = [["#", "SKU", "Item", "Qty", "Unit price", "Line total"]]
    for i, item in enumerate(invoice.lines, 1):
        rows.append([
            str(i), item.sku or "", Paragraph(item.name, cell) if paragraphs else item.name,
            f"{item.quantity.normalize():,f}", f"{cur} {item.unit_price:,.2f}", f"{cur} {item.net:,.2f}",
        ])
    table = Table(rows, colWidths=[22, 62, None, 40, 72, 80], repeatRows=1)
    table.setStyle(TableStyle([
        ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8.5),
        ("FONT", (0, 1), (-1, -1), "Helvetica", 8.5),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#28384f")),
        ("TEXTCOLOR", (0, 0), (-1, 0), colors.white),
        ("ALIGN", (3, 0), (-1, -1), "RIGHT"),
        ("ALIGN", (0, 0), (0, -1), "RIGHT"),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LINEBELOW", (0, 1), (-1, -1), 0.4, colors.lightgrey),
    ]))
    summary = Table([
        ["Subtotal", f"{cur} {totals.net:,.2f}"],
        *([f"Tax ({group.rate * 100:f}%)", f"{cur} {group.tax:,.2f}"] for group in totals.taxes),
        ["Total", f"{cur} {totals.total:,.2f}"],
    ], colWidths=[90, 100], hAlign="RIGHT")
    summary.setStyle(TableStyle([("ALIGN", (0, 0), (-1, -1), "RIGHT"),
                                 ("FONT", (0, -1), (-1, -1), "Helvetica-Bold", 10.5)]))
    customer = invoice.customer
    story = [
        Paragraph("INVOICE", styles["Title"]),
        Paragraph(f"Invoice no. {invoice.number} &middot; {invoice.issue_date.isoformat()}", styles["Normal"]),
        Spacer(1, 12),
        Paragraph("<br/>".join([f"<b>{customer.name}</b>", *customer.address, customer.email or ""]),
                  styles["Normal"]),
        Spacer(1, 18), table, Spacer(1, 12), summary,
    ]
    if invoice.notes:
        story += [Spacer(1, 12), Paragraph(invoice.notes, styles["Normal"])]
    buffer = io.BytesIO()
    SimpleDocTemplate(buffer, pagesize=A4, leftMargin=15 * mm, rightMargin=15 * mm,
                      topMargin=15 * mm, bottomMargin=18 * mm).build(story, canvasmaker=NumberedCanvas)
    return buffer.getvalue()


CPU: list[float] = []  # the process CPU seconds of each `measure` call's median run


def measure(render: Callable[[], bytes], runs: int) -> tuple[float, bytes]:
    """Median seconds over `runs` after one warm-up, and the last output; the median CPU
    seconds go to `CPU` (on a machine shared with other work, wall time also counts the
    waits for a core, CPU time does not)."""
    output = render()
    times, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        output = render()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    CPU.append(statistics.median(cpu))
    return statistics.median(times), output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,100,500,5000")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-baseline", action="store_true", help="time offload's renderer only")
    parser.add_argument("--words", default="10000,100000,1000000",
                        help="lengths of a single-word item name rendered among 500 items")
    args = parser.parse_args()

    accel = "on" if rl_accel._c_funcs else "OFF (pip install rl-accel)"
    print(f"Python {platform.python_version()}, reportlab {reportlab.Version}, rl_accel {accel}; "
          f"median of {args.runs} warm runs\n")
    header = f"{'items':>6} {'pages':>5} {'size':>8} {'offload':>9} {'cpu':>8} {'per item':>9}"
    if not args.no_baseline:
        header += f" {'platypus plain':>15} {'ratio':>6} {'platypus para':>14} {'ratio':>6} {'plain cpu':>11}"
    print(header)
    logo = make_logo(str(Path(tempfile.mkdtemp()) / "logo.png"))
    cases = [(str(size), size, sample_invoice(size)) for size in (int(n) for n in args.sizes.split(","))]
    cases.append(("500*", 500, sample_invoice(500, logo=logo, two_rates=True, arabic=True)))
    for name, size, invoice in cases:
        ours, pdf = measure(functools.partial(render_invoice, invoice), args.runs)
        line = (f"{name:>6} {len(_PAGE.findall(pdf)):>5} {len(pdf) / 1024:>6.0f}KB {ours * 1e3:>7.1f}ms "
                f"{CPU[-1] * 1e3:>6.1f}ms {ours / size * 1e6:>7.1f}us")
        if not args.no_baseline:
            runs = args.runs if size < 5000 else max(3, args.runs // 2)
            plain, _ = measure(functools.partial(render_platypus, invoice, paragraphs=False), runs)
            para, _ = measure(functools.partial(render_platypus, invoice, paragraphs=True), runs)
            line += f" {plain * 1e3:>13.1f}ms {plain / ours:>5.1f}x {para * 1e3:>12.1f}ms {para / ours:>5.1f}x"
            line += f" {CPU[-2] * 1e3:>9.1f}ms"
        print(line, flush=True)
    print("  500*: with a logo, two tax rates and Arabic names (customer and every fifth item)")
    long_words(args.words, args.runs)


def long_words(lengths: str, runs: int) -> None:
    """The 500-item invoice with item 250 named by one long word, beside the plain one."""
    print(f"\n{'500 items, one item name a single word of':>44} {'offload':>9} {'extra':>9}")
    base = sample_invoice(500)
    plain, _ = measure(functools.partial(render_invoice, base), runs)
    print(f"{'(no long word)':>44} {plain * 1e3:>7.1f}ms", flush=True)
    for length in (int(n) for n in lengths.split(",") if n):
        lines = list(base.lines)
        lines[250] = replace(lines[250], name="W" * length)
        invoice = replace(base, lines=tuple(lines))
        ours, _ = measure(functools.partial(render_invoice, invoice), max(1, runs // 2) if length > 100_000 else runs)
        print(f"{f'{length:,} characters':>44} {ours * 1e3:>7.1f}ms {(ours - plain) * 1e3:>7.1f}ms", flush=True)


if __name__ == "__main__":
    main()
