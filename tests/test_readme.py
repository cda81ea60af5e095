"""The README's commands run as written, and its figures match their sources.

Runnable blocks are fenced ``sh`` or ``python`` blocks directly preceded by
the line ``<!-- runnable -->``; every ``sh`` block must be one. They run in
order, ``sh`` with ``bash -euo pipefail`` and ``python`` with this interpreter,
in a temporary copy of the repository (so they never write into the checkout),
with this interpreter's ``bin/`` first on PATH so ``sep`` is the installed
one. Lines starting with ``python3 -m venv`` or ``pip install`` are skipped:
the test environment is already installed (``.ci/run`` runs the README's
install and test command itself).
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
RUN_LANGS = ("sh", "python")
# The flags `sep train` keeps; everything else goes through --set KEY=VALUE.
TRAIN_FLAGS = {"--config", "--out", "--resume", "--init", "--lr", "--max-minutes", "--device",
               "--threads", "--set"}


def sh_blocks(text: str) -> list[tuple[bool, str]]:
    """(runnable, body) for every fenced ``sh`` block, in order."""
    return [(runnable, body) for lang, runnable, body in code_blocks(text) if lang == "sh"]


def code_blocks(text: str) -> list[tuple[str, bool, str]]:
    """(language, runnable, body) for every fenced ``sh`` or ``python`` block, in order."""
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
            if lang in RUN_LANGS:
                blocks.append((lang, prev.strip() == MARKER, "\n".join(lines[i + 1:j])))
            i = j + 1
        else:
            i += 1
    return blocks


def runnable_code() -> list[tuple[str, str]]:
    """(language, body) of the runnable blocks, in order, without the install lines."""
    out = []
    for lang, runnable, body in code_blocks(README.read_text()):
        if runnable:
            keep = [ln for ln in body.splitlines() if not ln.lstrip().startswith(SKIP_PREFIXES)]
            out.append((lang, "\n".join(keep)))
    return out


def runnable_blocks() -> list[str]:
    return [body for lang, body in runnable_code() if lang == "sh"]


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 300


def test_readme_has_runnable_blocks():
    blocks = runnable_blocks()
    assert len(blocks) >= 3
    assert any("sep separate examples/mix.wav" in b for b in blocks)


def test_every_sh_block_is_runnable():
    """Every command in the README runs as written: no unmarked (placeholder) ``sh`` blocks."""
    blocks = sh_blocks(README.read_text())
    assert blocks
    assert [body for runnable, body in blocks if not runnable] == []


def _train_lines(text: str) -> list[str]:
    """The ``sep train`` commands in fenced blocks, continuation lines joined."""
    out = []
    for _, _, body in code_blocks(text):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
            if re.search(r"\bsep train\b", line) or "-m sepcli train" in line:
                out.append(line)
    return out


@pytest.mark.parametrize("page", ["README.md"] + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")))
def test_train_lines_use_only_the_kept_flags(page):
    """`sep train` examples use the kept flags only; other settings go through --set."""
    lines = _train_lines((ROOT / page).read_text())
    for line in lines:
        flags = set(re.findall(r"(?<!\S)(--[\w-]+)", line))
        assert flags <= TRAIN_FLAGS, (page, line, sorted(flags - TRAIN_FLAGS))


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
        m = re.match(r"\| `([\w+-]+)` \| [^|]+ \| (yes|no) \| ([\d.]+)M \| ([\d.]+) dB \| ([\d.]+) dB \|", line)
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


def _table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| `")]


def test_model_table_rtf_matches_its_source():
    """The table's RTF column is the one docs/long-recordings.md gives for bench/default_speed.py."""
    readme = {r[0]: r[6] for r in _table_rows(README.read_text()) if len(r) == 8}
    page = (ROOT / "docs" / "long-recordings.md").read_text()
    section = page.split("## Speed and memory at the defaults", 1)[1].split("\n## ", 1)[0]
    source = {r[0]: r[1] for r in _table_rows(section)}
    assert "bench/default_speed.py" in section
    assert readme and readme == source
    assert "bench/default_speed.py" in README.read_text()


def test_readme_example_figures_match_their_sources():
    """Durations and counts the README states about the shipped audio."""
    text = " ".join(README.read_text().split())
    example = " ".join((ROOT / "examples" / "README.md").read_text().split())
    seconds = re.search(r"`examples/mix.wav` is (\d+) s\b", text)
    assert seconds and re.search(rf"\b{seconds.group(1)}\.\d+ s each", example)
    speakers = sorted(d.name for d in (ROOT / "examples" / "speakers").iterdir() if d.is_dir())
    words = {"six": 6, "two": 2}
    m = re.search(r"demo corpus of (\w+) LibriSpeech speakers, (\w+) short utterances each", text)
    assert m and words[m.group(1)] == len(speakers)
    assert all(len(list((ROOT / "examples" / "speakers" / s).glob("*.flac"))) == words[m.group(2)]
               for s in speakers)
    for s in speakers:  # each speaker is attributed in examples/README.md
        assert f"| {s} |" in example, s


def test_readme_links_exist():
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README.read_text()):
        assert (ROOT / target).exists(), target


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
def test_docs_links_exist(page):
    """The docs' relative links (to cards, other pages, code) point at files that exist."""
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", (ROOT / "docs" / page).read_text()):
        assert (ROOT / "docs" / target).exists(), (page, target)


def test_readme_runnable_blocks_run(tmp_path):
    if not (ROOT / "models" / "convtasnet.safetensors").exists():
        pytest.skip("no shipped weights in this checkout")
    work = tmp_path / "repo"
    shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "data", "checkpoints", "__pycache__", "*.egg-info", ".pytest_cache",
        ".gpu", "separated*", "streamed", "demo-set", "tiny-run", "my-*", "scores.csv"))
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("COLUMNS", "100")
    for lang, block in runnable_code():
        argv = ["bash", "-euo", "pipefail", "-c", block] if lang == "sh" else [sys.executable, "-c", block]
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{block}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert (work / "separated" / "mix" / "s1.wav").exists()
    # What the blocks promise, beyond exiting 0: a set, its separation and scores, a trained model.
    assert len(list((work / "demo-set" / "mix").glob("*.wav"))) == 6
    assert len(list((work / "separated-set").glob("*/s2.wav"))) == 6
    assert len((work / "scores.csv").read_text().splitlines()) == 7  # header + 6 mixtures
    for run in ("tiny-run", "my-run"):
        assert (work / run / "best.safetensors").exists() and (work / run / "last.pt").exists()
    assert (work / "my-separated" / "mix" / "s1.wav").exists()
