"""The ``sep`` group: one-line errors, warnings on stderr, ``-h``. The commands
register themselves on :func:`main` from the modules of :mod:`sepcli.cli`."""
from __future__ import annotations

import logging
import sys

import click

from sepcli import __version__
from sepcli.errors import SepError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _SepGroup(click.Group):
    """Turns SepError (and Ctrl-C) into a one-line message instead of a traceback."""

    def invoke(self, ctx: click.Context):  # noqa: D401
        try:
            return super().invoke(ctx)
        except SepError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr``, not the one at creation: the
    handler outlives a command (tests run many through CliRunner, which swaps
    sys.stderr each time)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(quiet: bool = False) -> None:
    """Library modules log through ``logging.getLogger(__name__)``; the CLI shows
    their warnings as one line each on stderr."""
    logger = logging.getLogger("sepcli")
    if not any(getattr(h, "_sep", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        handler._sep = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else logging.INFO)
    logger.propagate = False


@click.group(cls=_SepGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="sep")
def main() -> None:
    """Separate a recording of several people talking at once into one track per speaker.

    \b
    Examples:
      sep separate mix.wav --out separated/
      sep evaluate --refs s1.wav s2.wav --est e1.wav e2.wav --mix mix.wav
      sep models
    """
    setup_logging()

