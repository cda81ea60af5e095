"""Deepen a trained Conv-TasNet without changing what it computes.

A warm start for a larger network: the trained repeats are copied, and each
added repeat's blocks get zero residual and skip convolutions (``res_out``,
``skip_out``). Such a block adds nothing to the residual stream or to the skip
sum, so the grown model's output equals the original's exactly; training then
starts from the trained model's quality instead of from scratch, and the new
blocks' other layers (random, as a fresh model's) learn once the zero
convolutions move. The idea is Net2Net's (Chen et al. 2016) function-preserving
deepening, with the zero-initialised residual branch of ReZero/Fixup.

    python recipes/grow.py models/convtasnet.safetensors --repeats 4 --out runs/ctn-r4-init.safetensors
    sep train --config recipes/convtasnet-r4.toml --init runs/ctn-r4-init.safetensors --out runs/ctn6
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sepcli import registry  # noqa: E402
from sepcli.errors import SepError  # noqa: E402


def grow_repeats(model: torch.nn.Module, repeats: int, seed: int = 0) -> torch.nn.Module:
    """A Conv-TasNet with ``repeats`` repeats (R) whose output equals ``model``'s.

    The first ``model.config.R`` repeats and every other layer are copied; the
    added repeats are fresh blocks (seeded by ``seed``) with zero ``res_out``
    and ``skip_out``. Shape of the output: as ``model``'s, [B, S, T].
    """
    if getattr(model, "family", None) != "convtasnet":
        raise SepError(f"grow: a convtasnet model is needed, got {getattr(model, 'family', type(model).__name__)!r}")
    config = model.config
    if repeats <= config.R:
        raise SepError(f"grow: --repeats {repeats} must exceed the model's R={config.R}")
    torch.manual_seed(seed)
    grown = registry.build("convtasnet", dataclasses.replace(config, R=repeats))
    state = grown.state_dict()
    for key, value in model.state_dict().items():
        state[key] = value.clone()  # blocks.0 .. blocks.{R*X-1} keep their indices
    for index in range(config.R * config.X, repeats * config.X):
        for conv in ("res_out", "skip_out"):
            for part in ("weight", "bias"):
                state[f"separator.blocks.{index}.{conv}.{part}"].zero_()
    grown.load_state_dict(state, strict=True)
    return grown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", type=Path, help="a convtasnet .safetensors (e.g. models/convtasnet.safetensors)")
    ap.add_argument("--repeats", type=int, required=True, help="R of the grown network (more than the model's)")
    ap.add_argument("--out", type=Path, required=True, help="where to write the grown weights (.safetensors)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the added blocks' random layers")
    ap.add_argument("--force", action="store_true", help="overwrite --out")
    args = ap.parse_args()
    try:
        model = registry.load_file(args.weights)
        grown = grow_repeats(model, args.repeats, args.seed)
        registry.save_model(grown, args.out, force=args.force)
    except SepError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"{args.weights} (R={model.config.R}, {registry.count_parameters(model):,} parameters) -> "
          f"{args.out} (R={args.repeats}, {registry.count_parameters(grown):,} parameters)")


if __name__ == "__main__":
    main()
