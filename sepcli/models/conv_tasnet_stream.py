"""The incremental step of a causal Conv-TasNet: what :class:`sepcli.streaming.Streamer`
runs for this family (``ConvTasNet.streaming_layout()`` returns a :class:`ConvTasNetStreaming`).

State kept between steps (module names as in :mod:`sepcli.models.conv_tasnet`):

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

The encoder's input (the last ``L - L//2`` samples, consumed one hop at a time)
is the generic streamer's.

Speed: frames of a step go through the network together, time-major
(``[frames, channels]``), so every 1x1 conv is one matrix product per step,
with the weights stored ``[in, out]`` (for a few rows, BLAS reads that layout
faster than a transposed view when the weights are not in a near cache).
The norms' gains and biases are folded into the next layer's weights
(:func:`sepcli.models.conv_tasnet_folded.fold_norms`), the residual and skip
paths share one accumulator updated with one in-place matrix product per
block, and for the small frame counts of real-time chunks the cLN statistics
are updated with Python floats instead of a dozen tiny tensor operations.
With ``backend="native"`` the whole step runs in compiled C instead
(:mod:`sepcli.models.conv_tasnet_native`, :mod:`sepcli.native`); this torch
step is the reference it equals.

Shape legend: G lanes, K frames per lane, R = G*K rows, S sources, and the paper's N, L, B, H, Sc, P.
"""
from __future__ import annotations

import math
from array import array

import torch
import torch.nn.functional as F

from sepcli.errors import SepError
from sepcli.models.conv_tasnet import ConvTasNet, CumulativeLayerNorm, cln_counts, decayed_cumsum
from sepcli.models.conv_tasnet_folded import FoldedBlock, fold_norms, prelu_

SCALAR_STATS_MAX_FRAMES = 32
"""Up to this many frames per step (on the CPU), cLN statistics are updated
with Python floats, which is cheaper than a dozen tiny tensor operations;
above it, or on an accelerator, they are vectorised in torch."""

GRAM_MAX_FRAMES = 16
"""Up to this many frames per step, a cLN's per-frame sums and sums of squares
come from one small matrix product (see :class:`_Work`) instead of two reductions."""

_MAX_CACHED_VIEWS = 512


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

    def __init__(self, channels: int, eps: float, device: torch.device, lanes: int = 1, decay: float = 1.0) -> None:
        self.channels = channels
        self.eps = eps
        self.lanes = lanes
        self.decay = decay  # per frame, on the running sums (the model's cln_decay)
        # float64 running sums like the offline cLN (MPS has no float64)
        self.acc = torch.float64 if device.type in ("cpu", "cuda") else torch.float32
        self.device = device
        self.host = device.type == "cpu"  # running sums as Python floats; else a device tensor
        self.reset()

    def reset(self) -> None:
        self.frames = 0  # frames seen (each lane)
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
        eps, sqrt, decay = self.eps, math.sqrt, self.decay
        counts = self._counts(K)
        out = ws.coef  # [r_0 .. r_R-1, mr_0 .. mr_R-1]
        for g in range(ws.lanes):
            total, total_sq = self.sum[g], self.sumsq[g]
            for i, (s1, s2), count in zip(range(g * K, g * K + K), rows[g * K : g * K + K], counts, strict=True):
                total = total * decay + s1
                total_sq = total_sq * decay + s2
                mean = total / count
                var = total_sq / count - mean * mean
                r = 1.0 / sqrt(var + eps if var > 0.0 else eps)
                out[i] = r
                out[R + i] = -mean * r
            self.sum[g], self.sumsq[g] = total, total_sq
        self.frames += K
        return ws.r, ws.mr

    def _counts(self, K: int) -> list[float]:
        """:func:`cln_counts` of the next K frames in Python floats: a tensor call per
        norm would cost real-time steps of a few frames more than their statistics do."""
        C, f = self.channels, self.frames
        if self.decay == 1.0:
            return [float((f + k) * C) for k in range(1, K + 1)]
        log = math.log(self.decay)
        scale = C / math.expm1(log)
        return [math.expm1((f + k) * log) * scale for k in range(1, K + 1)]

    def _vector(self, x: torch.Tensor, lanes: int) -> tuple[torch.Tensor, torch.Tensor]:
        R = x.shape[0]
        K = R // lanes
        xs = x if x.dtype in (torch.float32, torch.float64) else x.float()
        sums = torch.stack((xs.sum(1), torch.linalg.vecdot(xs, xs))).to(self.acc)  # [2, R]
        cum = decayed_cumsum(sums.view(2, lanes, K), self.decay).permute(1, 2, 0)  # [G, K, 2]
        # what the sums before this step still count at each of its frames
        kept = self.decay ** torch.arange(1, K + 1, dtype=self.acc, device=x.device)[None, :, None]  # [1, K, 1]
        if self.host:
            cum += torch.tensor([self.sum, self.sumsq], dtype=self.acc).t()[:, None, :] * kept  # [G, K, 2]
            last = cum[:, -1].tolist()  # [G][2]
            self.sum, self.sumsq = [a for a, _ in last], [b for _, b in last]
        else:  # no host round trip on an accelerator
            cum += self.carry * kept
            self.carry = cum[:, -1:].clone()
        count = cln_counts(K, self.channels, self.decay, start=self.frames, device=x.device).to(self.acc)
        self.frames += K
        stats = cum / count[None, :, None]  # [G, K, 2]: mean, mean of squares
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

    def __init__(self, fb: FoldedBlock, res_bias: torch.Tensor, room: int, lanes: int, device: torch.device,
                 dtype: torch.dtype, decay: float) -> None:
        d, P = fb.dilation, fb.P
        # The residual stream is kept without the blocks' constant outputs
        # (res_bias: their sum so far); they reach this block through its conv_in bias.
        self.w_in_t = fb.w_in.t().contiguous().to(dtype)  # [B, H]
        self.b_in = (fb.b_in + fb.w_in @ res_bias).to(dtype)
        self.slope1, self.slope2 = fb.slope1, fb.slope2
        # tap p reads the frame (P-1-p)*d before the current one (causal padding)
        offsets = [(P - 1 - p) * d for p in range(P)]
        self.taps = [fb.taps[:, p].to(dtype) for p in range(P)]  # norm1's gain folded in
        self.b_d = (fb.b_d + fb.tap_bias.sum(1)).to(dtype)
        # Before the stream starts the offline conv reads zeros, not norm1's bias:
        # frame k (from the start) loses w_p * b1 for each tap whose offset is > k.
        self.tap_bias = fb.tap_bias.T.contiguous().to(dtype)  # [P, H]
        self.offsets_t = torch.tensor(offsets, device=device)[None, :]  # [1, P]
        self.w_out_t = fb.w_out_g.t().contiguous().to(dtype)  # [H, B+Sc]; norm2's gain folded in
        B, H = fb.w_in.shape[1], fb.w_in.shape[0]
        self.const_res, self.const_skip = fb.c_out[:B], fb.c_out[B:]  # this block's constant output (float64)
        self.pad = max(offsets)
        self.norm1 = _RunningNorm(H, fb.eps1, device, lanes, decay)
        self.norm2 = _RunningNorm(H, fb.eps2, device, lanes, decay)
        self.cache = _DepthwiseCache(offsets, H, room, device, dtype, lanes)

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


