"""Stateful streaming inference for causal Conv-TasNet.

A :class:`Streamer` takes a live signal in chunks of any size and returns, after
each chunk, every output sample that no later input can change. The
concatenation of all outputs plus :meth:`Streamer.flush` equals the offline
causal forward ``model(mix)`` on the whole signal (same length T; equal up to
float rounding, tested at 1e-5 of the peak). Each chunk costs compute in
proportion to the chunk: the network is never re-run over its receptive field.

    >>> from sepcli.streaming import Streamer
    >>> streamer = Streamer(model, chunk_size=64)   # a causal ConvTasNet
    >>> for chunk in microphone:                    # [n] float32, any n >= 1
    ...     play(streamer.process(chunk))           # [S, m], m about n
    >>> play(streamer.flush())                      # the last [S, rest]

State kept between chunks (see the module names in
:mod:`sepcli.models.conv_tasnet`):

* **encoder**: the last ``L - L//2`` input samples (frames overlap by half);
  samples arrive in any count and are consumed one hop (``L//2``) at a time;
* **every cLN** (the separator's input norm and both norms of every block): the
  running sum and sum of squares over all channels and frames so far, and the
  frame count, in float64 like the offline :class:`CumulativeLayerNorm`;
* **every dilated depthwise conv**: its last ``(P-1)*d`` input frames, kept in
  a pre-allocated buffer that new frames are written into (no concatenation);
  once the buffer is full its tail is moved to the front, which costs about
  one frame copy per new frame;
* **decoder**: the overlap-add tail, kept as the last masked encoder frame
  (``ceil(L / hop) - 1`` frames): output hop k is the sum over j of frame
  k-j times the j-th hop of the decoder's basis, one matrix product per j.

Framing matches :meth:`ConvTasNet.frame_padding`: ``L - L//2`` zeros in front
of the signal, and at :meth:`flush` the right padding for the total length T,
with the output cropped to exactly T samples. Output sample t is final once
input sample ``t + L - L//2 - 1`` has arrived and the hop that holds it is
complete, so the algorithmic latency is at most one chunk plus the window L.

Speed: frames of a chunk go through the network together, time-major
(``[frames, channels]``), so every 1x1 conv is one matrix product per chunk,
with the weights stored ``[in, out]`` (for a few rows, BLAS reads that layout
faster than a transposed view when the weights are not in a near cache).
The norms' affine gains and biases are folded into the next layer's weights
at construction (exact algebra; only rounding differs), the residual and skip
paths share one accumulator updated with one in-place matrix product per
block, and for the small frame counts of real-time chunks the cLN statistics
are updated with Python floats instead of a dozen tiny tensor operations.
Weights are read once, when the Streamer is built: rebuild it after changing
the model's weights. For chunks of a few ms every chunk reads all the weights
(~20 MB for the paper network), and BLAS is slow at products of a few rows,
so on the CPU in float32 the whole step runs by default in compiled C
(``backend="native"``, :class:`_Native` and :mod:`sepcli.native`: a
small-row kernel over packed weight panels, faster); the torch step
(``backend="torch"``) is the fallback without a C compiler and computes the
same thing (docs/streaming.md has the timings).

:func:`stream_file` and :func:`stream_pcm` (``sep stream``) run files and raw
PCM pipes through a Streamer in fixed-size chunks and write the same outputs
as ``sep separate``.

Shape legend: S sources, T samples, K frames, and the paper's N, L, B, H, Sc, P.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
import os
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from sepcli import engine
from sepcli.errors import SepError
from sepcli.inference.settings import DEFAULT_QUALITY
from sepcli.models.conv_tasnet import prelu_, prelu_slope

SCALAR_STATS_MAX_FRAMES = 32
"""Up to this many frames per step (on the CPU), cLN statistics are updated
with Python floats, which is cheaper than a dozen tiny tensor operations;
above it, or on an accelerator, they are vectorised in torch."""

GRAM_MAX_FRAMES = 16
"""Up to this many frames per step, a cLN's per-frame sums and sums of squares
come from one small matrix product (see :class:`_Work`) instead of two reductions."""

MAX_STEP_FRAMES = 2048
"""Frames processed together at most; bounds memory when a long array is
passed in one call (2048 frames of the paper network hold ~4 MB per tensor)."""

_MAX_CACHED_VIEWS = 512


# ----------------------------------------------------------------------------- helpers


def _check_model(model: torch.nn.Module) -> None:
    from sepcli.models.conv_tasnet import ConvTasNet, CumulativeLayerNorm

    if not isinstance(model, ConvTasNet):
        raise SepError(
            f"streaming needs a causal Conv-TasNet; got {type(model).__name__} "
            "(use sep separate for other models)"
        )
    if not model.causal:
        raise SepError(
            "streaming needs a causal Conv-TasNet (causal=true, cLN); this one is non-causal: "
            "it looks at future frames, so its output is not final until the input ends "
            "(use sep separate, or a causal model such as convtasnet-causal)"
        )
    norms = [model.separator.norm] + [n for b in model.separator.blocks for n in (b.norm1, b.norm2)]
    if not all(isinstance(n, CumulativeLayerNorm) for n in norms):
        raise SepError("streaming needs cumulative layer norms (cLN) in every block")


class _Work:
    """Pre-allocated tensors for steps of K frames in each of G lanes, shared by
    all layers (they run one after the other), so that the steady state
    allocates almost nothing. Rows are lane-major: ``R = G*K`` rows, lane g's
    frames at rows ``g*K .. g*K+K-1``, so every 1x1 conv is one product over
    all lanes (G = 1 but for :class:`AveragedStreamer`).

    ``*_b`` buffers carry an extra last row of ones: ``x_b @ x_b.T`` then holds
    each row's sum (last column) and sum of squares (diagonal), which is what
    a cLN needs, in one matrix product.
    """

    def __init__(
        self, frames: int, dims: dict[str, int], device: torch.device, dtype: torch.dtype, lanes: int = 1
    ) -> None:
        K, G, S, N, B, H, Sc = (frames, lanes, dims["S"], dims["N"], dims["B"], dims["H"], dims["Sc"])
        R = G * K
        opts = dict(device=device, dtype=dtype)
        self.frames, self.lanes, self.rows = K, G, R

        def with_ones(channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            buf = torch.empty(R + 1, channels, **opts)
            buf[R] = 1.0
            return buf, buf[:R], buf.t()

        self.w_b, self.w, self.w_bT = with_ones(N)  # encoder output [R, N]
        self.h_b, self.h, self.h_bT = with_ones(H)  # block: after conv_in and PReLU [R, H]
        self.z_b, self.z, self.z_bT = with_ones(H)  # block: after the depthwise conv and PReLU [R, H]
        self.h3 = self.h.view(G, K, H)
        self.z3 = self.z.view(G, K, H)
        self.wn = torch.empty(R, N, **opts)  # normalised encoder output
        self.u = torch.empty(R, H, **opts)  # block: normalised z
        self.acc = torch.empty(R, B + Sc, **opts)  # [residual | skip sum]
        self.acc_res = self.acc[:, :B]
        self.acc_skip = self.acc[:, B:]
        self.mask = torch.empty(R, S * N, **opts)
        self.mask3 = self.mask.view(R, S, N)
        self.mask4 = self.mask.view(G, K, S, N)
        # masked encoder frames, after the q-1 frames of the previous step (decoder overlap)
        q = dims["q"]
        self.masked = torch.empty(G, K + q - 1, S, N, **opts)  # [G, q-1+K, S, N]
        self.masked_new = self.masked[:, q - 1 :]  # [G, K, S, N]
        # per lane, rows of masked frames whose hop j lands on this step's output hops
        self.masked_rows = [[self.masked[g, q - 1 - j : q - 1 - j + K].view(K * S, N) for j in range(q)]
                            for g in range(G)]
        self.hops = torch.empty(G, K * S, dims["hop"], **opts)  # [G, K*S, hop]
        self.gram = torch.empty(R + 1, R + 1, **opts)
        self.use_gram = R <= GRAM_MAX_FRAMES
        code = {torch.float32: "f", torch.float64: "d"}.get(dtype)
        self.scalar = device.type == "cpu" and code is not None and R <= SCALAR_STATS_MAX_FRAMES
        if self.scalar:
            # cLN coefficients r and -mean*r, written item by item from Python floats
            # (an array.array takes them faster than numpy) and read as tensors
            self.coef = array(code, bytes(2 * R * torch.finfo(dtype).bits // 8))
            coef = torch.frombuffer(self.coef, dtype=dtype).view(2, R)
            self.r, self.mr = coef[0, :, None], coef[1, :, None]  # [R, 1] views


class _RunningNorm:
    """Running statistics of one cLN over ``channels`` channels, per lane.

    :meth:`coefficients` returns per-row ``r`` and ``mr`` such that
    ``x * r + mr == (x - mean_k) / sqrt(var_k + eps)`` at each frame k, with
    mean and variance over all channels of every frame of the row's lane from
    the stream's start (the norm's gain and bias are folded into the next
    layer). Lanes run in lockstep, so they share the frame count.
    """

    def __init__(self, channels: int, eps: float, device: torch.device, lanes: int = 1) -> None:
        self.channels = channels
        self.eps = eps
        self.lanes = lanes
        # float64 running sums like the offline cLN (MPS has no float64)
        self.acc = torch.float64 if device.type in ("cpu", "cuda") else torch.float32
        self.device = device
        self.host = device.type == "cpu"  # running sums as Python floats; else a device tensor
        self.reset()

    def reset(self) -> None:
        self.count = 0  # frames seen * channels (each lane)
        self.sum = [0.0] * self.lanes  # Python floats (float64) on the CPU, per lane
        self.sumsq = [0.0] * self.lanes
        self.carry = torch.zeros(self.lanes, 1, 2, dtype=self.acc, device=self.device)  # on an accelerator

    def coefficients(
        self, x: torch.Tensor, ws: _Work, x_b: torch.Tensor, x_bT: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update with the rows of ``x`` (rows 0..R-1 of ``x_b``) and return their
        coefficients. Shape: x [R, C] -> (r [R, 1], mr [R, 1])."""
        if not (ws.scalar and self.host):
            return self._vector(x, ws.lanes)
        K, R = ws.frames, ws.rows
        if ws.use_gram:
            gram = torch.mm(x_b, x_bT, out=ws.gram).tolist()  # [R+1, R+1]
            rows = [(row[R], row[i]) for i, row in enumerate(gram[:R])]  # (sum, sum of squares)
        else:
            rows = list(zip(x.sum(1).tolist(), torch.linalg.vecdot(x, x).tolist(), strict=True))
        channels, eps, sqrt = self.channels, self.eps, math.sqrt
        out = ws.coef  # [r_0 .. r_R-1, mr_0 .. mr_R-1]
        for g in range(ws.lanes):
            total, total_sq, count = self.sum[g], self.sumsq[g], self.count
            for i, (s1, s2) in enumerate(rows[g * K : g * K + K], g * K):
                total += s1
                total_sq += s2
                count += channels
                mean = total / count
                var = total_sq / count - mean * mean
                r = 1.0 / sqrt(var + eps if var > 0.0 else eps)
                out[i] = r
                out[R + i] = -mean * r
            self.sum[g], self.sumsq[g] = total, total_sq
        self.count += K * channels
        return ws.r, ws.mr

    def _vector(self, x: torch.Tensor, lanes: int) -> tuple[torch.Tensor, torch.Tensor]:
        R = x.shape[0]
        K = R // lanes
        xs = x if x.dtype in (torch.float32, torch.float64) else x.float()
        sums = torch.stack((xs.sum(1), torch.linalg.vecdot(xs, xs)), 1).to(self.acc)  # [R, 2]
        cum = sums.view(lanes, K, 2).cumsum(1)  # [G, K, 2]
        if self.host:
            cum += torch.tensor([self.sum, self.sumsq], dtype=self.acc).t()[:, None, :]  # [G, 1, 2]
            last = cum[:, -1].tolist()  # [G][2]
            self.sum, self.sumsq = [a for a, _ in last], [b for _, b in last]
        else:  # no host round trip on an accelerator
            cum += self.carry
            self.carry = cum[:, -1:].clone()
        steps = torch.arange(1, K + 1, dtype=self.acc, device=x.device)  # [K]
        count = (steps * self.channels + self.count)[None, :, None]  # [1, K, 1]
        self.count += K * self.channels
        stats = cum / count  # [G, K, 2]: mean, mean of squares
        mean = stats[..., :1]
        var = (stats[..., 1:] - mean * mean).clamp_min_(0.0)
        r = torch.rsqrt(var + self.eps)
        return r.reshape(R, 1).to(x.dtype), (-mean * r).reshape(R, 1).to(x.dtype)


