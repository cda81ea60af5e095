"""Training throughput: seconds of audio per second of wall time.

Times full training steps (forward, loss, backward, clipping, Adam) of the
models in the shipped recipes, and of the paper-size Conv-TasNet, on random
mixtures of the recipe's segment length and batch size. Data loading is left
out (dynamic mixing costs ~3 ms per mixture, see sepcli.training.data). Validation
(``model.separate``) is timed too, since it runs every epoch.

Usage (2 CPU cores, as in the table in docs/training.md)::

    python bench/train_throughput.py --threads 2
    python bench/train_throughput.py --recipe recipes/dpcl.toml --steps 5
    python bench/train_throughput.py --json results.json

Numbers depend on the machine and on anything else running on it: close
other work first. The first ``--warmup`` steps are not counted.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sepcli import registry  # noqa: E402
from sepcli.training.config import make_config, read_recipe  # noqa: E402

DEFAULT_RECIPES = ["convtasnet.toml", "convtasnet-causal.toml", "dpcl.toml"]
# batch 2: at batch 4 x 4 s the paper model keeps ~12 GB of activations for backward
PAPER = ("convtasnet-paper", {"family": "convtasnet", "model": {}, "segment": 4.0, "batch_size": 2})


def measure(name: str, family: str, model_cfg: dict, segment: float, batch_size: int,
            steps: int, warmup: int, valid: bool, compile_step: bool = False, amp_cpu: bool = False) -> dict:
    torch.manual_seed(0)
    model = registry.build(family, model_cfg)
    sr, n_src = model.config.sample_rate, model.config.n_src
    n = int(round(segment * sr))
    ref = torch.randn(batch_size, n_src, n) * 0.1  # [B, S, T]
    mix = ref.sum(1)  # [B, T]
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    # what `sep train --set compile=true` does; the first (warm-up) step pays for compiling
    loss_fn = torch.compile(model.compute_loss) if compile_step else model.compute_loss
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        # what `sep train --set amp_cpu=true` does on a CPU with native bfloat16
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp_cpu):
            loss = loss_fn(mix, ref)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    step = sum(times) / len(times)
    out = {
        "name": name, "family": family, "params": registry.count_parameters(model),
        "segment_s": segment, "batch_size": batch_size, "step_s": step, "compile": compile_step, "amp_cpu": amp_cpu,
        "train_audio_sec_per_sec": segment * batch_size / step,
    }
    if valid:
        model.eval()
        t = time.perf_counter()
        with torch.no_grad():
            model.separate(mix)
        out["separate_audio_sec_per_sec"] = segment * batch_size / (time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", action="append", help="recipe(s) to time (default: the shipped ones)")
    ap.add_argument("--no-paper", action="store_true", help="skip the paper-size Conv-TasNet")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--no-valid", action="store_true", help="do not time model.separate")
    ap.add_argument("--compile", action="store_true", help="torch.compile the step (sep train --set compile=true)")
    ap.add_argument("--amp-cpu", action="store_true",
                    help="bfloat16 autocast on the CPU (sep train --set amp_cpu=true; needs native bfloat16 to pay off)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    jobs = []
    for r in args.recipe or [str(ROOT / "recipes" / n) for n in DEFAULT_RECIPES]:
        flat, _ = read_recipe(r)
        cfg = make_config(flat)
        jobs.append((Path(r).stem, cfg.family, cfg.model, cfg.segment, cfg.batch_size))
    if not args.no_paper:
        name, c = PAPER
        jobs.append((name, c["family"], registry.presets()[name].overrides, c["segment"], c["batch_size"]))

    results = []
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}")
    print(f"{'model':<24}{'params':>9}{'batch x s':>11}{'step s':>9}{'train s/s':>11}{'separate s/s':>14}")
    for name, family, model_cfg, segment, batch in jobs:
        r = measure(name, family, model_cfg, segment, batch, args.steps, args.warmup, not args.no_valid,
                    args.compile, args.amp_cpu)
        results.append(r)
        sep = r.get("separate_audio_sec_per_sec")
        print(f"{name:<24}{r['params'] / 1e6:>8.2f}M{batch:>5} x {segment:<3g}{r['step_s']:>9.2f}"
              f"{r['train_audio_sec_per_sec']:>11.1f}{'' if sep is None else f'{sep:>14.1f}'}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "torch": torch.__version__,
                                               "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
