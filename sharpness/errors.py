"""The one error type users see for bad input; the CLIs print its message and exit with code 2."""


class SharpnessError(Exception):
    """Bad input the user can fix: a missing or foreign file, an unknown name, weights that don't fit.

    The message is a single line that names the file or value and the problem.
    """
