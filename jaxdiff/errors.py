"""The one error type for a user's mistake (a bad value, a missing file, an incompatible run).

`cli.py` catches `UserError` and its subclasses (`specs.base.SpecError`, ...): exit code 2, the
message on one screen, no traceback. Anything else is an internal error and keeps its traceback.
The message names the key or path, the value, what is allowed and the fix. `JAXDIFF_DEBUG=1`
prints the traceback of a user error too.

Where they are raised: each command's `resolve` checks every value and input (datasets, files,
checkpoints, shapes) and the run directory's state before the command writes anything
(`pipelines.common.open_run_dir`); the few checks that need the loaded data run before the
run directory is opened.
"""


class UserError(ValueError):
    """A user-facing error: the message says what was wrong and how to fix it."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or directory a command reads is absent (a dataset, an expert store, an image set);
    also a `FileNotFoundError`, so callers catching that keep working."""
