"""SuDoRM-RF: SUccessive DOwnsampling and Resampling of Multi-Resolution
Features (Tzinis, Wang & Smaragdis, MLSP 2020; Tzinis, Wang, Jiang & Smaragdis,
"Compute and memory efficient universal sound source separation", J. Signal
Process. Syst. 2022). A time-domain mask network built for low compute.

Registered as family ``sudormrf`` (its defaults: a CPU-sized model of 1.32M
parameters); preset ``sudormrf-paper`` (the papers' "SuDoRM-RF 1.0x": N=512,
L=21, B=128, C=512, Q=4, R=16; 2.62M parameters, see below).

Network (module names are stable: checkpoints name them)::

    mix [B, T] --pad (frame_padding)--> [B, 1, T_pad]
    model.encoder              Conv1d(1, N, L, stride=L//2, bias=False), then ReLU  w [B, N, K]
    model.separator.norm       GlobalLayerNorm(N)
    model.separator.bottleneck Conv1d(N, B, 1)                                          [B, B, K]
    model.separator.blocks     R x UConvBlock (residual, [B, B, K] -> [B, B, K]):
        .expand, .expand_norm, .expand_act   Conv1d(B, C, 1), gLN, PReLU              [B, C, K]
        .levels[q], .level_norms[q]          depthwise Conv1d(C, C, 5, groups=C), gLN;
                                             stride 1 for q = 0, else 2: level q has K / 2**q frames
        fuse: from the coarsest level up, upsample x2 (nearest) and add to the next finer one
        .out_norm, .out_act, .project        gLN, PReLU, Conv1d(C, B, 1), added to the block input
    model.separator.prelu, .mask_conv   PReLU, Conv1d(B, S*N, 1), then softmax over S (or ReLU)
    model.decoder              ConvTranspose1d(N, 1, L, stride=L//2, bias=False): (masks * w) -> [B, S, T]

Choices worth knowing:

* The U-ConvBlock is the journal version's ("improved" SuDoRM-RF in the authors'
  code): gLN and PReLU before the 1x1 back to B channels and a plain residual
  (the MLSP version also normalised after that 1x1 and put gLN and PReLU after
  the residual sum). Q counts resolutions, as
  the authors' ``upsampling_depth`` does: Q depthwise convolutions, the first at
  the full frame rate and each next one halving it (Q-1 downsamplings).
* The mask estimator is the journal version's (PReLU, one 1x1 convolution to S*N
  channels); ``mask="softmax"`` (default, the MLSP paper's) makes the S masks sum
  to one, so the separated encodings add up to the mixture's and, with the one
  decoder every source shares (as Conv-TasNet), the estimates add up to the
  decoder's reconstruction of the mixture. ``"relu"`` gives the journal
  version's independent masks. The authors' decoders differ: the MLSP one gives
  each source its own basis (S*N*L weights), the journal one decodes each source
  from all S*N masked channels (S*S*N*L); one shared basis keeps that sum with N*L.
* Framing: ``L - L//2`` zeros on the left (as Conv-TasNet) and on the right enough
  that every sample lies under as many frames as an interior one and the number
  of frames K is a multiple of 2**(Q-1), so every downsampling halves exactly and
  the nearest upsampling lands back on the finer grid; the output is cropped to
  exactly T samples. Any T >= 1 works, including T < L.
* Non-causal only: gLN normalises over the whole chunk, so an output sample depends
  on every input sample of its chunk (``receptive_field`` None) and the model
  cannot stream (``streaming_layout()`` None; ``sep stream`` refuses it).

Parameters of ``sudormrf-paper`` (2 sources): 2,622,625. Counted from the
authors' released definitions with the same sizes, their MLSP model has
2.58M and their journal ("improved") one 2.65M; this one is the journal
version with the shared decoder described above (32,256 fewer).

Shape legend: B batch (B also names the bottleneck channels, as in Conv-TasNet's
paper), S sources, T samples, K frames, and the paper's N (basis signals), L
(basis length in samples), C (channels inside a U-ConvBlock), Q (resolutions per
block), R (blocks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sepcli.inference.settings import InferenceSettings
from sepcli.models.common import ConfigMembers, PITMaskMembers, check_mix, check_positive_ints, one_pass_presets
from sepcli.models.conv_tasnet import GlobalLayerNorm
from sepcli.registry import register, register_preset

_MASKS = ("softmax", "relu")
_KERNEL = 5  # the depthwise convolutions' width at every resolution (the papers')


@dataclass
class SuDORMRFConfig:
    """Hyper-parameters. Defaults: the CPU-sized model (1.32M parameters)."""

    n_src: int = 2
    sample_rate: int = 8000
    N: int = 256  # basis signals (encoder outputs per frame)
    # Conv-TasNet's shipped framing (hop 16, 2 ms at 8 kHz): at the papers' hop of 8-10
    # samples the full-rate 1x1 convolutions made a training step as slow on CPU as the
    # shipped Conv-TasNet's; at hop 16 it is about 2x faster per second of audio.
    L: int = 32  # basis length in samples (stride L//2 = 16)
    B: int = 128  # bottleneck channels between the blocks
    C: int = 512  # channels inside a block (the papers')
    Q: int = 4  # resolutions per block: Q-1 successive halvings of the frame rate
    R: int = 8  # U-ConvBlocks
    mask: str = "softmax"  # over the sources (MLSP paper), or "relu" (journal version)
    LEGACY_KEYS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        # ValueError is turned into SepError by registry.make_config.
        check_positive_ints(self, "n_src", "sample_rate", "N", "B", "C", "Q", "R")
        if isinstance(self.L, bool) or not isinstance(self.L, int) or self.L < 2:
            raise ValueError(f"L must be an integer >= 2, got {self.L!r}")
        if self.mask not in _MASKS:
            raise ValueError(f"mask must be one of {', '.join(_MASKS)}, got {self.mask!r}")

    @property
    def stride(self) -> int:
        return self.L // 2

    @property
    def frame_multiple(self) -> int:
        """K is padded to a multiple of this: every downsampling then halves exactly."""
        return 2 ** (self.Q - 1)


class UConvBlock(nn.Module):
    """One U-ConvBlock: expand to C channels, analyse at Q resolutions with
    depthwise convolutions, sum them back up at the full rate, project to B
    channels and add the block's input.

    Shape: [B, B, K] -> [B, B, K], K a multiple of 2**(Q-1).
    """

    def __init__(self, B: int, C: int, Q: int) -> None:
        super().__init__()
        self.expand = nn.Conv1d(B, C, 1)
        self.expand_norm = GlobalLayerNorm(C)
        self.expand_act = nn.PReLU()
        # level 0 keeps the frame rate; every later one halves its predecessor's
        self.levels = nn.ModuleList(
            nn.Conv1d(C, C, _KERNEL, stride=1 if q == 0 else 2, padding=_KERNEL // 2, groups=C) for q in range(Q)
        )
        self.level_norms = nn.ModuleList(GlobalLayerNorm(C) for _ in range(Q))
        self.out_norm = GlobalLayerNorm(C)
        self.out_act = nn.PReLU()
        self.project = nn.Conv1d(C, B, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand_act(self.expand_norm(self.expand(x)))  # [B, C, K]
        levels = []
        for conv, norm in zip(self.levels, self.level_norms, strict=True):
            h = norm(conv(h))  # [B, C, K / 2**q]
            levels.append(h)
        fused = levels.pop()
        while levels:
            finer = levels.pop()
            # K is a multiple of 2**(Q-1), so this is an exact x2 repeat of every frame
            fused = finer + F.interpolate(fused, size=finer.shape[-1], mode="nearest")
        return x + self.project(self.out_act(self.out_norm(fused)))


class Separator(nn.Module):
    """gLN and bottleneck, the U-ConvBlocks, and the masks.

    Shape: encoder output w [B, N, K] -> masks [B, S, N, K].
    """

    def __init__(self, c: SuDORMRFConfig) -> None:
        super().__init__()
        self.n_src, self.N, self.mask_kind = c.n_src, c.N, c.mask
        self.norm = GlobalLayerNorm(c.N)
        self.bottleneck = nn.Conv1d(c.N, c.B, 1)
        self.blocks = nn.Sequential(*(UConvBlock(c.B, c.C, c.Q) for _ in range(c.R)))
        self.prelu = nn.PReLU()
        self.mask_conv = nn.Conv1d(c.B, c.n_src * c.N, 1)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.bottleneck(self.norm(w)))  # [B, B, K]
        scores = self.mask_conv(self.prelu(h))  # [B, S*N, K]
        scores = scores.view(w.shape[0], self.n_src, self.N, -1)  # [B, S, N, K]
        return torch.softmax(scores, dim=1) if self.mask_kind == "softmax" else torch.relu(scores)


@register("sudormrf", SuDORMRFConfig)
class SuDORMRF(ConfigMembers, PITMaskMembers, nn.Module):
    """SuDoRM-RF: conv encoder, U-ConvBlock masks at several resolutions, conv decoder; defaults: CPU-sized.

    ``forward(mix)``: Shape: [B, T] or [B, 1, T] -> [B, S, T], any T >= 1.
    """

    config: SuDORMRFConfig

    title = "SuDoRM-RF"  # in messages
    accepts_silent_sources: bool = False
    """Training contract: SI-SNR is undefined for a silent reference, so every
    batch has ``n_src`` speakers."""

    # -- the SeparationModel protocol (sepcli.inference.protocol)

    causal: bool = False  # gLN looks at the whole chunk; there is no causal variant here
    receptive_field: int | None = None  # gLN: every output sample depends on the whole chunk

    def __init__(self, config: SuDORMRFConfig | None = None) -> None:
        super().__init__()
        self.config = c = config if config is not None else SuDORMRFConfig()
        self.encoder = nn.Conv1d(1, c.N, c.L, stride=c.stride, bias=False)
        self.separator = Separator(c)
        # One basis [N, L] for every source: the softmax masks' estimates then sum to the mixture's decoding.
        self.decoder = nn.ConvTranspose1d(c.N, 1, c.L, stride=c.stride, bias=False)

    @property
    def frame_hop(self) -> int:
        """Encoder frame shift in samples (L//2): the unit of the averaged passes' delays."""
        return self.config.stride

    def inference_presets(self) -> dict[str, InferenceSettings]:
        """One pass at every quality over 30-s chunks, as the other families: gLN
        normalises per chunk, and long chunks leave the fewest borders where the
        speakers could swap. Nothing here was tuned on valid speakers yet."""
        return one_pass_presets(30.0)

    def streaming_layout(self) -> None:
        """None: a non-causal (gLN) model cannot be streamed statefully."""
        return None

    # ------------------------------------------------------------------ forward

    def frame_padding(self, n_samples: int) -> tuple[int, int]:
        """Zeros padded (left, right) around T samples so that every sample lies
        under as many frames as an interior one and the frame count K is a
        multiple of 2**(Q-1) (module docstring, "Framing")."""
        c = self.config
        left = c.L - c.stride
        covered = 2 * left + n_samples  # the last sample also gets a full overlap
        frames = 1 + max(1, math.ceil((covered - c.L) / c.stride))
        frames = -(-frames // c.frame_multiple) * c.frame_multiple  # round up
        return left, (frames - 1) * c.stride + c.L - left - n_samples

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate. Shape: [B, T] or [B, 1, T] -> [B, S, T]."""
        mix = check_mix(mix)
        batch, n_samples = mix.shape
        left, right = self.frame_padding(n_samples)
        w = torch.relu(self.encoder(F.pad(mix, (left, right))[:, None]))  # [B, N, K]
        masked = self.separator(w) * w[:, None]  # [B, S, N, K]
        out = self.decoder(masked.flatten(0, 1))  # [B*S, 1, T_pad]
        out = out.view(batch, self.n_src, -1)  # [B, S, T_pad]
        return out[..., left : left + n_samples]


# ``sudormrf`` itself (the family's defaults) is the CPU-sized model: a preset may
# not share its family's name.
register_preset(
    "sudormrf-paper",
    "sudormrf",
    "the papers' SuDoRM-RF 1.0x (non-causal, gLN): N=512 L=21 B=128 C=512 Q=4 R=16, shared decoder",
    N=512, L=21, B=128, C=512, Q=4, R=16,
)

__all__ = ["Separator", "SuDORMRF", "SuDORMRFConfig", "UConvBlock"]
