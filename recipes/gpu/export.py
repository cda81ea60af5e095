"""Bring a lent GPU machine's training runs back within the device tool's limits.

What comes back from ``$OUT`` is at most 8 files of 16 MiB each (64 MiB in
all), so a full ``last.pt`` (weights plus Adam state) cannot travel. For each
run folder this writes ``NAME.safetensors``, the run's best weights (stored
as float16 when float32 would pass 15 MB; loading casts back), and one
``runs.tar.gz`` with every run's ``log.jsonl``, ``config.json``,
``recipe.toml`` and ``train.out`` (its console output). Continue such a run anywhere with
``sep train --config recipes/NAME.toml --init NAME.safetensors --out runs/NAME-ft``.

    python recipes/gpu/export.py /tmp/runs/convtasnet /tmp/runs/dpcl --out "$OUT"
"""
from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sepcli import registry  # noqa: E402

MAX_BYTES = 15_000_000


def export_run(run: Path, out: Path) -> Path | None:
    best = run / "best.safetensors"
    if not best.exists():
        print(f"{run}: no best.safetensors (no validation finished)", file=sys.stderr)
        return None
    dest = out / f"{run.name}.safetensors"
    half = best.stat().st_size > MAX_BYTES
    registry.save_model(registry.load_file(best), dest, dtype=torch.float16 if half else None, force=True)
    print(f"{dest.name}: {dest.stat().st_size / 1e6:.1f} MB")
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="run folders (sep train --out)")
    ap.add_argument("--out", type=Path, required=True, help="folder to write to ($OUT)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    exported = [export_run(run, args.out) for run in args.runs]
    with tarfile.open(args.out / "runs.tar.gz", "w:gz") as tar:
        for run in args.runs:
            for name in ("log.jsonl", "config.json", "recipe.toml", "train.out"):
                if (run / name).exists():
                    tar.add(run / name, arcname=f"{run.name}/{name}")
    return 0 if all(exported) else 1


if __name__ == "__main__":
    raise SystemExit(main())
