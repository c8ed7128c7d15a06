"""The one exception type users see.

Every problem caused by user input (a missing file, a truncated image, a weights file that is not one,
an unknown preset) is raised as :class:`MaskdnError` with a single-line message that names the file or
value and the problem. The CLI prints that line and exits non-zero, without a traceback.
"""

from __future__ import annotations


class MaskdnError(Exception):
    """A user-facing error whose message is one line: ``"<what>: <problem>"``."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (or its type name), to quote inside a one-line error."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
