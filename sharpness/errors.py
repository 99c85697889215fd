"""The one error type users see for bad input; the CLIs print its message and exit with code 2."""


class SharpnessError(ValueError):
    """Bad input the user can fix: a missing or foreign file, an unknown name, a value out of range.

    The message is a single line that names the file or value and the problem. A subclass of
    ``ValueError``, so code that catches bad arguments the usual way still does.
    """
