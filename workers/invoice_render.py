"""The invoice's drawing: what `invoice_layout.lay_out` placed, put on a reportlab canvas,
page by page, then the document's metadata (and PDF/A-3b, and the Factur-X XML, when the
invoice asks for them).

Every string is drawn through `Fonts.draw_into` at the place the layout computed, the strings
of a block (a page's rows, the header, the totals) in one text object; nothing here
measures text. Loaded in worker processes only (and by `offload.invoice` when it renders
in-process).
"""
from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, time
from functools import lru_cache

from reportlab.lib.utils import TimeStamp
from reportlab.pdfbase.pdfdoc import PDFArray, PDFCatalog, PDFDictionary, PDFName, PDFStream, PDFString
from reportlab.pdfgen.canvas import Canvas

from offload.workers.invoice_layout import (
    DEFAULT_LABELS, HEADER_FILL, HEADER_ROW, INK, MUTED, NOTES_LEADING, PAID_INK, PAID_INSET, RULE, SIZE, SMALL,
    Page, Piece, Plan, lay_out, logo_image,
)
from offload.workers.invoice_model import Invoice
from offload.workers.invoice_text import Fonts

Progress = Callable[[int, str], None]
#: At most this many progress reports for the pages of one invoice, however many pages:
#: a 300-page invoice must not send 300 events (cancellation is checked on every page).
REPORTS = 18
PRODUCER = "offload (reportlab)"


@lru_cache(maxsize=4)
def worker_fonts(paths: tuple[str, ...] = ()) -> Fonts:
    """The fonts of `[jobs.settings.pdf] fonts`, loaded once per worker process and kept for
    every later job (loading and parsing TrueType files is the slow part of a small invoice)."""
    return Fonts.from_paths(paths)


