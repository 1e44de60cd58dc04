"""Text on the invoice: which font draws each character, how wide a string is, how it wraps,
and how it is put on the canvas.

`Fonts` is the one interface the layout and the drawing use for text; nothing else in the
invoice measures or draws a string. It is built once per worker process from
`[jobs.settings.pdf] fonts` (`Fonts.from_paths`) and cached across jobs.

Interface contract (the layout relies on it):
- `width(text, size, bold)` is the advance width in points of `text` as `draw` would set it;
- `wrap(text, size, width, bold)` returns lines that each fit `width`: Latin (and every script
  that separates words by spaces) breaks between words, CJK between any two characters (not
  before closing punctuation such as 、。」 nor after opening brackets); a word wider than the
  line is broken between characters; it never drops text;
- `draw(canvas, x, y, text, size, bold, align)` sets `text` with its baseline at `y`, starting
  at `x` (`align="left"`), ending at `x` (`"right"`) or centred on `x` (`"center"`);
- `draw_into(text_object, x, y, text, size, bold, align)` does the same inside an open
  `canvas.beginText()` object, so a page's many cells share one text object (the caller sets
  the fill colour and calls `canvas.drawText` once); `draw_many(canvas, items)` is the same for
  an iterable of `(x, y, text, size, bold, align)` tuples;
- `check(text, field)` raises `MissingGlyph` naming the first character no font can draw
  and the field it came from; the layout calls it for every string before drawing;
- `rtl(text)` is True when the string's first strong character is right-to-left (Arabic,
  Hebrew): the layout may right-align such a cell;
- `font(bold)` is the reportlab name of the primary font, for strings the layout knows are
  plain ASCII (labels, numbers).

Fonts and the config. `[jobs.settings.pdf] fonts` is a list, in order of preference; each
entry is one of
- `"path/Font-Regular.ttf"`: the regular face; its bold face is found beside it by name
  (`Regular` -> `Bold` in the file name, else `-Bold` or `Bold` before the extension, e.g.
  `DejaVuSans.ttf` -> `DejaVuSans-Bold.ttf`, `NanumGothic.ttf` -> `NanumGothicBold.ttf`);
  without one, bold text uses the regular face;
- `["path/Regular.ttf", "path/Bold.ttf"]`: the regular and the bold face, explicitly.
A path may end in `#N` to pick face N of a `.ttc` collection. The fonts must be TrueType
outlines (`glyf`): reportlab cannot embed CFF-flavoured OpenType, which `Fonts.from_paths`
refuses naming the file. After the configured fonts come the system's (`SYSTEM_FONTS`, those
found under `FONT_DIRS`): Noto Sans (Latin, Greek, Cyrillic), Noto Sans Arabic, Noto Sans
Hebrew, Droid Sans Fallback or WenQuanYi Zen Hei (Chinese, Japanese), Nanum Gothic (Korean),
DejaVu Sans, then every other Noto Sans script of fonts-noto-core. (Debian's fonts-noto-cjk
ships CFF outlines only, so CJK comes from fonts-droid-fallback and fonts-nanum.) A deployment
installs fonts-noto-core, fonts-dejavu-core, fonts-droid-fallback and fonts-nanum. Fonts other
than the first are loaded when a character first needs one (so a character no font has loads
them all, once per process: about half a second). With no TrueType font at all, the PDF
standard Helvetica is used and `check` refuses anything outside Latin-1.

Each character is drawn by the first font in the list that has its glyph; spaces, punctuation
and combining marks stay in the font of the run they are in when it has them, so Latin stays in
the primary font and only CJK, Arabic, ... runs switch. Right-to-left text is ordered by the
Unicode bidirectional algorithm (python-bidi) and every right-to-left run, and every run with
combining marks or a Brahmic or Southeast Asian script, is shaped by HarfBuzz (uharfbuzz,
through reportlab's shaped strings), so Arabic letters join. A string the primary font sets as
it is (ASCII, accented Latin, Greek, Cyrillic, currency signs) takes a fast path without
either. Each string's runs are computed once per weight at unit size and cached, so `width`,
`wrap` and `draw` of a repeated string cost a dictionary lookup; ASCII runs are written to the
text object without reportlab's per-character subsetting, other runs' PDF operators once per
document (`_put`). `benchmarks/bench_text.py` measures them. After `draw_into`, the text
object's cursor is unspecified: place the next string with `setTextOrigin` or `draw_into`.
"""
from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal
from weakref import WeakKeyDictionary

