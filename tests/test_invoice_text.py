"""The invoice's text: every script drawn with an embedded font that has its glyphs, right to
left shaped and ordered, read back from the PDF (pypdf) and looked at on a rasterised page
(poppler's pdftoppm); wrapping, widths and the missing-glyph failure."""
from __future__ import annotations

import io
import re
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from pypdf import PdfReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfgen.canvas import Canvas

from offload.workers.invoice_text import Fonts, MissingGlyph, system_fonts

NOTO = "/usr/share/fonts/truetype/noto"
DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
SCRIPTS = {
    "arabic": "مطعم الريف",
    "hebrew": "שלום",
    "japanese": "株式会社テスト",
    "chinese": "北京烤鸭",
    "korean": "서울식당",
    "greek": "Ελληνικά",
    "cyrillic": "Привет",
    "latin": "Hello Wörld",
}
RTL = ("arabic", "hebrew")
SIZE, DPI = 14.0, 100
PAGE = (595.2756, 841.8898)


@pytest.fixture(scope="module")
def fonts() -> Fonts:
    return Fonts.from_paths()


def extracted_lines(pdf: bytes) -> list[str]:
    text = PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def logical(line: str) -> str:
    """What pypdf extracts, with Arabic presentation forms (the shaped glyphs' code points)
    folded back into letters. pypdf itself puts a right-to-left run that was drawn in visual
    order back into logical order, so a correctly drawn RTL string reads back as written."""
    return unicodedata.normalize("NFKC", line)


def rasterise(pdf: bytes, tmp_path: Path) -> Image.Image:
    source = tmp_path / "page.pdf"
    source.write_bytes(pdf)
    subprocess.run(["pdftoppm", "-r", str(DPI), "-png", "-singlefile", str(source), str(tmp_path / "page")],
                   check=True, timeout=30)
    return Image.open(tmp_path / "page.png").convert("L")


@dataclass
class Ink:
    """The dark pixels of a string's box on the rasterised page."""

    coverage: float  # share of the box's pixels that are dark
    middle: float  # darkest row of the middle half of the ink's height, against the darkest row
    segments: int  # runs of inked columns separated by blank ones (letters not joined)
    left: float  # first and last inked column, in points from the page's left edge
    right: float


def ink(page: Image.Image, x0: float, x1: float, baseline: float, size: float) -> Ink:
    """Measure the box from `x0` to `x1` (points), from a descender below `baseline` to
    above the tallest glyphs, plus a margin either side to catch ink drawn past the width."""
    k = DPI / 72
    margin = size
    box = (int((x0 - margin) * k), int((PAGE[1] - baseline - 1.15 * size) * k),
           int((x1 + margin) * k) + 1, int((PAGE[1] - baseline + 0.4 * size) * k) + 1)
    region = page.crop(box)
    width, height = region.size
    pixels = region.load()
    dark = [[pixels[i, j] < 128 for i in range(width)] for j in range(height)]
    rows = [sum(row) for row in dark]
    columns = [sum(dark[j][i] for j in range(height)) for i in range(width)]
    inked_rows = [j for j, n in enumerate(rows) if n]
    inked_columns = [i for i, n in enumerate(columns) if n]
    if not inked_rows:
        return Ink(0.0, 0.0, 0, x0, x0)
    top, bottom = inked_rows[0], inked_rows[-1]
    quarter = (bottom - top) // 4
    middle = max(rows[top + quarter:bottom - quarter + 1]) / max(rows)
    segments = sum(1 for i in range(len(columns)) if columns[i] and (i == 0 or not columns[i - 1]))
    inside = int(margin * k)
    coverage = sum(rows) / max(1, (width - 2 * inside) * height)
    return Ink(coverage, middle, segments, box[0] / k + inked_columns[0] / k, box[0] / k + (inked_columns[-1] + 1) / k)


