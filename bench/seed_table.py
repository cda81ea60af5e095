"""The Conv-TasNet paper's comparison table (Luo & Mesgarani 2019, Table IV), measured
with every shipped model on one Libri2Mix-layout test set.

For each shipped model (``sep models``): method, parameters, causal, SI-SNRi and
SDRi (dB, mean over the set) and RTF on this machine, beside the paper's row for
the same system (WSJ0-2mix, so the figures compare methods, not data sets).
Separation and scoring are the library's (``sepcli.api.separate_files`` +
``sepcli.evaluate.evaluate_set``, as ``sep separate`` + ``sep evaluate`` and
recipes/ship.py), at the model's default settings (``--quality fast``). RTF is
the separation time over the audio's duration (model loading excluded); "Train
h" the training hours on the model card.

    python bench/seed_table.py                          # data/test2, every mixture
    python bench/seed_table.py data/test2 --limit 20    # a quick look
    python bench/seed_table.py --markdown               # for the README
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sepcli import registry
from sepcli.api import separate_files
from sepcli.errors import SepError
from sepcli.evaluate import evaluate_set, source_dirs

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class PaperRow:
    method: str
    params: str
    causal: bool
    si_snri: float | None  # None: not reported ("–" in the paper)
    sdri: float | None


# Conv-TasNet paper (IEEE/ACM TASLP 2019), Table IV, WSJ0-2mix. Keys: (family, causal).
PAPER: dict[tuple[str, bool], PaperRow] = {
    ("convtasnet", False): PaperRow("Conv-TasNet-gLN", "5.1M", False, 15.3, 15.6),
    ("convtasnet", True): PaperRow("Conv-TasNet-cLN", "5.1M", True, 10.6, 11.0),
    ("lstm-tasnet", True): PaperRow("LSTM-TasNet", "32.0M", True, 10.8, 11.2),
    ("upit-lstm", True): PaperRow("uPIT-LSTM", "46.3M", True, None, 7.0),
    ("lstm-tasnet", False): PaperRow("BLSTM-TasNet", "23.6M", False, 13.2, 13.6),
    ("upit-lstm", False): PaperRow("uPIT-BLSTM-ST", "92.7M", False, None, 10.0),
    ("dpcl", False): PaperRow("DPCL++", "13.6M", False, 10.8, None),
}
# The table's four systems, in the paper's order: always shown, shipped or not.
SEED_SYSTEMS = (("convtasnet", False), ("convtasnet", True), ("lstm-tasnet", True), ("upit-lstm", True))
METHOD_NAMES = {"convtasnet": "Conv-TasNet", "lstm-tasnet": "LSTM-TasNet", "upit-lstm": "uPIT-LSTM", "dpcl": "DPCL",
                "ensemble": "average of shipped models"}


def subset(test_set: Path, limit: int | None, tmp: Path) -> Path:
    """``test_set`` itself, or (with ``limit``) a view of its first ``limit``
    mixtures: mix/ and s1/, s2/ ... of symbolic links, so that the scores
    cover exactly the mixtures separated."""
    mixes = sorted((test_set / "mix").glob("*.wav"))
    if not mixes:
        raise SepError(f"{test_set}: no mixtures in mix/")
    if limit is None or limit >= len(mixes):
        return test_set
    view = tmp / "set"
    for folder in (test_set / "mix", *source_dirs(test_set)):
        (view / folder.name).mkdir(parents=True)
        for mix in mixes[:limit]:
            (view / folder.name / mix.name).symlink_to((folder / mix.name).resolve())
    return view


def score_model(name: str, test_set: Path, threads: int, quality: str = "fast") -> dict:
    """Separate every mixture of ``test_set`` with a shipped model and score it."""
    mixes = sorted((test_set / "mix").glob("*.wav"))
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="sep-seed-table-") as tmp:
        batch = separate_files(mixes, tmp, model=name, device="cpu", threads=threads, quality=quality)
        if batch.failed:
            raise SepError(f"{name}: {batch.failed} mixtures failed to separate")
        result = evaluate_set(test_set, tmp)
    done = [r for r in batch.results if r.status == "ok"]
    audio = sum(r.duration for r in done)
    return {
        "n": result.n,
        "si_snri": result.stats["si_snri"].mean,
        "sdri": result.stats["sdri"].mean,
        "rtf": sum(r.seconds for r in done) / audio if audio > 0 else float("nan"),
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _params(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.2f}M"


def build_rows(test_set: Path, threads: int) -> list[dict]:
    """One row per shipped model (measured, with its paper row), then the seed
    table's systems that no shipped model covers (paper figures only)."""
    rows = []
    seen = set()
    for info in registry.list_models():
        if info["kind"] != "shipped" or info.get("error"):
            continue
        family, causal = info["family"], bool(info["causal"])
        seen.add((family, causal))
        card = registry.shipped_models().get(info["name"], {})
        hours = (card.get("training") or {}).get("hours") if isinstance(card.get("training"), dict) else None
        method = METHOD_NAMES.get(family, family) + (" (causal)" if causal else "")
        rows.append({"model": info["name"], "method": method,
                     "params": _params(info["params"]), "causal": causal, "hours": hours,
                     **score_model(info["name"], test_set, threads), "paper": PAPER.get((family, causal))})
    for key in SEED_SYSTEMS:
        if key not in seen:
            rows.append({"model": "not shipped", "method": PAPER[key].method, "params": "", "causal": key[1],
                         "hours": None, "n": 0, "si_snri": None, "sdri": None, "rtf": None, "paper": PAPER[key]})
    return rows


