"""The one exception type users see.

Every problem caused by user input (a missing file, a truncated image, a weights file that is not one,
an unknown preset) is raised as :class:`MaskdnError` with a single-line message that names the file or
value and the problem. The CLI prints that line and exits non-zero, without a traceback.
"""

from __future__ import annotations


class MaskdnError(Exception):
    """A user-facing error whose message is one line: ``"<what>: <problem>"``.

    Args:
        *args: As for :class:`Exception`; by convention a single one-line message string.
    """


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (or its type name), to quote inside a one-line error.

    Args:
        e: Any exception.

    Returns:
        The first line of ``str(e)``, stripped; ``type(e).__name__`` when the message is empty.
    """
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` if it is an integer >= ``minimum`` (not a bool), else :class:`MaskdnError` naming ``name``.

    The one check of counts given by users (passes, jobs, patch sizes, iterations, …).

    Args:
        name: What the value is, quoted in the error message (e.g. ``"--jobs"``).
        value: The value to check.
        minimum: The smallest accepted value.

    Returns:
        ``value`` itself, unchanged.

    Raises:
        MaskdnError: ``"<name> must be an integer >= <minimum>, not <value!r>"`` when ``value`` is a
            bool, not an ``int``, or below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MaskdnError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return value


def problem(check, *args) -> list[str]:
    """The message of the :class:`MaskdnError` that ``check(*args)`` raises, as a list of zero or one.

    For validators that report every problem of a config at once rather than the first.

    Args:
        check: A callable that raises :class:`MaskdnError` on a problem.
        *args: Positional arguments passed to ``check``.

    Returns:
        ``[message]`` when ``check(*args)`` raised :class:`MaskdnError`, else ``[]``.

    Raises:
        Exception: Any exception other than :class:`MaskdnError` that ``check`` raises propagates.
    """
    try:
        check(*args)
    except MaskdnError as e:
        return [str(e)]
    return []

