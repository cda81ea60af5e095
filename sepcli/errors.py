"""The project's exception. Library code raises it for any bad input; the CLI
turns it into a one-line message and a non-zero exit, never a traceback."""


class SepError(Exception):
    """A user-facing error: bad input, missing file, unknown model, ..."""
