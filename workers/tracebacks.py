"""A failed handler's traceback, bounded, as it is kept with the job (`error.traceback`).

At most the innermost `MAX_FRAMES` frames of each exception in the chain, and at most the last
`MAX_CHARS` characters of the whole text (the end, where the exception is, is what is kept).
The frame of the code that called the handler is left out: it starts at the handler."""
from __future__ import annotations

import traceback

MAX_FRAMES = 50
MAX_CHARS = 8192
#: What stands in for the part of a longer traceback that was cut.
CUT = "…(cut)\n"


def handler_traceback(exc: BaseException) -> str:
    """The traceback of `exc`, raised by a handler its caller called (directly or by awaiting)."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # the caller's own frame (workers/runtime.py, service/runners.py)
    text = "".join(traceback.format_exception(type(exc), exc, tb, limit=-MAX_FRAMES))
    if len(text) > MAX_CHARS:
        text = CUT + text[len(text) - MAX_CHARS + len(CUT):]
    return text