def looks_like_text(found: Ink) -> bool:
    """Glyphs, not tofu: some ink but far from a solid box (an empty .notdef draws nothing,
    a filled one everything), and not hollow rectangles (a .notdef outline inks the top and
    bottom rows of its box heavily and the middle rows only at its two sides)."""
    return 0.03 < found.coverage < 0.6 and found.middle > 0.5


def test_system_fonts_are_noto_dejavu_and_a_truetype_cjk_font(fonts: Fonts) -> None:
    names = [Path(path).name for path in system_fonts()]
    assert names[:6] == ["NotoSans-Regular.ttf", "NotoSansArabic-Regular.ttf", "NotoSansHebrew-Regular.ttf",
                         "DroidSansFallbackFull.ttf", "NanumGothic.ttf", "DejaVuSans.ttf"]
    assert "NotoSansDevanagari-Regular.ttf" in names
    assert fonts.font().endswith("NotoSans-Regular.ttf#0")
    assert fonts.font(bold=True).endswith("NotoSans-Bold.ttf#0")


def test_every_script_reads_back_from_the_pdf(fonts: Fonts) -> None:
    canvas = Canvas(io.BytesIO(), pagesize=PAGE)
    y = 800.0
    for text in SCRIPTS.values():
        fonts.check(text, "customer.name")
        for bold, align, x in ((False, "left", 50.0), (True, "right", 545.0)):
            fonts.draw(canvas, x, y, text, SIZE, bold=bold, align=align)  # type: ignore[arg-type]
            y -= 30
    canvas.showPage()
    lines = extracted_lines(canvas.getpdfdata())

    expected = [text for text in SCRIPTS.values() for _ in range(2)]
    assert [logical(line) for line in lines] == expected
    arabic = lines[0]
    # Shaped: the letters come out in their joined (initial, medial, final) forms.
    # (every letter but the alef, which does not join to the letter after it).
    assert sum(0xFB50 <= ord(c) <= 0xFEFF for c in arabic) == 8
    assert arabic[0] == "\ufee3"  # meem, initial form


def test_latin_stays_in_the_primary_font_and_only_other_scripts_switch(fonts: Fonts) -> None:
    canvas = Canvas(io.BytesIO(), pagesize=PAGE)
    fonts.draw(canvas, 50, 800, "Order 17, Hello Wörld", SIZE)
    fonts.draw(canvas, 50, 770, "Order 18: 株式会社テスト (Tokyo)", SIZE)
    fonts.draw(canvas, 50, 740, "Order 19: مطعم الريف, Dubai", SIZE)
    canvas.showPage()
    pdf = canvas.getpdfdata()
    page = PdfReader(io.BytesIO(pdf)).pages[0]
    used = sorted({font["/BaseFont"].split("+")[-1] for font in page["/Resources"]["/Font"].values()} - {"/Helvetica"})
    assert used == ["DroidSansFallback", "NotoSans-Regular", "NotoSansArabic-Regular"]
    text = logical(page.extract_text())
    for part in ("Order 17, Hello Wörld", "株式会社テスト", "(Tokyo)", "مطعم الريف", "Dubai"):
        assert part in text


def test_glyph_areas_on_the_rasterised_page_are_text_not_boxes(fonts: Fonts, tmp_path: Path) -> None:
    canvas = Canvas(io.BytesIO(), pagesize=PAGE)
    placed = []
    y = 800.0
    for name, text in SCRIPTS.items():
        width = fonts.width(text, SIZE)
        fonts.draw(canvas, 60, y, text, SIZE)
        fonts.draw(canvas, 500, y, text, SIZE, align="right")
        placed.append((name, y, width))
        y -= 40
    canvas.showPage()
    page = rasterise(canvas.getpdfdata(), tmp_path)

    for name, y, width in placed:
        for x0 in (60.0, 500.0 - width):
            found = ink(page, x0, x0 + width, y, SIZE)
            assert looks_like_text(found), (name, found)
            # The ink lies within the measured width (side bearings aside): `width` is what
            # `draw` sets, so right alignment ends at x.
            assert x0 - 1.5 <= found.left <= x0 + 0.15 * SIZE, (name, found, x0)
            assert x0 + width - 0.2 * SIZE <= found.right <= x0 + width + 1.5, (name, found, x0 + width)
        if name == "arabic":  # joined: مطعم | ا | لر | يف, not ten separate letters
            assert ink(page, 60, 60 + width, y, SIZE).segments <= 5


