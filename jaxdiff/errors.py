"""The one error type for a user's mistake (a bad value, a missing file, an incompatible run).

`cli.py` catches `UserError` and its subclasses (`specs.base.SpecError`, ...): exit code 2, the
message on one screen, no traceback. Anything else is an internal error and keeps its traceback.
The message names the key or path, the value, what is allowed and the fix.
"""


class UserError(ValueError):
    """A user-facing error: the message says what was wrong and how to fix it."""
