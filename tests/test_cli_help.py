"""Every help text renders cleanly and fits one screen (100 columns, 50 lines)."""
import pytest
from click.testing import CliRunner

from sepcli.cli import main

COMMANDS = [[]] + [[name] for name in sorted(main.commands)]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "sep")
def test_help_fits_one_screen(args):
    result = CliRunner().invoke(main, args + ["--help"], terminal_width=100, prog_name="sep")
    assert result.exit_code == 0, result.output
    text = result.output
    lines = text.splitlines()
    assert "%%" not in text
    assert len(lines) <= 50, f"{len(lines)} lines"
    assert max(len(ln) for ln in lines) <= 100
    assert text.startswith("Usage: sep")