class _DepthwiseCache:
    """The last ``(P-1)*d`` input frames of a causal dilated depthwise conv, per
    lane, in a buffer ``[G, pad + room, H]`` that new frames are written into.
    When it is full, its last ``pad`` frames move to the front (a copy of
    ``pad`` frames every ``room`` frames, ``room >= pad``: at most one frame
    copied per frame)."""

    def __init__(
        self, offsets: list[int], channels: int, room: int, device: torch.device, dtype: torch.dtype, lanes: int = 1
    ) -> None:
        self.offsets = offsets  # tap p reads the frame offsets[p] before the current one; the last is 0
        self.pad = max(offsets)
        self.channels = channels
        self.lanes = lanes
        self.device = device
        self.dtype = dtype
        self.room = max(room, self.pad, 1)
        self.buf = torch.zeros(lanes, self.pad + self.room, channels, device=device, dtype=dtype)
        self.pos = self.pad
        self._views: dict[tuple[int, int], list[torch.Tensor]] = {}

    def reset(self) -> None:
        self.buf.zero_()  # the causal zero padding before the stream starts
        self.pos = self.pad

    def views(self, frames: int) -> list[torch.Tensor]:
        """Per tap, a [G, K, H] view ([K, H] for one lane) of the frames it reads
        for the next K frames; the last view (offset 0) is where those K frames
        are to be written."""
        if self.pos + frames > self.buf.shape[1]:
            keep = self.buf[:, self.pos - self.pad : self.pos].clone()  # [G, pad, H]
            if frames > self.room:
                self.room = frames
                self.buf = torch.zeros(self.lanes, self.pad + self.room, self.channels, device=self.device,
                                       dtype=self.dtype)
                self._views.clear()
            self.buf[:, : self.pad] = keep
            self.pos = self.pad
        key = (self.pos, frames)
        views = self._views.get(key)
        if views is None:
            if len(self._views) >= _MAX_CACHED_VIEWS:
                self._views.clear()
            p = self.pos
            # one lane: 2-D views, whose element-wise ops are cheaper
            buf = self.buf[0] if self.lanes == 1 else self.buf
            views = self._views[key] = [buf[..., p - off : p - off + frames, :] for off in self.offsets]
        return views

    def advance(self, frames: int) -> None:
        self.pos += frames


