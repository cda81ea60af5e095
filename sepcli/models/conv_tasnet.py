"""Conv-TasNet (Luo & Mesgarani, IEEE/ACM TASLP 2019).

Registered as family ``convtasnet``; presets ``convtasnet-paper`` (non-causal,
gLN) and ``convtasnet-paper-causal`` (causal, cLN).

Module names (stable: :mod:`sepcli.streaming` reuses these weights chunk by chunk)::

    model.encoder                 Conv1d(1, N, L, stride=L//2, bias=False), then ReLU
    model.separator.norm          GlobalLayerNorm(N) | CumulativeLayerNorm(N)
    model.separator.bottleneck    Conv1d(N, B, 1)
    model.separator.blocks        flat ModuleList of R*X ``ConvBlock`` (block i has dilation 2**(i % X))
        .conv_in                  Conv1d(B, H, 1)
        .prelu1, .norm1           PReLU(), norm over H channels
        .dconv                    Conv1d(H, H, P, dilation=d, groups=H, padding=0)
        .pad_left, .pad_right     zero frames padded around the block input to .dconv:
                                  causal (P-1)*d and 0; non-causal split evenly
        .prelu2, .norm2           PReLU(), norm over H channels
        .res_out                  Conv1d(H, B, 1), added to the block input
        .skip_out                 Conv1d(H, Sc, 1), summed over all blocks
    model.separator.prelu         PReLU() on the sum of skips
    model.separator.mask_conv     Conv1d(Sc, S*N, 1), then the mask activation
    model.decoder                 ConvTranspose1d(N, 1, L, stride=L//2, bias=False) (overlap-add)

Framing: the input is padded with ``L - L//2`` zeros on the left and enough
zeros on the right that every sample lies under as many frames as an interior
one; the output is cropped back to exactly T samples (:meth:`ConvTasNet.frame_padding`).
With causal=True every output sample t depends only on input samples <= t + L - 1.

Shape legend: B batch, S sources, T samples, K frames, and the paper's N, L, B, H, Sc, P, X, R.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sepcli.inference.settings import InferenceSettings
from sepcli.errors import SepError
from sepcli.registry import register, register_preset

_NORMS = ("auto", "gLN", "cLN")
_MASKS = ("sigmoid",)  # relu and softmax were never trained or shipped; removed


@dataclass
class ConvTasNetConfig:
    """Hyper-parameters; the defaults are the paper's best non-causal system (~5.05M params)."""

    n_src: int = 2
    sample_rate: int = 8000
    N: int = 512  # encoder filters
    L: int = 16  # filter length in samples (stride L//2)
    B: int = 128  # bottleneck channels
    H: int = 512  # channels inside a block
    Sc: int = 128  # skip-connection channels
    P: int = 3  # depthwise kernel size
    X: int = 8  # blocks per repeat (dilations 1..2**(X-1))
    R: int = 3  # repeats
    causal: bool = False
    norm: str = "auto"  # "auto": gLN if non-causal, cLN if causal
    mask_activation: str = "sigmoid"  # the only choice; kept so that configs naming it load
    # Keys that older checkpoints and cards carry in their config and that are
    # no longer architecture: inference settings (now sepcli.inference presets).
    # Loading ignores them (registry.make_config).
    LEGACY_KEYS: ClassVar[tuple[str, ...]] = ("segment", "passes", "pass_signs", "speeds")

    def __post_init__(self) -> None:
        # ValueError is turned into SepError by registry.make_config.
        for name in ("n_src", "sample_rate", "N", "B", "H", "Sc", "P", "X", "R"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.L, bool) or not isinstance(self.L, int) or self.L < 2:
            raise ValueError(f"L must be an integer >= 2, got {self.L!r}")
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal must be true or false, got {self.causal!r}")
        if self.norm not in _NORMS:
            raise ValueError(f"norm must be one of {', '.join(_NORMS)}, got {self.norm!r}")
        if self.causal and self.norm == "gLN":
            raise ValueError("a causal model cannot use gLN (it looks at future frames); use cLN")
        if self.mask_activation not in _MASKS:
            raise ValueError(
                f"mask_activation must be one of {', '.join(_MASKS)}, got {self.mask_activation!r}"
            )

    @property
    def norm_type(self) -> str:
        """The norm actually used: ``"gLN"`` or ``"cLN"``."""
        if self.norm == "auto":
            return "cLN" if self.causal else "gLN"
        return self.norm

    @property
    def stride(self) -> int:
        return self.L // 2


