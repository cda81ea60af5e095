"""Checkpoint averaging: the mean of several epochs' weights of one run.

Late in training, at a constant learning rate, the weights wander around a
minimum from epoch to epoch; their mean often scores better than any one of
them. Decide on held-out *validation* speakers, never the test ones:

    sep mix ../shared/data/librispeech-8k/*/ --out data/valid2 -n 200 \\
        --speakers-split recipes/splits/librispeech-8k.json --split valid --seed 3
    python recipes/average.py runs/dpcl_epochs/ep2{0,1,2}.pt --out runs/dpcl-avg.safetensors --score data/valid2
    python recipes/average.py runs/dpcl/best.safetensors --score data/valid2     # a single model, for comparison
    python recipes/average.py runs/dpcl-mixed/epoch{2,3,4}.safetensors --score data/valid3 --num-speakers 3 \
        --config-set kmeans_power=2.0 --config-set kmeans_max_bins=50000   # with inference settings

Inputs are exported weights (``.safetensors``, as in ``best.safetensors``) or
plain-dict checkpoints with ``model`` (a state dict) and ``config`` (the run's
training config, as in ``last.pt``); all must be the same architecture.
Loading never executes code (safetensors, ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes"))

from sepcli import registry  # noqa: E402
from sepcli.errors import SepError  # noqa: E402


def load_any(path: Path) -> torch.nn.Module:
    """A model from exported weights or from a training checkpoint dict."""
    if path.suffix == ".safetensors":
        return registry.load_file(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise SepError(f"{path}: not a checkpoint with 'model' and 'config'")
    cfg = ckpt["config"]
    model = registry.build(cfg["family"], cfg["model"])
    model.load_state_dict(ckpt["model"], strict=True)
    return model


def average(models: list[torch.nn.Module]) -> torch.nn.Module:
    """The first model, with every floating-point tensor replaced by the mean over ``models``."""
    first = models[0]
    states = [m.state_dict() for m in models]
    if any(s.keys() != states[0].keys() for s in states):
        raise SepError("the checkpoints do not have the same tensors (different architectures)")
    mean = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            mean[key] = torch.stack([s[key].double() for s in states]).mean(0).to(value.dtype)
        else:
            mean[key] = value
    first.load_state_dict(mean, strict=True)
    return first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", type=Path, nargs="+", help="weights or checkpoints to average")
    ap.add_argument("--out", type=Path, help="write the averaged weights here (.safetensors)")
    ap.add_argument("--score", type=Path, metavar="SET", help="score on this held-out (validation) mixture set")
    ap.add_argument("--num-speakers", type=int, default=None,
                    help="speakers to separate into for --score (e.g. 3 for a three-speaker set); default the model's")
    ap.add_argument("--config-set", action="append", default=[], metavar="KEY=VALUE",
                    help="change an inference setting of the averaged model's config, e.g. kmeans_power=2.0 "
                         "(repeatable; JSON values; as recipes/ship.py)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="overwrite --out")
    args = ap.parse_args()
    if args.out is None and not args.score:
        raise SystemExit("nothing to do: give --out and/or --score")
    model = average([load_any(p) for p in args.inputs])
    from ship import _score, set_config

    set_config(model, args.config_set)
    with tempfile.TemporaryDirectory(prefix="sep-average-") as tmp:
        path = args.out or Path(tmp) / "average.safetensors"
        registry.save_model(model, path, force=args.force or args.out is None)
        print(f"averaged {len(args.inputs)} -> {path}")
        if args.score:
            scores = _score(path, args.score, args.num_speakers, args.threads)
            print(json.dumps({"inputs": [str(p) for p in args.inputs], **scores}))


if __name__ == "__main__":
    main()
