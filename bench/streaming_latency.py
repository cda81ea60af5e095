"""Streaming latency of causal Conv-TasNet: the tables in docs/streaming.md, in Markdown.

A thin wrapper around :func:`sepcli.bench.run_bench` (what ``sep bench``
runs) that prints a Markdown table and can save the JSON. The figures in
docs/streaming.md come from::

    python bench/streaming_latency.py --threads 1 --duration 10 --json bench/streaming_latency.json

Timings are wall-clock and depend on everything else the machine is doing:
close other work first, and say when it was not possible.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sepcli.bench import DEFAULT_CHUNKS_MS, BenchResult, run_bench  # noqa: E402


def markdown(result: BenchResult) -> str:
    weights = " (random weights)" if result.random_weights else ""
    lines = [
        f"{result.model}{weights}, {result.params / 1e6:.2f}M parameters, "
        f"{f'{result.passes} passes averaged, ' if result.passes > 1 else 'one pass, '}"
        f"{f'equalize {result.equalize:g} dB, ' if result.equalize else ''}{result.device} "
        f"({result.device_name}), {result.threads} thread(s), {result.backend} step, {result.duration_s:g} s at "
        f"{result.sample_rate} Hz, torch {result.torch_version}",
        "",
        "| chunk (ms) | RTF | CPU-time RTF | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | algorithmic latency (ms) "
        "| total latency (ms) | max abs diff | naive RTF | speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.results:
        naive = "-" if r.naive_rtf is None else f"{r.naive_rtf:.1f}"
        speedup = "-" if r.speedup is None else f"{r.speedup:.0f}x"
        lines.append(
            f"| {r.chunk_ms:g} | {r.rtf:.3f} | {'-' if r.cpu_rtf is None else f'{r.cpu_rtf:.3f}'} | {r.p50_ms:.2f} | {r.p90_ms:.2f} | {r.p99_ms:.2f} | "
            f"{r.max_ms:.2f} | {r.algorithmic_latency_ms:.1f} | {r.total_latency_ms:.1f} | "
            f"{r.max_abs_diff:.1e} | {naive} | {speedup} |"
        )
    if result.offline_rtf is not None:
        off = " (random weights)" if result.offline_random_weights else ""
        lines += ["", f"Offline non-causal {result.offline_model}{off}: RTF {result.offline_rtf:.3f}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="causal model (default: shipped convtasnet-causal, else paper config)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--chunk-ms", default=",".join(f"{c:g}" for c in DEFAULT_CHUNKS_MS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--naive-chunks", type=int, default=5)
    parser.add_argument("--passes", type=int, default=None,
                        help="forward passes averaged per chunk (default: the model's, as sep stream)")
    parser.add_argument("--equalize", type=float, default=None,
                        help="causal equalizer's limit in dB, 0 off (default: the model's, as sep stream)")
    parser.add_argument("--backend", default="auto", choices=["auto", "native", "torch"],
                        help="the streaming step's implementation (as sep bench --backend)")
    parser.add_argument("--json", metavar="FILE", help="also write the full results here")
    args = parser.parse_args()
    result = run_bench(
        args.model, device=args.device, chunk_ms=[float(c) for c in args.chunk_ms.split(",")],
        threads=args.threads, duration=args.duration, naive_chunks=args.naive_chunks, passes=args.passes,
        equalize=args.equalize, backend=args.backend,
        progress=lambda msg: print(f"... {msg}", file=sys.stderr),
    )
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")


if __name__ == "__main__":
    main()