from reportlab.lib.rl_accel import fp_str
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfbase.ttfonts import ShapeData, ShapedStr, TTFError, TTFont
from reportlab.pdfgen.canvas import Canvas

from offload.workers.errors import PermanentError

Align = Literal["left", "right", "center"]
FontEntry = str | Sequence[str]
Item = tuple[float, float, str, float, bool, Align]
HELVETICA, HELVETICA_BOLD = "Helvetica", "Helvetica-Bold"

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
# File names in order of preference; the first of each group found is used (the others of the
# group cover the same scripts). After these: every other NotoSans<Script>-Regular.ttf.
SYSTEM_FONTS: tuple[tuple[str, ...], ...] = (
    ("NotoSans-Regular.ttf", "DejaVuSans.ttf"),
    ("NotoSansArabic-Regular.ttf", "NotoNaskhArabic-Regular.ttf"),
    ("NotoSansHebrew-Regular.ttf",),
    ("DroidSansFallbackFull.ttf", "DroidSansFallback.ttf", "wqy-zenhei.ttc", "wqy-microhei.ttc"),
    ("NanumGothic.ttf", "wqy-zenhei.ttc"),  # Hangul, which Droid Sans Fallback lacks
    ("DejaVuSans.ttf",),
)
_CACHE_LIMIT = 50_000


class MissingGlyph(PermanentError):
    """A character that no configured font can draw: the job fails naming it and its field,
    instead of completing with a box where the character should be."""

    def __init__(self, char: str, field: str) -> None:
        super().__init__(f"{field}: no configured font has a glyph for {char!r} (U+{ord(char):04X})",
                         type="MissingGlyph")
        self.char = char
        self.field = field


class _Face:
    """One loaded TrueType face, registered with reportlab under `name`."""

    __slots__ = ("name", "font", "cmap", "ascii", "simple", "hb")

    def __init__(self, path: str) -> None:
        file, _, index = path.partition("#")
        self.name = f"offload:{file}#{index or 0}"
        try:
            self.font = TTFont(self.name, file, subfontIndex=int(index or 0))
        except TTFError as error:
            problem = ("CFF (PostScript) outlines cannot be embedded; use a TrueType (glyf) font"
                       if "postscript" in str(error) else str(error))
            raise ValueError(f"font {path}: {problem}") from error
        pdfmetrics.registerFont(self.font)
        self.cmap = frozenset(self.font.face.charToGlyph)  # before shaping adds private codes
        self.ascii = self.cmap.issuperset(range(0x20, 0x7F)) and bool(self.font._asciiReadable)
        self.simple: frozenset[int] | None = None
        self.hb: Any = None

    def simple_codes(self) -> frozenset[int]:
        """What a string may hold to be set as it is: no marks, joiners, controls, right-to-left
        or complex-script characters."""
        if self.simple is None:
            self.simple = frozenset(code for code in self.cmap if code < 0x110000 and not _needs_runs(chr(code)))
        return self.simple

    def hb_font(self) -> Any:
        if self.hb is None:
            self.hb = self.font.hbFont(10)  # also gives the face its `hbAddPrivate`
        return self.hb


_faces: dict[str, _Face] = {}


def _face(path: str) -> _Face:
    """The face of `path`, loaded once per process: every `Fonts` shares it (and its cmap as
    the file has it, before shaping gives glyphs without a character private codes)."""
    face = _faces.get(path)
    if face is None:
        face = _faces[path] = _Face(path)
    return face


class _Family:
    """A regular face and its bold face (the regular one again when there is none), loaded
    when first needed."""

    __slots__ = ("paths", "_faces")

    def __init__(self, regular: str, bold: str | None) -> None:
        self.paths = (regular, bold)
        self._faces: list[_Face] | None = None

    def faces(self) -> list[_Face]:
        if self._faces is None:
            regular = _face(self.paths[0])
            bold = _face(self.paths[1]) if self.paths[1] else regular
            self._faces = [regular, bold]
        return self._faces


# A run: the reportlab font name, the string to set (a `ShapedStr` when shaped), its width at
# size 1, and the font when the string is printable ASCII that the font has (set without
# reportlab's per-character subsetting, see `_put`), else None.
Run = tuple[str, str, float, TTFont | None]
Line = tuple[tuple[Run, ...], float]


