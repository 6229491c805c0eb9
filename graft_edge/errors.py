"""The one exception type users see: a clear, single-line message and no traceback at the CLI."""


class GraftError(Exception):
    """A user-facing error: bad input, a missing file, an unsatisfiable option."""