COLUMNS = ("Model", "Method", "Params", "Causal", "SI-SNRi", "SDRi", "RTF", "Train h",
           "Paper method", "Paper params", "Paper SI-SNRi", "Paper SDRi")


def row_cells(row: dict) -> list[str]:
    paper: PaperRow | None = row["paper"]
    ours = [row["model"], row["method"], row["params"], "yes" if row["causal"] else "no",
            _fmt(row["si_snri"]), _fmt(row["sdri"]), _fmt(row["rtf"], 3), _fmt(row["hours"])]
    if paper is None:  # a system the paper's table does not have
        return [*ours, "", "", "", ""]
    return [*ours, paper.method, paper.params, _fmt(paper.si_snri), _fmt(paper.sdri)]


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def print_rich(rows: list[dict], title: str) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for col in COLUMNS:
        right = col.endswith(("SI-SNRi", "SDRi", "RTF", "Params", "params", " h"))
        table.add_column(col, justify="right" if right else "left", no_wrap=True)
    for r in rows:
        table.add_row(*row_cells(r))
    Console().print(table)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("test_set", nargs="?", type=Path, default=ROOT / "data" / "test2",
                    help="Libri2Mix-layout set: mix/, s1/, s2/ (default: data/test2, built by sep mix; "
                         "see recipes/ship.py)")
    ap.add_argument("--limit", type=int, default=None, metavar="N", help="score only the first N mixtures")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (RTF depends on it)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table instead of a rich one")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be at least 1")
    try:
        if not (args.test_set / "mix").is_dir():
            raise SepError(f"{args.test_set}: not a mixture set (no mix/ folder)")
        with tempfile.TemporaryDirectory(prefix="sep-seed-set-") as tmp:
            rows = build_rows(subset(args.test_set, args.limit, Path(tmp)), args.threads)
    except SepError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    n = max((r["n"] for r in rows), default=0)
    shown = args.test_set.resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else args.test_set
    title = (f"{shown} ({n} mixtures, {args.threads} threads); paper: Conv-TasNet (TASLP 2019) "
             "Table IV, WSJ0-2mix")
    if args.markdown:
        print(f"{title}\n\n{markdown(rows)}")
    else:
        print_rich(rows, title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