class ConvTasNetStream:
    """One stream's network and state for ``lanes`` lanes in lockstep (the
    :class:`~sepcli.inference.protocol.StreamingNetwork` of a causal Conv-TasNet).

    Built from the model's folded weights (:func:`fold_norms`, cast to the
    model's dtype): rebuild it after changing the weights. ``room``: frames the
    depthwise caches take before they shift (they grow for longer steps).
    ``backend="native"`` runs each step in the C kernel (:attr:`native`); the
    running state then lives there, the decoder's tail stays here.
    """

    def __init__(self, model: ConvTasNet, lanes: int, room: int, chunk_size: int | None, backend: str) -> None:
        c = model.config
        p = model.encoder.weight
        self.device, self.dtype = p.device, p.dtype
        self.lanes, self.L, self.hop, self.chunk_size = lanes, c.L, c.stride, chunk_size
        self.q = -(-c.L // c.stride)  # frames that overlap one output hop
        self.dims = dict(S=c.n_src, N=c.N, B=c.B, H=c.H, Sc=c.Sc, q=self.q, hop=c.stride)
        with torch.inference_mode():
            self._fold(model, room)
        self._work: dict[int, _Work] = {}
        self.native = None
        if backend == "native":
            from sepcli.models.conv_tasnet_native import NativeStep

            self.native = NativeStep(self, lanes, room)
        self.reset()

    def _fold(self, model: ConvTasNet, room: int) -> None:
        """The folded weights in matrix form, ``[in, out]``, in the model's dtype."""
        net = self.folded = fold_norms(model)
        f64, dtype, dev = torch.float64, self.dtype, self.device
        S, N, B, Sc, q, hop = (self.dims[k] for k in ("S", "N", "B", "Sc", "q", "hop"))
        self.w_enc_t = net.w_enc.t().contiguous().to(dtype)  # [L, N]
        self.norm0 = _RunningNorm(N, net.eps0, dev, self.lanes, net.decay)
        self.blocks: list[_Block] = []
        res_bias = torch.zeros(B, dtype=f64, device=dev)  # [B]
        skip_bias = torch.zeros(Sc, dtype=f64, device=dev)  # [Sc]
        for fb in net.blocks:
            block = _Block(fb, res_bias, room, self.lanes, dev, dtype, net.decay)
            res_bias = res_bias + block.const_res
            skip_bias = skip_bias + block.const_skip
            self.blocks.append(block)
        # The bottleneck fills the whole accumulator [residual | skip sum]; the
        # skip part starts at the sum of all blocks' constant skip outputs.
        w_acc = torch.cat((net.w_b_g, net.w_b_g.new_zeros(Sc, N)))  # [B+Sc, N]
        self.w_acc_t = w_acc.t().contiguous().to(dtype)  # [N, B+Sc]
        self.b_acc = torch.cat((net.c_b, skip_bias)).to(dtype)  # [B+Sc]
        self.slope_out = net.slope_out
        self.w_mask_t = net.w_mask.t().contiguous().to(dtype)  # [Sc, S*N]
        self.b_mask = net.b_mask.to(dtype)  # [S*N]
        w_dec = F.pad(net.w_dec, (0, q * hop - self.L)).to(dtype)  # [N, q*hop]
        # overlap-add as matrix products: output hop k = sum_j (masked frame k-j) @ w_dec_hops[j]
        self.w_dec_hops = [w_dec[:, j * hop : (j + 1) * hop].contiguous() for j in range(q)]

    def _workspace(self, frames: int) -> _Work:
        ws = self._work.get(frames)
        if ws is None:
            if len(self._work) >= 4:  # chunk sizes changed; keep memory bounded
                self._work.clear()
            ws = self._work[frames] = _Work(frames, self.dims, self.device, self.dtype, self.lanes)
        return ws

    @torch.inference_mode()
    def reset(self) -> None:
        """A new stream: zero state, as before the first sample."""
        # the last q-1 masked frames: their later hops overlap the next output
        self._masked_tail = torch.zeros(self.lanes, self.q - 1, self.dims["S"], self.dims["N"], device=self.device,
                                        dtype=self.dtype)  # [G, q-1, S, N]
        self.frames = 0  # frames computed so far (in every lane)
        self.norm0.reset()
        for b in self.blocks:
            b.reset()
        if self.native is not None:
            self.native.reset(self._masked_tail)

    def step(self, xs: list[torch.Tensor], frames: int) -> torch.Tensor:
        """Frames of each lane's ``x`` through the network, all lanes in each product.
        Shape: xs [(K-1)*hop + L] per lane -> [G, S, K*hop] (the output hops these frames complete)."""
        S, G = self.dims["S"], self.lanes
        hop, q = self.hop, self.q
        if self.native is not None:
            y = torch.empty(G, S, frames * hop, dtype=self.dtype)
            self.native(xs, frames, self.frames, y)
            self.frames += frames
            return y
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
        start = self.frames
        for block in self.blocks:
            block(ws, start)
        self.frames += frames
        skip = prelu_(ws.acc_skip, self.slope_out)  # [R, Sc]
        torch.addmm(self.b_mask, skip, self.w_mask_t, out=ws.mask)  # [R, S*N]
        mask = ws.mask3  # [R, S, N]
        mask.sigmoid_()  # apply_mask_activation, in place
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
        return y.view(G, S, frames * hop)

    def drain(self) -> torch.Tensor:
        """The output that only the stored tail still adds to (the later hops of the
        last q-1 frames, as if zero frames followed). Shape: [G, S, (q-1)*hop]."""
        zeros = torch.zeros(self.q - 1, self.dims["S"], self.dims["N"], device=self.device, dtype=self.dtype)
        return torch.stack([self._decode(g, zeros) for g in range(self.lanes)])

    def _decode(self, g: int, masked: torch.Tensor) -> torch.Tensor:
        """Lane g's output hops of the frames ``masked`` [K, S, N] that follow its
        stored tail. Returns [S, K*hop]."""
        K, S, N = masked.shape
        q = self.q
        frames = torch.cat((self._masked_tail[g], masked))  # [q-1+K, S, N]
        hops = sum(frames[q - 1 - j : q - 1 - j + K].reshape(K * S, N) @ self.w_dec_hops[j] for j in range(q))
        return hops.view(K, S, self.hop).permute(1, 0, 2).reshape(S, K * self.hop)


class ConvTasNetStreaming:
    """A causal Conv-TasNet's :class:`~sepcli.inference.protocol.StreamingLayout`:
    its framing, and :meth:`network` to start a stream. SepError unless every
    norm is a cLN (the only norm with running statistics)."""

    def __init__(self, model: ConvTasNet) -> None:
        sep = model.separator
        norms = [sep.norm] + [n for b in sep.blocks for n in (b.norm1, b.norm2)]
        if not all(isinstance(n, CumulativeLayerNorm) for n in norms):
            raise SepError("streaming needs cumulative layer norms (cLN) in every block")
        self.model = model
        self.frame_length: int = model.config.L
        self.hop: int = model.config.stride
        p = model.encoder.weight
        self.device, self.dtype = p.device, p.dtype

    def frame_padding(self, n_samples: int) -> tuple[int, int]:
        """As the offline forward pads T samples (:meth:`ConvTasNet.frame_padding`)."""
        return self.model.frame_padding(n_samples)

    def network(self, lanes: int, chunk_size: int | None, backend: str, max_frames: int) -> ConvTasNetStream:
        """A new stream of ``lanes`` lanes, its buffers sized for ``chunk_size``
        samples per call (None: one hop) and steps of at most ``max_frames`` frames."""
        frames = 1 + -(-(chunk_size or self.hop) // self.hop)  # most frames one chunk completes
        room = min(max_frames, max(4 * frames, 32))
        return ConvTasNetStream(self.model, lanes, room, chunk_size, backend)


__all__ = ["GRAM_MAX_FRAMES", "SCALAR_STATS_MAX_FRAMES", "ConvTasNetStream", "ConvTasNetStreaming"]
