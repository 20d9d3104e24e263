"""User-facing errors: one line that names the problem and the fix."""


class FedrecError(Exception):
    """An error caused by the user's input or environment.

    The CLI prints ``str(error)`` as a single line and exits non-zero, with no traceback.
    The message must say what is wrong and how to fix it.
    """
