"""Text on the invoice: which font draws each character, how wide a string is, how it wraps,
and how it is put on the canvas.

`Fonts` is the one interface the layout and the drawing use for text; nothing else in the
invoice measures or draws a string. It is built once per worker process from
`[jobs.settings.pdf] fonts` (`Fonts.from_paths`) and cached across jobs.

Interface contract (the layout relies on it):
- `width(text, size, bold)` is the advance width in points of `text` as `draw` would set it;
- `wrap(text, size, width, bold)` returns lines that each fit `width` (a word wider than the
  line is broken between characters); it never drops text;
- `draw(canvas, x, y, text, size, bold, align)` sets `text` with its baseline at `y`, starting
  at `x` (`align="left"`), ending at `x` (`"right"`) or centred on `x` (`"center"`);
- `check(text, field)` raises `MissingGlyph` naming the first character no font can draw
  and the field it came from; the layout calls it for every string before drawing.

This first implementation knows only the PDF standard Helvetica (WinAnsi), so `check`
refuses anything outside Latin-1 rather than drawing a black box.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Literal

from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas

from offload.workers.errors import PermanentError

Align = Literal["left", "right", "center"]
REGULAR, BOLD = "Helvetica", "Helvetica-Bold"


class MissingGlyph(PermanentError):
    """A character that no configured font can draw: the job fails naming it and its field,
    instead of completing with a box where the character should be."""

    def __init__(self, char: str, field: str) -> None:
        super().__init__(f"{field}: no configured font has a glyph for {char!r} (U+{ord(char):04X})",
                         type="MissingGlyph")
        self.char = char
        self.field = field


class Fonts:
    def __init__(self) -> None:
        self._regular, self._bold = REGULAR, BOLD

    @classmethod
    def from_paths(cls, paths: Sequence[str] = ()) -> Fonts:
        """The fonts of `[jobs.settings.pdf] fonts` (TrueType files, in order of preference),
        falling back to fonts found on the system."""
        return cls()

    def font(self, bold: bool = False) -> str:
        return self._bold if bold else self._regular

    def check(self, text: str, field: str) -> None:
        for char in text:
            if ord(char) > 0xFF:
                raise MissingGlyph(char, field)

    def width(self, text: str, size: float, bold: bool = False) -> float:
        return _word_width(text, self.font(bold), size)

    def wrap(self, text: str, size: float, width: float, bold: bool = False) -> list[str]:
        return list(_wrapped(text, self.font(bold), size, width))

    def draw(self, canvas: Canvas, x: float, y: float, text: str, size: float, bold: bool = False,
             align: Align = "left") -> None:
        canvas.setFont(self.font(bold), size)
        if align == "right":
            canvas.drawRightString(x, y, text)
        elif align == "center":
            canvas.drawCentredString(x, y, text)
        else:
            canvas.drawString(x, y, text)


def _wrapped(text: str, font: str, size: float, width: float) -> Iterator[str]:
    """Greedy word wrap, linear in the length of `text`: each word is measured once, and a
    word wider than the line is broken between characters, each measured once."""
    space = _word_width(" ", font, size)
    line: list[str] = []
    used = 0.0
    for word in text.split(" "):
        w = _word_width(word, font, size)
        if line and used + space + w <= width:
            line.append(word)
            used += space + w
            continue
        if line:
            yield " ".join(line)
        if w > width:
            pieces = _break(word, font, size, width)
            word, w = next(pieces)
            for piece, piece_width in pieces:
                yield word
                word, w = piece, piece_width
        line, used = [word], w
    yield " ".join(line)


def _break(word: str, font: str, size: float, width: float) -> Iterator[tuple[str, float]]:
    start, used = 0, 0.0
    for i, char in enumerate(word):
        w = _word_width(char, font, size)
        if used + w > width and i > start:
            yield word[start:i], used
            start, used = i, 0.0
        used += w
    yield word[start:], used


@lru_cache(maxsize=8192)
def _word_width(word: str, font: str, size: float) -> float:
    """Item names share most of their words, and a worker keeps this cache across jobs."""
    return stringWidth(word, font, size)
