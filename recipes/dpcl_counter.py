"""Fit the speaker counter of a deep clustering model (``auto_method="logistic"``).

``sep separate --num-speakers auto`` asks the model how many people talk. The
eigenvalue-share threshold (``auto_method="eigen"``) reads only whether a
share passes a fixed level, and with the shipped weights it never counted three
speakers. This recipe fits a small multinomial logistic regression from the log
of *all* D eigenvalue shares (bins weighted by |X| ** ``auto_power``) to the
true count, on mixtures of **training** speakers, picks its regularisation on
the **valid** speakers, and reports the valid confusion matrix. The test
speakers are never touched here: measure them once afterwards with
``bench/dpcl_count_speakers.py --split test``.

    python recipes/dpcl_counter.py dpcl                       # fit and report, write nothing
    python recipes/dpcl_counter.py dpcl --write               # also update models/dpcl.* in place

``--write`` changes only the inference settings of the shipped model
(``auto_method``, ``auto_power``, ``auto_logistic``): the weights are copied
bit for bit, and the card's config line and SHA-256 are updated to match.
It reads ../shared (training and valid speakers) and takes about 15 minutes
on 2 CPU cores with the defaults.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes"))

from ship import update_shipped  # noqa: E402

from sepcli import registry  # noqa: E402
from sepcli.training.corpus import Corpus
from sepcli.training.data import MixingConfig, make_mixture  # noqa: E402
from sepcli.models.deep_clustering import count_features, embedding_shares, fit_count_classifier  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "librispeech-8k"
DEFAULT_SPLIT = ROOT / "recipes" / "splits" / "librispeech-8k.json"


def share_set(model: torch.nn.Module, corpus: Corpus, counts: list[int], per_count: int,
              segments: list[float], power: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalue shares of fresh mixtures: ``per_count`` of each count, spread
    evenly over the segment lengths. Shape: -> shares [M, D], counts [M]."""
    shares, truth = [], []
    for count in counts:
        rng = np.random.default_rng([seed, count])
        for i in range(per_count):
            mixing = MixingConfig(n_src=count, segment=segments[i % len(segments)], snr_range=(0.0, 5.0))
            mix, _ref, _info = make_mixture(corpus, rng, mixing)
            emb, energy = model.active_bins(torch.from_numpy(mix)[None])[0]  # [N, D], [N]
            shares.append(embedding_shares(emb, energy, power))
            truth.append(count)
    return np.stack(shares), np.array(truth)