def render_invoice(invoice: Invoice, progress: Progress | None = None, *, fonts: Fonts | None = None,
                   check: Callable[[], None] | None = None, created: datetime | None = None) -> bytes:
    """Render `invoice` as a PDF and return its bytes.

    `progress(percent, message)` is called before some pages (at most `REPORTS` times, 5..95
    as the rows go by) and with 95 just before the file is written; `check()` is called
    before every page. Whatever either raises (`Cancelled`) aborts the render, so a cancelled
    job stops within one page. `fonts` defaults to the worker's cached fonts of `invoice.fonts`;
    `created` (the document's creation date) to the issue date at midnight UTC, so the same
    invoice always gives the same bytes.
    """
    fonts = fonts or worker_fonts(tuple(invoice.fonts))
    plan = lay_out(invoice, fonts)
    count = len(plan.pages)
    rows = len(plan.rows) or 1
    every = -(-count // REPORTS)
    buffer = io.BytesIO()
    # The initial font is the primary one, not reportlab's Helvetica, which no PDF/A may name.
    canvas = Canvas(buffer, pagesize=plan.size, pageCompression=1, invariant=1, initialFontName=fonts.font(False))
    _metadata(canvas, invoice, created or datetime.combine(invoice.issue_date, time(), UTC))
    for number, page in enumerate(plan.pages, 1):
        if check is not None:
            check()
        if progress is not None and (number - 1) % every == 0:
            done = page.rows.start if page.rows else (rows if number > 1 else 0)  # empty: page 1 or past the table
            progress(5 + 90 * done // rows, f"rendering page {number} of {count}")
        if number == 1:
            _draw_first_header(canvas, fonts, plan)
        else:
            _draw_pieces(canvas, fonts, plan.continued)
        if page.rows:
            _draw_rows(canvas, fonts, plan, page)
        if page.totals_y is not None:
            _draw_totals(canvas, fonts, plan, page.totals_y)
        if page.after:
            _draw_after(canvas, fonts, plan, page)
        if number < count and page.rows and (page.totals_y is None):
            x, y, more = plan.more
            canvas.setFillGray(MUTED)
            fonts.draw(canvas, x, y, more, SMALL, False, "right")
        _draw_footer(canvas, fonts, plan, number, count)
        canvas.showPage()
    if progress is not None:
        progress(95, "writing PDF")
    if invoice.pdfa or invoice.facturx:
        _pdfa(canvas, invoice)
    canvas.save()
    content = buffer.getvalue()
    if invoice.facturx:
        from offload.workers.invoice_facturx import embed_facturx  # worker side, Factur-X invoices only

        content = embed_facturx(content, invoice)
    return content


def _draw_pieces(canvas: Canvas, fonts: Fonts, pieces: Sequence[Piece], dy: float = 0.0) -> None:
    """All in one text object: a text block per string would cost several times more."""
    out = canvas.beginText()
    draw, gray = fonts.draw_into, -1.0
    for x, y, text, size, bold, align, shade in pieces:
        if shade != gray:
            out.setFillGray(shade)
            gray = shade
        draw(out, x, y + dy, text, size, bold, align)
    canvas.drawText(out)


def _draw_first_header(canvas: Canvas, fonts: Fonts, plan: Plan) -> None:
    if plan.logo is not None:
        logo = plan.logo
        canvas.drawImage(logo_image(logo.path), logo.x, logo.y, logo.width, logo.height, mask="auto")
    _draw_pieces(canvas, fonts, plan.header)
    if plan.paid is not None:
        x, y, text, size, bold, align, _ = plan.paid
        width = plan.right - PAID_INSET - x  # the layout set the mark flush right, inset
        canvas.setStrokeColorRGB(*PAID_INK)
        canvas.setFillColorRGB(*PAID_INK)
        canvas.setLineWidth(1.6)
        canvas.roundRect(x - 7, y - 5, width + 14, size + 9, 3, stroke=1, fill=0)
        fonts.draw(canvas, x, y, text, size, bold, align)


def _draw_rows(canvas: Canvas, fonts: Fonts, plan: Plan, page: Page) -> None:
    """The table header and this page's rows, each string at the place the layout gave it."""
    left, right, y = plan.left, plan.right, page.top
    canvas.setFillColorRGB(*HEADER_FILL)
    canvas.rect(left, y - HEADER_ROW, right - left, HEADER_ROW, stroke=0, fill=1)
    out = canvas.beginText()
    out.setFillGray(1)
    draw = fonts.draw_into
    base = y - 12
    for column in plan.columns:
        draw(out, column.x, base, column.label, SIZE, True, column.align)
    y -= HEADER_ROW
    out.setFillGray(INK)
    rows, heights, rules = plan.rows, plan.heights, []
    for i in page.rows:
        for x, drop, text, align in rows[i]:
            draw(out, x, y - drop, text, SIZE, False, align)
        y -= heights[i]
        rules.append((left, y, right, y))
    canvas.drawText(out)
    canvas.setStrokeGray(RULE)
    canvas.setLineWidth(0.4)
    canvas.lines(rules)


def _draw_totals(canvas: Canvas, fonts: Fonts, plan: Plan, top: float) -> None:
    block = plan.totals
    for x0, x1, y, width, gray in block.rules:
        canvas.setStrokeGray(gray)
        canvas.setLineWidth(width)
        canvas.line(x0, top + y, x1, top + y)
    _draw_pieces(canvas, fonts, block.pieces, top)


def _draw_after(canvas: Canvas, fonts: Fonts, plan: Plan, page: Page) -> None:
    canvas.setFillGray(INK)
    y = page.after_y
    for i in page.after:
        y -= NOTES_LEADING
        x, _, text, size, bold, align, _ = plan.after[i]
        if text:
            fonts.draw(canvas, x, y + 3, text, size, bold, align)


def _draw_footer(canvas: Canvas, fonts: Fonts, plan: Plan, number: int, count: int) -> None:
    _draw_pieces(canvas, fonts, plan.footer)
    x, y, template = plan.page_label
    canvas.setFillGray(MUTED)
    fonts.draw(canvas, x, y, template.replace("{page}", str(number)).replace("{pages}", str(count)), SMALL,
               False, "right")


def _metadata(canvas: Canvas, invoice: Invoice, created: datetime) -> None:
    """Title, author (the seller), subject, creator and a creation date the caller chose."""
    labels = invoice.labels
    kind = "credit_note" if invoice.kind == "credit_note" else "invoice"
    title = f"{labels.get(kind) or DEFAULT_LABELS[kind]} {invoice.number}"
    canvas.setTitle(title)
    canvas.setAuthor(invoice.seller.party.name if invoice.seller is not None else "")
    canvas.setSubject(f"{title}: {invoice.customer.name}")
    canvas.setCreator("offload")
    canvas.setProducer(PRODUCER)
    canvas.setKeywords("")
    set_created(canvas, created)


def set_created(canvas: Canvas, created: datetime) -> None:
    """The document's creation date, in place of reportlab's invariant one (2000-01-01)."""
    stamp = TimeStamp(invariant=True)
    utc = created.astimezone(UTC) if created.tzinfo else created.replace(tzinfo=UTC)
    stamp.t = utc.timestamp()
    stamp.YMDhms = (utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second)
    stamp.dhh = stamp.dmm = 0
    canvas._doc._timeStamp = stamp


@lru_cache(maxsize=1)
def srgb_profile() -> bytes:
    """An sRGB ICC profile for the PDF/A output intent, made by LittleCMS (in Pillow) rather
    than read from a system package. Its version is set to 4.2, the newest PDF 1.7 names; the
    profile ID (an MD5 that covers the version) is cleared, which the ICC allows."""
    from PIL import ImageCms

    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    profile[8:12] = b"\x04\x20\x00\x00"
    profile[84:100] = bytes(16)
    return bytes(profile)


def _pdfa(canvas: Canvas, invoice: Invoice) -> None:
    """PDF/A-3b: an sRGB output intent and XMP metadata that repeats the document
    information. (The fonts are embedded by `Fonts`; Factur-X adds its own XMP schema.)"""
    doc = canvas._doc
    icc = PDFStream(PDFDictionary({"N": 3}), srgb_profile())
    intent = PDFDictionary({
        "Type": PDFName("OutputIntent"), "S": PDFName("GTS_PDFA1"),
        "OutputConditionIdentifier": PDFString("sRGB IEC61966-2.1"), "Info": PDFString("sRGB IEC61966-2.1"),
        "DestOutputProfile": doc.Reference(icc),
    })
    catalog = doc.Catalog
    catalog.__NoDefault__ = [*PDFCatalog.__NoDefault__, "OutputIntents"]
    catalog.OutputIntents = PDFArray([intent])
    info, stamp = doc.info, doc._timeStamp
    when = "%04d-%02d-%02dT%02d:%02d:%02dZ" % stamp.YMDhms
    xmp = _XMP.format(title=escape(info.title), author=escape(info.author), subject=escape(info.subject),
                      creator=escape(info.creator), producer=escape(info.producer), date=when)
    metadata = PDFStream(PDFDictionary({"Type": PDFName("Metadata"), "Subtype": PDFName("XML")}),
                         xmp.encode("utf-8"), filters=[])
    catalog.Metadata = metadata


def escape(text: str) -> str:
    """`&`, `<` and `>` as XML entities, as `xml.sax.saxutils.escape` writes them: that module
    imports `urllib.request`, and with it http.client, email and ssl, some 1.5 MB in every
    worker for three replacements."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_XMP = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:pdfaid="http://www.aiim.org/pdfa/ns/id/"
    xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:pdf="http://ns.adobe.com/pdf/1.3/">
   <pdfaid:part>3</pdfaid:part>
   <pdfaid:conformance>B</pdfaid:conformance>
   <dc:format>application/pdf</dc:format>
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">{title}</rdf:li></rdf:Alt></dc:title>
   <dc:creator><rdf:Seq><rdf:li>{author}</rdf:li></rdf:Seq></dc:creator>
   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{subject}</rdf:li></rdf:Alt></dc:description>
   <xmp:CreatorTool>{creator}</xmp:CreatorTool>
   <xmp:CreateDate>{date}</xmp:CreateDate>
   <xmp:ModifyDate>{date}</xmp:ModifyDate>
   <pdf:Producer>{producer}</pdf:Producer>
   <pdf:Keywords></pdf:Keywords>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""