def test_the_box_check_catches_text_drawn_with_a_font_that_lacks_its_glyphs(fonts: Fonts, tmp_path: Path) -> None:
    """The negative control of the test above: the same strings set directly with reportlab
    in a font without their glyphs (Noto Sans's empty .notdef, DejaVu's hollow box) or
    without shaping (DejaVu's isolated Arabic letters), and the check refuses each."""
    fonts.check(SCRIPTS["arabic"] + "\u2603", "warm up")  # loads Noto Sans Arabic and DejaVu Sans
    registered = {Path(name.partition(":")[2].partition("#")[0]).name: name for name in pdfmetrics.getRegisteredFontNames()}
    noto, dejavu = registered["NotoSans-Regular.ttf"], registered["DejaVuSans.ttf"]
    canvas = Canvas(io.BytesIO(), pagesize=PAGE)
    cases = [(noto, SCRIPTS["japanese"]), (noto, SCRIPTS["arabic"]), (dejavu, SCRIPTS["japanese"]),
             (dejavu, SCRIPTS["chinese"])]
    y = 800.0
    for font, text in cases:
        canvas.setFont(font, SIZE)
        canvas.drawString(60, y, text)
        y -= 40
    canvas.setFont(dejavu, SIZE)
    canvas.drawString(60, y, SCRIPTS["arabic"])
    canvas.showPage()
    page = rasterise(canvas.getpdfdata(), tmp_path)

    y = 800.0
    for font, text in cases:
        found = ink(page, 60, 60 + pdfmetrics.stringWidth(text, font, SIZE), y, SIZE)
        assert not looks_like_text(found), (font, text, found)
        y -= 40
    assert ink(page, 60, 60 + pdfmetrics.stringWidth(SCRIPTS["arabic"], dejavu, SIZE), y, SIZE).segments > 5


def test_right_to_left_is_known_for_alignment(fonts: Fonts) -> None:
    assert fonts.rtl(SCRIPTS["arabic"]) and fonts.rtl(SCRIPTS["hebrew"]) and fonts.rtl("123 שלום")
    assert not any(fonts.rtl(SCRIPTS[name]) for name in ("japanese", "chinese", "korean", "greek", "latin"))
    assert not fonts.rtl("Order 5: مطعم")


def drawn_runs(pdf: bytes) -> list[tuple[float, float, str]]:
    """(y, x, text) of every string pypdf finds, from its text matrix, in logical reading."""
    found: list[tuple[float, float, str]] = []

    def visit(text: str, cm: list[float], tm: list[float], font: object, size: float) -> None:
        if text.strip():
            found.append((tm[5], tm[4], logical(text).strip()))

    PdfReader(io.BytesIO(pdf)).pages[0].extract_text(visitor_text=visit)
    return found


def test_runs_of_mixed_direction_are_placed_in_visual_order(fonts: Fonts) -> None:
    canvas = Canvas(io.BytesIO(), pagesize=PAGE)
    fonts.draw(canvas, 50, 800, "abc مطعم 123 def", SIZE)  # left-to-right paragraph
    fonts.draw(canvas, 545, 760, "مطعم الريف 24 Dubai", SIZE, align="right")  # right-to-left paragraph
    canvas.showPage()
    runs = drawn_runs(canvas.getpdfdata())
    first = " ".join(text for y, x, text in sorted(r for r in runs if r[0] == 800))
    second = " ".join(text for y, x, text in sorted(r for r in runs if r[0] == 760))
    # Left to right on the page: the Arabic word and the number after it swap places ...
    assert first.split() == ["abc", "123", "مطعم", "def"]
    # ... and a right-to-left line starts at the right: "Dubai 24" at its left end.
    assert second.split() == ["Dubai", "24", "مطعم", "الريف"]


