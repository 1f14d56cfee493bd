"""The base of every error whose message is written for the user.

The CLI prints such errors as one line and exits with code 2; the app shows them in the affected panel. Each
concrete error also subclasses the builtin it resembles (ValueError, FileNotFoundError, KeyError...), after
huggingface_hub's errors, so callers can catch either.
"""


class VosError(Exception):
    """An error whose message says what went wrong and what to do; never shown with a traceback."""
