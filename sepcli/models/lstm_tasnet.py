"""LSTM-TasNet: the original time-domain audio separation network (Luo &
Mesgarani, ICASSP 2018), the recurrent predecessor of Conv-TasNet.

Registered as family ``lstm-tasnet`` (its defaults: a CPU-trainable
non-causal model with BLSTMs); presets ``lstm-tasnet-causal`` (CPU-trainable,
unidirectional) and ``lstm-tasnet-paper`` (causal, N=500, L=40, 4 LSTM layers
of 1000 units: 31.1M parameters; the Conv-TasNet paper's Table IV lists 32.0M).

Network::

    mix [B, T] --frames of L, hop L/2--> x [B, K, L] --/ ||x_k||--> [B, K, L]
      encoder: w = ReLU(U x) * sigmoid(V x)                          [B, K, N]
      LayerNorm(N), then LSTM blocks of 2 layers; every block after the first
      adds its input to its output (identity skip, as in the paper)  [B, K, H or 2H]
      Linear -> masks (softmax over the S speakers, or sigmoid)      [B, S, K, N]
      decoder: (masks * w) * ||x_k|| --ConvTranspose1d (basis, overlap-add)--> [B, S, T]

Choices worth knowing:

* ``segment_norm`` (default on, as in the paper): every frame is divided by its
  L2 norm before the encoder and the decoder's output for that frame is scaled
  by it again, so the encoder sees level-free shapes. The decoder is linear
  without bias, so scaling the masked weights by the norm before the
  transposed convolution is the same as scaling the decoded frame.
* Frames overlap by half (stride L/2, as Conv-TasNet); the ICASSP paper used
  non-overlapping frames. Framing is Conv-TasNet's: ``L - L/2`` zeros on the
  left and enough on the right that every sample lies under two frames; the
  output is cropped back to exactly T samples.
* ``mask="softmax"`` (the paper's): the S masks sum to one at every frame and
  basis, so the separated encodings add up to the mixture's. ``"sigmoid"``
  gives independent masks (Conv-TasNet's).
* With ``causal=True`` (unidirectional LSTMs; every other layer works frame by
  frame) output sample t depends on input samples ``<= t + L - 1`` only: the
  algorithmic latency is one frame, L samples (5 ms for the paper's L=40 at
  8 kHz). The causal model streams (``sep stream``; equal to the offline
  forward): :mod:`sepcli.models.lstm_tasnet_stream`.

Shape legend: B batch, S sources, T samples, K frames, and TasNet's N (basis
signals), L (frame length in samples), H (LSTM units per direction).
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
from sepcli.models.common import ConfigMembers, PITMaskMembers, check_mix, check_positive_ints, one_pass_presets
from sepcli.registry import register, register_preset

if TYPE_CHECKING:
    from sepcli.models.lstm_tasnet_stream import LSTMTasNetStreaming

_MASKS = ("softmax", "sigmoid")
_EPS = 1e-8  # added to the frame norms: a silent frame stays silent instead of dividing by zero


@dataclass
class LSTMTasNetConfig:
    """Hyper-parameters. Defaults: the CPU-sized non-causal model."""

    n_src: int = 2
    sample_rate: int = 8000
    N: int = 128  # basis signals (encoder outputs per frame)
    L: int = 64  # frame length in samples (stride L/2); coarser than the paper's 40 to train on a CPU
    hidden: int = 128  # LSTM units per direction
    layers: int = 4  # LSTM layers, in blocks of 2 with an identity skip around every block after the first
    causal: bool = False  # True: unidirectional LSTMs; False: BLSTMs
    mask: str = "softmax"  # over the speakers (paper), or "sigmoid"
    segment_norm: bool = True  # divide each frame by its L2 norm before encoding (paper)
    dropout: float = 0.0  # between LSTM layers
    LEGACY_KEYS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        # ValueError is turned into SepError by registry.make_config.
        check_positive_ints(self, "n_src", "sample_rate", "N", "hidden", "layers")
        if isinstance(self.L, bool) or not isinstance(self.L, int) or self.L < 2 or self.L % 2:
            raise ValueError(f"L must be an even integer >= 2, got {self.L!r}")
        for name in ("causal", "segment_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.mask not in _MASKS:
            raise ValueError(f"mask must be one of {', '.join(_MASKS)}, got {self.mask!r}")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not (
            0.0 <= self.dropout < 1.0
        ):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def stride(self) -> int:
        return self.L // 2

    @property
    def bidirectional(self) -> bool:
        return not self.causal


class GatedEncoder(nn.Module):
    """TasNet's encoder: ``ReLU(U x) * sigmoid(V x)`` per frame, U and V [N, L]
    without bias. Shape: frames [B, K, L] -> [B, K, N]."""

    def __init__(self, N: int, L: int) -> None:
        super().__init__()
        self.U = nn.Linear(L, N, bias=False)
        self.V = nn.Linear(L, N, bias=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.U(frames)) * torch.sigmoid(self.V(frames))


class MaskLSTM(nn.Module):
    """LayerNorm over N, LSTM blocks of (at most) two layers with identity skips
    around every block after the first, and the mask layer.

    Shape: [B, K, N] -> masks [B, S, K, N].
    """

    def __init__(self, c: LSTMTasNetConfig) -> None:
        super().__init__()
        self.n_src, self.N, self.mask_kind = c.n_src, c.N, c.mask
        width = c.hidden * (2 if c.bidirectional else 1)
        self.norm = nn.LayerNorm(c.N)
        sizes = [2] * (c.layers // 2) + [1] * (c.layers % 2)
        self.blocks = nn.ModuleList(
            nn.LSTM(input_size=c.N if i == 0 else width, hidden_size=c.hidden, num_layers=n, batch_first=True,
                    bidirectional=c.bidirectional, dropout=c.dropout if n > 1 else 0.0)
            for i, n in enumerate(sizes)
        )
        self.drop = nn.Dropout(c.dropout)
        self.fc = nn.Linear(width, c.n_src * c.N)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.run(w)[0]

    def run(self, w: torch.Tensor, states: list | None = None) -> tuple[torch.Tensor, list]:
        """:meth:`forward` from given LSTM states (None: zeros, a stream's start),
        also returning the states after the last frame: a stream of the causal
        model continues from them (:mod:`sepcli.models.lstm_tasnet_stream`).
        Shape: [B, K, N] -> ([B, S, K, N], one ``(h, c)`` per block)."""
        batch, frames, _ = w.shape
        states = states or [None] * len(self.blocks)
        h, first = self.blocks[0](self.norm(w), states[0])  # [B, K, H or 2H]
        after = [first]
        for block, state in zip(self.blocks[1:], states[1:], strict=True):
            out, last = block(self.drop(h), state)
            h = h + out  # identity skip: the block learns a residual
            after.append(last)
        scores = self.fc(h).view(batch, frames, self.n_src, self.N)  # [B, K, S, N]
        scores = scores.transpose(1, 2)  # [B, S, K, N]
        masks = torch.softmax(scores, dim=1) if self.mask_kind == "softmax" else torch.sigmoid(scores)
        return masks, after


@register("lstm-tasnet", LSTMTasNetConfig)
class LSTMTasNet(ConfigMembers, PITMaskMembers, nn.Module):
    """LSTM-TasNet: gated encoder, (B)LSTM masks, linear decoder; defaults: CPU-sized, non-causal.

    ``forward(mix)``: Shape: [B, T] or [B, 1, T] -> [B, S, T], any T >= 1.
    """

    config: LSTMTasNetConfig

    title = "LSTM-TasNet"  # in messages
    accepts_silent_sources: bool = False
    """Training contract: SI-SNR is undefined for a silent reference, so every
    batch has ``n_src`` speakers."""

    def __init__(self, config: LSTMTasNetConfig | None = None) -> None:
        super().__init__()
        self.config = c = config if config is not None else LSTMTasNetConfig()
        self.encoder = GatedEncoder(c.N, c.L)
        self.separator = MaskLSTM(c)
        # The paper's basis signals B [N, L]: overlap-added by a transposed conv.
        self.decoder = nn.ConvTranspose1d(c.N, 1, c.L, stride=c.stride, bias=False)

    # -- the SeparationModel protocol (sepcli.inference.protocol)

    receptive_field: int | None = None  # recurrent: everything since the chunk's start

    @property
    def latency(self) -> int:
        """Algorithmic latency of the causal model in samples: one frame (L)."""
        return self.config.L

    @property
    def frame_hop(self) -> int:
        """Frame shift in samples (L/2): the unit of the averaged passes' delays."""
        return self.config.stride

    def inference_presets(self) -> dict[str, InferenceSettings]:
        """One pass at every quality, 30-s chunks as for dpcl and Conv-TasNet:
        the LSTM state starts afresh in every chunk, and long chunks give it the
        most context and the fewest borders where speakers could swap.
        Channel normalisation as :func:`sepcli.inference.equalize.preset_limit` says."""
        return one_pass_presets(30.0, equalize=preset_limit(self.config.causal))

    def streaming_layout(self) -> LSTMTasNetStreaming | None:
        """A causal model streams statefully (LSTM states and half a frame of
        overlap-add carried between steps: :mod:`sepcli.models.lstm_tasnet_stream`,
        run by :class:`sepcli.streaming.Streamer`); None for BLSTMs, which look ahead."""
        if not self.config.causal:
            return None
        from sepcli.models.lstm_tasnet_stream import LSTMTasNetStreaming  # it imports this module

        return LSTMTasNetStreaming(self)

    # ------------------------------------------------------------------ forward

    def frame_padding(self, n_samples: int) -> tuple[int, int]:
        """Zeros padded (left, right) around T samples so that the frames tile
        the signal and every sample lies under two frames (Conv-TasNet's framing)."""
        c = self.config
        left = c.L - c.stride
        span = left + n_samples + (c.L - c.stride)
        n_frames = max(1, math.ceil((span - c.L) / c.stride)) + 1
        right = (n_frames - 1) * c.stride + c.L - left - n_samples
        return left, right

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate. Shape: [B, T] or [B, 1, T] -> [B, S, T]."""
        mix = check_mix(mix)
        c = self.config
        batch, n_samples = mix.shape
        left, right = self.frame_padding(n_samples)
        frames = F.pad(mix, (left, right)).unfold(-1, c.L, c.stride)  # [B, K, L]
        masked = self.masked_encoding(frames)[0]  # [B, S, K, N]
        masked = masked.flatten(0, 1).transpose(1, 2)  # [B*S, N, K]
        out = self.decoder(masked).view(batch, self.n_src, -1)  # [B, S, T_pad]
        return out[..., left:left + n_samples]

    def masked_encoding(self, frames: torch.Tensor, states: list | None = None) -> tuple[torch.Tensor, list]:
        """The decoder's input: each speaker's masked encoding, the frame's norm
        multiplied back in (the decoder is linear), and the LSTM states after the
        last frame (``states``: the ones to start from; :meth:`MaskLSTM.run`).
        Shape: frames [B, K, L] -> ([B, S, K, N], states)."""
        if self.config.segment_norm:
            gain = frames.norm(dim=-1, keepdim=True) + _EPS  # [B, K, 1]
            frames = frames / gain
        w = self.encoder(frames)  # [B, K, N]
        masks, states = self.separator.run(w, states)  # [B, S, K, N]
        masked = masks * w[:, None]
        if self.config.segment_norm:
            masked = masked * gain[:, None]
        return masked, states


# ``lstm-tasnet`` itself (the family's defaults) is the CPU-sized non-causal model:
# a preset may not share its family's name.
register_preset(
    "lstm-tasnet-causal",
    "lstm-tasnet",
    "causal (8 ms latency, streams), CPU-sized: N=128 L=64, 4 LSTM layers of 192 units",
    causal=True, N=128, L=64, hidden=192, layers=4,
)
register_preset(
    "lstm-tasnet-paper",
    "lstm-tasnet",
    "the Conv-TasNet paper's causal LSTM-TasNet (32.0M): N=500 L=40, 4 LSTM layers of 1000 units, "
    "skip around layers 3-4 (streams)",
    causal=True, N=500, L=40, hidden=1000, layers=4,
)

__all__ = ["GatedEncoder", "LSTMTasNet", "LSTMTasNetConfig", "MaskLSTM"]