def test_mixed_direction_reads_back_in_logical_order(fonts: Fonts) -> None:
    canvas = Canvas(io.BytesIO(), pagesize=PAGE)
    fonts.draw(canvas, 545, 800, "مطعم الريف 24", SIZE, align="right")
    fonts.draw(canvas, 545, 760, "(שלום)", SIZE, align="right")
    canvas.showPage()
    lines = [logical(line) for line in extracted_lines(canvas.getpdfdata())]
    joined = " ".join(lines)
    assert "مطعم الريف" in joined and "24" in joined
    assert "שלום" in joined


@pytest.mark.parametrize("char", ["\U000F0000", "\ue000", "\u0378", "\U0001FFFE"])
def test_a_character_no_font_has_fails_naming_it_and_the_field(fonts: Fonts, char: str) -> None:
    with pytest.raises(MissingGlyph) as caught:
        fonts.check(f"Restaurant {char} Ltd", "customer.name")
    assert caught.value.char == char and caught.value.field == "customer.name"
    assert f"U+{ord(char):04X}" in str(caught.value) and "customer.name" in str(caught.value)
    # Measuring or drawing it fails the same way rather than drawing a box.
    with pytest.raises(MissingGlyph):
        fonts.width(f"x{char}", SIZE)


def test_joiners_and_variation_selectors_are_not_missing_glyphs(fonts: Fonts) -> None:
    fonts.check("a\u200db\u200cc\u200f\ufe0f\U000E0100", "items[0].name")


def test_a_script_no_configured_font_covers_fails(tmp_path: Path) -> None:
    only_latin = Fonts.from_paths([f"{NOTO}/NotoSans-Regular.ttf"], system=False)
    only_latin.check("Ελληνικά Привет", "seller.name")
    with pytest.raises(MissingGlyph) as caught:
        only_latin.check("Tokyo 株式会社", "seller.name")
    assert caught.value.char == "株" and caught.value.field == "seller.name"


def test_config_entries_a_path_with_its_bold_beside_it_or_a_pair(tmp_path: Path) -> None:
    single = Fonts.from_paths([DEJAVU], system=False)
    assert single.font().endswith("DejaVuSans.ttf#0") and single.font(True).endswith("DejaVuSans-Bold.ttf#0")
    pair = Fonts.from_paths([[f"{NOTO}/NotoSerif-Regular.ttf", f"{NOTO}/NotoSans-Bold.ttf"]], system=False)
    assert pair.font().endswith("NotoSerif-Regular.ttf#0") and pair.font(True).endswith("NotoSans-Bold.ttf#0")
    lonely = tmp_path / "Lonely-Regular.ttf"
    lonely.write_bytes(Path(f"{NOTO}/NotoSans-Regular.ttf").read_bytes())
    alone = Fonts.from_paths([str(lonely)], system=False)
    assert alone.font(True) == alone.font()
    # The system's fonts follow the configured ones.
    assert Fonts.from_paths([DEJAVU]).width("株式会社", 10) == Fonts.from_paths().width("株式会社", 10)