class _Block:
    """One ConvBlock with folded weights and its streaming state."""

    def __init__(self, block: torch.nn.Module, res_bias: torch.Tensor, room: int, lanes: int = 1) -> None:
        d = block.dconv.dilation[0]
        P = block.dconv.kernel_size[0]
        dev, dtype = block.dconv.weight.device, block.dconv.weight.dtype
        f64 = torch.float64

        def weight(conv: torch.nn.Conv1d) -> torch.Tensor:
            return conv.weight.detach()[:, :, 0].to(f64)  # [out, in]

        w_in = weight(block.conv_in)  # [H, B]
        # The residual stream is kept without the blocks' constant outputs
        # (res_bias: their sum so far); they reach this block through its conv_in bias.
        self.w_in_t = w_in.t().contiguous().to(dtype)  # [B, H]
        self.b_in = (block.conv_in.bias.detach().to(f64) + w_in @ res_bias).to(dtype)
        self.slope1 = prelu_slope(block.prelu1)
        self.slope2 = prelu_slope(block.prelu2)
        g1, b1 = block.norm1.weight.detach().to(f64), block.norm1.bias.detach().to(f64)
        wd = block.dconv.weight.detach()[:, 0, :].to(f64)  # [H, P]
        # tap p reads the frame (P-1-p)*d before the current one (causal padding)
        offsets = [(P - 1 - p) * d for p in range(P)]
        self.taps = [(wd[:, p] * g1).to(dtype) for p in range(P)]  # norm1's gain folded in
        self.b_d = (block.dconv.bias.detach().to(f64) + (wd * b1[:, None]).sum(1)).to(dtype)
        # Before the stream starts the offline conv reads zeros, not norm1's bias:
        # frame k (from the start) loses w_p * b1 for each tap whose offset is > k.
        self.tap_bias = (wd * b1[:, None]).T.contiguous().to(dtype)  # [P, H]
        self.offsets_t = torch.tensor(offsets, device=dev)[None, :]  # [1, P]
        g2, b2 = block.norm2.weight.detach().to(f64), block.norm2.bias.detach().to(f64)
        w_out = torch.cat((weight(block.res_out), weight(block.skip_out)))  # [B+Sc, H]
        b_out = torch.cat((block.res_out.bias.detach(), block.skip_out.bias.detach())).to(f64)
        self.w_out_t = (w_out * g2).t().contiguous().to(dtype)  # [H, B+Sc]; norm2's gain folded in
        const = b_out + w_out @ b2  # [B+Sc] this block's constant output (float64)
        B = w_in.shape[1]
        self.const_res, self.const_skip = const[:B], const[B:]
        H = w_in.shape[0]
        self.pad = max(offsets)
        self.norm1 = _RunningNorm(H, block.norm1.eps, dev, lanes)
        self.norm2 = _RunningNorm(H, block.norm2.eps, dev, lanes)
        self.cache = _DepthwiseCache(offsets, H, room, dev, dtype, lanes)

    def reset(self) -> None:
        self.norm1.reset()
        self.norm2.reset()
        self.cache.reset()

    def __call__(self, ws: _Work, start: int) -> None:
        """Run ``ws.frames`` frames of every lane, updating ``ws.acc`` = [residual |
        skip sum] in place. ``start``: frames before these since the stream start."""
        K, G = ws.frames, ws.lanes
        h = ws.h
        torch.addmm(self.b_in, ws.acc_res, self.w_in_t, out=h)  # [R, H]
        prelu_(h, self.slope1)
        r, mr = self.norm1.coefficients(h, ws, ws.h_b, ws.h_bT)
        views = self.cache.views(K)  # [K, H] each, [G, K, H] for several lanes
        z = ws.z
        if G == 1:
            torch.addcmul(mr, h, r, out=views[-1])  # normalised; gain and bias are in the taps
            zv = z
        else:
            torch.addcmul(mr.view(G, K, 1), ws.h3, r.view(G, K, 1), out=views[-1])
            zv = ws.z3  # [G, K, H] view of z
        torch.addcmul(self.b_d, views[0], self.taps[0], out=zv)
        for view, tap in zip(views[1:], self.taps[1:], strict=True):
            zv.addcmul_(view, tap)
        self.cache.advance(K)
        if start < self.pad:
            self._stream_start(zv, start)
        prelu_(z, self.slope2)
        r, mr = self.norm2.coefficients(z, ws, ws.z_b, ws.z_bT)
        torch.addcmul(mr, z, r, out=ws.u)  # normalised; gain and bias are in w_out and the biases
        ws.acc.addmm_(ws.u, self.w_out_t)

    def _stream_start(self, z: torch.Tensor, start: int) -> None:
        """Shape: z [K, H] or [G, K, H] (lanes in lockstep: the same frames of every lane are early)."""
        n = min(z.shape[-2], self.pad - start)
        k = torch.arange(start, start + n, device=z.device)[:, None]  # [n, 1]
        before = (self.offsets_t > k).to(z.dtype)  # [n, P]: the tap reads a frame before the start
        z[..., :n, :] -= before @ self.tap_bias


BACKENDS = ("auto", "native", "torch")


def _pick_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """``auto``: the compiled kernel (:mod:`sepcli.native`) for float32 on the CPU
    when it can be built, else torch; ``native`` insists on it."""
    if backend not in BACKENDS:
        raise SepError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return "torch"
    from sepcli import native

    fits = device.type == "cpu" and dtype == torch.float32
    if fits and native.available():
        return "native"
    if backend == "native":
        why = native.why_not() if fits else f"it runs float32 on the CPU only (model: {dtype} on {device.type})"
        raise SepError(f"the native streaming kernel is unavailable: {why}")
    return "torch"


