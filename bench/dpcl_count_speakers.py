"""Speaker counting (``n_src="auto"``) and K-speaker separation of a deep clustering model.

Builds 1-, 2- and 3-speaker mixtures from held-out speakers (whole speakers
never seen in training, see ``recipes/splits/librispeech-8k.json``) and reports:

* the confusion matrix and accuracy of the speaker count that the model itself
  estimates (``n_src="auto"``, with its own ``auto_method``: for ``logistic``,
  the classifier ``recipes/dpcl_counter.py`` fitted on training speakers), on
  each mixture equalized as ``sep separate`` does before the model
  (``--equalize``, the ``fast`` preset's by default);
* the same for the eigenvalue-share threshold (``auto_method="eigen"``:
  shares, bins weighted by |X| ** the model's (first) ``auto_power``, above the
  model's ``auto_threshold`` and a few others; tune on ``--split valid``,
  measure once on ``--split test``);
* the PIT SI-SNRi of ``separate(mix, n_src=true count)`` (the bare model, no
  equalizer): a model trained on
  2-speaker mixtures should still separate 3 speakers with K = 3.

Run by hand, not in tests (it reads ../shared and takes minutes on CPU):

    python bench/dpcl_count_speakers.py models/dpcl.safetensors --split valid --per-count 100
    python bench/dpcl_count_speakers.py models/dpcl.safetensors --split test --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sepcli import registry
from sepcli.training.corpus import Corpus
from sepcli.training.data import MixingConfig, make_mixture
from sepcli.metrics import pit_si_snr, si_snr
from sepcli.inference.equalize import equalize_chunk
from sepcli.models.deep_clustering import embedding_shares

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "librispeech-8k"
DEFAULT_SPLIT = REPO / "recipes" / "splits" / "librispeech-8k.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="checkpoint path or shipped model name (a dpcl model)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="corpus root (one folder per speaker)")
    ap.add_argument("--speakers-split", type=Path, default=DEFAULT_SPLIT, help="speaker split JSON")
    ap.add_argument("--split", choices=("valid", "test"), default="valid",
                    help="held-out speakers to use; 'test' only for the final measurement")
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 2, 3], help="speaker counts to test")
    ap.add_argument("--per-count", type=int, default=100, help="mixtures per speaker count")
    ap.add_argument("--segment", type=float, default=4.0, help="seconds per mixture")
    ap.add_argument("--snr-range", type=float, nargs=2, default=(0.0, 5.0),
                    help="level difference between sources in dB (wsj0-2mix: 0 5)")
    ap.add_argument("--thresholds", type=float, nargs="*", default=[0.05, 0.08, 0.1, 0.12, 0.15, 0.2],
                    help="extra auto_threshold values to score (the model's own is always scored)")
    ap.add_argument("--no-separation", action="store_true", help="skip the SI-SNRi measurement")
    ap.add_argument("--equalize", type=float, default=None,
                    help="equalize each mixture before counting, as sep separate does (dB; 0: off; "
                         "default: the model's fast preset's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    model = registry.load_model(args.model)
    if getattr(model, "family", None) != "dpcl":
        print(f"error: {args.model} is a {getattr(model, 'family', '?')} model, not dpcl", file=sys.stderr)
        return 2
    cfg = model.config
    equalize = model.inference_presets()["fast"].equalize if args.equalize is None else args.equalize
    corpus = Corpus.from_path(args.data, cfg.sample_rate, args.speakers_split, args.split,
                              min_speakers=max(args.counts))

    shares: dict[int, list[np.ndarray]] = {c: [] for c in args.counts}
    own: dict[int, list[int]] = {c: [] for c in args.counts}  # the model's own estimate
    sisnri: dict[int, list[float]] = {c: [] for c in args.counts if c >= 2}
    t0 = time.perf_counter()
    for count in args.counts:
        rng = np.random.default_rng([args.seed, count])
        mixing = MixingConfig(n_src=count, segment=args.segment, snr_range=tuple(args.snr_range))
        for _ in range(args.per_count):
            mix, ref, _info = make_mixture(corpus, rng, mixing)
            mix_t = torch.from_numpy(mix)[None]  # [1, T]
            heard = equalize_chunk(mix[None], cfg.sample_rate, equalize)[0]  # [1, T]
            emb, energy = model.active_bins(torch.from_numpy(heard))[0]  # [N, D], [N]
            shares[count].append(embedding_shares(emb, energy, cfg.count_powers[0]))
            own[count].append(model.count_from_bins(emb, energy))
            if count >= 2 and not args.no_separation:
                est = model.separate(mix_t, n_src=count)[0].numpy()  # [S, T]
                values, _perm = pit_si_snr(est, ref)
                base = si_snr(np.broadcast_to(mix, ref.shape), ref)
                sisnri[count].append(float(np.mean(values - base)))
    elapsed = time.perf_counter() - t0

    thresholds = sorted({float(cfg.auto_threshold), *args.thresholds})
    results: dict = {
        "model": str(args.model), "split": args.split, "per_count": args.per_count,
        "segment_s": args.segment, "seed": args.seed, "equalize": equalize, "model_threshold": cfg.auto_threshold,
        "auto_max_src": cfg.auto_max_src, "elapsed_s": round(elapsed, 1), "thresholds": {},
    }
    n_max = cfg.auto_max_src
    print(f"{args.split} speakers: {', '.join(corpus.speakers)}; {args.per_count} mixtures per count, "
          f"{args.segment:g} s each ({elapsed:.0f} s)")

    def tally(title: str, estimates: dict[int, list[int]], mark: str = "") -> dict:
        """Print and return the confusion matrix [true, estimated 1..n_max] of per-mixture counts."""
        confusion = np.zeros((len(args.counts), n_max), dtype=int)
        for row, count in enumerate(args.counts):
            for est in estimates[count]:
                confusion[row, min(max(est, 1), n_max) - 1] += 1
        correct = [int(confusion[row, c - 1]) if c <= n_max else 0 for row, c in enumerate(args.counts)]
        acc = sum(correct) / confusion.sum()
        print(f"\n{title}: accuracy {100 * acc:.1f}%{mark}")
        print("  true \\ est " + " ".join(f"{k:>5d}" for k in range(1, n_max + 1)))
        for row, count in enumerate(args.counts):
            print(f"  {count:>10d} " + " ".join(f"{v:>5d}" for v in confusion[row]))
        return {
            "accuracy": acc,
            "per_count": {str(c): correct[r] / max(1, len(estimates[c])) for r, c in enumerate(args.counts)},
            "confusion": confusion.tolist(),
        }

    results["model_method"] = {
        "auto_method": cfg.auto_method,
        **tally(f"the model's own count (auto_method {cfg.auto_method!r})", own),
    }
    for thr in thresholds:
        mark = "  <- model's auto_threshold" if thr == cfg.auto_threshold else ""
        results["thresholds"][f"{thr:g}"] = tally(
            f"threshold {thr:g}", {c: [int((sh > thr).sum()) for sh in shares[c]] for c in args.counts}, mark
        )

    print("\nmedian eigenvalue shares (largest 4):")
    for count in args.counts:
        med = np.median(np.stack(shares[count]), axis=0)[:4]
        print(f"  {count} speaker(s): " + " ".join(f"{v:.3f}" for v in med))
        results.setdefault("median_shares", {})[str(count)] = med.tolist()
    if sisnri and not args.no_separation:
        print("\nSI-SNRi with K = true count (PIT, dB):")
        for count, vals in sisnri.items():
            print(f"  {count} speakers: mean {np.mean(vals):.2f}, median {np.median(vals):.2f}")
            results.setdefault("si_snri_oracle_k", {})[str(count)] = {
                "mean": float(np.mean(vals)), "median": float(np.median(vals)),
            }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
