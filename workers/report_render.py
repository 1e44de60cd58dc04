"""The report's drawing: a `Report` laid out by reportlab's platypus (flowing text, tables
that split across pages repeating their header row, charts from `report_charts`) with a
title block and "Page n of m" at the foot of every page.

Every string is set by the invoice's `Fonts` (`TextBlock`), not by platypus's `Paragraph`:
so the report gets the same per-character font fallback, right-to-left ordering, shaping and
CJK line breaking as the invoice, and no user text is ever parsed as reportlab markup.

Progress: a zero-size marker after each section reports it rendered (5..95) when platypus
draws it, and `check()` (cancellation) runs there and at the end of every page, so a
cancelled job stops within a section or a page. The same report always gives the same
bytes (reportlab's invariant mode; the creation date is the report's `date`). Loaded in
worker processes only.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, datetime, time
from functools import partial
from typing import Any

from reportlab.lib import colors
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import BaseDocTemplate, Flowable, Frame, PageTemplate, Spacer, Table, TableStyle
from reportlab.platypus.flowables import HRFlowable

from offload.workers.invoice_layout import HEADER_FILL, INK, MUTED, PAPERS, RULE
from offload.workers.invoice_render import PRODUCER, set_created, worker_fonts
from offload.workers.invoice_text import Align, Fonts
from offload.workers.report_charts import chart_drawing
from offload.workers.report_data import Report, Section
from offload.workers.report_data import Table as TableData

Progress = Callable[[int, str], None]
TITLE, SUBTITLE, HEADING, BODY, CELL, SMALL = 20.0, 12.0, 13.0, 10.0, 8.5, 7.5
PAD = 4.0
FOOTER = 20.0
BAND = colors.Color(0.955, 0.96, 0.97)


def render_report(report: Report, progress: Progress | None = None, *, check: Callable[[], None] | None = None,
                  fonts: Fonts | None = None) -> bytes:
    """Render `report` as a PDF and return its bytes. `progress(percent, message)` is called
    once per section as it is rendered; whatever it or `check()` raises (`Cancelled`) aborts
    the render. A character no font has raises `MissingGlyph` naming its field, before any
    drawing."""
    fonts = fonts or worker_fonts(tuple(report.fonts))
    check_glyphs(report, fonts)
    width, height = PAPERS[report.paper]
    top, right, bottom, left = report.margins
    buffer = io.BytesIO()
    doc = BaseDocTemplate(
        buffer, pagesize=(width, height), leftMargin=left, rightMargin=right, topMargin=top,
        bottomMargin=bottom + FOOTER, invariant=1, pageCompression=1, initialFontName=fonts.font(),
        title=report.title, author=report.author or "", subject=report.subtitle or "", creator="offload",
        producer=PRODUCER)
    frame = Frame(left, bottom + FOOTER, width - left - right, height - top - bottom - FOOTER, id="body",
                  leftPadding=0, rightPadding=0, topPadding=0, bottomPadding=0)
    doc.addPageTemplates([PageTemplate("page", [frame], onPageEnd=lambda canvas, doc: check and check())])
    count = len(report.sections)

    def rendered(index: int) -> None:
        if check is not None:
            check()
        if progress is not None:
            progress(5 + 90 * (index + 1) // count, f"rendered section {index + 1} of {count}")

    story = _title_block(report, fonts, frame.width)
    for index, section in enumerate(report.sections):
        story.extend(_section(section, fonts, frame.width, f"sections[{index}]"))
        story.append(_Mark(partial(rendered, index)))
    created = datetime.combine(report.date, time(), UTC) if report.date else None
    doc.build(story, canvasmaker=partial(_NumberedCanvas, fonts=fonts, label_at=(width - right, bottom),
                                         created=created))
    return buffer.getvalue()


def check_glyphs(report: Report, fonts: Fonts) -> None:
    """Every string but the charts' (which `report_charts` checks as a whole) through
    `Fonts.check`, so a character no font has fails the job naming its field."""
    check = fonts.check
    for field in ("title", "subtitle", "author"):
        if getattr(report, field):
            check(getattr(report, field), field)
    for s, section in enumerate(report.sections):
        path = f"sections[{s}]"
        check(section.heading, f"{path}.heading")
        for p, paragraph in enumerate(section.paragraphs):
            check(paragraph, f"{path}.paragraphs[{p}]")
        if section.table is not None:
            for c, name in enumerate(section.table.columns):
                check(name, f"{path}.table.columns[{c}]")
            for r, row in enumerate(section.table.rows):
                for c, cell in enumerate(row):
                    check(cell, f"{path}.table.rows[{r}][{c}]")


def _title_block(report: Report, fonts: Fonts, width: float) -> list[Flowable]:
    story: list[Flowable] = [TextBlock(fonts, report.title, TITLE, bold=True, leading=TITLE * 1.25)]
    if report.subtitle:
        story.append(TextBlock(fonts, report.subtitle, SUBTITLE, gray=MUTED, leading=SUBTITLE * 1.4))
    byline = " · ".join(part for part in (report.author, report.date and report.date.isoformat()) if part)
    if byline:
        story += [Spacer(0, 2), TextBlock(fonts, byline, BODY, gray=MUTED)]
    story += [Spacer(0, 6), HRFlowable(width="100%", thickness=0.8, color=colors.Color(*HEADER_FILL),
                                       spaceAfter=10)]
    return story


def _section(section: Section, fonts: Fonts, width: float, path: str) -> list[Flowable]:
    heading = TextBlock(fonts, section.heading, HEADING, bold=True, leading=HEADING * 1.3)
    heading.keepWithNext = True
    story: list[Flowable] = [Spacer(0, 8), heading, Spacer(0, 4)]
    for paragraph in section.paragraphs:
        story += [TextBlock(fonts, paragraph, BODY, leading=BODY * 1.4), Spacer(0, 6)]
    if section.table is not None:
        story += [_table(section.table, fonts, width), Spacer(0, 8)]
    if section.chart is not None:
        story += [chart_drawing(section.chart, width, fonts, f"{path}.chart"), Spacer(0, 8)]
    return story


def _table(data: TableData, fonts: Fonts, width: float) -> Table:
    widths = column_widths(fonts, data, width)
    header = [TextBlock(fonts, name, CELL, bold=True, gray=1.0, align=align)
              for name, align in zip(data.columns, data.align, strict=True)]
    rows = [[TextBlock(fonts, cell, CELL, align=align) for cell, align in zip(row, data.align, strict=True)]
            for row in data.rows]
    table = Table([header, *rows], colWidths=widths, repeatRows=1, splitInRow=1, hAlign="LEFT")
    table.setStyle(TableStyle([
        ("BACKGROUND", (0, 0), (-1, 0), colors.Color(*HEADER_FILL)),
        ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, BAND]),
        ("LINEBELOW", (0, 0), (-1, -1), 0.4, colors.Color(RULE, RULE, RULE)),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        *((side, (0, 0), (-1, -1), PAD) for side in ("LEFTPADDING", "RIGHTPADDING", "TOPPADDING", "BOTTOMPADDING")),
    ]))
    return table


def column_widths(fonts: Fonts, data: TableData, width: float) -> list[float]:
    """Each column as wide as its widest string, when they all fit; else each gets its fair
    share of `width`, and what the narrow ones leave goes to the wide ones in proportion to
    what they lack. The table always spans `width`."""
    count = len(data.columns)
    wanted = [fonts.width(name, CELL, True) + 2 * PAD + 1 for name in data.columns]
    for row in data.rows:
        for c, cell in enumerate(row):
            if cell:
                wanted[c] = max(wanted[c], fonts.width(cell, CELL) + 2 * PAD + 1)
    total = sum(wanted)
    if total <= width:
        return [w * width / total for w in wanted]
    share = width / count
    given = [min(w, share) for w in wanted]
    lacking = [w - g for w, g in zip(wanted, given, strict=True)]
    spare, short = width - sum(given), sum(lacking)
    return [g + spare * lack / short for g, lack in zip(given, lacking, strict=True)]


class TextBlock(Flowable):
    """Plain text wrapped to the width it is given and set by `Fonts`: a paragraph, a heading
    or a table cell. It splits between lines, so a long paragraph (or a tall cell) continues on
    the next page."""

    def __init__(self, fonts: Fonts, text: str, size: float, *, bold: bool = False, leading: float | None = None,
                 gray: float = INK, align: Align = "left", lines: list[str] | None = None) -> None:
        super().__init__()
        self.fonts, self.text, self.size, self.bold = fonts, text, size, bold
        self.leading = leading or size * 1.25
        self.gray, self.align = gray, align
        #: The lines of a piece `split` made are fixed; a whole text is wrapped again at each new width.
        self._lines, self._fixed, self._wrapped_at = lines or [], lines is not None, -1.0

    def _wrap_lines(self, width: float) -> list[str]:
        if not self._fixed and self._wrapped_at != width:
            self._lines = self.fonts.wrap(self.text, self.size, width, self.bold) if self.text else []
            self._wrapped_at = width
        return self._lines

    def wrap(self, availWidth: float, availHeight: float) -> tuple[float, float]:  # noqa: N803 (reportlab's names)
        self.width = availWidth
        self.height = len(self._wrap_lines(availWidth)) * self.leading
        return self.width, self.height

    def split(self, availWidth: float, availHeight: float) -> list[Flowable]:  # noqa: N803
        lines = self._wrap_lines(availWidth)
        fit = int(availHeight // self.leading)
        if fit <= 0 or fit >= len(lines):
            return []
        options: dict[str, Any] = {"bold": self.bold, "leading": self.leading, "gray": self.gray, "align": self.align}
        return [TextBlock(self.fonts, self.text, self.size, lines=lines[:fit], **options),
                TextBlock(self.fonts, self.text, self.size, lines=lines[fit:], **options)]

    def draw(self) -> None:
        x = {"left": 0.0, "right": self.width, "center": self.width / 2}[self.align]
        drop = (self.leading - self.size) / 2 + self.size * 0.8  # from the line's top to its baseline
        self.canv.setFillGray(self.gray)
        self.fonts.draw_many(self.canv, ((x, self.height - i * self.leading - drop, line, self.size, self.bold,
                                          self.align) for i, line in enumerate(self._lines)))


class _Mark(Flowable):
    """Takes no room; calls `reached()` when platypus draws it (its section is on the page)."""

    def __init__(self, reached: Callable[[], None]) -> None:
        super().__init__()
        self.reached = reached

    def wrap(self, availWidth: float, availHeight: float) -> tuple[float, float]:  # noqa: N803
        return 0.0, 0.0

    def draw(self) -> None:
        self.reached()


class _NumberedCanvas(Canvas):
    """Holds every page back until `save`, when the page count is known, then adds "Page n
    of m" at the right of each page's foot."""

    def __init__(self, *args: Any, fonts: Fonts, label_at: tuple[float, float], created: datetime | None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._report_fonts, self._label_at = fonts, label_at
        self._held: list[dict[str, Any]] = []
        if created is not None:
            set_created(self, created)

    def showPage(self) -> None:  # noqa: N802 (reportlab's name)
        self._held.append(dict(self.__dict__))
        self._startPage()

    def save(self) -> None:
        count = len(self._held)
        for number, state in enumerate(self._held, 1):
            self.__dict__.update(state)
            self.setFillGray(MUTED)
            x, y = self._label_at
            self._report_fonts.draw(self, x, y, f"Page {number} of {count}", SMALL, False, "right")
            Canvas.showPage(self)
        Canvas.save(self)