class Fonts:
    def __init__(self, families: Sequence[_Family] = ()) -> None:
        self._families = list(families)
        self._lines: dict[tuple[str, bool], Line] = {}
        self._owner: dict[int, int] = {}  # code point -> index of the first family with it
        if self._families:
            self._primary = primary = self._families[0].faces()
            self._regular, self._bold = primary[0].name, primary[1].name
            self._ascii = primary[0].ascii and primary[1].ascii
            self._simple = primary[0].simple_codes()
        else:
            self._regular, self._bold = HELVETICA, HELVETICA_BOLD
            self._ascii = True

    @classmethod
    def from_paths(cls, paths: Sequence[FontEntry] = (), system: bool = True) -> Fonts:
        """The fonts of `[jobs.settings.pdf] fonts` (see the module's docstring for the
        entries), followed by the system's unless `system=False`. A configured file that is
        missing or not TrueType raises ValueError naming it."""
        families: list[_Family] = []
        seen: set[str] = set()
        for entry in paths:
            regular, bold = _entry(entry)
            for path in (regular, bold):
                if path is not None and not os.path.isfile(path.partition("#")[0]):
                    raise ValueError(f"font {path}: no such file")
            family = _Family(regular, bold)
            family.faces()  # a configured font that cannot load fails now, naming the file
            families.append(family)
            seen.add(regular)
        if system:
            for regular in system_fonts():
                if regular not in seen:
                    seen.add(regular)
                    families.append(_Family(regular, _bold_beside(regular)))
        return cls(families)

    def font(self, bold: bool = False) -> str:
        return self._bold if bold else self._regular

    def check(self, text: str, field: str) -> None:
        if text.isascii() and self._ascii:
            return
        for char in text:
            if self._family_of(char) is None and not _ignorable(char):
                raise MissingGlyph(char, field)

    def covering(self, texts: Iterable[str], bold: bool = False) -> str | None:
        """The reportlab name of the first face that has every character of `texts` (spaces
        and other ignorable characters aside), for drawing that cannot switch fonts within a
        string (chart labels); None when no one face has them all."""
        needed = {ord(c) for text in texts for c in text if not _ignorable(c) and not c.isspace()}
        if not self._families:
            return (HELVETICA_BOLD if bold else HELVETICA) if all(code <= 0xFF for code in needed) else None
        for family in self._families:
            faces = family.faces()
            if faces[0].cmap.issuperset(needed):
                return faces[1].name if bold and faces[1].cmap.issuperset(needed) else faces[0].name
        return None

    def rtl(self, text: str) -> bool:
        if text.isascii():
            return False
        for char in text:
            kind = unicodedata.bidirectional(char)
            if kind in ("R", "AL"):
                return True
            if kind == "L":
                return False
        return False

    def width(self, text: str, size: float, bold: bool = False) -> float:
        return self._line(text, bold)[1] * size

    def wrap(self, text: str, size: float, width: float, bold: bool = False) -> list[str]:
        return list(_wrapped(self, text, size, width, bold))

    def draw(self, canvas: Canvas, x: float, y: float, text: str, size: float, bold: bool = False,
             align: Align = "left") -> None:
        text_object = canvas.beginText()
        self.draw_into(text_object, x, y, text, size, bold, align)
        canvas.drawText(text_object)

    def draw_many(self, canvas: Canvas, items: Iterable[Item]) -> None:
        """Every `(x, y, text, size, bold, align)` of `items` in one text object, in the
        canvas's current fill colour."""
        text_object = canvas.beginText()
        for x, y, text, size, bold, align in items:
            self.draw_into(text_object, x, y, text, size, bold, align)
        canvas.drawText(text_object)

    def draw_into(self, text_object: Any, x: float, y: float, text: str, size: float, bold: bool = False,
                  align: Align = "left") -> None:
        """`draw` into an open `canvas.beginText()` object, which keeps its fill colour; the
        font is set as each run needs."""
        runs, unit = self._line(text, bold)
        if align == "right":
            x -= unit * size
        elif align == "center":
            x -= unit * size / 2
        for name, content, run_unit, ascii_font in runs:
            if text_object._fontname != name or text_object._fontsize != size:
                text_object.setFont(name, size)
            text_object.setTextOrigin(x, y)
            _put(text_object, content, ascii_font)
            x += run_unit * size

    # -- runs --------------------------------------------------------------------------------

    def _line(self, text: str, bold: bool) -> Line:
        key = (text, bold)
        line = self._lines.get(key)
        if line is None:
            ascii = text.isascii() and text.isprintable() and self._ascii
            regular = self._primary[0] if self._families else None
            if regular is not None and (ascii or self._simple.issuperset(map(ord, text))):
                # The fast path: one run in the primary font, neither ordered nor shaped.
                face = self._primary[1] if bold and (ascii or self._primary[1].cmap.issuperset(map(ord, text))) \
                    else regular
                unit = face.font.stringWidth(text, 1.0)
                line = (((face.name, text, unit, face.font if ascii else None),), unit) if text else ((), 0.0)
            else:
                line = self._runs(text, bold)
            if len(self._lines) >= _CACHE_LIMIT:
                self._lines.clear()
            self._lines[key] = line
        return line

    def _family_of(self, char: str) -> int | None:
        code = ord(char)
        owner = self._owner.get(code)
        if owner is None:
            owner = -1
            for i, family in enumerate(self._families):
                if code in family.faces()[0].cmap:
                    owner = i
                    break
            if not self._families and code <= 0xFF:
                owner = 0
            self._owner[code] = owner
        return None if owner < 0 else owner

    def _runs(self, text: str, bold: bool) -> Line:
        if not self._families:  # Helvetica: WinAnsi only, as `check` ensures
            name = HELVETICA_BOLD if bold else HELVETICA
            unit = stringWidth(text, name, 1.0)
            return ((name, text, unit, None),), unit
        chars = [c for c in text if unicodedata.category(c) != "Cc"]
        chars, levels = _levels(chars)
        # (family, level) of each character: letters go to the first family with the glyph,
        # neutrals and marks stay with the run's family when it has them.
        spans: list[list[Any]] = []  # [family, level, chars]
        for char, level in zip(chars, levels, strict=True):
            owner = self._family_of(char)
            if spans:
                last = spans[-1]
                if last[1] == level and (owner == last[0] or owner is None and _ignorable(char) or _sticky(char)
                                         and ord(char) in self._families[last[0]].faces()[0].cmap):
                    last[2].append(char)
                    continue
            if owner is None:
                if not _ignorable(char):
                    raise MissingGlyph(char, "text")
                owner = spans[-1][0] if spans else 0
            spans.append([owner, level, [char]])
        runs: list[tuple[int, Run]] = []
        for owner, level, span in spans:
            faces = self._families[owner].faces()
            face = faces[1] if bold and all(ord(c) in faces[1].cmap for c in span) else faces[0]
            run = "".join(span)
            if level % 2 or any(_complex(c) for c in run):
                content, unit = _shape(face, run, level % 2 == 1)
            else:
                content = "".join(c for c in run if not _ignorable(c))
                unit = face.font.stringWidth(content, 1.0)
            fast = face.font if face.ascii and content.isascii() and content.isprintable() else None
            runs.append((level, (face.name, content, unit, fast)))
        ordered = _visual(runs)
        return tuple(ordered), sum(run[2] for run in ordered)


