"""The house stays in rooms of a readable size: no ``sepcli`` module over
600 lines and no function (or method) over 120, decorators included.

Run as a script for the largest of each: ``python tests/test_layout.py``.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sepcli"
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 120


def file_lengths() -> dict[str, int]:
    """Lines of every ``sepcli`` Python file, by path relative to the package's parent."""
    return {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines())
            for p in sorted(PACKAGE.rglob("*.py"))}


def function_lengths() -> dict[str, int]:
    """Lines of every function and method, ``path:line name`` -> lines from its first decorator."""
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(), filename=str(p))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                out[f"{p.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"] = node.end_lineno - start + 1
    return out


def test_no_sepcli_file_over_600_lines():
    over = {k: v for k, v in file_lengths().items() if v > MAX_FILE_LINES}
    assert not over, over


def test_no_function_over_120_lines():
    over = {k: v for k, v in function_lengths().items() if v > MAX_FUNCTION_LINES}
    assert not over, over


if __name__ == "__main__":
    for title, lengths, limit in (("files", file_lengths(), MAX_FILE_LINES),
                                  ("functions", function_lengths(), MAX_FUNCTION_LINES)):
        print(f"largest {title} (limit {limit} lines):")
        for name, n in sorted(lengths.items(), key=lambda kv: -kv[1])[:5]:
            print(f"  {n:5d}  {name}")
