"""The project's own error type for what a user's input causes.

:class:`UserError` is what the ``nemo-sew`` command reports as one line and exit status 2 (the traceback only with
``--verbose``); every other exception, an internal ``ValueError`` or ``KeyError`` included, keeps its traceback.
Raise it where the message tells the user what to change (a bad option, a file that is not what it should be).
It subclasses ``ValueError``, so callers that catch ``ValueError`` keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """A bad input the user can fix (an option, an override, a file's contents); the message says what and how."""


__all__ = ["UserError"]