_formatted: WeakKeyDictionary[Any, dict[tuple[Any, ...], tuple[str, int]]] = WeakKeyDictionary()


def _put(text_object: Any, content: str, ascii_font: TTFont | None) -> None:
    """Append `content` to `text_object` at its origin, in its current font.

    reportlab encodes TrueType text a character at a time into per-document subsets. Printable
    ASCII has fixed codes in subset 0 (reportlab's `ttfAsciiReadable`), so a font that has all
    of it (`ascii_font`) gets the string as is; any other string is encoded once per document
    and its operators reused (the subsets only ever grow, so a code once given stays). Each
    string ends with `T*` as reportlab's `textLine` ends it: text extraction (pypdf) takes
    it as the end of a string, so separately drawn cells stay separate strings."""
    canvas = text_object._canvas
    doc = canvas._doc
    if ascii_font is not None:
        if text_object._curSubset != 0:
            internal = ascii_font.getSubsetInternalName(0, doc)
            text_object._code.append(f"{internal} {fp_str(text_object._fontsize)} Tf {fp_str(text_object._leading)} TL")
            text_object._curSubset = 0
        text_object._code.append(f"({canvas._escape(content)}) Tj T*")
        return
    cache = _formatted.get(doc)
    if cache is None:
        cache = _formatted[doc] = {}
    key = (text_object._fontname, text_object._fontsize, text_object._leading, text_object._curSubset,
           type(content), content)
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = (text_object._formatText(content), getattr(text_object, "_curSubset", -1))
    text_object._code.append(f"{hit[0]} T*")
    if hasattr(text_object, "_curSubset"):
        text_object._curSubset = hit[1]


