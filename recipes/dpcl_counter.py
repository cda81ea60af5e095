"""Fit the speaker counter of a deep clustering model (``auto_method="logistic"``).

``sep separate --num-speakers auto`` asks the model how many people talk. The
eigenvalue-share threshold (``auto_method="eigen"``) reads only whether a
share passes a fixed level, and with the shipped weights it never counted three
speakers. This recipe fits a small multinomial logistic regression from the log
of *all* D eigenvalue shares (bins weighted by |X| ** ``auto_power``; with
several ``--power`` values, one set of D shares per power side by side) to the
true count, on mixtures of **training** speakers, picks its regularisation on
the **valid** speakers, and reports the valid confusion matrix. Each mixture
is first equalized as inference does it (``--equalize``, the model's ``fast``
preset by default), since counting reads the chunk the model is given. The test
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
from sepcli.inference.equalize import equalize_chunk  # noqa: E402
from sepcli.models.deep_clustering import count_features, count_shares, fit_count_classifier  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "librispeech-8k"
DEFAULT_SPLIT = ROOT / "recipes" / "splits" / "librispeech-8k.json"


def as_inference_sees(mix: np.ndarray, sample_rate: int, equalize: float) -> np.ndarray:
    """The mixture after the equalizer that ``sep separate`` puts before the
    model (``equalize`` dB, 0: none). Shape: [T] -> [T]."""
    if equalize <= 0:
        return mix  # the very array: nothing to copy
    return equalize_chunk(mix[None], sample_rate, equalize)[0][0]


def share_set(model: torch.nn.Module, corpus: Corpus, counts: list[int], per_count: int,
              segments: list[float], powers: list[float], seed: int,
              equalize: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalue shares of fresh mixtures (:func:`count_shares` at each of
    ``powers``): ``per_count`` of each count, spread evenly over the segment
    lengths, equalized as inference does. Shape: -> shares [M, P * D], counts [M]."""
    shares, truth = [], []
    rate = model.config.sample_rate
    for count in counts:
        rng = np.random.default_rng([seed, count])
        for i in range(per_count):
            mixing = MixingConfig(n_src=count, segment=segments[i % len(segments)], snr_range=(0.0, 5.0))
            mix, _ref, _info = make_mixture(corpus, rng, mixing)
            mix = as_inference_sees(mix, rate, equalize)
            emb, energy = model.active_bins(torch.from_numpy(mix)[None])[0]  # [N, D], [N]
            shares.append(count_shares(emb, energy, powers))
            truth.append(count)
    return np.stack(shares), np.array(truth)


def per_count_accuracy(est: list[int], truth: np.ndarray, counts: list[int]) -> dict[int, float]:
    """The share of each true count's mixtures counted right."""
    est_np = np.asarray(est)
    return {c: float(np.mean(est_np[truth == c] == c)) for c in counts}


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
    ap.add_argument("--power", type=float, nargs="+", default=[2.0],
                    help="auto_power: bins weighted by |X| ** power; several give one set of shares each")
    ap.add_argument("--equalize", type=float, default=None,
                    help="equalize each mixture as inference does (dB; default: the model's fast preset's)")
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
    equalize = model.inference_presets()["fast"].equalize if args.equalize is None else args.equalize
    own = model.config  # the counter the model has now: scored on the same valid mixtures
    own_powers = own.count_powers if own.auto_method == "logistic" else []
    powers = list(dict.fromkeys([*args.power, *own_powers]))  # every power either needs, once
    t0 = time.perf_counter()
    sets = {}
    cached = dict(np.load(args.cache)) if args.cache and args.cache.exists() else {}
    if cached and float(cached.get("equalize", -1.0)) != equalize:
        raise SystemExit(f"--cache {args.cache} was computed with another --equalize; delete it")
    for split, per, seed in (("train", args.train_per_count, args.seed), ("valid", args.valid_per_count, args.seed + 1)):
        keys = [f"{split}_shares_p{p:g}" for p in powers]
        if all(k in cached for k in keys):
            sets[split] = {p: cached[k] for p, k in zip(powers, keys, strict=True)}, cached[f"{split}_counts"]
            print(f"{split}: {len(sets[split][1])} mixtures from {args.cache}")
            continue
        corpus = Corpus.from_path(args.data, model.config.sample_rate, args.speakers_split, split,
                                  min_speakers=max(counts))
        shares, truth = share_set(model, corpus, counts, per, args.segments, powers, seed, equalize)
        dim = shares.shape[1] // len(powers)
        sets[split] = {p: shares[:, i * dim:(i + 1) * dim] for i, p in enumerate(powers)}, truth  # [M, D] each
        print(f"{split}: {len(truth)} mixtures from {len(corpus.speakers)} speakers "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.cache:
        keep = {**cached, "equalize": np.float64(equalize),
                **{f"{k}_shares_p{p:g}": v for k, (by_p, _ct) in sets.items() for p, v in by_p.items()},
                **{f"{k}_counts": ct for k, (_by_p, ct) in sets.items()}}
        np.savez(args.cache, **keep)

    def stack(split: str, chosen: list[float]) -> np.ndarray:
        return np.hstack([sets[split][0][p] for p in chosen])  # [M, P * D]

    tr_counts, va_counts = sets["train"][1], sets["valid"][1]
    tr_shares, va_shares = stack("train", args.power), stack("valid", args.power)
    power = args.power[0] if len(args.power) == 1 else list(args.power)
    best = None
    results: dict = {"model": str(args.model), "power": power, "equalize": equalize, "segments": args.segments,
                     "offsets": offsets, "train_per_count": args.train_per_count,
                     "valid_per_count": args.valid_per_count, "by_c": {}}

    def report(name: str, est: list[int]) -> tuple[float, dict[int, float]]:
        acc = float(np.mean(np.array(est) == va_counts))
        by_count = per_count_accuracy(est, va_counts, counts)
        print(f"{name}: valid accuracy {100 * acc:.1f}% ("
              + ", ".join(f"{k}: {100 * v:.1f}%" for k, v in by_count.items()) + ")")
        return acc, by_count

    if own_powers:
        acc, by_count = report("the model's own counter", model.count_from_features(
            count_features(stack("valid", own_powers))))
        results["own"] = {"valid_accuracy": acc, "by_count": by_count}
    for c in args.c:
        # 5 significant digits: the card stays readable; the scores below are for the rounded numbers
        coef = fit_count_classifier(count_features(tr_shares), tr_counts, c)
        for count, logodds in offsets.items():
            coef[count - 1][-1] += logodds  # rows are counts 1..C
        coef = [[float(f"{v:.5g}") for v in row] for row in coef]
        model.config = dataclasses.replace(own, auto_method="logistic", auto_power=power, auto_logistic=coef)
        est = model.count_from_features(count_features(va_shares))
        acc, by_count = report(f"C={c:g}", est)
        results["by_c"][f"{c:g}"] = {"valid_accuracy": acc, "by_count": by_count}
        if best is None or acc > best[0]:
            best = (acc, c, coef, est)
    model.config = own
    acc, c, coef, est = best
    table = confusion(est, va_counts, counts, n_max)
    print(f"\nkept C={c:g}: valid accuracy {100 * acc:.1f}%")
    print("  true \\ est " + " ".join(f"{k:>5d}" for k in range(1, n_max + 1)))
    for row, count in enumerate(counts):
        print(f"  {count:>10d} " + " ".join(f"{v:>5d}" for v in table[row]))
    changes = {"auto_method": "logistic", "auto_power": power, "auto_logistic": coef}
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
