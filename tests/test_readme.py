"""The README's commands run as written, and its figures match their sources.

Runnable blocks are fenced ``sh`` blocks directly preceded by the line
``<!-- runnable -->``. They run in order, each with ``bash -euo pipefail``, in
a temporary copy of the repository (so they never write into the checkout),
with this interpreter's ``bin/`` first on PATH so ``sep`` is the installed
one. Lines starting with ``python3 -m venv`` or ``pip install`` are skipped:
the test environment is already installed (``.ci/run`` runs the README's
install and test command itself). Blocks without the marker (install lines,
examples with placeholder paths such as ``recordings/``) are not run.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = "<!-- runnable -->"
SKIP_PREFIXES = ("python3 -m venv", "pip install")
FENCE = re.compile(r"^```(\S*)\s*$")


def sh_blocks(text: str) -> list[tuple[bool, str]]:
    """(runnable, body) for every fenced ``sh`` block, in order."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m and m.group(1):
            lang = m.group(1)
            prev = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            if lang == "sh":
                blocks.append((prev.strip() == MARKER, "\n".join(lines[i + 1:j])))
            i = j + 1
        else:
            i += 1
    return blocks


def runnable_blocks() -> list[str]:
    out = []
    for runnable, body in sh_blocks(README.read_text()):
        if runnable:
            keep = [ln for ln in body.splitlines() if not ln.lstrip().startswith(SKIP_PREFIXES)]
            out.append("\n".join(keep))
    return out


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 300


def test_readme_has_runnable_blocks():
    blocks = runnable_blocks()
    assert len(blocks) >= 3
    assert any("sep separate examples/mix.wav" in b for b in blocks)


def test_ci_runs_the_readme_test_command():
    """.ci/run runs exactly the command the README gives for the tests."""
    commands = [ln for _, body in sh_blocks(README.read_text()) for ln in body.splitlines()
                if "pytest" in ln]
    assert len(commands) == 1, commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[0].strip() in [ln.strip() for ln in ci]


def test_model_table_matches_cards():
    """The README's shipped-models table: clean and shifted SI-SNRi and params as in models/NAME.json."""
    rows = {}
    for line in README.read_text().splitlines():
        m = re.match(r"\| `([\w-]+)` \| [^|]+ \| (yes|no) \| ([\d.]+)M \| ([\d.]+) dB \| ([\d.]+) dB \|", line)
        if m:
            rows[m.group(1)] = (m.group(2), float(m.group(3)), float(m.group(4)), float(m.group(5)))
    cards = sorted(p.stem for p in (ROOT / "models").glob("*.json"))
    assert sorted(rows) == cards
    for name, (causal, params_m, si_snri, shifted) in rows.items():
        card = json.loads((ROOT / "models" / f"{name}.json").read_text())
        assert si_snri == card["quality"]["si_snri"], name
        assert shifted == card["quality_shifted"]["si_snri"], name
        assert params_m == round(card["params"] / 1e6, 2), name
        assert causal == ("yes" if card["causal"] else "no"), name


def test_readme_links_exist():
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README.read_text()):
        assert (ROOT / target).exists(), target


def test_readme_runnable_blocks_run(tmp_path):
    if not (ROOT / "models" / "convtasnet.safetensors").exists():
        pytest.skip("no shipped weights in this checkout")
    work = tmp_path / "repo"
    shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "data", "checkpoints", "__pycache__", "*.egg-info", ".pytest_cache",
        ".gpu", "separated*", "streamed"))
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("COLUMNS", "100")
    for block in runnable_blocks():
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{block}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert (work / "separated" / "mix" / "s1.wav").exists()
