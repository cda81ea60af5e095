"""Old home of :class:`~sepcli.cli.console.ConsoleReport`; kept so that
``from sepcli.cli_console import ConsoleReport`` still works."""
from sepcli.cli.console import ConsoleReport

__all__ = ["ConsoleReport"]
