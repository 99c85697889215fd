"""The one error type users see for bad input; the CLIs print its message and exit with code 2."""


class SharpnessError(ValueError):
    """Bad input the user can fix: a missing or foreign file, an unknown name, a value out of range.

    The message is a single line that names the file or value and the problem. A subclass of
    ``ValueError``, so code that catches bad arguments the usual way still does.
    """


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0, 32), 127, *range(0x80, 0xA0)]}


def printable(text: object, limit: int = 500) -> str:
    """``text`` safe to print on a terminal: control characters escaped (ESC as the four characters backslash-x-1-b), cut to ``limit``.

    Strings read from a checkpoint, a TOML or a results file (names, labels, paths, a data root) reach
    messages and tables; an ESC byte there could clear the screen or forge a line. Newlines and tabs are
    escaped too, so a message stays one line.
    """
    s = str(text).translate(_CONTROL)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def short(value: object, limit: int = 80) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters, control characters escaped (for messages)."""
    try:
        text = repr(value)
    except Exception:  # a 5000-digit int (Python's int-to-str limit), a repr that fails
        text = f"<{type(value).__name__}>"
    return printable(" ".join(text.split()), limit)