def confusion(est: list[int], truth: np.ndarray, counts: list[int], n_max: int) -> np.ndarray:
    """Rows: true count; columns: estimated 1..n_max. Shape: [len(counts), n_max]."""
    table = np.zeros((len(counts), n_max), dtype=int)
    for e, t in zip(est, truth, strict=True):
        table[counts.index(int(t)), min(e, n_max) - 1] += 1
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a shipped dpcl name (for --write) or a .safetensors path")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="corpus root (one folder per speaker)")
    ap.add_argument("--speakers-split", type=Path, default=DEFAULT_SPLIT, help="speaker split JSON")
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 2, 3], help="speaker counts to learn (1..C)")
    ap.add_argument("--train-per-count", type=int, default=300, help="training-speaker mixtures per count")
    ap.add_argument("--valid-per-count", type=int, default=100, help="valid-speaker mixtures per count")
    ap.add_argument("--segments", type=float, nargs="+", default=[4.0, 12.0],
                    help="mixture lengths in seconds, used in turn (counting runs per chunk of any length)")
    ap.add_argument("--power", type=float, default=2.0, help="auto_power: bins weighted by |X| ** power")
    ap.add_argument("--c", type=float, nargs="+", default=[1.0, 3.0, 10.0, 30.0, 100.0],
                    help="inverse L2 strengths to try; the best on the valid speakers is kept")
    ap.add_argument("--offset", action="append", default=[], metavar="COUNT=LOGODDS",
                    help="add LOGODDS to that count's intercept after fitting: a prior for a count that is "
                         "common in use (e.g. 2=1.5; choose it on the valid report; repeatable)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="update the shipped model and its card in place")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--cache", type=Path, help="keep the computed shares in this .npz and reuse them "
                    "(e.g. to --write after a dry run); delete it after changing any data option")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = registry.load_model(args.model)
    if getattr(model, "family", None) != "dpcl":
        raise SystemExit(f"{args.model} is not a dpcl model")
    if args.write and args.model not in registry.shipped_models():
        raise SystemExit("--write needs a shipped model name (e.g. dpcl)")
    counts = sorted(args.counts)
    offsets = {}
    for item in args.offset:
        key, sep, value = item.partition("=")
        try:
            offsets[int(key)] = float(value)
        except ValueError:
            raise SystemExit(f"--offset {item!r}: not COUNT=LOGODDS") from None
        if not sep or int(key) not in counts:
            raise SystemExit(f"--offset {item!r}: COUNT must be one of {counts}")
    n_max = model.config.auto_max_src
    t0 = time.perf_counter()
    sets = {}
    cached = dict(np.load(args.cache)) if args.cache and args.cache.exists() else {}
    for split, per, seed in (("train", args.train_per_count, args.seed), ("valid", args.valid_per_count, args.seed + 1)):
        if f"{split}_shares" in cached:
            sets[split] = cached[f"{split}_shares"], cached[f"{split}_counts"]
            print(f"{split}: {len(sets[split][1])} mixtures from {args.cache}")
            continue
        corpus = Corpus.from_path(args.data, model.config.sample_rate, args.speakers_split, split,
                                  min_speakers=max(counts))
        sets[split] = share_set(model, corpus, counts, per, args.segments, args.power, seed)
        print(f"{split}: {len(sets[split][1])} mixtures from {len(corpus.speakers)} speakers "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.cache and not cached:
        np.savez(args.cache, **{f"{k}_{part}": v for k, (sh, ct) in sets.items()
                                for part, v in (("shares", sh), ("counts", ct))})

    (tr_shares, tr_counts), (va_shares, va_counts) = sets["train"], sets["valid"]
    best = None
    results: dict = {"model": str(args.model), "power": args.power, "segments": args.segments, "offsets": offsets,
                     "train_per_count": args.train_per_count, "valid_per_count": args.valid_per_count,
                     "by_c": {}}
    for c in args.c:
        # 5 significant digits: the card stays readable; the scores below are for the rounded numbers
        coef = fit_count_classifier(count_features(tr_shares), tr_counts, c)
        for count, logodds in offsets.items():
            coef[count - 1][-1] += logodds  # rows are counts 1..C
        coef = [[float(f"{v:.5g}") for v in row] for row in coef]
        trial = dataclasses.replace(model.config, auto_method="logistic", auto_power=args.power, auto_logistic=coef)
        model.config = trial
        est = model.count_from_features(count_features(va_shares))
        acc = float(np.mean(np.array(est) == va_counts))
        results["by_c"][f"{c:g}"] = acc
        print(f"C={c:g}: valid accuracy {100 * acc:.1f}%")
        if best is None or acc > best[0]:
            best = (acc, c, coef, est)
    acc, c, coef, est = best
    table = confusion(est, va_counts, counts, n_max)
    print(f"\nkept C={c:g}: valid accuracy {100 * acc:.1f}%")
    print("  true \\ est " + " ".join(f"{k:>5d}" for k in range(1, n_max + 1)))
    for row, count in enumerate(counts):
        print(f"  {count:>10d} " + " ".join(f"{v:>5d}" for v in table[row]))
    changes = {"auto_method": "logistic", "auto_power": args.power, "auto_logistic": coef}
    results.update(c=c, valid_accuracy=acc, confusion=table.tolist(), changes=changes,
                   elapsed_s=round(time.perf_counter() - t0, 1))
    if args.write:
        sha = update_shipped(args.model, changes)
        print(f"updated models/{args.model}.safetensors (SHA-256 {sha}) and its card")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
