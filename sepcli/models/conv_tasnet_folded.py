"""Conv-TasNet with its norms folded into the neighbouring layers: the one
definition (:func:`fold_norms`) and the offline inference that uses it
(:class:`FoldedInference`, the route of :meth:`ConvTasNet.separate`).

Every norm of the network (gLN or cLN) computes ``gain * (x - mean) / std + bias``
and is followed by a linear layer: the separator's input norm by the
bottleneck, a block's ``norm1`` by the depthwise conv, its ``norm2`` by the
residual and skip convs. The gain and bias move into that layer's weights and
biases (exact algebra, done once in float64), so the running network only
normalises. :class:`FoldedInference`, the streaming step
(:mod:`sepcli.models.conv_tasnet_stream`) and the weights packed for the C
kernel (:mod:`sepcli.models.conv_tasnet_native`) all start from
:func:`fold_norms`.

Shape legend: B batch, S sources, T samples, K frames, and the paper's N, L, B, H, Sc, P.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from sepcli.errors import SepError
from sepcli.models.conv_tasnet import apply_mask_activation, cln_counts, decayed_cumsum

if TYPE_CHECKING:
    from sepcli.models.conv_tasnet import ConvTasNet


@dataclass(frozen=True)
class FoldedBlock:
    """One ConvBlock, float64, matrices ``[out, in]``; the norms' gains and biases folded in."""

    w_in: torch.Tensor  # [H, B] conv_in
    b_in: torch.Tensor  # [H]
    slope1: float | torch.Tensor  # PReLU slopes (see prelu_slope)
    slope2: float | torch.Tensor
    taps: torch.Tensor  # [H, P] depthwise taps times norm1's gain: they read normalised frames
    tap_bias: torch.Tensor  # [H, P] what each tap adds through norm1's bias
    b_d: torch.Tensor  # [H] the depthwise conv's own bias
    dilation: int
    P: int
    pad_left: int  # zero frames before the depthwise conv's input (causal: (P-1)*d)
    w_out: torch.Tensor  # [B+Sc, H] [res_out; skip_out] as trained (the C kernel applies g2 itself)
    g2: torch.Tensor  # [H] norm2's gain
    w_out_g: torch.Tensor  # [B+Sc, H] w_out with norm2's gain folded in
    c_out: torch.Tensor  # [B+Sc] the block's constant output: biases and norm2's bias through w_out
    eps1: float
    eps2: float


@dataclass(frozen=True)
class FoldedNet:
    """The whole network, float64 (see :func:`fold_norms`)."""

    w_enc: torch.Tensor  # [N, L] encoder basis
    w_b: torch.Tensor  # [B, N] bottleneck as trained (the C kernel applies g0 itself)
    g0: torch.Tensor  # [N] the input norm's gain
    w_b_g: torch.Tensor  # [B, N] bottleneck with the input norm's gain folded in
    c_b: torch.Tensor  # [B] bottleneck bias plus the input norm's bias through it
    eps0: float
    blocks: list[FoldedBlock]
    slope_out: float | torch.Tensor
    w_mask: torch.Tensor  # [S*N, Sc]
    b_mask: torch.Tensor  # [S*N]
    w_dec: torch.Tensor  # [N, L] decoder basis
    decay: float = 1.0  # what every cLN's running sums are multiplied by per frame (config.cln_decay)


