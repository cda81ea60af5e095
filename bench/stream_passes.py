"""What averaged passes cost when streamed: lanes against separate streamers.

``sep stream`` runs a model's P averaged passes (the shipped
``convtasnet-causal``: 2) as P *lanes* of one
:class:`sepcli.streaming.Streamer` in lockstep
(:class:`sepcli.streaming.AveragedStreamer`): every 1x1 conv is one product
over the frames of all lanes, so its weights are read once per step instead
of P times. This script times, per chunk size, on the same signal:

* ``one``: one pass, a plain ``Streamer``;
* ``lanes``: P passes as lanes (what ``sep stream`` runs);
* ``separate``: P independent ``Streamer`` objects, one per pass, fed the
  same delayed inputs (what running the passes side by side would cost;
  the averaging itself is left out, so this baseline is slightly flattered).

The three are run in turn, ``--repeats`` times, and the best run of each is
kept, so that a noisy neighbour on the machine disturbs all three alike.
Only the compute of ``process`` calls is timed.

Usage (1 thread, as the figures in docs/streaming.md)::

    python bench/stream_passes.py --threads 1 --passes 2 --chunk-ms 2 8 32
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sepcli import engine, registry  # noqa: E402
from sepcli.bench import bench_signal  # noqa: E402
from sepcli.streaming import AveragedStreamer, Streamer  # noqa: E402


def _time_stream(feed, reset, x: np.ndarray, chunk: int, sample_rate: int, warmup: int = 20) -> float:
    """RTF of feeding ``x`` in chunks of ``chunk`` samples (compute only)."""
    for i in range(warmup):
        feed(x[i * chunk : (i + 1) * chunk])
    reset()
    spent = 0.0
    n = (x.shape[0] // chunk) * chunk
    for i in range(0, n, chunk):
        piece = x[i : i + chunk]
        t0 = time.perf_counter()
        feed(piece)
        spent += time.perf_counter() - t0
    return spent / (n / sample_rate)


def measure(model: torch.nn.Module, chunk: int, passes: int, seconds: float, repeats: int) -> dict:
    sr = model.config.sample_rate
    x = bench_signal(int(seconds * sr), sr)
    one = Streamer(model, chunk_size=chunk)
    lanes = AveragedStreamer(model, chunk_size=chunk, passes=passes)
    delays = [d for d, _ in engine.pass_transforms(passes, model.config.stride, signs=False)]
    separate = [Streamer(model, chunk_size=chunk) for _ in delays]

    def reset_separate() -> None:
        for st, d in zip(separate, delays, strict=True):
            st.reset()
            st.process(np.zeros(d, np.float32))  # the pass's delay, as the lanes have it

    def feed_separate(piece: np.ndarray) -> None:
        for st in separate:
            st.process(piece)

    reset_separate()
    best = {"one": float("inf"), "lanes": float("inf"), "separate": float("inf")}
    for _ in range(repeats):
        best["one"] = min(best["one"], _time_stream(one.process, one.reset, x, chunk, sr))
        best["lanes"] = min(best["lanes"], _time_stream(lanes.process, lanes.reset, x, chunk, sr))
        best["separate"] = min(best["separate"], _time_stream(feed_separate, reset_separate, x, chunk, sr))
    return {
        "chunk_ms": 1000.0 * chunk / sr, "one_rtf": best["one"], "lanes_rtf": best["lanes"],
        "separate_rtf": best["separate"], "lanes_x": best["lanes"] / best["one"],
        "separate_x": best["separate"] / best["one"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="convtasnet-causal", help="causal Conv-TasNet (shipped name or path)")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--chunk-ms", type=float, nargs="+", default=[2.0, 8.0, 32.0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=4.0, help="audio streamed per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = registry.load_model(args.model).eval()
    sr = model.config.sample_rate
    rows = [measure(model, int(round(ms * sr / 1000)), args.passes, args.seconds, args.repeats)
            for ms in args.chunk_ms]
    print(f"{args.model}, {args.passes} passes, {args.threads} thread(s), best of {args.repeats} runs of "
          f"{args.seconds:g} s, torch {torch.__version__}\n")
    print("| chunk (ms) | one pass RTF | passes as lanes RTF | x one | separate streamers RTF | x one |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['chunk_ms']:g} | {r['one_rtf']:.3f} | {r['lanes_rtf']:.3f} | {r['lanes_x']:.2f} | "
              f"{r['separate_rtf']:.3f} | {r['separate_x']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
