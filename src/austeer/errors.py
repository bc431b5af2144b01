"""The one error type for what the caller got wrong: austeer's command line prints it as one line, exit code 2.

Every error austeer raises about its input (a malformed file, a value out of range, a model it cannot steer)
is a :class:`UserError`; it subclasses :class:`ValueError`, so library callers that catch ``ValueError`` keep
working. Anything else that escapes is a bug in austeer or below it, and keeps its traceback.

Example:
    >>> from austeer.errors import UserError
    >>> try:
    ...     raise UserError("steer.json: alpha must be finite, got inf")
    ... except ValueError as exc:
    ...     print(exc)
    steer.json: alpha must be finite, got inf
"""

from __future__ import annotations


class UserError(ValueError):
    """The input is wrong (a file, a flag, an argument); the message names what and what was expected."""
