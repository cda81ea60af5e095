"""Score models on mixture sets (clean and shifted) at given inference settings.

What `sep separate` + `sep evaluate` do, for several models and sets in one
table: SI-SNRi and SDRi (mean over the set), and for shifted sets the mean by
condition (shift.csv, recipes/shifted.py).

    python bench/score_sets.py --model convtasnet --model runs/ctn5/epoch3.safetensors \\
        --set data/valid12 --set data/valid12-shifted --passes 1 --speeds 1
"""
from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sepcli.api import separate_files
from sepcli.evaluate import evaluate_set
from sepcli.inference.settings import DEFAULT_QUALITY, QUALITIES


def score(model: str, set_dir: Path, passes: int | None, speeds: list[float] | None, threads: int,
          equalize: float | None = None, quality: str = DEFAULT_QUALITY) -> dict:
    torch.set_num_threads(threads)
    mixes = sorted((set_dir / "mix").glob("*.wav"))
    with tempfile.TemporaryDirectory(prefix="sep-score-") as tmp:
        t0 = time.perf_counter()
        batch = separate_files(mixes, tmp, model=model, device="cpu", passes=passes, speeds=speeds, threads=threads,
                               equalize=equalize, quality=quality)
        wall = time.perf_counter() - t0
        if batch.failed:
            raise SystemExit(f"{batch.failed} mixtures failed to separate")
        result = evaluate_set(set_dir, tmp)
    out = {"model": model, "set": str(set_dir), "n": result.n,
           "si_snri": round(result.stats["si_snri"].mean, 2), "sdri": round(result.stats["sdri"].mean, 2),
           "seconds": round(wall, 1)}
    shift = set_dir / "shift.csv"
    if shift.is_file():
        per = {m.name: float(np.mean(m.si_snri)) for m in result.scores if m.si_snri}
        if per:
            rows = list(csv.DictReader(shift.open()))
            for key in ("room", "phone"):
                for val in ("True", "False"):
                    vals = [per[r["mixture_ID"]] for r in rows if r[key] == val and r["mixture_ID"] in per]
                    if vals:
                        out[f"{key}={val}"] = round(float(np.mean(vals)), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="shipped name or .safetensors (repeatable)")
    ap.add_argument("--set", action="append", type=Path, required=True, help="mixture set (repeatable)")
    ap.add_argument("--quality", choices=QUALITIES, default=DEFAULT_QUALITY,
                    help="the preset the other options override (default: %(default)s)")
    ap.add_argument("--passes", type=int, default=None, help="averaged passes (default: the model's)")
    ap.add_argument("--speeds", type=float, nargs="+", default=None, help="speed views (default: the model's)")
    ap.add_argument("--equalize", type=float, default=None,
                    help="channel normalisation limit in dB, 0 off (default: the model's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="append each result as a JSON line here")
    args = ap.parse_args()
    for model in args.model:
        for s in args.set:
            r = score(model, s, args.passes, args.speeds, args.threads, args.equalize, args.quality)
            if args.quality != DEFAULT_QUALITY:
                r["quality"] = args.quality
            if args.equalize is not None:
                r["equalize"] = args.equalize
            print(json.dumps(r), flush=True)
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