class _Native:
    """The streamer's network and state in the layout of ``SepNet`` and
    ``SepBlock`` (sepcli/csrc/stream_blocks.c): one native call per step runs
    what :meth:`Streamer._step` does in torch. The biases and the depthwise
    taps are the streamer's folded ones; the matrices are the model's own,
    with the gains of norm0 and of every norm2 applied to the normalised rows
    instead, so that a model whose weights are float16 values (every shipped
    one) keeps them exact in float16 panels (:attr:`half`, for real-time
    chunks of a few frames): half the bytes per step, same products. The caches and norm sums live here; the
    masked-frame tail is the streamer's own ``_masked_tail``, which the kernel
    updates in place (the flush decodes it in torch)."""

    def __init__(self, st: Streamer, lanes: int, room: int) -> None:
        from sepcli import native

        self.lib = native.load()
        width = self.lib.sep_panel_width()
        self.lanes = lanes
        f32 = torch.float32

        def vec(x: float | torch.Tensor) -> torch.Tensor:
            return torch.tensor([x], dtype=f32) if isinstance(x, float) else x.to(f32).contiguous()

        def matrix(conv: torch.nn.Conv1d) -> torch.Tensor:
            return conv.weight.detach()[:, :, 0].t().to(f32)  # [in, out]

        sep = st.model.separator
        mats = dict(
            w_enc=st.w_enc_t,  # [L, N]
            w_acc=F.pad(matrix(sep.bottleneck), (0, st._dims["Sc"])),  # [N, B+Sc]: no input to the skip sum
            w_mask=st.w_mask_t,  # [Sc, S*N]
        )
        block_mats = [dict(w_in=matrix(m.conv_in), w_out=torch.cat((matrix(m.res_out), matrix(m.skip_out)), 1))
                      for m in sep.blocks]  # [B, H] and [H, B+Sc]
        everything = [*mats.values(), *st.w_dec_hops, *(w for bm in block_mats for w in bm.values())]
        # Float16 panels pay when a step reads each panel once (a chunk's rows fit
        # one register tile: the products wait for memory); with more rows the
        # kernel converts each panel once per tile, and float32 is faster.
        rows = lanes * -(-(st.chunk_size or st.hop) // st.hop)
        self.half = (bool(self.lib.sep_has_half()) and native.HALF_PANELS and rows <= self.lib.sep_tile_rows()
                     and native.exactly_half(*everything))
        panel_dtype = torch.float16 if self.half else f32

        def pack(w: torch.Tensor) -> torch.Tensor:
            return native.pack_panels(w, width, panel_dtype)

        self.structs = (native.SepBlock * len(st.blocks))()
        self._keep: list[dict[str, torch.Tensor]] = []  # what each struct points into
        for sb, b, m, bm in zip(self.structs, st.blocks, sep.blocks, block_mats, strict=True):
            B, H = bm["w_in"].shape
            arrays = dict(
                w_in=pack(bm["w_in"]), b_in=b.b_in.contiguous(),
                slope1=vec(b.slope1), slope2=vec(b.slope2),
                taps=torch.stack(b.taps).contiguous(),  # [P, H]: norm1's gain folded in
                offsets=torch.tensor(b.cache.offsets, dtype=torch.int32),
                b_d=b.b_d.contiguous(), tap_bias=b.tap_bias.contiguous(),
                w_out=pack(bm["w_out"]), gain2=vec(m.norm2.weight.detach()),
                cache=torch.zeros(lanes, b.pad + max(room, b.pad, 1), H),  # [G, cap, H]
                sums=torch.zeros(2, lanes, 2, dtype=torch.float64),  # [norm, G, (sum, sum of squares)]
            )
            sb.B, sb.H, sb.P, sb.n_out = B, H, len(b.taps), bm["w_out"].shape[1]
            sb.n_slope1, sb.n_slope2 = arrays["slope1"].numel(), arrays["slope2"].numel()
            sb.pad, sb.cap = b.pad, arrays["cache"].shape[1]
            sb.eps1, sb.eps2 = b.norm1.eps, b.norm2.eps
            for name, t in arrays.items():
                setattr(sb, name, t.data_ptr())
            self._keep.append(arrays)
        d = st._dims
        dec = torch.stack([pack(w) for w in st.w_dec_hops])  # [q, panels, N, width]
        self.arrays = dict(
            **{name: pack(w) for name, w in mats.items()}, w_dec=dec, gain0=vec(sep.norm.weight.detach()),
            b_acc=st.b_acc.contiguous(), slope_out=vec(st.slope_out), b_mask=st.b_mask.contiguous(),
            sums0=torch.zeros(lanes, 2, dtype=torch.float64),
        )
        net = self.net = native.SepNet()
        net.N, net.L, net.hop, net.q, net.S = d["N"], st.L, st.hop, st._q, d["S"]
        net.B, net.Sc, net.n_out, net.H = d["B"], d["Sc"], d["B"] + d["Sc"], d["H"]
        net.n_blocks = len(st.blocks)
        net.n_slope_out = self.arrays["slope_out"].numel()
        net.half = int(self.half)
        net.eps0 = st.norm0.eps
        for name, t in self.arrays.items():
            setattr(net, name, t.data_ptr())
        net.w_dec_stride = dec[0].numel()
        net.blocks = self.structs
        self._room = min(sb.cap - sb.pad for sb in self.structs) if len(self.structs) else MAX_STEP_FRAMES
        self._scratch: dict[int, torch.Tensor] = {}
        self.reset(st._masked_tail)

    def reset(self, tail: torch.Tensor) -> None:
        for sb, arrays in zip(self.structs, self._keep, strict=True):
            arrays["cache"].zero_()  # the causal zero padding
            arrays["sums"].zero_()
            sb.pos = sb.pad
        self.arrays["sums0"].zero_()
        self.tail = tail
        self.net.tail = tail.data_ptr()

    def _make_room(self, frames: int) -> None:
        """Grow every cache that cannot take ``frames`` more frames, keeping its last pad frames."""
        if frames <= self._room:
            return
        self._room = frames
        for sb, arrays in zip(self.structs, self._keep, strict=True):
            if sb.cap - sb.pad >= frames:
                continue
            old = arrays["cache"]
            cache = old.new_zeros(self.lanes, sb.pad + frames, sb.H)
            cache[:, : sb.pad] = old[:, sb.pos - sb.pad : sb.pos]
            arrays["cache"] = cache
            sb.cache, sb.cap, sb.pos = cache.data_ptr(), cache.shape[1], sb.pad

    def __call__(self, xs: list[torch.Tensor], frames: int, start: int, out: torch.Tensor) -> None:
        """Shape: xs [(K-1)*hop + L] per lane (contiguous float32) -> out [G, S, K*hop]."""
        self._make_room(frames)
        scratch = self._scratch.get(frames)
        if scratch is None:
            if len(self._scratch) >= 4:
                self._scratch.clear()
            n = self.lib.sep_scratch_floats(ctypes.byref(self.net), frames, self.lanes)
            scratch = self._scratch[frames] = torch.empty(n)
        xs = [x if x.is_contiguous() else x.contiguous() for x in xs]  # the kernel reads plain arrays
        lane_in = (ctypes.c_void_p * len(xs))(*[x.data_ptr() for x in xs])
        self.lib.sep_network(ctypes.byref(self.net), lane_in, frames, self.lanes, start, out.data_ptr(),
                             scratch.data_ptr())


class Streamer:
    """Chunk-by-chunk separation with a causal Conv-TasNet, equal to its offline forward.

    Args:
        model: a causal :class:`~sepcli.models.conv_tasnet.ConvTasNet` (cLN);
            anything else raises SepError. Runs on the model's device and dtype.
        chunk_size: the number of samples you expect to pass to each
            :meth:`process` call. It only sizes the internal buffers so that
            the steady state allocates nothing new; any size >= 1 still works.
        backend: how each step runs: ``"native"`` (the compiled kernel of
            :mod:`sepcli.native`; float32 on the CPU; SepError if it cannot
            be built), ``"torch"``, or ``"auto"`` (native when it can be
            had, else torch). Same output either way; :attr:`backend` says
            which one runs.

    :meth:`process` takes ``[n]`` or ``[1, n]`` (torch tensor or numpy array)
    and returns ``[S, m]`` samples that are final (numpy in, numpy out; a
    tensor comes back on the input's device). :meth:`flush` ends the stream
    and returns the rest, so that exactly T samples come out for T in;
    :meth:`reset` starts a new stream. Samples are at the model's rate
    (:attr:`sample_rate`). Not thread-safe: one stream per Streamer.

    Internally a Streamer can run several *lanes* in lockstep: copies of the
    stream delayed by ``delay`` samples (zeros in front) and multiplied by
    ``sign``, whose frames share every matrix product (``lanes``, a list of
    ``(delay, sign)``; :class:`AveragedStreamer` uses them through
    :meth:`_process_lanes` and :meth:`_flush_lanes`). The public
    :meth:`process` and :meth:`flush` are for one lane.
    """

    def __init__(
        self, model: torch.nn.Module, chunk_size: int | None = None,
        lanes: Sequence[tuple[int, int]] = ((0, 1),), backend: str = "auto",
    ) -> None:
        _check_model(model)
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1
        ):
            raise SepError(f"chunk_size must be a positive number of samples, got {chunk_size!r}")
        self.model = model
        c = model.config
        self.n_src: int = c.n_src
        self.sample_rate: int = c.sample_rate
        self.L: int = c.L
        self.hop: int = c.stride
        self.left: int = c.L - c.stride  # zeros in front, as in ConvTasNet.frame_padding
        self.chunk_size = int(chunk_size) if chunk_size is not None else None
        self.lanes = [(int(d), int(g)) for d, g in lanes]
        if not self.lanes or any(d < 0 or g not in (-1, 1) for d, g in self.lanes):
            raise SepError(f"lanes must be (delay >= 0, sign +-1) pairs, got {lanes!r}")
        G = len(self.lanes)
        p = model.encoder.weight
        self.device, self.dtype = p.device, p.dtype
        self._q = -(-c.L // c.stride)  # frames that overlap one output hop
        self._dims = dict(S=c.n_src, N=c.N, B=c.B, H=c.H, Sc=c.Sc, q=self._q, hop=c.stride)
        frames = 1 + -(-(self.chunk_size or self.hop) // self.hop)  # most frames one chunk completes
        room = min(MAX_STEP_FRAMES, max(4 * frames, 32))
        self._fold(model, room=room, lanes=G)
        self.backend = _pick_backend(backend, self.device, self.dtype)
        self._native = None
        self._native_room = room
        self._work: dict[int, _Work] = {}
        self.reset()

    # ------------------------------------------------------------------ setup

    @torch.inference_mode()
    def _fold(self, model: torch.nn.Module, room: int, lanes: int) -> None:
        """Copy the weights into matrix form, folding every norm's gain and bias
        into the next layer (in float64, then cast to the model's dtype)."""
        sep = model.separator
        f64, dtype = torch.float64, self.dtype
        self.w_enc_t = model.encoder.weight.detach()[:, 0, :].t().contiguous()  # [L, N]
        self.norm0 = _RunningNorm(sep.N, sep.norm.eps, self.device, lanes)
        g0, b0 = sep.norm.weight.detach().to(f64), sep.norm.bias.detach().to(f64)
        w_b = sep.bottleneck.weight.detach()[:, :, 0].to(f64)  # [B, N]
        b_b = sep.bottleneck.bias.detach().to(f64)
        self.blocks: list[_Block] = []
        res_bias = torch.zeros(w_b.shape[0], dtype=f64, device=self.device)  # [B]
        skip_bias = torch.zeros(sep.mask_conv.weight.shape[1], dtype=f64, device=self.device)  # [Sc]
        for block in sep.blocks:
            fb = _Block(block, res_bias, room, lanes)
            res_bias = res_bias + fb.const_res
            skip_bias = skip_bias + fb.const_skip
            self.blocks.append(fb)
        self.B = w_b.shape[0]
        # The bottleneck fills the whole accumulator [residual | skip sum]; the
        # skip part starts at the sum of all blocks' constant skip outputs.
        w_acc = torch.cat((w_b * g0, w_b.new_zeros(skip_bias.shape[0], w_b.shape[1])))  # [B+Sc, N]
        self.w_acc_t = w_acc.t().contiguous().to(dtype)  # [N, B+Sc]
        self.b_acc = torch.cat((b_b + w_b @ b0, skip_bias)).to(dtype)  # [B+Sc]
        self.slope_out = prelu_slope(sep.prelu)
        self.w_mask_t = sep.mask_conv.weight.detach()[:, :, 0].t().contiguous()  # [Sc, S*N]
        self.b_mask = sep.mask_conv.bias.detach().clone()  # [S*N]
        w_dec = model.decoder.weight.detach()[:, 0, :]  # [N, L]
        w_dec = F.pad(w_dec, (0, self._q * self.hop - self.L))  # [N, q*hop]
        # overlap-add as matrix products: output hop k = sum_j (masked frame k-j) @ w_dec_hops[j]
        self.w_dec_hops = [w_dec[:, j * self.hop : (j + 1) * self.hop].contiguous() for j in range(self._q)]

    def _workspace(self, frames: int) -> _Work:
        ws = self._work.get(frames)
        if ws is None:
            if len(self._work) >= 4:  # chunk sizes changed; keep memory bounded
                self._work.clear()
            ws = self._work[frames] = _Work(frames, self._dims, self.device, self.dtype, len(self.lanes))
        return ws

    @torch.inference_mode()
    def reset(self) -> None:
        """Forget the stream: the next :meth:`process` starts a new one."""
        # input not yet framed, per lane: the left padding, then the lane's delay
        self._in = [torch.zeros(self.left + d, device=self.device, dtype=self.dtype) for d, _ in self.lanes]
        # the last q-1 masked frames: their later hops overlap the next output
        self._masked_tail = torch.zeros(len(self.lanes), self._q - 1, self.n_src, self._dims["N"], device=self.device,
                                        dtype=self.dtype)  # [G, q-1, S, N]
        self._frames = 0  # frames computed so far (in every lane)
        self._to_drop = [self.left + d for d, _ in self.lanes]  # output of the padding and the delays
        self._lane_out = [0] * len(self.lanes)  # output samples given per lane
        self.samples_in = 0
        self.samples_out = 0  # of lane 0
        self._finished = False
        self._numpy_io: bool | None = None
        self._io_device: torch.device | None = None
        self.norm0.reset()
        for b in self.blocks:
            b.reset()
        if self.backend == "native":
            if self._native is None:
                self._native = _Native(self, len(self.lanes), self._native_room)
            else:
                self._native.reset(self._masked_tail)

    # ------------------------------------------------------------------ properties

    @property
    def receptive_field(self) -> int:
        """Input samples one output sample depends on (see ConvTasNet.receptive_field)."""
        return self.model.receptive_field

    def algorithmic_latency(self, chunk: int | None = None) -> int:
        """Window plus chunk, in samples: ``L + chunk`` (the encoder window L and
        the wait for a chunk to fill); ``chunk`` defaults to ``chunk_size`` or one hop."""
        return self.L + (chunk if chunk is not None else (self.chunk_size or self.hop))

    # ------------------------------------------------------------------ streaming

    def _as_tensor(self, chunk: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(chunk, np.ndarray):
            numpy_io, io_device = True, torch.device("cpu")
            if not np.issubdtype(chunk.dtype, np.floating):
                raise SepError(f"chunk must hold float samples, got {chunk.dtype}")
            x = torch.from_numpy(np.ascontiguousarray(chunk))
        elif isinstance(chunk, torch.Tensor):
            numpy_io, io_device, x = False, chunk.device, chunk.detach()
            if not x.is_floating_point():
                raise SepError(f"chunk must hold float samples, got {x.dtype}")
        else:
            raise SepError(f"chunk must be a torch.Tensor or numpy array, got {type(chunk).__name__}")
        if x.dim() == 2 and x.shape[0] == 1:
            x = x[0]
        if x.dim() != 1:
            raise SepError(f"chunk must have shape [n] or [1, n] (mono), got {list(x.shape)}")
        if self._numpy_io is None:
            self._numpy_io, self._io_device = numpy_io, io_device
        elif self._numpy_io != numpy_io:
            raise SepError("do not mix numpy arrays and torch tensors within one stream (call reset())")
        return x.to(device=self.device, dtype=self.dtype)

    def _output(self, y: torch.Tensor) -> torch.Tensor | np.ndarray:
        if self._numpy_io:
            return y.cpu().numpy()
        if self._io_device is not None and y.device != self._io_device:
            return y.to(self._io_device)
        return y

    def process(self, chunk: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Feed the next ``n >= 0`` samples; return the output samples that are now final.

        Shape: [n] or [1, n] -> [S, m]. Over a stream the outputs add up to the
        input minus a hold-back of less than one hop plus ``L - L//2`` samples,
        which :meth:`flush` returns. SepError on NaN or infinite samples (they
        would poison the running norms for the rest of the stream).
        """
        return self._output(self._process_lanes(chunk)[0])

    def flush(self) -> torch.Tensor | np.ndarray:
        """End the stream: pad the input as the offline model does and return the
        remaining output, so that exactly ``samples_in`` samples came out in total.
        Shape: [S, rest]. Call :meth:`reset` to start another stream."""
        return self._output(self._flush_lanes()[0])

    def _process_lanes(self, chunk: torch.Tensor | np.ndarray) -> list[torch.Tensor]:
        """:meth:`process` for every lane: each lane's new final output, [S, m_g],
        its delay already dropped (so sample i is the input's sample i) but
        not its sign (the caller undoes it)."""
        if self._finished:
            raise SepError("the stream was flushed; call reset() to start a new one")
        x = self._as_tensor(chunk)
        with torch.inference_mode():
            # one float64 sum: NaN or inf anywhere makes it non-finite, and float32
            # samples cannot overflow it
            if x.shape[0] and not math.isfinite(x.sum(dtype=torch.float64).item()):
                raise SepError("chunk contains NaN or infinite samples")
            self.samples_in += x.shape[0]
            if x.shape[0]:
                lanes = [x if sign > 0 else -x for _, sign in self.lanes]
                self._in = [torch.cat((buf, xg)) if buf.shape[0] else xg
                            for buf, xg in zip(self._in, lanes, strict=True)]
            return self._run()

    def _flush_lanes(self) -> list[torch.Tensor]:
        """:meth:`flush` for every lane: each lane's rest, so that every lane gave
        exactly ``samples_in`` samples."""
        if self._finished:
            raise SepError("the stream was already flushed; call reset() to start a new one")
        self._finished = True
        G = len(self.lanes)
        with torch.inference_mode():
            total = self.samples_in
            if total == 0:
                return [torch.zeros(self.n_src, 0, device=self.device, dtype=self.dtype) for _ in range(G)]
            before = list(self._lane_out)
            # Each lane padded as the offline model pads its delayed input, then all to
            # the same number of frames: the extra frames lie wholly in the zero
            # padding, so their encoder output is 0 and they add nothing to the output.
            ends = []
            for g, (d, _) in enumerate(self.lanes):
                _, right = self.model.frame_padding(total + d)
                ends.append(self._in[g].shape[0] + right)
            n_frames = max((n - self.L) // self.hop + 1 for n in ends)
            size = (n_frames - 1) * self.hop + self.L
            self._in = [torch.cat((buf, buf.new_zeros(size - buf.shape[0]))) for buf in self._in]
            ys = self._run()
            tail = torch.zeros(self._q - 1, self.n_src, self._dims["N"], device=self.device, dtype=self.dtype)
            outs = []
            for g in range(G):
                y = torch.cat((ys[g], self._emit(g, self._decode(g, tail))), 1)  # the last frames' overlap
                outs.append(y[:, : total - before[g]])  # exactly T in total
            self.samples_out = total
        return outs

    def _run(self) -> list[torch.Tensor]:
        """Compute every frame that the input buffers of all lanes complete (in
        lockstep: a lane with one more frame keeps it for the next call).
        Returns [S, m_g] per lane."""
        n_frames = min((buf.shape[0] - self.L) // self.hop + 1 if buf.shape[0] >= self.L else 0 for buf in self._in)
        outs: list[list[torch.Tensor]] = [[] for _ in self.lanes]
        done = 0
        while done < n_frames:
            step = min(MAX_STEP_FRAMES, n_frames - done)
            lo, hi = done * self.hop, (done + step - 1) * self.hop + self.L
            for g, y in enumerate(self._step([buf[lo:hi] for buf in self._in], step)):
                outs[g].append(y)
            done += step
        if n_frames:
            self._in = [buf[n_frames * self.hop :] for buf in self._in]
        if all(len(o) == 1 for o in outs):
            return [o[0] for o in outs]
        empty = torch.zeros(self.n_src, 0, device=self.device, dtype=self.dtype)
        return [empty if not o else o[0] if len(o) == 1 else torch.cat(o, 1) for o in outs]

    def _emit(self, g: int, y: torch.Tensor) -> torch.Tensor:
        """Drop what belongs to lane g's left padding and delay. Shape: [S, n] -> [S, m]."""
        if self._to_drop[g]:
            drop = min(self._to_drop[g], y.shape[1])
            self._to_drop[g] -= drop
            y = y[:, drop:]
        self._lane_out[g] += y.shape[1]
        if g == 0:
            self.samples_out += y.shape[1]
        return y

    def _decode(self, g: int, masked: torch.Tensor) -> torch.Tensor:
        """Lane g's output hops of the frames ``masked`` [K, S, N] that follow its
        stored tail (for the flush: zero frames give the tail's own overlap). Returns [S, K*hop]."""
        K, S, N = masked.shape
        q = self._q
        frames = torch.cat((self._masked_tail[g], masked))  # [q-1+K, S, N]
        hops = sum(frames[q - 1 - j : q - 1 - j + K].reshape(K * S, N) @ self.w_dec_hops[j] for j in range(q))
        return hops.view(K, S, self.hop).permute(1, 0, 2).reshape(S, K * self.hop)

    def _step(self, xs: list[torch.Tensor], frames: int) -> list[torch.Tensor]:
        """Frames of each lane's ``x`` (``(K-1)*hop + L`` samples) through the
        network, all lanes in each product. Returns [S, K*hop] per lane."""
        S, G = self._dims["S"], len(self.lanes)
        hop, q = self.hop, self._q
        if self._native is not None:
            y = torch.empty(G, S, frames * hop, dtype=self.dtype)
            self._native(xs, frames, self._frames, y)
            self._frames += frames
            return [self._emit(g, y[g]) for g in range(G)]
        ws = self._workspace(frames)
        w = ws.w
        if G == 1:
            torch.mm(xs[0].unfold(0, self.L, hop), self.w_enc_t, out=w).relu_()  # [K, N]
        else:
            framed = torch.cat([x.unfold(0, self.L, hop) for x in xs])  # [G*K, L], lane-major
            torch.mm(framed, self.w_enc_t, out=w).relu_()  # [R, N]
        r, mr = self.norm0.coefficients(w, ws, ws.w_b, ws.w_bT)
        torch.addcmul(mr, w, r, out=ws.wn)
        torch.addmm(self.b_acc, ws.wn, self.w_acc_t, out=ws.acc)  # [K, B+Sc]
        start = self._frames
        for block in self.blocks:
            block(ws, start)
        self._frames += frames
        skip = prelu_(ws.acc_skip, self.slope_out)  # [R, Sc]
        torch.addmm(self.b_mask, skip, self.w_mask_t, out=ws.mask)  # [R, S*N]
        mask = ws.mask3  # [R, S, N]
        mask.sigmoid_()
        ws.masked[:, : q - 1] = self._masked_tail
        torch.mul(ws.mask4, w.view(G, frames, 1, -1), out=ws.masked_new)  # [G, K, S, N]
        self._masked_tail.copy_(ws.masked[:, frames:])
        y = torch.empty(G, S, frames, hop, device=self.device, dtype=self.dtype)
        for g in range(G):  # the decoder's products are small: one lane at a time
            rows = ws.masked_rows[g]
            hops = torch.mm(rows[0], self.w_dec_hops[0], out=ws.hops[g])  # [K*S, hop]
            for j in range(1, q):
                hops.addmm_(rows[j], self.w_dec_hops[j])
            y[g].copy_(hops.view(frames, S, hop).permute(1, 0, 2))  # [S, K, hop]
        return [self._emit(g, y[g].view(S, frames * hop)) for g in range(G)]


class AveragedStreamer:
    """Streaming of a causal Conv-TasNet's averaged passes, equal to their offline average.

    The offline counterpart is what ``sep separate`` runs for a causal model
    with ``passes > 1``: :func:`sepcli.engine.averaged_fn` with
    ``causal=True`` over :func:`sepcli.engine.pass_transforms` (see
    :func:`offline`). Pass k is a lane of one :class:`Streamer`: the input
    delayed by the pass's delay (zeros in front, a fraction of a hop) and,
    with ``signs``, sign-flipped. The lanes run in lockstep, so every matrix
    product reads its weights once for all of them (with 8-frame steps two
    passes cost well under twice one). Each lane's output is shifted back,
    put in pass 0's speaker order by :class:`sepcli.engine.CausalAlign`, and
    averaged.

    The output waits for the most delayed pass: the algorithmic latency grows
    by that delay (less than one hop). Same interface as :class:`Streamer`.
    """

    def __init__(self, model: torch.nn.Module, chunk_size: int | None = None, passes: int = 2,
                 signs: bool = False, backend: str = "auto") -> None:
        _check_model(model)
        if not isinstance(signs, bool):
            raise SepError(f"signs must be True or False, got {signs!r}")
        self.transforms = engine.pass_transforms(passes, model.frame_hop, signs=signs)
        self.passes = len(self.transforms)
        self.signs = signs
        self.streamer = Streamer(model, chunk_size=chunk_size, lanes=self.transforms, backend=backend)
        self.backend = self.streamer.backend
        self.model = model
        self.n_src: int = self.streamer.n_src
        self.sample_rate: int = self.streamer.sample_rate
        self.L: int = self.streamer.L
        self.hop: int = self.streamer.hop
        self.chunk_size = self.streamer.chunk_size
        self.max_delay: int = max(d for d, _ in self.transforms)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next :meth:`process` starts a new one."""
        self.streamer.reset()
        self._held = [np.zeros((self.n_src, 0), dtype=np.float32) for _ in self.transforms]  # [S, m] per pass
        self._aligns = [engine.CausalAlign(self.n_src) for _ in self.transforms[1:]]
        self._io_device: torch.device | None = None  # None: numpy in, numpy out
        self.samples_out = 0

    @property
    def samples_in(self) -> int:
        return self.streamer.samples_in

    @property
    def receptive_field(self) -> int:
        """Input samples one output sample depends on (the most delayed pass's)."""
        return self.model.receptive_field + self.max_delay

    def algorithmic_latency(self, chunk: int | None = None) -> int:
        """``L + chunk + max delay`` in samples: the most delayed pass's output comes last."""
        return self.streamer.algorithmic_latency(chunk) + self.max_delay

    def process(self, chunk: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Feed the next ``n >= 0`` samples; return the output samples that are now final.
        Shape: [n] or [1, n] -> [S, m] (as :meth:`Streamer.process`)."""
        outs = self.streamer._process_lanes(chunk)
        self._io_device = self.streamer._io_device if not self.streamer._numpy_io else None
        return self._output(self._gather(outs))

    def flush(self) -> torch.Tensor | np.ndarray:
        """End the stream and return the rest: ``samples_in`` samples came out in total. Shape: [S, rest]."""
        return self._output(self._gather(self.streamer._flush_lanes()))

    def _gather(self, outs: list[torch.Tensor]) -> np.ndarray:
        """Add each pass's new output to its queue; average what all passes have. Returns [S, m]."""
        for k, (y, (_, sign)) in enumerate(zip(outs, self.transforms, strict=True)):
            y = y.float().cpu().numpy()
            y = -y if sign < 0 else y
            self._held[k] = np.concatenate((self._held[k], y), axis=1) if self._held[k].shape[1] else y
        m = min(h.shape[1] for h in self._held)
        first = self._held[0][:, :m]
        total = first.astype(np.float32, copy=True)  # [S, m]
        for align, held in zip(self._aligns, self._held[1:], strict=True):
            total += align(first, held[:, :m])
        self._held = [h[:, m:] for h in self._held]
        self.samples_out += m
        return total / self.passes

    def _output(self, y: np.ndarray) -> torch.Tensor | np.ndarray:
        return y if self._io_device is None else torch.from_numpy(y).to(self._io_device)


def make_streamer(
    model: torch.nn.Module, chunk_size: int | None = None, passes: int | None = None, signs: bool | None = None,
    backend: str = "auto", quality: str = DEFAULT_QUALITY,
) -> Streamer | AveragedStreamer:
    """The streamer of ``passes`` averaged passes (None: the model's ``quality``
    preset's, as ``sep separate``; ``fast``: one): a plain :class:`Streamer` for one.
    ``backend``: see :class:`Streamer`."""
    passes, signs = engine.model_passes(model, passes, signs, quality=quality)
    if passes == 1:
        return Streamer(model, chunk_size=chunk_size, backend=backend)
    return AveragedStreamer(model, chunk_size=chunk_size, passes=passes, signs=signs, backend=backend)


def offline(
    model: torch.nn.Module, mix: torch.Tensor | np.ndarray, passes: int = 1, signs: bool = False
) -> np.ndarray:
    """The offline output a stream equals: the causal forward over the whole
    signal, or the causal average of ``passes`` passes. Shape: [T] -> [S, T] float32."""
    x = mix.detach().cpu().numpy() if isinstance(mix, torch.Tensor) else np.asarray(mix)
    fn = engine.averaged_fn(engine.model_fn(model), engine.pass_transforms(passes, model.frame_hop, signs=signs),
                            causal=True)
    return fn(x.reshape(1, -1).astype(np.float32))[0]


# ----------------------------------------------------------------------------- conveniences


def chunk_sizes(n_samples: int, chunk: int | Iterable[int]) -> Iterator[int]:
    """Split ``n_samples`` into chunks of ``chunk`` samples (the last one
    shorter), or cycle through the sizes of an iterable until all are used."""
    if isinstance(chunk, int):
        sizes: Iterable[int] = iter(lambda: chunk, None)
    else:
        sizes = list(chunk)
        if not sizes:
            raise SepError("chunk sizes are empty")
        import itertools

        sizes = itertools.cycle(sizes)
    done = 0
    for size in sizes:
        if size < 1:
            raise SepError(f"chunk sizes must be >= 1, got {size}")
        if done >= n_samples:
            return
        size = min(size, n_samples - done)
        yield size
        done += size


def stream_array(
    model: torch.nn.Module, mix: torch.Tensor | np.ndarray, chunk: int | Iterable[int], passes: int = 1,
    signs: bool = False,
) -> torch.Tensor | np.ndarray:
    """Run a whole signal through a :class:`Streamer` (an :class:`AveragedStreamer`
    for ``passes > 1``) chunk by chunk (for tests and benchmarks; equals
    :func:`offline`, for one pass ``model(mix[None])[0]``). Shape: [T] -> [S, T]."""
    n = int(mix.shape[-1])
    first = int(chunk) if isinstance(chunk, int) else None
    streamer = make_streamer(model, chunk_size=first, passes=passes, signs=signs)
    outs = []
    pos = 0
    for size in chunk_sizes(n, chunk):
        outs.append(streamer.process(mix[..., pos : pos + size]))
        pos += size
    outs.append(streamer.flush())
    if isinstance(outs[0], np.ndarray):
        return np.concatenate(outs, axis=1)
    return torch.cat(outs, 1)


# ----------------------------------------------------------------------------- files and pipes

DEFAULT_CHUNK_MS = 8.0
PCM_FORMATS = {"s16le": ("<i2", 32768.0), "f32le": ("<f4", 1.0)}
"""Raw PCM sample formats read from a pipe: numpy dtype and full-scale value."""
_YIELD_SAMPLES = 4096  # output samples gathered before they go to the writers


@dataclass
class ChunkTimes:
    """Compute time of every ``process`` call of a stream (seconds)."""

    chunk_samples: int
    sample_rate: int
    seconds: list[float] = field(default_factory=list)

    @property
    def chunk_ms(self) -> float:
        return 1000.0 * self.chunk_samples / self.sample_rate

    def summary(self) -> dict:
        """``chunks``, ``compute_rtf`` (compute / audio time), ``p50_ms``, ``p99_ms``, ``max_ms``."""
        if not self.seconds:
            return {"chunks": 0, "compute_rtf": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        ms = np.asarray(self.seconds) * 1000.0
        return {
            "chunks": len(ms),
            "compute_rtf": float(ms.sum() / (len(ms) * self.chunk_ms)),
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()),
        }


@dataclass
class StreamResult:
    """Outcome of :func:`stream_file` or :func:`stream_pcm`."""

    input: str
    status: str  # "ok" or "skipped"
    outputs: list[str]
    model: str
    n_src: int
    sample_rate: int  # of the outputs (the input's)
    frames: int  # samples per output
    duration: float
    seconds: float  # wall clock, reading and writing included
    chunk_ms: float
    chunks: int
    compute_rtf: float  # streaming compute only
    p50_ms: float
    p99_ms: float
    max_ms: float
    gain_db: float = 0.0  # applied to all tracks to avoid clipping (0 or negative)
    message: str = ""
    passes: int = 1  # averaged passes streamed (AveragedStreamer above 1)
    backend: str = "torch"  # the streaming step's implementation: "native" or "torch"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _chunk_samples(chunk_ms: float, sample_rate: int) -> int:
    try:
        chunk_ms = float(chunk_ms)
    except (TypeError, ValueError):
        raise SepError(f"chunk length must be a number of milliseconds, got {chunk_ms!r}") from None
    if not (chunk_ms > 0 and math.isfinite(chunk_ms)):
        raise SepError(f"chunk length must be positive, got {chunk_ms} ms")
    return max(1, int(round(chunk_ms * sample_rate / 1000.0)))


def _load_causal(model: str | os.PathLike | torch.nn.Module | None, device: str) -> tuple[torch.nn.Module, str]:
    """A causal model by name, path or module; default: the shipped ``convtasnet-causal``."""
    from sepcli import registry

    dev = engine.resolve_device(device)
    if isinstance(model, torch.nn.Module):
        net, name = model.to(dev).eval(), type(model).__name__
    else:
        if model is None:
            if "convtasnet-causal" not in registry.shipped_models():
                raise SepError(
                    "no causal model is installed (convtasnet-causal is not shipped yet); pass "
                    "--model PATH.safetensors of a causal Conv-TasNet (see `sep models`)"
                )
            model = "convtasnet-causal"
        net, name = registry.load_model(model, dev).eval(), str(model)
    _check_model(net)
    return net, name


class _Runner:
    """Feeds a :class:`Streamer` (or :class:`AveragedStreamer`) fixed-size chunks cut from blocks of any size,
    timing each call; yields the output gathered into blocks of a few thousand samples."""

    def __init__(self, streamer: Streamer | AveragedStreamer, chunk: int) -> None:
        self.streamer = streamer
        self.chunk = chunk
        self.times = ChunkTimes(chunk, streamer.sample_rate)

    def _process(self, x: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        y = self.streamer.process(x)
        self.times.seconds.append(time.perf_counter() - t0)
        return y

    def run(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Shape: blocks [n] at the model's rate -> yields [S, m]; all of it adds up to the input."""
        self.streamer.reset()
        chunk = self.chunk
        pending = np.zeros(0, dtype=np.float32)
        out: list[np.ndarray] = []
        ready = 0
        for block in blocks:
            buf = np.concatenate((pending, block)) if pending.size else np.asarray(block, dtype=np.float32)
            n_full = buf.shape[0] // chunk
            for i in range(n_full):
                y = self._process(buf[i * chunk : (i + 1) * chunk])
                if y.shape[1]:
                    out.append(y)
                    ready += y.shape[1]
                if ready >= _YIELD_SAMPLES:
                    yield np.concatenate(out, axis=1)
                    out, ready = [], 0
            pending = buf[n_full * chunk :]
        if pending.size:
            out.append(self._process(pending))
        out.append(self.streamer.flush())
        rest = np.concatenate(out, axis=1)
        if rest.shape[1]:
            yield rest


def stream_file(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    model: str | os.PathLike | torch.nn.Module | None = None,
    *,
    chunk_ms: float = DEFAULT_CHUNK_MS,
    device: str = "cpu",
    force: bool = False,
    filename: str = "{stem}/s{i}.wav",
    subtype: str = "PCM_16",
    progress: Callable[[int, int], None] | None = None,
    passes: int | None = None,
    quality: str = DEFAULT_QUALITY,
    backend: str = "auto",
) -> StreamResult:
    """Separate a file by streaming it through a causal model in chunks of
    ``chunk_ms``, as a live input would arrive; write the same files as
    ``sep separate`` (``OUT/<stem>/s1.wav`` ..., the input's rate and length,
    atomic, existing outputs skipped unless ``force``, scaled down only if
    they would clip).

    The tracks are the causal model's own output, identical to its offline
    forward over the whole file (no per-chunk level fitting, which would need
    the whole chunk before any output). ``passes``: forward passes averaged
    (:class:`AveragedStreamer`; None: the ``quality`` preset's, as ``sep separate``);
    equal to their offline average (:func:`offline`). ``backend``: the
    streaming step's implementation (see :class:`Streamer`).
    """
    from sepcli import api

    net, name = _load_causal(model, device)
    separator = api.Separator(net, device=device)
    chunk = _chunk_samples(chunk_ms, separator.sample_rate)
    streamer = make_streamer(separator.model, chunk_size=chunk, passes=passes, backend=backend, quality=quality)
    runner = _Runner(streamer, chunk)

    def separate_blocks(blocks: Iterable[np.ndarray], stats: Any = None) -> Iterator[np.ndarray]:
        for y in runner.run(blocks):
            if stats is not None:
                stats.n_src = y.shape[0]
            yield y
        if stats is not None:
            stats.chunks = len(runner.times.seconds)

    res = separator.separate_file(path, out_dir, force=force, filename=filename, subtype=subtype, progress=progress,
                                  blocks_fn=separate_blocks)
    timing = runner.times.summary()
    return StreamResult(
        input=res.input, status=res.status, outputs=list(res.outputs), model=name, n_src=res.n_src,
        sample_rate=res.sample_rate, frames=res.frames, duration=res.duration, seconds=res.seconds,
        chunk_ms=runner.times.chunk_ms, gain_db=res.gain_db, message=res.message,
        passes=getattr(streamer, "passes", 1), backend=streamer.backend, **timing,
    )


def _read_pcm(stream: BinaryIO, n_bytes: int) -> bytes:
    """Up to ``n_bytes`` from a pipe (short only at the end of the stream)."""
    parts, got = [], 0
    while got < n_bytes:
        data = stream.read(n_bytes - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def stream_pcm(
    stream: BinaryIO,
    sample_rate: int,
    out_dir: str | os.PathLike,
    model: str | os.PathLike | torch.nn.Module | None = None,
    *,
    name: str = "stdin",
    sample_format: str = "s16le",
    chunk_ms: float = DEFAULT_CHUNK_MS,
    device: str = "cpu",
    force: bool = False,
    filename: str = "{stem}/s{i}.wav",
    subtype: str = "FLOAT",
    passes: int | None = None,
    quality: str = DEFAULT_QUALITY,
    backend: str = "auto",
) -> StreamResult:
    """Separate raw mono PCM read from a pipe (e.g. ``sys.stdin.buffer``) until
    it ends, one chunk at a time, into ``OUT/<name>/s1.wav`` ... at
    ``sample_rate`` with exactly as many samples as were read.

    The outputs are written as the stream goes (they appear, atomically, when
    it ends). ``subtype="FLOAT"`` (default) cannot clip; with PCM the samples
    beyond full scale are clipped (with a warning), since the peak is unknown
    until the end. ``passes`` and ``backend`` as in :func:`stream_file`.
    """
    import soxr

    from sepcli import api, audio

    if sample_format not in PCM_FORMATS:
        raise SepError(f"unknown PCM format {sample_format!r}; valid: {', '.join(PCM_FORMATS)}")
    sample_rate = audio._check_rate(sample_rate)
    net, model_name = _load_causal(model, device)
    api.check_template(filename)
    sr_model = net.config.sample_rate
    n_src = net.config.n_src
    outs = [Path(out_dir) / api.render_filename(filename, stem=name, i=i, n=n_src) for i in range(1, n_src + 1)]
    existing = [str(p) for p in outs if p.exists()]
    if existing and not force:
        raise SepError(f"{', '.join(existing)} exist(s); use --force to overwrite")
    dtype, scale = PCM_FORMATS[sample_format]
    width = np.dtype(dtype).itemsize
    chunk = _chunk_samples(chunk_ms, sample_rate)  # read size, at the input's rate
    model_chunk = _chunk_samples(chunk_ms, sr_model)
    streamer = make_streamer(net, chunk_size=model_chunk, passes=passes, backend=backend, quality=quality)
    times = ChunkTimes(model_chunk, sr_model)
    resample = sample_rate != sr_model

    def resampler(a: int, b: int) -> Any:
        return soxr.ResampleStream(a, b, 1, dtype="float32", quality=audio.RESAMPLE_QUALITY)

    down = resampler(sample_rate, sr_model) if resample else None
    ups = [resampler(sr_model, sample_rate) for _ in range(n_src)] if resample else None
    t_start = time.perf_counter()
    n_in = 0
    held = np.zeros((n_src, 0), dtype=np.float32)  # output at the input's rate, not yet written
    written = 0
    # Resampling twice can give a few samples more or fewer than were read; the
    # last HOLD samples are held back so that the files end at exactly n_in.
    hold = 4096
    with contextlib.ExitStack() as stack:
        writers = [
            stack.enter_context(audio.AudioWriter(p, sample_rate, 1, subtype=subtype, force=force)) for p in outs
        ]

        def emit(y: np.ndarray, last: bool = False) -> None:
            nonlocal held, written
            if ups is not None:
                y = np.stack([up.resample_chunk(np.ascontiguousarray(t), last=last) for up, t in zip(ups, y, strict=True)])
            held = np.concatenate((held, y), axis=1) if held.shape[1] else y
            if last:
                held = held[:, : max(0, n_in - written)]
                if held.shape[1] < n_in - written:
                    held = np.pad(held, ((0, 0), (0, n_in - written - held.shape[1])))
                cut = held.shape[1]
            else:
                cut = max(0, min(held.shape[1] - hold, n_in - written))
            if cut:
                for w, t in zip(writers, held[:, :cut], strict=True):
                    w.write(t)
                written += cut
                held = held[:, cut:]

        while True:
            data = _read_pcm(stream, chunk * width)
            usable = len(data) - len(data) % width  # a torn last sample is dropped
            if usable == 0:
                break
            x = np.frombuffer(data[:usable], dtype=dtype).astype(np.float32) / np.float32(scale)
            n_in += x.shape[0]
            if down is not None:
                x = down.resample_chunk(x)
            t0 = time.perf_counter()
            y = streamer.process(x)
            times.seconds.append(time.perf_counter() - t0)
            if y.shape[1]:
                emit(y)
        if n_in == 0:
            raise SepError(f"no audio on {name} (0 samples read)")
        rest = [streamer.process(down.resample_chunk(np.zeros(0, np.float32), last=True))] if down else []
        rest.append(streamer.flush())
        emit(np.concatenate(rest, axis=1), last=True)
    timing = times.summary()
    return StreamResult(
        input=name, status="ok", outputs=[str(p) for p in outs], model=model_name, n_src=n_src,
        sample_rate=sample_rate, frames=n_in, duration=n_in / sample_rate,
        seconds=time.perf_counter() - t_start, chunk_ms=times.chunk_ms,
        passes=getattr(streamer, "passes", 1), backend=streamer.backend, **timing,
    )
