"""The floor under streaming Conv-TasNet's RTF: its matrix products alone.

A streamed chunk of C ms runs every 1x1 conv of the network on only
``C * rate / 1000 / hop`` frames (8 frames at 8 ms, 8 kHz, L=16), so each
product is a thin ``[frames, in] @ [in, out]`` one whose cost is set by
reading the weights, not by arithmetic. This script times exactly the
products one streaming step of the paper configuration does (per block:
conv_in ``[K, B] @ [B, H]`` and the joint residual/skip ``[K, H] @ [H, B+Sc]``;
then the mask conv), with the weights laid out as in
:class:`sepcli.streaming.Streamer`, and nothing else:

* ``cold``: 24 distinct blocks, as in the network (about 19 MB of float32
  weights, more than the core's L2 cache, streamed once per chunk);
* ``hot``: one block's weights reused 24 times (they stay in L2): what the
  same products cost when memory is not the limit;
* ``native``: the same cold products with the compiled kernel that the
  streamer's native step uses (:mod:`sepcli.native`: packed float32 panels),
  and ``native f16`` with float16 panels (what it reads for a model stored in
  float16, such as the shipped ones).

Usage (1 thread, as in issue 8's targets)::

    python bench/stream_products.py --threads 1 --chunk-ms 2 4 8 16 32

The RTF of these products alone is a lower bound for ``sep bench``'s
streaming RTF at the same chunk size on the same machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def products(frames: int, n_blocks: int, distinct: bool, N: int = 512, B: int = 128, H: int = 512,
             Sc: int = 128, S: int = 2, seed: int = 0):
    """A callable doing one step's products. Shapes as in the Streamer (time-major)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) / shape[0] ** 0.5

    made = [(rand(B, H), rand(H, B + Sc)) for _ in range(n_blocks if distinct else 1)]
    blocks = [made[i % len(made)] for i in range(n_blocks)]  # [B, H] and [H, B+Sc] per block
    w_acc, w_mask = rand(N, B + Sc), rand(Sc, S * N)
    b_in, b_mask = torch.zeros(H), torch.zeros(S * N)
    x = rand(frames, N)
    acc = torch.empty(frames, B + Sc)
    h = torch.empty(frames, H)
    mask = torch.empty(frames, S * N)

    def step() -> None:
        torch.mm(x, w_acc, out=acc)  # bottleneck: [K, B+Sc]
        for w_in_t, w_out_t in blocks:
            torch.addmm(b_in, acc[:, :B], w_in_t, out=h)  # [K, H]
            acc.addmm_(h, w_out_t)  # [K, B+Sc]
        torch.addmm(b_mask, acc[:, B:], w_mask, out=mask)  # [K, S*N]
        acc.mul_(1e-3)  # keep the numbers bounded over many steps

    return step


def native_products(frames: int, n_blocks: int, half: bool, N: int = 512, B: int = 128, H: int = 512,
                    Sc: int = 128, S: int = 2, seed: int = 0):
    """The cold products of :func:`products` with the native kernel (None if it cannot be built)."""
    from sepcli import native

    lib = native.load()
    if lib is None or (half and not lib.sep_has_half()):
        return None
    width, dtype = lib.sep_panel_width(), torch.float16 if half else torch.float32
    gen = torch.Generator().manual_seed(seed)

    def packed(*shape: int) -> torch.Tensor:
        return native.pack_panels(torch.randn(*shape, generator=gen) / shape[0] ** 0.5, width, dtype)

    blocks = [(packed(B, H), packed(H, B + Sc)) for _ in range(n_blocks)]
    w_acc, w_mask = packed(N, B + Sc), packed(Sc, S * N)
    x = torch.randn(frames, N, generator=gen)
    acc, h, mask = torch.empty(frames, B + Sc), torch.empty(frames, H), torch.empty(frames, S * N)
    gemm = lib.sep_gemm

    def step() -> None:
        gemm(frames, B + Sc, N, x.data_ptr(), N, w_acc.data_ptr(), half, acc.data_ptr(), B + Sc, None, 0)
        for w_in, w_out in blocks:
            gemm(frames, H, B, acc.data_ptr(), B + Sc, w_in.data_ptr(), half, h.data_ptr(), H, None, 0)
            gemm(frames, B + Sc, H, h.data_ptr(), H, w_out.data_ptr(), half, acc.data_ptr(), B + Sc, None, 1)
        gemm(frames, S * N, Sc, acc[:, B:].data_ptr(), B + Sc, w_mask.data_ptr(), half, mask.data_ptr(), S * N,
             None, 0)
        acc.mul_(1e-3)

    return step


def time_step(step, chunk_s: float, seconds: float) -> float:
    n = max(20, int(seconds / chunk_s))
    for _ in range(10):
        step()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk-ms", type=float, nargs="+", default=[2, 4, 8, 16, 32])
    p.add_argument("--seconds", type=float, default=5.0, help="audio seconds timed per row")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rate, hop, n_blocks = 8000, 8, 24  # paper configuration: L=16, X=8, R=3
    weight_mb = 4 * (n_blocks * (128 * 512 + 512 * 256) + 512 * 256 + 128 * 1024) / 1e6
    print(f"paper-size Conv-TasNet products, {args.threads} thread(s), {weight_mb:.1f} MB of float32 weights")
    print("| chunk (ms) | frames | cold: ms per chunk | cold RTF | cold GFLOP/s | hot: ms per chunk | hot RTF "
          "| native: ms per chunk | native RTF | native f16: ms per chunk | native f16 RTF |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    with torch.inference_mode():
        for chunk_ms in args.chunk_ms:
            frames = max(1, round(chunk_ms * rate / 1000 / hop))
            flops = 2 * frames * (n_blocks * (128 * 512 + 512 * 256) + 512 * 256 + 128 * 1024)
            cold = time_step(products(frames, n_blocks, True), chunk_ms / 1000, args.seconds)
            hot = time_step(products(frames, n_blocks, False), chunk_ms / 1000, args.seconds)
            row = dict(chunk_ms=chunk_ms, frames=frames, cold_ms=1e3 * cold, cold_rtf=cold / (chunk_ms / 1000),
                       cold_gflops=flops / cold / 1e9, hot_ms=1e3 * hot, hot_rtf=hot / (chunk_ms / 1000))
            cells = []
            for key, half in (("native", False), ("native_f16", True)):
                step = native_products(frames, n_blocks, half)
                t = time_step(step, chunk_ms / 1000, args.seconds) if step is not None else None
                row[f"{key}_ms"] = None if t is None else 1e3 * t
                row[f"{key}_rtf"] = None if t is None else t / (chunk_ms / 1000)
                cells += ["-", "-"] if t is None else [f"{1e3 * t:.2f}", f"{t / (chunk_ms / 1000):.3f}"]
            rows.append(row)
            print(f"| {chunk_ms:g} | {frames} | {row['cold_ms']:.2f} | {row['cold_rtf']:.3f} | "
                  f"{row['cold_gflops']:.1f} | {row['hot_ms']:.2f} | {row['hot_rtf']:.3f} | {' | '.join(cells)} |",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(threads=args.threads, torch=torch.__version__, rows=rows),
                                              indent=2))


if __name__ == "__main__":
    main()
