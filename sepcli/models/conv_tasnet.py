"""Conv-TasNet (Luo & Mesgarani, IEEE/ACM TASLP 2019).

Registered as family ``convtasnet``; presets ``convtasnet-paper`` (non-causal,
gLN) and ``convtasnet-paper-causal`` (causal, cLN).

Module names (stable: checkpoints name them; :mod:`sepcli.models.conv_tasnet_folded` folds them for
inference and :mod:`sepcli.models.conv_tasnet_stream` streams them)::

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
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sepcli.inference.equalize import preset_limit
from sepcli.inference.settings import InferenceSettings
from sepcli.errors import SepError
from sepcli.models.common import ConfigMembers, as_batch, check_n_src
from sepcli.registry import register, register_preset

if TYPE_CHECKING:
    from sepcli.models.conv_tasnet_folded import FoldedInference
    from sepcli.models.conv_tasnet_stream import ConvTasNetStreaming

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
    # cLN only: None is the paper's cLN (statistics over every frame so far); seconds make
    # its statistics forget with that time constant (an exponential window). A model
    # trained on 4-s examples never saw statistics over minutes, which a long stream
    # gives it (docs/long-recordings.md). An inference property that needs no retraining.
    cln_memory: float | None = None
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
        if self.cln_memory is not None:
            if isinstance(self.cln_memory, bool) or not isinstance(self.cln_memory, (int, float)) or not (
                math.isfinite(self.cln_memory) and self.cln_memory > 0
            ):
                raise ValueError(f"cln_memory must be a positive number of seconds or null, got {self.cln_memory!r}")
            if self.norm_type != "cLN":
                raise ValueError("cln_memory applies to cLN only (a causal model)")
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

    @property
    def cln_decay(self) -> float:
        """What cLN's running sums are multiplied by per frame: 1.0 (never forget)
        or ``exp(-hop / (cln_memory * sample_rate))``."""
        if self.cln_memory is None:
            return 1.0
        return math.exp(-self.stride / (self.cln_memory * self.sample_rate))


class _ChannelAffine(nn.Module):
    """A layer norm's per-channel gain (``weight``) and bias, and its ``eps``."""

    def __init__(self, channels: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))