@torch.no_grad()
def fold_norms(model: ConvTasNet) -> FoldedNet:
    """The weights of ``model`` with every norm's gain and bias folded into the
    next layer (float64, on the model's device). Read once: fold again after
    changing the weights."""
    f64 = torch.float64
    dev = model.encoder.weight.device
    sep = model.separator

    def mat(conv: nn.Conv1d) -> torch.Tensor:
        return conv.weight.detach()[:, :, 0].to(f64)  # [out, in]

    def vec(t: torch.Tensor | None, n: int) -> torch.Tensor:
        return t.detach().to(f64) if t is not None else torch.zeros(n, dtype=f64, device=dev)

    blocks = []
    for blk in sep.blocks:
        wd = blk.dconv.weight.detach()[:, 0, :].to(f64)  # [H, P]
        H, B, Sc = wd.shape[0], blk.res_out.weight.shape[0], blk.skip_out.weight.shape[0]
        w_out = torch.cat((mat(blk.res_out), mat(blk.skip_out)))  # [B+Sc, H]
        b_out = torch.cat((vec(blk.res_out.bias, B), vec(blk.skip_out.bias, Sc)))  # [B+Sc]
        g2 = blk.norm2.weight.detach().to(f64)
        blocks.append(FoldedBlock(
            w_in=mat(blk.conv_in), b_in=vec(blk.conv_in.bias, H),
            slope1=prelu_slope(blk.prelu1), slope2=prelu_slope(blk.prelu2),
            taps=wd * blk.norm1.weight.detach().to(f64)[:, None],
            tap_bias=wd * blk.norm1.bias.detach().to(f64)[:, None],
            b_d=vec(blk.dconv.bias, H), dilation=blk.dconv.dilation[0], P=blk.dconv.kernel_size[0],
            pad_left=blk.pad_left, w_out=w_out, g2=g2, w_out_g=w_out * g2,
            c_out=b_out + w_out @ blk.norm2.bias.detach().to(f64), eps1=blk.norm1.eps, eps2=blk.norm2.eps,
        ))
    w_b, g0 = mat(sep.bottleneck), sep.norm.weight.detach().to(f64)
    return FoldedNet(
        w_enc=model.encoder.weight.detach()[:, 0, :].to(f64), w_b=w_b, g0=g0, w_b_g=w_b * g0,
        c_b=vec(sep.bottleneck.bias, w_b.shape[0]) + w_b @ sep.norm.bias.detach().to(f64), eps0=sep.norm.eps,
        blocks=blocks, slope_out=prelu_slope(sep.prelu), w_mask=mat(sep.mask_conv),
        b_mask=vec(sep.mask_conv.bias, sep.mask_conv.weight.shape[0]),
        w_dec=model.decoder.weight.detach()[:, 0, :].to(f64), decay=model.config.cln_decay,
    )


