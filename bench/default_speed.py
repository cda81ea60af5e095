"""`sep separate FILE` with no options, as a user runs it: wall-clock RTF and peak RSS.

Each shipped model separates one long two-talker recording (examples/mix.wav
repeated to ``--minutes``; cost does not depend on the content) in a fresh
`sep separate` process at its defaults. Reported: wall seconds / audio seconds
(RTF) and the child's peak resident memory. Close other programs first.

    python bench/default_speed.py                      # 10 minutes, every shipped model
    python bench/default_speed.py --model convtasnet --minutes 10 60
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
SEP = str(Path(sys.executable).with_name("sep"))


def run(model: str, minutes: float, workdir: Path) -> dict:
    x, sr = sf.read(ROOT / "examples" / "mix.wav", dtype="float32")
    n = int(minutes * 60 * sr)
    src = workdir / f"long{minutes:g}.wav"
    if not src.exists():
        sf.write(src, np.tile(x, n // len(x) + 1)[:n], sr, subtype="PCM_16")
    out = workdir / f"out-{model}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([SEP, "separate", str(src), "--model", model, "--out", str(out), "-q"], check=True)
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"model": model, "minutes": minutes, "rtf": round(wall / (n / sr), 4), "wall_s": round(wall, 1),
            "peak_rss_mb": round(peak_kb / 1024), "cores": os.cpu_count()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=None, help="shipped name (repeatable; default all)")
    ap.add_argument("--minutes", type=float, nargs="+", default=[10.0])
    ap.add_argument("--_one", nargs=3, help=argparse.SUPPRESS)  # MODEL MINUTES WORKDIR, in a fresh process
    args = ap.parse_args()
    if args._one:
        print(json.dumps(run(args._one[0], float(args._one[1]), Path(args._one[2]))), flush=True)
        return
    models = args.model or ["convtasnet", "convtasnet-causal", "dpcl"]
    with tempfile.TemporaryDirectory(prefix="sep-speed-") as tmp:
        for m in models:
            for minutes in args.minutes:
                # one process per measurement: ru_maxrss of children is a maximum over all of them
                subprocess.run([sys.executable, __file__, "--_one", m, str(minutes), tmp], check=True)


if __name__ == "__main__":
    main()