class GlobalLayerNorm(nn.Module):
    """gLN: mean and variance over all channels and all frames, per-channel gain/bias.

    ``y = weight * (x - mean) / sqrt(var + eps) + bias``. Shape: [B, C, K] -> [B, C, K].
    """

    def __init__(self, channels: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2), keepdim=True)  # [B, 1, 1]
        var = (x - mean).pow(2).mean(dim=(1, 2), keepdim=True)  # [B, 1, 1]
        y = (x - mean) / torch.sqrt(var + self.eps)
        return y * self.weight[:, None] + self.bias[:, None]


class CumulativeLayerNorm(nn.Module):
    """cLN (the paper's causal norm): at frame k, mean and variance over all C
    channels and all frames 0..k (count C*(k+1)), per-channel gain/bias.

    Not a per-frame channel norm: the statistics accumulate over time. Computed
    with cumulative sums, so a streaming implementation keeps three running
    values per item: sum of x, sum of x**2 and the count.
    Shape: [B, C, K] -> [B, C, K].
    """

    def __init__(self, channels: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels, frames = x.shape[1], x.shape[2]
        # Per-frame sums in at least float32 (half precision would overflow), then
        # running sums in float64 where the device has it: E[x^2] - E[x]^2 over
        # thousands of frames loses too many digits in float32.
        acc = torch.float64 if x.device.type in ("cpu", "cuda") else torch.float32
        xs = x if x.dtype in (torch.float32, torch.float64) else x.float()
        cum_sum = xs.sum(dim=1).to(acc).cumsum(dim=1)  # [B, K]
        cum_pow = xs.pow(2).sum(dim=1).to(acc).cumsum(dim=1)  # [B, K]
        count = torch.arange(1, frames + 1, device=x.device, dtype=acc) * channels  # [K]
        mean = cum_sum / count
        var = (cum_pow / count - mean.pow(2)).clamp_min(0.0)
        mean = mean.to(x.dtype)[:, None, :]  # [B, 1, K]
        std = torch.sqrt(var.to(x.dtype) + self.eps)[:, None, :]  # [B, 1, K]
        return (x - mean) / std * self.weight[:, None] + self.bias[:, None]


def make_norm(kind: str, channels: int) -> nn.Module:
    return CumulativeLayerNorm(channels) if kind == "cLN" else GlobalLayerNorm(channels)


def depthwise_conv(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a depthwise (groups == channels), unpadded, stride-1 Conv1d,
    computed as P shifted multiply-adds.

    PyTorch's CPU kernel for grouped dilated 1-D convs is several times slower
    than these element-wise ops, and this is the TCN's hot path in training,
    offline separation and streaming alike. Shape: [B, H, K + (P-1)*d] -> [B, H, K].
    """
    weight = conv.weight  # [H, 1, P]
    taps = weight.shape[-1]
    d = conv.dilation[0]
    frames = x.shape[-1] - (taps - 1) * d
    bias = conv.bias[:, None] if conv.bias is not None else torch.zeros_like(weight[:, 0, :1])
    y = torch.addcmul(bias, weight[:, 0, 0, None], x[..., :frames])  # [B, H, K]
    for p in range(1, taps):
        y = torch.addcmul(y, weight[:, 0, p, None], x[..., p * d : p * d + frames])
    return y


class ConvBlock(nn.Module):
    """One 1-D conv block. Shape: [B, B_ch, K] -> (residual [B, B_ch, K], skip [B, Sc, K])."""

    def __init__(
        self, B: int, H: int, Sc: int, P: int, dilation: int, causal: bool, norm: str
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv1d(B, H, 1)
        self.prelu1 = nn.PReLU()
        self.norm1 = make_norm(norm, H)
        # Padding is applied explicitly (not via Conv1d) so a streaming version can
        # replace it with a ring buffer of the last pad_left frames.
        self.dconv = nn.Conv1d(H, H, P, dilation=dilation, groups=H)
        total = (P - 1) * dilation
        self.pad_left = total if causal else total // 2
        self.pad_right = total - self.pad_left
        self.prelu2 = nn.PReLU()
        self.norm2 = make_norm(norm, H)
        self.res_out = nn.Conv1d(H, B, 1)
        self.skip_out = nn.Conv1d(H, Sc, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.norm1(self.prelu1(self.conv_in(x)))  # [B, H, K]
        y = F.pad(y, (self.pad_left, self.pad_right))  # [B, H, K + (P-1)*d]
        y = self.norm2(self.prelu2(depthwise_conv(self.dconv, y)))  # [B, H, K]
        return x + self.res_out(y), self.skip_out(y)


class Separator(nn.Module):
    """The temporal convolutional network that estimates masks.

    Shape: encoded mixture [B, N, K] -> masks [B, S, N, K].
    """

    def __init__(self, config: ConvTasNetConfig) -> None:
        super().__init__()
        c = config
        self.n_src = c.n_src
        self.N = c.N
        self.norm = make_norm(c.norm_type, c.N)
        self.bottleneck = nn.Conv1d(c.N, c.B, 1)
        self.blocks = nn.ModuleList(
            ConvBlock(c.B, c.H, c.Sc, c.P, 2**x, c.causal, c.norm_type)
            for _ in range(c.R)
            for x in range(c.X)
        )
        self.prelu = nn.PReLU()
        self.mask_conv = nn.Conv1d(c.Sc, c.n_src * c.N, 1)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        x = self.bottleneck(self.norm(w))  # [B, B_ch, K]
        skip_sum = None
        for block in self.blocks:
            x, skip = block(x)
            skip_sum = skip if skip_sum is None else skip_sum + skip
        scores = self.mask_conv(self.prelu(skip_sum))  # [B, S*N, K]
        scores = scores.view(w.shape[0], self.n_src, self.N, w.shape[-1])  # [B, S, N, K]
        return apply_mask_activation(scores)


def apply_mask_activation(scores: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Sigmoid masks. Shape: [B, S, ...] -> the same. ``inplace`` overwrites
    ``scores`` (inference buffers)."""
    return scores.sigmoid_() if inplace else torch.sigmoid(scores)


@register("convtasnet", ConvTasNetConfig)
class ConvTasNet(nn.Module):
    """Conv-TasNet: learned encoder, TCN mask estimator, learned decoder.

    ``forward(mix)``: Shape: [B, T] or [B, 1, T] -> [B, S, T], any T >= 1.

    ``products`` (gLN models only): the dtype of the matrix products in
    :meth:`separate`'s fast path (see :class:`FoldedInference`): ``torch.float32``
    (default: ``forward`` up to rounding) or ``torch.bfloat16`` (faster
    on CPUs with native bfloat16; docs/long-recordings.md has the figures).
    """

    # -- the SeparationModel protocol (sepcli.inference.protocol)

    @property
    def frame_hop(self) -> int:
        """Encoder frame shift in samples (L/2): the unit of the averaged passes' delays."""
        return self.config.stride

    def inference_presets(self) -> dict[str, InferenceSettings]:
        """``fast``: one pass. ``high``: what the shipped models were tuned with on
        the valid speakers (models/*.md): 4 passes with sign flips at speeds
        1, 0.92, 0.88 (non-causal; it was trained with random polarity), or 2
        delayed passes aligned causally (causal: sign flips did not help it).
        30-s chunks: on short ones the shipped convtasnet swapped speakers
        between chunks."""
        fast = InferenceSettings(segment=30.0)
        if self.config.causal:
            return {"fast": fast, "high": fast.override(passes=2)}
        return {"fast": fast, "high": fast.override(passes=4, pass_signs=True, speeds=(1.0, 0.92, 0.88))}

    def set_products(self, dtype: torch.dtype) -> bool:
        """Set the dtype of the matrix products in :meth:`separate`'s fast path;
        False (nothing set) for cLN models, which have no such path."""
        if self.config.norm_type != "gLN":
            return False
        self.products = dtype
        return True

    def streaming_layout(self) -> ConvTasNet | None:
        """A causal model streams statefully (:class:`sepcli.streaming.Streamer`); None otherwise."""
        return self if self.config.causal else None

    def __init__(self, config: ConvTasNetConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else ConvTasNetConfig()
        if self.config.norm_type == "gLN":
            # only the gLN route (FoldedInference) has a choice; cLN models lack the attribute
            self.products: torch.dtype = torch.float32
        c = self.config
        self.encoder = nn.Conv1d(1, c.N, c.L, stride=c.stride, bias=False)
        self.separator = Separator(c)
        self.decoder = nn.ConvTranspose1d(c.N, 1, c.L, stride=c.stride, bias=False)

    # ------------------------------------------------------------------ geometry

    @property
    def n_src(self) -> int:
        return self.config.n_src

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def causal(self) -> bool:
        return self.config.causal

    @property
    def receptive_field_frames(self) -> int:
        """Frames of the TCN's receptive field: 1 + R * (P-1) * (2**X - 1)."""
        c = self.config
        return 1 + c.R * (c.P - 1) * (2**c.X - 1)

    @property
    def receptive_field(self) -> int:
        """Receptive field of the separator in input samples: (frames - 1) * L//2 + L.
        12256 samples (1.53 s at 8 kHz) for the paper configuration."""
        c = self.config
        return (self.receptive_field_frames - 1) * c.stride + c.L

    @property
    def receptive_field_seconds(self) -> float:
        return self.receptive_field / self.config.sample_rate

    def frame_padding(self, n_samples: int) -> tuple[int, int]:
        """Zeros padded (left, right) around T samples before the encoder, so that
        the frames tile the whole signal and the decoder's overlap-add covers it."""
        c = self.config
        left = c.L - c.stride
        span = left + n_samples + (c.L - c.stride)  # the last sample also gets a full overlap
        n_frames = max(1, math.ceil((span - c.L) / c.stride)) + 1
        right = (n_frames - 1) * c.stride + c.L - left - n_samples
        return left, right

    # ------------------------------------------------------------------ forward

    def _check_mix(self, mix: torch.Tensor) -> torch.Tensor:
        if not isinstance(mix, torch.Tensor):
            raise SepError(f"mix must be a torch.Tensor, got {type(mix).__name__}")
        if mix.dim() == 3 and mix.shape[1] == 1:
            mix = mix[:, 0]  # [B, T]
        if mix.dim() != 2:
            raise SepError(f"mix must have shape [B, T] or [B, 1, T], got {list(mix.shape)}")
        if mix.shape[-1] < 1:
            raise SepError("mix is empty (0 samples)")
        return mix

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate. Shape: [B, T] or [B, 1, T] -> [B, S, T]."""
        mix = self._check_mix(mix)
        batch, n_samples = mix.shape
        left, right = self.frame_padding(n_samples)
        x = F.pad(mix, (left, right))[:, None, :]  # [B, 1, T_pad]
        w = torch.relu(self.encoder(x))  # [B, N, K]
        masks = self.separator(w)  # [B, S, N, K]
        masked = (masks * w[:, None]).reshape(batch * self.n_src, self.config.N, -1)  # [B*S, N, K]
        out = self.decoder(masked)  # [B*S, 1, T_pad]
        out = out.view(batch, self.n_src, -1)  # [B, S, T_pad]
        return out[..., left : left + n_samples]

    @torch.no_grad()
    def separate(self, mix: torch.Tensor, n_src: int | None = None) -> torch.Tensor:
        """Inference entry point (no gradients). Shape: [B, T] or [B, 1, T] -> [B, S, T].

        ``n_src`` must be None or this model's number of speakers: Conv-TasNet
        has one output per trained source.
        """
        if n_src is not None and n_src != self.n_src:
            raise SepError(
                f"this Conv-TasNet separates exactly {self.n_src} speakers, not {n_src}; "
                f"choose a model trained for {n_src} speakers"
            )
        mix = self._check_mix(mix)
        param = self.encoder.weight
        if self.config.norm_type == "gLN" and not self.training and param.dtype == torch.float32:
            return self._folded()(mix)  # same function, faster on the CPU
        return self(mix.to(device=param.device, dtype=param.dtype))

    def _folded(self) -> FoldedInference:
        """The :class:`FoldedInference` of the current weights (rebuilt when any
        parameter is replaced or changed in place, e.g. by an optimiser step)."""
        key = (self.products, *((p.data_ptr(), p._version) for p in self.parameters()))
        cached = self.__dict__.get("_folded_cache")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_folded_cache"] = (key, FoldedInference(self, self.products))
        return cached[1]

    def compute_loss(self, mix: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Scalar negative PIT SI-SNR (dB). mix Shape: [B, T]; ref Shape: [B, S, T]."""
        from sepcli.losses import pit_si_snr_loss  # lazy: losses is written in parallel

        mix = self._check_mix(mix)
        if ref.dim() != 3 or ref.shape[0] != mix.shape[0] or ref.shape[1] != self.n_src or (
            ref.shape[-1] != mix.shape[-1]
        ):
            raise SepError(
                f"ref must have shape [B, S, T] = {[mix.shape[0], self.n_src, mix.shape[-1]]}, "
                f"got {list(ref.shape)}"
            )
        loss, _ = pit_si_snr_loss(self(mix), ref)
        return loss


class FoldedInference:
    """Inference-only evaluation of a non-causal (gLN) Conv-TasNet: the same
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
      correction;
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
        if c.norm_type != "gLN":
            raise SepError("FoldedInference needs a non-causal Conv-TasNet with gLN")
        if products not in (torch.float32, torch.bfloat16):
            raise SepError(f"products must be torch.float32 or torch.bfloat16, got {products}")
        self.model = model
        self.products = products
        self.dtype = dtype = torch.float32  # activations
        self.config = c
        self._ws_key: tuple | None = None
        self._ws: dict[str, torch.Tensor] = {}
        f64 = torch.float64
        sep = model.separator

        def mat(conv: nn.Conv1d) -> torch.Tensor:
            return conv.weight.detach()[:, :, 0].to(f64)  # [out, in]

        def vec(t: torch.Tensor | None, n: int) -> torch.Tensor:
            return t.detach().to(f64) if t is not None else torch.zeros(n, dtype=f64, device=dev)

        dev = model.encoder.weight.device
        self.w_enc_t = model.encoder.weight.detach()[:, 0, :].t().contiguous().to(dtype)  # [L, N]
        wb = mat(sep.bottleneck)  # [B, N]
        self.wb_g = wb * sep.norm.weight.detach().to(f64)  # [B, N] the norm's gain folded in
        self.wb_g_sum = self.wb_g.sum(1)  # [B]
        self.cb = vec(sep.bottleneck.bias, c.B) + wb @ sep.norm.bias.detach().to(f64)  # [B]
        self.eps0 = sep.norm.eps
        self.blocks = []
        for blk in sep.blocks:
            w_in = mat(blk.conv_in)  # [H, B]
            wd = blk.dconv.weight.detach()[:, 0, :].to(f64)  # [H, P]
            g1, be1 = blk.norm1.weight.detach().to(f64), blk.norm1.bias.detach().to(f64)
            w_out = torch.cat((mat(blk.res_out), mat(blk.skip_out)))  # [B+Sc, H]
            b_out = torch.cat((vec(blk.res_out.bias, c.B), vec(blk.skip_out.bias, c.Sc)))  # [B+Sc]
            g2, be2 = blk.norm2.weight.detach().to(f64), blk.norm2.bias.detach().to(f64)
            self.blocks.append(dict(
                w_in=w_in, w_in_t=w_in.t().contiguous().to(products), b_in=vec(blk.conv_in.bias, c.H),
                slope1=prelu_slope(blk.prelu1), slope2=prelu_slope(blk.prelu2),
                wd=wd, taps_g=wd * g1[:, None], g1=g1, be1=be1, b_d=vec(blk.dconv.bias, c.H),
                d=blk.dconv.dilation[0], P=blk.dconv.kernel_size[0], pad_left=blk.pad_left,
                w_out_g=w_out * g2, w_out_g_sum=(w_out * g2).sum(1), c_out=b_out + w_out @ be2,
                eps1=blk.norm1.eps, eps2=blk.norm2.eps,
            ))
        self.pad = max([max(b["pad_left"], (b["P"] - 1) * b["d"] - b["pad_left"]) for b in self.blocks] + [0])
        self.slope_out = prelu_slope(sep.prelu)
        self.w_mask_t = mat(sep.mask_conv).t().contiguous().to(products)  # [Sc, S*N]
        self.b_mask = vec(sep.mask_conv.bias, c.n_src * c.N).to(products)
        w_dec = model.decoder.weight.detach()[:, 0, :]  # [N, L]
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
        mean, inv = self._stats(w, self.eps0)
        acc = ws["acc"].zero_()  # [K, B+Sc] = [residual | skip sum], constants apart
        self._add_product(acc[:, :B], w, (self.wb_g * inv).t().to(lp), low("w_lp"), low("res_lp"))
        res_const = self.cb - self.wb_g_sum * (mean * inv)  # [B] float64
        skip_const = torch.zeros(c.Sc, dtype=torch.float64, device=w.device)
        h_buf = ws["h_buf"]
        h_buf[:pad].zero_()  # zero rows = the convs' padding
        h_buf[pad + K :].zero_()
        h = h_buf[pad : pad + K]  # [K, H]
        z = ws["z"]
        for blk in self.blocks:
            self._set_product(h, blk["b_in"] + blk["w_in"] @ res_const, acc[:, :B], blk["w_in_t"],
                              low("res_lp"), low("h_lp"))
            prelu_(h, blk["slope1"])
            mean, inv = self._stats(h, blk["eps1"])
            # norm1(h) = (g1 * inv) * h + shift; the gain goes into the taps, the shift into a bias
            shift = blk["be1"] - blk["g1"] * (mean * inv)  # [H]
            taps = (blk["taps_g"] * inv).to(dt)  # [H, P]
            wd_shift = blk["wd"] * shift[:, None]  # [H, P] what each tap adds through the shift
            d, base = blk["d"], pad - blk["pad_left"]
            torch.addcmul((blk["b_d"] + wd_shift.sum(1)).to(dt), h_buf[base : base + K], taps[:, 0], out=z)
            for p in range(1, blk["P"]):
                z.addcmul_(h_buf[base + p * d : base + p * d + K], taps[:, p])
            for p in range(blk["P"]):
                # frame k's tap p reads padded frame k + p*d - pad_left: zeros (not the shift) outside [0, K)
                lo, hi = blk["pad_left"] - p * d, K + blk["pad_left"] - p * d
                if lo > 0:
                    z[: min(lo, K)] -= wd_shift[:, p].to(dt)
                if hi < K:
                    z[max(hi, 0) :] -= wd_shift[:, p].to(dt)
            prelu_(z, blk["slope2"])
            mean, inv = self._stats(z, blk["eps2"])
            self._add_product(acc, z, (blk["w_out_g"] * inv).t().to(lp), low("z_lp"), low("acc_lp"))
            const = blk["c_out"] - blk["w_out_g_sum"] * (mean * inv)  # [B+Sc]
            res_const = res_const + const[:B]
            skip_const = skip_const + const[B:]
        skip = prelu_(torch.add(acc[:, B:], skip_const.to(dt), out=ws["skip"]), self.slope_out)  # [K, Sc]
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
    and by :mod:`sepcli.streaming`."""
    w = prelu.weight.detach()
    return float(w.reshape(-1)[0]) if w.numel() == 1 else w.clone()


def prelu_(x: torch.Tensor, slope: float | torch.Tensor) -> torch.Tensor:
    """PReLU in place on ``[K, C]`` (a per-channel slope is ``[C]``)."""
    if isinstance(slope, float):
        return F.leaky_relu_(x, slope)
    return x.copy_(torch.where(x >= 0, x, x * slope.to(x.dtype)))


register_preset(
    "convtasnet-paper",
    "convtasnet",
    "paper's best non-causal system: gLN, N=512 L=16 B=128 H=512 Sc=128 P=3 X=8 R=3",
    causal=False,
    norm="gLN",
)
register_preset(
    "convtasnet-paper-causal",
    "convtasnet",
    "paper's causal system: cLN, causal depthwise convs, same sizes",
    causal=True,
    norm="cLN",
)