def _entry(entry: FontEntry) -> tuple[str, str | None]:
    if isinstance(entry, str):
        return entry, _bold_beside(entry)
    if len(entry) == 2 and all(isinstance(p, str) for p in entry):
        return entry[0], entry[1]
    raise ValueError(f"font entry {entry!r}: expected a path or a [regular, bold] pair of paths")


def _bold_beside(path: str) -> str | None:
    file, hash_, index = path.partition("#")
    p = Path(file)
    names = [p.name.replace("Regular", "Bold")] if "Regular" in p.name else []
    names += [f"{p.stem}-Bold{p.suffix}", f"{p.stem}Bold{p.suffix}"]
    for name in names:
        candidate = p.with_name(name)
        if candidate != p and candidate.is_file():
            return f"{candidate}{hash_}{index}"
    return None


def system_fonts() -> list[str]:
    """The system's TrueType fonts in the order `Fonts` falls back on them."""
    found: dict[str, str] = {}
    for folder in FONT_DIRS:
        root = os.path.expanduser(folder)
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                found.setdefault(name, os.path.join(dirpath, name))
    chosen: list[str] = []
    for group in SYSTEM_FONTS:
        for name in group:
            if name in found and found[name] not in chosen:
                chosen.append(found[name])
                break
    for name in sorted(found):
        if name.startswith("NotoSans") and name.endswith("-Regular.ttf") and found[name] not in chosen:
            chosen.append(found[name])
    return chosen


def _needs_runs(char: str) -> bool:
    return unicodedata.category(char)[0] == "C" or unicodedata.bidirectional(char) in ("R", "AL", "AN") \
        or _complex(char)


def _ignorable(char: str) -> bool:
    """Format characters (joiners, direction marks) and variation selectors shape or order
    text but have no glyph of their own."""
    code = ord(char)
    return unicodedata.category(char) in ("Cf", "Cc") or 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF


def _sticky(char: str) -> bool:
    """Spaces, punctuation, symbols, digits and marks: kept in the run they are in."""
    return unicodedata.category(char)[0] in "ZPSMN"


def _complex(char: str) -> bool:
    """Characters whose rendering needs a shaper even left to right: combining marks,
    joiners, and the Brahmic and Southeast Asian scripts."""
    return unicodedata.category(char) in ("Mn", "Mc", "Me", "Cf") or 0x0900 <= ord(char) <= 0x109F \
        or 0x1780 <= ord(char) <= 0x17FF


def _levels(chars: list[str]) -> tuple[list[str], list[int]]:
    """The characters and the bidi embedding level of each (all 0 for text without
    right-to-left); explicit embedding controls, which the algorithm consumes, are left out."""
    if not any(unicodedata.bidirectional(c) in ("R", "AL", "RLE", "RLO", "RLI") for c in chars):
        return chars, [0] * len(chars)
    from bidi import algorithm

    storage = algorithm.get_empty_storage()
    text = "".join(chars)
    storage["base_level"] = level = algorithm.get_base_level(text)
    storage["base_dir"] = ("L", "R")[level]
    algorithm.get_embedding_levels(text, storage)
    algorithm.explicit_embed_and_overrides(storage)
    algorithm.resolve_weak_types(storage)
    algorithm.resolve_neutral_types(storage, False)
    algorithm.resolve_implicit_levels(storage, False)
    resolved = storage["chars"]
    return [c["ch"] for c in resolved], [c["level"] for c in resolved]


def _visual(runs: list[tuple[int, Run]]) -> list[Run]:
    """Unicode bidi rule L2 on runs: from the highest level down to the lowest odd one,
    reverse every maximal sequence of runs at that level or above."""
    if not runs:
        return []
    highest = max(level for level, _ in runs)
    lowest_odd = min((level for level, _ in runs if level % 2), default=highest + 1)
    for target in range(highest, lowest_odd - 1, -1):
        i = 0
        while i < len(runs):
            if runs[i][0] >= target:
                j = i
                while j < len(runs) and runs[j][0] >= target:
                    j += 1
                runs[i:j] = runs[i:j][::-1]
                i = j
            else:
                i += 1
    return [run for _, run in runs]


