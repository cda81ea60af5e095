"""Which speed views to average: score every combination on a mixture set.

``sep separate --speeds`` (:func:`sepcli.engine.speed_fn`) runs the model on
each chunk at several speeds and averages the tracks. To choose the speeds,
this script separates every mixture of a set (the wsj0-2mix / Libri2Mix
layout that ``sep mix`` writes: ``mix/``, ``s1/``, ``s2/``) once per speed
(each with the model's passes, or ``--passes``), caches the tracks, and
scores every combination of the speeds from the cache: the combination's
tracks are averaged after putting each speed's speakers in the order of the
first's (:func:`sepcli.engine.ensemble_fn`). A mixture shorter than the
model's chunk is one chunk, so this is exactly what ``sep separate
--speeds`` gives on it.

Choose on validation speakers, never on the test ones::

    python bench/speed_views.py data/valid2 --speeds 1 0.96 0.92 0.88 1.04 --cache runs/speeds
    python bench/speed_views.py data/valid2 --speeds 1 0.92 0.88 --passes 2 --cache runs/speeds

Prints one line per combination, best last: the speeds, the mean SI-SNRi
(dB), and the forwards per chunk relative to one speed-1 pass.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sepcli import engine, metrics  # noqa: E402
from sepcli.api import Separator  # noqa: E402


def views(set_dir: Path, model: str, speed: float, passes: int | None, cache: Path) -> dict[str, np.ndarray]:
    """Tracks of every mixture at one speed, from the cache if there. Shape: name -> [S, T]."""
    path = cache / f"{Path(model).stem}_p{passes or 'model'}_x{speed:g}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    sep = Separator(model, device="cpu", passes=passes, speeds=[speed])
    out = {}
    for wav in sorted((set_dir / "mix").glob("*.wav")):
        mix, rate = sf.read(wav, dtype="float32")
        out[wav.stem] = sep.separate(mix, rate)  # [S, T]
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("set_dir", type=Path, help="mixture set: mix/, s1/, s2/ (sep mix)")
    ap.add_argument("--model", default="convtasnet", help="shipped name or .safetensors path")
    ap.add_argument("--speeds", type=float, nargs="+", default=[1.0, 0.92, 0.88], help="the speeds to combine")
    ap.add_argument("--passes", type=int, default=None, help="passes per speed (default: the model's)")
    ap.add_argument("--cache", type=Path, default=Path("runs/speed_views"), help="folder for the cached tracks")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    speeds = engine.check_speeds(args.speeds)
    tracks = {v: views(args.set_dir, args.model, v, args.passes, args.cache) for v in speeds}
    combos = [c for k in range(1, len(speeds) + 1) for c in itertools.combinations(speeds, k)]
    scores: dict[tuple[float, ...], list[float]] = {c: [] for c in combos}
    for name in sorted(tracks[speeds[0]]):
        mix = sf.read(args.set_dir / "mix" / f"{name}.wav", dtype="float64")[0]  # [T]
        ref = np.stack([sf.read(d / f"{name}.wav", dtype="float64")[0]
                        for d in sorted(args.set_dir.glob("s[0-9]*"))])  # [S, T]
        base = metrics.si_snr(np.broadcast_to(mix, ref.shape), ref)  # [S]
        for combo in combos:
            # the engine's own averaging, each speed's tracks as one "model"
            fns = [lambda _x, v=v: tracks[v][name][None] for v in combo]
            est = engine.ensemble_fn(fns)(mix[None])[0].astype(np.float64)  # [S, T]
            values, _ = metrics.pit_si_snr(est, ref)
            scores[combo].append(float(np.mean(values - base)))
    for combo, vals in sorted(scores.items(), key=lambda kv: np.mean(kv[1])):
        cost = sum(1 / v for v in combo)
        print(f"{', '.join(f'{v:g}' for v in combo):24s} {np.mean(vals):7.3f} dB   x{cost:.2f}")


if __name__ == "__main__":
    main()