class GlobalLayerNorm(_ChannelAffine):
    """gLN: mean and variance over all channels and all frames, per-channel gain/bias.

    ``y = weight * (x - mean) / sqrt(var + eps) + bias``. Shape: [B, C, K] -> [B, C, K].
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One group over all C channels is exactly gLN; the fused kernel trains a
        # Conv-TasNet step ~1.3x (SuDoRM-RF ~1.6x) faster on CPU than the six
        # elementwise passes of the written-out formula (tests check it against them).
        return F.group_norm(x, 1, self.weight, self.bias, self.eps)


def decayed_cumsum(x: torch.Tensor, decay: float) -> torch.Tensor:
    """``y[..., k] = sum over j <= k of decay**(k-j) * x[..., j]`` (a plain cumsum at
    decay 1), differentiable. In blocks within which ``decay**-j`` stays below e**20
    (e**4 in float32), so that the scaled partial sums keep their digits. Shape: [..., K] -> [..., K]."""
    if decay == 1.0:
        return x.cumsum(-1)
    if not 0.0 < decay < 1.0:
        raise SepError(f"decay must be in (0, 1], got {decay}")
    K = x.shape[-1]
    reach = 20.0 if x.dtype == torch.float64 else 4.0  # float32 only where float64 is missing (MPS)
    block = max(1, min(K, int(reach / -math.log(decay))))
    out, carry = [], None
    for start in range(0, K, block):
        n = min(block, K - start)
        j = torch.arange(n, device=x.device, dtype=x.dtype)
        up, down = torch.exp(-j * math.log(decay)), torch.exp(j * math.log(decay))  # decay**-j, decay**j  [n]
        y = (x[..., start : start + n] * up).cumsum(-1) * down  # [..., n]
        if carry is not None:
            y = y + carry[..., None] * down * decay
        out.append(y)
        carry = y[..., -1]
    return torch.cat(out, -1)


def cln_counts(frames: int, channels: int, decay: float, start: int = 0, **kw) -> torch.Tensor:
    """cLN's count at frames ``start .. start+frames-1``: channels times the
    (decayed) number of frames so far, ``channels * sum over j <= k of decay**j``.
    Shape: [frames]."""
    k = torch.arange(start + 1, start + frames + 1, dtype=torch.float64, **kw)
    if decay == 1.0:
        return k * channels
    log = math.log(decay)
    return torch.expm1(k * log) / math.expm1(log) * channels


class CumulativeLayerNorm(_ChannelAffine):
    """cLN (the paper's causal norm): at frame k, mean and variance over all C
    channels and all frames 0..k (count C*(k+1)), per-channel gain/bias.

    Not a per-frame channel norm: the statistics accumulate over time. Computed
    with cumulative sums, so a streaming implementation keeps three running
    values per item: sum of x, sum of x**2 and the count. With ``decay`` < 1
    (``ConvTasNetConfig.cln_memory``) frame j counts ``decay**(k-j)`` times at
    frame k: the sums and the count forget.
    Shape: [B, C, K] -> [B, C, K].
    """

    def __init__(self, channels: int, eps: float = 1e-8, decay: float = 1.0) -> None:
        super().__init__(channels, eps)
        self.decay = decay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels, frames = x.shape[1], x.shape[2]
        # Per-frame sums in at least float32 (half precision would overflow), then
        # running sums in float64 where the device has it: E[x^2] - E[x]^2 over
        # thousands of frames loses too many digits in float32.
        acc = torch.float64 if x.device.type in ("cpu", "cuda") else torch.float32
        xs = x if x.dtype in (torch.float32, torch.float64) else x.float()
        cum_sum = decayed_cumsum(xs.sum(dim=1).to(acc), self.decay)  # [B, K]
        cum_pow = decayed_cumsum(xs.pow(2).sum(dim=1).to(acc), self.decay)  # [B, K]
        count = cln_counts(frames, channels, self.decay, device=x.device).to(acc)  # [K]
        mean = cum_sum / count
        var = (cum_pow / count - mean.pow(2)).clamp_min(0.0)
        mean = mean.to(x.dtype)[:, None, :]  # [B, 1, K]
        std = torch.sqrt(var.to(x.dtype) + self.eps)[:, None, :]  # [B, 1, K]
        return (x - mean) / std * self.weight[:, None] + self.bias[:, None]


def make_norm(kind: str, channels: int, decay: float = 1.0) -> nn.Module:
    return CumulativeLayerNorm(channels, decay=decay) if kind == "cLN" else GlobalLayerNorm(channels)


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
        self, B: int, H: int, Sc: int, P: int, dilation: int, causal: bool, norm: str, decay: float = 1.0
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv1d(B, H, 1)
        self.prelu1 = nn.PReLU()
        self.norm1 = make_norm(norm, H, decay)
        # Padding is applied explicitly (not via Conv1d) so a streaming version can
        # replace it with a ring buffer of the last pad_left frames.
        self.dconv = nn.Conv1d(H, H, P, dilation=dilation, groups=H)
        total = (P - 1) * dilation
        self.pad_left = total if causal else total // 2
        self.pad_right = total - self.pad_left
        self.prelu2 = nn.PReLU()
        self.norm2 = make_norm(norm, H, decay)
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
        self.norm = make_norm(c.norm_type, c.N, c.cln_decay)
        self.bottleneck = nn.Conv1d(c.N, c.B, 1)
        self.blocks = nn.ModuleList(
            ConvBlock(c.B, c.H, c.Sc, c.P, 2**x, c.causal, c.norm_type, c.cln_decay)
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
class ConvTasNet(ConfigMembers, nn.Module):
    """Conv-TasNet: learned encoder, TCN mask estimator, learned decoder.

    ``forward(mix)``: Shape: [B, T] or [B, 1, T] -> [B, S, T], any T >= 1.

    ``products`` (gLN models only): the dtype of the matrix products in
    :meth:`separate`'s fast path (see :class:`FoldedInference`): ``torch.float32``
    (default: ``forward`` up to rounding) or ``torch.bfloat16`` (faster
    on CPUs with native bfloat16; docs/long-recordings.md has the figures).
    """

    accepts_silent_sources: bool = False
    """Training contract: SI-SNR is undefined for a silent reference, so every
    batch has ``n_src`` speakers (no ``speaker_counts`` in recipes)."""

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
        between chunks. The non-causal ``fast`` preset shares 10 % of a chunk
        with the next (3 s), not 25 %: chosen on four 10-minute recordings of
        valid speakers (docs/long-recordings.md), where it cost about 0.1 dB and
        no swap and made ``sep separate`` 17 % faster (its RTF bar is 0.08). The
        non-causal ``fast`` preset also equalizes each chunk toward training speech's
        spectrum, by up to :data:`~sepcli.inference.equalize.PRESET_DB` dB per band
        (:mod:`sepcli.inference.equalize`), chosen on the valid speakers (docs/experiments.md,
        "Equalize"); both causal presets do the same with a running spectrum
        (:mod:`sepcli.inference.equalize_causal`; "Causal equalize"), which streams. The
        non-causal ``high`` preset equalizes too (docs/experiments.md, "Equalize in
        convtasnet's high preset": +0.55 dB on shifted valid mixtures, +0.06 clean)."""
        fast = InferenceSettings(segment=30.0)
        if self.config.causal:
            fast = fast.override(equalize=preset_limit(causal=True, causal_validated=True))
            return {"fast": fast, "high": fast.override(passes=2)}
        fast = fast.override(equalize=preset_limit(causal=False))
        high = fast.override(passes=4, pass_signs=True, speeds=(1.0, 0.92, 0.88))  # 25 % overlap, as tuned
        return {"fast": fast.override(overlap=0.1), "high": high}

    def set_products(self, dtype: torch.dtype) -> bool:
        """Set the dtype of the matrix products in :meth:`separate`'s fast path;
        False (nothing set) for cLN models, whose folded route runs in float32 only
        (bfloat16 was measured for gLN alone)."""
        if self.config.norm_type != "gLN":
            return False
        self.products = dtype
        return True

    def streaming_layout(self) -> ConvTasNetStreaming | None:
        """A causal model streams statefully (:class:`sepcli.streaming.Streamer`
        runs :mod:`sepcli.models.conv_tasnet_stream`); None otherwise."""
        if not self.config.causal:
            return None
        from sepcli.models.conv_tasnet_stream import ConvTasNetStreaming  # it imports this module

        return ConvTasNetStreaming(self)

    def __init__(self, config: ConvTasNetConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else ConvTasNetConfig()
        if self.config.norm_type == "gLN":
            # only gLN models have a choice of products; cLN models lack the attribute
            self.products: torch.dtype = torch.float32
        c = self.config
        self.encoder = nn.Conv1d(1, c.N, c.L, stride=c.stride, bias=False)
        self.separator = Separator(c)
        self.decoder = nn.ConvTranspose1d(c.N, 1, c.L, stride=c.stride, bias=False)

    # ------------------------------------------------------------------ geometry

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
        mix = as_batch(mix)
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
        check_n_src(n_src, self.n_src, "Conv-TasNet")
        mix = self._check_mix(mix)
        param = self.encoder.weight
        if not self.training and param.dtype == torch.float32:
            return self._folded()(mix)  # same function, faster on the CPU
        return self(mix.to(device=param.device, dtype=param.dtype))

    def _folded(self) -> FoldedInference:
        """The :class:`FoldedInference` of the current weights (rebuilt when any
        parameter is replaced or changed in place, e.g. by an optimiser step)."""
        from sepcli.models.conv_tasnet_folded import FoldedInference  # it imports this module

        products = self.products if self.config.norm_type == "gLN" else torch.float32
        key = (products, *((p.data_ptr(), p._version) for p in self.parameters()))
        cached = self.__dict__.get("_folded_cache")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_folded_cache"] = (key, FoldedInference(self, products))
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