@pytest.mark.parametrize("entry, problem", [
    ("/nowhere/Missing.ttf", "/nowhere/Missing.ttf: no such file"),
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc#0", "CFF (PostScript) outlines"),
    (["a.ttf"], "expected a path or a [regular, bold] pair"),
])
def test_a_bad_font_entry_is_refused_naming_it(entry: object, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        Fonts.from_paths([entry])  # type: ignore[list-item]


def fits(fonts: Fonts, lines: list[str], width: float) -> bool:
    return all(fonts.width(line, 10) <= width + 1e-9 for line in lines)


def test_cjk_wraps_between_any_two_characters(fonts: Fonts) -> None:
    text = "株式会社テスト北京烤鸭有限公司"
    width = fonts.width("株式会", 10) + 0.5
    lines = fonts.wrap(text, 10, width)
    assert lines == ["株式会", "社テス", "ト北京", "烤鸭有", "限公司"]
    # Closing punctuation never starts a line, and CJK inside Latin breaks the same way.
    lines = fonts.wrap("東京都、大阪府。", 10, fonts.width("東京都", 10) + 0.5)
    assert "".join(lines) == "東京都、大阪府。" and not any(line[0] in "、。" for line in lines)
    lines = fonts.wrap("Bento 株式会社テスト", 10, fonts.width("Bento 株式", 10) + 0.5)
    assert lines == ["Bento 株式", "会社テスト"]


def test_latin_wraps_between_words_and_breaks_only_a_word_wider_than_the_line(fonts: Fonts) -> None:
    text = "Weatherproof junction box IP65, certified to EN 60598 with a five-year warranty"
    lines = fonts.wrap(text, 10, 120)
    assert len(lines) > 2 and fits(fonts, lines, 120)
    assert " ".join(lines) == text  # broken at spaces only
    word = "Donaudampfschifffahrtsgesellschaftskapitänswitwe"
    lines = fonts.wrap(f"The {word} pays", 10, 80)
    assert fits(fonts, lines, 80) and lines[0] == "The" and lines[-1].endswith(" pays")
    assert "".join(lines[1:])[:-len(" pays")] == word


@pytest.mark.parametrize("text", [
    "مطعم الريف، وجبة عائلية كبيرة مع سلطة وخبز",
    "שלום עליכם, ארוחת ערב לשניים",
    "株式会社テストの弁当セット、北京烤鸭半只配薄饼和酱。",
    "Ελληνικά γλυκά και Привет мир, Hello Wörld",
    "",
    "  two  spaces ",
])
def test_wrap_never_drops_text(fonts: Fonts, text: str) -> None:
    for width in (30.0, 60.0, 150.0, 1000.0):
        lines = fonts.wrap(text, 10, width)
        assert "".join(lines).replace(" ", "") == text.replace(" ", ""), (width, lines)
        assert len(" ".join(lines)) >= len(text.strip()) - 0
        assert all(fonts.width(line, 10) <= width + 1e-9 or len(line.strip()) == 1 for line in lines), (width, lines)


def test_width_scales_with_size_and_adds_up_for_latin(fonts: Fonts) -> None:
    assert fonts.width("Hello World", 20) == pytest.approx(2 * fonts.width("Hello World", 10))
    assert fonts.width("Hello World", 10) == pytest.approx(
        fonts.width("Hello", 10) + fonts.width(" ", 10) + fonts.width("World", 10))
    assert fonts.width("Hello", 10, bold=True) > fonts.width("Hello", 10)
    assert fonts.width("", 10) == 0.0


def test_draw_many_puts_every_item_in_one_text_object(fonts: Fonts) -> None:
    canvas = Canvas(io.BytesIO(), pagesize=PAGE, pageCompression=0)
    items = [(50.0, 800.0 - 20 * i, text, 10.0, i % 2 == 1, "left") for i, text in enumerate(SCRIPTS.values())]
    fonts.draw_many(canvas, items)  # type: ignore[arg-type]
    canvas.showPage()
    pdf = canvas.getpdfdata()
    content = PdfReader(io.BytesIO(pdf)).pages[0].get_contents().get_data()  # type: ignore[union-attr]
    # (the canvas opens every page with an empty text object that sets its default font)
    assert len(re.findall(rb"BT((?!ET).)*Tj", content, re.S)) == 1
    assert [logical(line) for line in extracted_lines(pdf)] == list(SCRIPTS.values())
