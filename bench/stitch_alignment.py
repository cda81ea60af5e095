"""How much the voice signatures should weigh in chunk alignment (issue 5).

Replays the engine's stitching with different ``signature_weight`` (``engine.SIGNATURE_WEIGHT``)
values on the stitching check's 10-minute two-talker recordings (see
``bench/separate_long.py``), without re-running the model: each chunk's
model output is computed once and cached, then fed back through the real
:func:`sepcli.engine.separate_array` for every weight. Reported per weight:
10-s pieces in another order than the whole file's (speaker swaps), their cost
in dB, and the recordings that meet the 1-dB stitching criterion.

``--oracle`` adds a row that needs no alignment at all: each chunk is put in
the order of the reference sources (over that chunk) before the engine's
overlap-add, with alignment off. It is the best any stitching of these chunk
outputs can do, so a recording that misses the criterion even there misses it
because of the model's own output (it varies from piece to piece, or swaps
inside a chunk), not because of the stitching.

Choose on the *valid* speakers, then report the chosen weight on the test ones::

    python bench/stitch_alignment.py --model convtasnet --split valid --seeds 0 1
    python bench/stitch_alignment.py --model dpcl --split valid --seeds 0 1
    python bench/stitch_alignment.py --model convtasnet --split valid --segment 4
    python bench/stitch_alignment.py --model convtasnet --split test --speakers 1462 84 --weights 4 --oracle

Needs ../shared/data/librispeech-8k and trained weights.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from separate_long import piece_scores, recording, speaker_pairs  # noqa: E402


def chunk_outputs(sep, mix: np.ndarray, cache: Path | None) -> np.ndarray:
    """The model's output for every chunk the engine cuts ``mix`` into.
    Shape: [C, S, segment] (the end-aligned last chunk is full length too)."""
    from sepcli import engine

    if cache is not None and cache.exists():
        return np.load(cache)["est"]
    est = np.stack([
        np.asarray(sep.fn(mix[None, s : s + n])[0], dtype=np.float32)
        for s, n in engine.chunk_starts(mix.shape[0], sep.segment_samples, sep.overlap)
    ])  # [C, S, n]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, est=est)
    return est


def oracle_order(est: np.ndarray, ref: np.ndarray, mix_len: int, segment: int, overlap: float) -> np.ndarray:
    """Each cached chunk reordered to its best permutation against the reference over that chunk.
    Shape: est [C, S, segment], ref [S, T] -> [C, S, segment]."""
    from sepcli import engine
    from sepcli.metrics import pit_si_snr

    out = est.copy()
    for c, (s, n) in enumerate(engine.chunk_starts(mix_len, segment, overlap)):
        r = ref[:, s : s + n]
        if (np.sqrt(np.mean(r**2, axis=1)) < 1e-4).any():
            continue  # a voice absent: no order to learn from the reference
        _, perm = pit_si_snr(est[c, :, :n], r)
        out[c] = est[c, perm]
    return out


class Replay:
    """A "model" that gives back cached chunk outputs in the engine's order."""

    def __init__(self, est: np.ndarray) -> None:
        self.est, self.k = est, 0

    def __call__(self, mix: np.ndarray) -> np.ndarray:
        out = self.est[self.k : self.k + mix.shape[0]]
        assert out.shape[0] == mix.shape[0] and out.shape[-1] == mix.shape[-1], "cache does not match"
        self.k += mix.shape[0]
        return out


def _label(w: float | str) -> str:
    return w if isinstance(w, str) else f"{w:g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="trained model (name or .safetensors)")
    p.add_argument("--split", default="valid", choices=["valid", "test"], help="held-out speakers (default valid)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="recording seeds (default 0)")
    p.add_argument("--segment", type=float, default=None, help="chunk seconds (default: the model's)")
    p.add_argument("--weights", type=float, nargs="+", default=[0.01, 0.3, 1.0, 2.0, 4.0, 10.0],
                   help="SIGNATURE_WEIGHT values to compare")
    p.add_argument("--minutes", type=float, default=10.0, help="recording length (default 10)")
    p.add_argument("--cache", type=Path, default=None, help="folder to keep the chunk outputs in")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--speakers", nargs=2, metavar="ID", default=None, help="only this pair of the split's speakers")
    p.add_argument("--oracle", action="store_true",
                   help="add a row with each chunk in the reference's order and no alignment (best possible stitch)")
    args = p.parse_args()

    import torch

    from sepcli import engine
    from sepcli.api import Separator

    torch.set_num_threads(args.threads)
    sep = Separator(args.model, device="cpu", segment=args.segment)
    seconds = args.minutes * 60
    tag = f"{Path(args.model).stem}_seg{sep.segment:g}_ov{sep.overlap:g}"
    rows: list[float | str] = [*args.weights, *(["oracle"] if args.oracle else [])]
    totals = {w: [0, 0.0, 0, 0] for w in rows}  # pieces swapped, swap cost, passes, recordings
    pairs = speaker_pairs(args.split)
    if args.speakers:
        pairs = [pr for pr in pairs if set(pr) == set(args.speakers)]
        if not pairs:
            p.error(f"{args.speakers} is not a pair of the {args.split} speakers")
    for seed in args.seeds:
        for a, b in pairs:
            ref, mix = recording(a, b, seconds, seed)
            cache = args.cache / f"{tag}_{a}_{b}_s{seed}.npz" if args.cache else None
            est = chunk_outputs(sep, mix, cache)
            line = []
            for w in rows:
                if w == "oracle":
                    replay = Replay(oracle_order(est, ref, mix.shape[0], sep.segment_samples, sep.overlap))
                    y = engine.separate_array(mix, replay, segment=sep.segment_samples, overlap=sep.overlap,
                                              align=False)
                else:
                    y = engine.separate_array(mix, Replay(est), segment=sep.segment_samples, overlap=sep.overlap,
                                              signature_weight=w)
                sc = piece_scores(y, ref, mix)
                swap_cost = sc["pieces_si_snri"] - sc["pieces_one_perm_si_snri"]
                t = totals[w]
                t[0] += sc["pieces_other_permutation"]
                t[1] += swap_cost
                t[2] += int(abs(sc["pieces_si_snri"] - sc["whole_si_snri"]) <= 1.0)
                t[3] += 1
                line.append(f"{_label(w)}: {sc['pieces_other_permutation']}/{sc['pieces']} ({swap_cost:.2f} dB), "
                            f"whole {sc['whole_si_snri']:.2f} pieces {sc['pieces_si_snri']:.2f}")
            print(f"{a}+{b} seed {seed}: " + ", ".join(line), flush=True)
    print(f"\n{args.model}, {args.split} speakers, {sep.segment:g}-s chunks, overlap {sep.overlap:g}:")
    print("| SIGNATURE_WEIGHT | 10-s pieces in another order | swaps cost (sum, dB) | recordings meeting 1 dB |")
    print("|---:|---:|---:|---:|")
    for w, (n, cost, ok, recs) in totals.items():
        print(f"| {_label(w)} | {n} | {cost:.2f} | {ok}/{recs} |")


if __name__ == "__main__":
    main()