class FoldedInference:
    """Inference-only evaluation of a Conv-TasNet (gLN or cLN): the same
    function as ``ConvTasNet.forward`` with far fewer passes over memory.

    Why: a gLN computed as written reads and writes its ``[H, K]`` input about
    eight times, and with the padding, residual and skip sums the element-wise
    work took ~40% of an offline forward on the CPU, next to matrix products
    that already run near the machine's arithmetic rate. Here, per item:

    * activations are time-major ``[K, C]``, so every 1x1 conv is one matrix
      product and the depthwise conv's zero padding is rows above and below a
      contiguous slab (no copy);
    * each gLN costs one statistics pass: its gain and bias, and the
      per-utterance mean and standard deviation, are folded into the next
      layer (the depthwise taps, or the res/skip weights, which become one
      matrix product that adds into a shared ``[residual | skip]``
      accumulator); frames where a tap reads the padding get an exact
      correction; a cLN's statistics change from frame to frame, so it
      normalises its input in place (one statistics pass, one scaling) and
      only its gain and bias are folded (the encoder output, which the masks
      still need, is instead normalised after the bottleneck's product, row
      by row);
    * constant outputs of the blocks are carried as biases instead of being
      added to every frame.

    Only rounding differs from ``forward`` (tested). ``products=torch.bfloat16``
    rounds the operands of the matrix products (the 1x1 convs, the decoder) to
    bfloat16; they accumulate in float32 inside the product, and activations,
    statistics and every element-wise step stay float32. On CPUs with
    AVX512-BF16 or AMX the products run faster and the output stays far
    closer to float32 than the separation error (measured in
    docs/long-recordings.md). (Element-wise work in bfloat16 is slower than float32
    on the CPU, which is why only the products change.)
    Built from the current weights: rebuild after changing them (the model's
    :meth:`ConvTasNet.separate` does that by itself). Keeps its buffers for
    the last input length between calls, so it is not thread-safe.

    Shape: mix ``[B, T]`` -> ``[B, S, T]``.
    """

    def __init__(self, model: ConvTasNet, products: torch.dtype = torch.float32) -> None:
        c = model.config
        if products not in (torch.float32, torch.bfloat16):
            raise SepError(f"products must be torch.float32 or torch.bfloat16, got {products}")
        if c.norm_type != "gLN" and products != torch.float32:
            raise SepError("bfloat16 products need a gLN Conv-TasNet; a cLN one runs in float32")
        # cLN's statistics change from frame to frame, so they cannot be folded
        # into the weights like gLN's; each activation is normalised in place instead.
        self.cumulative = c.norm_type == "cLN"
        self.model = model
        self.products = products
        self.dtype = dtype = torch.float32  # activations
        self.config = c
        self._ws_key: tuple | None = None
        self._ws: dict[str, torch.Tensor] = {}
        net = self.net = fold_norms(model)
        self.decay = net.decay
        self.w_enc_t = net.w_enc.t().contiguous().to(dtype)  # [L, N]
        self.wb_g_sum = net.w_b_g.sum(1)  # [B]
        self.blocks = [(blk, blk.w_in.t().contiguous().to(products), blk.w_out_g.sum(1)) for blk in net.blocks]
        self.pad = max([max(b.pad_left, (b.P - 1) * b.dilation - b.pad_left) for b in net.blocks] + [0])
        self.w_mask_t = net.w_mask.t().contiguous().to(products)  # [Sc, S*N]
        self.b_mask = net.b_mask.to(products)
        w_dec = net.w_dec.to(torch.float32)  # [N, L]
        q = -(-c.L // c.stride)
        w_dec = F.pad(w_dec, (0, q * c.stride - c.L))  # [N, q*hop]
        self.dec_hops = w_dec.view(c.N, q, c.stride).permute(1, 0, 2).contiguous().to(products)  # [q, N, hop]

    def _workspace(self, K: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Buffers for ``K`` frames, kept for the next call of the same length.

        Why: the engine calls with one chunk length again and again, and fresh
        tensors of this size come from the OS each time (mmap), so every call
        paid ~20k page faults (~20% of its time)."""
        key = (K, device)
        if self._ws_key == key:
            return self._ws
        c, f32, lp = self.config, torch.float32, self.products
        S, N, H, B, Sc = c.n_src, c.N, c.H, c.B, c.Sc
        q, hop = self.dec_hops.shape[0], c.stride

        def new(*shape: int, dtype: torch.dtype = f32) -> torch.Tensor:
            return torch.empty(*shape, dtype=dtype, device=device)

        ws = dict(
            w=new(K, N), acc=new(K, B + Sc), h_buf=new(self.pad + K + self.pad, H), z=new(K, H),
            skip=new(K, Sc), scores=new(K, S * N), pieces=new(q, K * S, hop), out=new(S, K + q - 1, hop),
        )
        if lp != f32:  # the products' operands and results
            ws.update(
                w_lp=new(K, N, dtype=lp), res_lp=new(K, B, dtype=lp), h_lp=new(K, H, dtype=lp),
                z_lp=new(K, H, dtype=lp), acc_lp=new(K, B + Sc, dtype=lp), skip_lp=new(K, Sc, dtype=lp),
                scores_lp=new(K, S * N, dtype=lp), masks_lp=new(K * S, N, dtype=lp),
                pieces_lp=new(q, K * S, hop, dtype=lp),
            )
        self._ws_key, self._ws = key, ws
        return ws

    def _set_product(self, out: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, w_t: torch.Tensor,
                     x_lp: torch.Tensor | None, out_lp: torch.Tensor | None) -> None:
        """out = bias + x @ w_t (out and x float32; ``*_lp``: buffers in the products' dtype)."""
        if x_lp is None or out_lp is None:
            torch.addmm(bias.to(out.dtype), x, w_t, out=out)
        else:
            x_lp.copy_(x)
            torch.addmm(bias.to(x_lp.dtype), x_lp, w_t, out=out_lp)
            out.copy_(out_lp)

    def _add_product(self, acc: torch.Tensor, x: torch.Tensor, w_t: torch.Tensor,
                     x_lp: torch.Tensor | None, out_lp: torch.Tensor | None) -> None:
        """acc += x @ w_t (acc and x float32; ``w_t`` in the products' dtype)."""
        if x_lp is None or out_lp is None:
            acc.addmm_(x, w_t)
        else:
            x_lp.copy_(x)
            acc.add_(torch.mm(x_lp, w_t, out=out_lp))

    def _stats(self, x: torch.Tensor, eps: float) -> tuple[float, float]:
        """(mean, 1/sqrt(var + eps)) over every element, accumulated in at least
        float32 and combined in float64. From the sum and the sum of squares
        (two vectorised passes): torch.var_mean is a serial Welford pass here,
        which alone took half the time of a forward."""
        n = x.numel()
        flat = x.reshape(-1)
        if x.dtype in (torch.float32, torch.float64):
            total, squares = float(flat.sum()), float(torch.dot(flat, flat))
        else:
            total = float(flat.sum(dtype=torch.float32))
            squares = float(torch.linalg.vector_norm(flat, dtype=torch.float32)) ** 2
        mean = total / n
        var = max(0.0, squares / n - mean * mean)
        return mean, 1.0 / math.sqrt(var + eps)

    def _norm_(self, x: torch.Tensor, eps: float) -> tuple[float, float]:
        """gLN: (mean, 1/std) of ``x`` for the next layer to fold in. cLN: ``x``
        normalised in place with its cumulative statistics (as
        :class:`~sepcli.models.conv_tasnet.CumulativeLayerNorm`, running sums
        in float64), and (0, 1) for the next layer. Shape: x [K, C]."""
        if not self.cumulative:
            return self._stats(x, eps)
        mean, inv = self._cumulative_stats(x, eps)
        x.sub_(mean[:, None]).mul_(inv[:, None])
        return 0.0, 1.0

    def _cumulative_stats(self, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """cLN's mean and 1/std at every frame, over all channels of frames 0..k
        (forgetting at the model's ``cln_decay``). Shape: x [K, C] -> ([K], [K]) in x's dtype."""
        K, C = x.shape
        f64 = torch.float64
        sums = decayed_cumsum(torch.stack((x.sum(1), torch.einsum("kc,kc->k", x, x))).to(f64), self.decay)  # [2, K]
        count = cln_counts(K, C, self.decay, device=x.device)  # [K]
        mean = sums[0] / count
        var = (sums[1] / count - mean * mean).clamp_min(0.0)
        inv = 1.0 / torch.sqrt(var.to(x.dtype) + eps)  # rounded as the module rounds it
        return mean.to(x.dtype), inv

    @torch.no_grad()
    def __call__(self, mix: torch.Tensor) -> torch.Tensor:
        mix = self.model._check_mix(mix)
        left, right = self.model.frame_padding(mix.shape[-1])
        x = F.pad(mix.to(self.w_enc_t.device, self.dtype), (left, right))  # [B, T_pad]
        out = torch.empty(x.shape[0], self.config.n_src, x.shape[1], dtype=torch.float32, device=x.device)
        for item, y in zip(x, out, strict=True):  # [T_pad], [S, T_pad]
            y.copy_(self._one(item))
        return out[..., left : left + mix.shape[-1]]  # [B, S, T]

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: [T_pad] -> [S, T_pad] (a view of the workspace: copy it before the next call)."""
        c, dt, lp = self.config, self.dtype, self.products
        B, pad = c.B, self.pad
        K = (x.shape[0] - c.L) // c.stride + 1
        ws = self._workspace(K, x.device)
        low = ws.get  # the products' buffers; None when the products are float32
        w = torch.mm(x.unfold(0, c.L, c.stride), self.w_enc_t, out=ws["w"]).relu_()  # [K, N]
        net = self.net
        acc = ws["acc"].zero_()  # [K, B+Sc] = [residual | skip sum], constants apart
        if self.cumulative:
            # w stays as it is for the masks: the bottleneck's product is normalised
            # row by row afterwards, (w @ Wg^T - mean * sum(Wg)) / std
            mean_k, inv_k = self._cumulative_stats(w, net.eps0)  # [K], [K]
            self._add_product(acc[:, :B], w, net.w_b_g.t().to(lp), low("w_lp"), low("res_lp"))
            acc[:, :B].mul_(inv_k[:, None]).addr_(-(mean_k * inv_k), self.wb_g_sum.to(dt))
            mean, inv = 0.0, 1.0
        else:
            mean, inv = self._stats(w, net.eps0)
            self._add_product(acc[:, :B], w, (net.w_b_g * inv).t().to(lp), low("w_lp"), low("res_lp"))
        res_const = net.c_b - self.wb_g_sum * (mean * inv)  # [B] float64
        skip_const = torch.zeros(c.Sc, dtype=torch.float64, device=w.device)
        h_buf = ws["h_buf"]
        h_buf[:pad].zero_()  # zero rows = the convs' padding
        h_buf[pad + K :].zero_()
        h = h_buf[pad : pad + K]  # [K, H]
        z = ws["z"]
        for blk, w_in_t, w_out_g_sum in self.blocks:
            self._set_product(h, blk.b_in + blk.w_in @ res_const, acc[:, :B], w_in_t, low("res_lp"), low("h_lp"))
            prelu_(h, blk.slope1)
            mean, inv = self._norm_(h, blk.eps1)
            # norm1(h) = (g1 * inv) * h + shift with shift = be1 - g1 * mean * inv: the gain
            # goes into the taps, the shift (through each tap) into a bias
            taps = (blk.taps * inv).to(dt)  # [H, P]
            tap_shift = blk.tap_bias - blk.taps * (mean * inv)  # [H, P] what each tap adds through the shift
            d, base = blk.dilation, pad - blk.pad_left
            torch.addcmul((blk.b_d + tap_shift.sum(1)).to(dt), h_buf[base : base + K], taps[:, 0], out=z)
            for p in range(1, blk.P):
                z.addcmul_(h_buf[base + p * d : base + p * d + K], taps[:, p])
            for p in range(blk.P):
                # frame k's tap p reads padded frame k + p*d - pad_left: zeros (not the shift) outside [0, K)
                lo, hi = blk.pad_left - p * d, K + blk.pad_left - p * d
                if lo > 0:
                    z[: min(lo, K)] -= tap_shift[:, p].to(dt)
                if hi < K:
                    z[max(hi, 0) :] -= tap_shift[:, p].to(dt)
            prelu_(z, blk.slope2)
            mean, inv = self._norm_(z, blk.eps2)
            self._add_product(acc, z, (blk.w_out_g * inv).t().to(lp), low("z_lp"), low("acc_lp"))
            const = blk.c_out - w_out_g_sum * (mean * inv)  # [B+Sc]
            res_const = res_const + const[:B]
            skip_const = skip_const + const[B:]
        skip = prelu_(torch.add(acc[:, B:], skip_const.to(dt), out=ws["skip"]), net.slope_out)  # [K, Sc]
        scores = ws["scores"]  # [K, S*N]
        self._set_product(scores, self.b_mask, skip, self.w_mask_t, low("skip_lp"), low("scores_lp"))
        masks = apply_mask_activation(scores.view(K, c.n_src, c.N), inplace=True)  # [K, S, N]
        masks.mul_(w[:, None, :])
        # The decoder (a transposed conv) as one product and an overlap-add of
        # q hop-long pieces: conv_transpose1d on time-major input cost ~8% of a forward.
        hop, q = c.stride, self.dec_hops.shape[0]
        rows = masks.view(K * c.n_src, c.N)  # [K*S, N]
        if "masks_lp" in ws:
            pieces = torch.matmul(ws["masks_lp"].copy_(rows), self.dec_hops, out=ws["pieces_lp"])
        else:
            pieces = torch.matmul(rows, self.dec_hops, out=ws["pieces"])  # [q, K*S, hop]
        pieces = pieces.view(q, K, c.n_src, hop).permute(0, 2, 1, 3)  # [q, S, K, hop]
        out = ws["out"].zero_()  # [S, K+q-1, hop]
        for j in range(q):
            out[:, j : j + K] += pieces[j]
        return out.view(c.n_src, -1)[:, : (K - 1) * hop + c.L]  # [S, T_pad]


def prelu_slope(prelu: nn.PReLU) -> float | torch.Tensor:
    """PReLU with one shared slope runs as an in-place leaky ReLU (one op);
    a per-channel PReLU keeps its weight vector. Used by the folded forward
    and by the streaming step."""
    w = prelu.weight.detach()
    return float(w.reshape(-1)[0]) if w.numel() == 1 else w.clone()


def prelu_(x: torch.Tensor, slope: float | torch.Tensor) -> torch.Tensor:
    """PReLU in place on ``[K, C]`` (a per-channel slope is ``[C]``)."""
    if isinstance(slope, float):
        return F.leaky_relu_(x, slope)
    return x.copy_(torch.where(x >= 0, x, x * slope.to(x.dtype)))


__all__ = ["FoldedBlock", "FoldedInference", "FoldedNet", "fold_norms", "prelu_", "prelu_slope"]