def _shape(face: _Face, text: str, rtl: bool) -> tuple[str, float]:
    """`text` shaped by HarfBuzz as a reportlab `ShapedStr` (glyphs in visual order, each
    with its advance and offsets in thousandths of an em) and its width at size 1."""
    import uharfbuzz

    hb = face.hb_font()
    buffer = uharfbuzz.Buffer()
    buffer.cluster_level = uharfbuzz.BufferClusterLevel.MONOTONE_CHARACTERS
    buffer.add_str(text)
    buffer.guess_segment_properties()
    buffer.direction = "rtl" if rtl else "ltr"
    uharfbuzz.shape(hb, buffer, {"kern": True, "liga": True})
    font = face.font
    glyph_chars = font.face.glyphToChar
    widths = font.face.charWidths
    out: list[str] = []
    data: list[ShapeData] = []
    total = 0.0
    for info, pos in zip(buffer.glyph_infos, buffer.glyph_positions, strict=True):
        gid = info.codepoint
        chars = glyph_chars.get(gid)
        code = chars[0] if chars else font.hbAddPrivate(hb.glyph_to_string(gid), gid, pos.x_advance)
        advance = font.pdfScale(pos.x_advance)
        total += advance
        out.append(chr(code))
        data.append(ShapeData(info.cluster, advance, font.pdfScale(pos.y_advance), font.pdfScale(pos.x_offset),
                              font.pdfScale(pos.y_offset), widths.get(code, advance)))
    return ShapedStr("".join(out), shapeData=data), total / 1000


# -- wrapping --------------------------------------------------------------------------------

# No line starts with these (closing punctuation, small kana, prolonged sound mark) ...
_NO_START = frozenset("、。，．,.:;!?)]}」』】〉》〕）］｝！？：；ー々ゝゞヽヾぁぃぅぇぉっゃゅょゎァィゥェォッャュョヮヵヶ・")
# ... and none ends with these (opening brackets).
_NO_END = frozenset("([{「『【〈《〔（［｛")


def _breaks_anywhere(char: str) -> bool:
    """CJK ideographs, kana, Hangul and fullwidth forms: a line may break between any two."""
    code = ord(char)
    return (0x2E80 <= code <= 0x9FFF or 0xAC00 <= code <= 0xD7AF or 0xF900 <= code <= 0xFAFF
            or 0xFF00 <= code <= 0xFFEF or 0x20000 <= code <= 0x3FFFF)


def _pieces(word: str) -> list[str]:
    """`word` cut where a line may break inside it: around CJK characters."""
    if word.isascii():
        return [word]
    pieces: list[str] = []
    current = ""
    for char in word:
        if current and (_breaks_anywhere(char) or _breaks_anywhere(current[-1])) \
                and char not in _NO_START and current[-1] not in _NO_END \
                and unicodedata.category(char)[0] != "M":
            pieces.append(current)
            current = ""
        current += char
    pieces.append(current)
    return pieces


def _wrapped(fonts: Fonts, text: str, size: float, width: float, bold: bool) -> Iterator[str]:
    """Greedy wrap, linear in the length of `text`: each piece (a word, or a CJK character)
    is measured once, and a piece wider than the line is broken between characters."""
    measure = fonts.width
    space = measure(" ", size, bold)
    line: list[str] = []  # pieces, each with the separator before it (but the first)
    used = 0.0
    for word in text.split(" "):
        for n, piece in enumerate(_pieces(word)):
            sep, gap = (" ", space) if n == 0 else ("", 0.0)
            w = measure(piece, size, bold)
            if line and used + gap + w <= width:
                line.append(sep + piece)
                used += gap + w
                continue
            if line:
                yield "".join(line)
            if w > width:
                parts = _break(fonts, piece, size, width, bold)
                piece, w = next(parts)
                for part, part_width in parts:
                    yield piece
                    piece, w = part, part_width
            line, used = [piece], w
    yield "".join(line)


def _break(fonts: Fonts, word: str, size: float, width: float, bold: bool) -> Iterator[tuple[str, float]]:
    start, used = 0, 0.0
    for i, char in enumerate(word):
        w = fonts.width(char, size, bold)
        if used + w > width and i > start and unicodedata.category(char)[0] != "M":
            yield word[start:i], used
            start, used = i, 0.0
        used += w
    yield word[start:], used
