"""uPIT-LSTM: mask inference on STFT magnitudes with utterance-level
permutation invariant training (Kolbæk, Yu, Tan & Jensen, IEEE/ACM TASLP 2017).

Registered as family ``upit-lstm`` (its defaults: the non-causal BLSTM,
CPU-trainable); presets ``upit-lstm-causal`` (unidirectional LSTM, CPU-trainable) and
``upit-lstm-paper`` (causal, 46.2M parameters: the Conv-TasNet paper's Table IV
lists the causal uPIT-LSTM at 46.3M).

Network::

    mix [B, T] --STFT--> X [B, F, K] --log|X|, LayerNorm over F--> [B, K, F]
        --(B)LSTM x layers--> [B, K, H or 2H] --Linear, sigmoid--> masks [B, S, F, K]
        --masks * X (mixture phase)--> [B, S, F, K] --iSTFT--> est [B, S, T]

Choices worth knowing:

* Masks are a sigmoid per source and bin, in [0, 1] (the uPIT paper compared
  several activations; a bounded one keeps the product with the mixture
  stable). They need not sum to one.
* The loss is utterance-level PIT on the reconstructed *waveform* with
  negative SI-SNR (:func:`sepcli.losses.pit_si_snr_loss`), as for Conv-TasNet,
  rather than the paper's magnitude MSE: one objective for every family, and
  it trains through the mixture phase.
* The input features are the log magnitude normalised per frame (a LayerNorm
  over the F bins). Per frame, so it is causal; it also removes the mixture's
  level, which only shifts the log magnitude by a constant.

Framing (both variants): sqrt-Hann window of ``n_fft`` samples, hop ``hop``.
Frame k covers input samples ``[k*hop - (n_fft - hop), k*hop + hop)``: the
window *ends* one hop after its frame time instead of being centred on it.
It is computed with ``torch.stft``/``torch.istft(center=True)`` on the input
delayed by ``n_fft/2 - hop`` zeros (and ``n_fft/2`` more after its end), the
padding cut off again after the iSTFT, so every input sample lies under
``n_fft / hop`` frames and the output has exactly T samples. With
``causal=True`` (a unidirectional LSTM) output sample t depends on input
samples ``<= t + n_fft - 1`` only: the algorithmic latency is one window,
``n_fft`` samples (32 ms at the defaults); the causal model streams (``sep
stream``, equal to the offline forward: :mod:`sepcli.models.upit_lstm_stream`).
The non-causal BLSTM uses the same framing.

Shape legend: B batch, S sources, T samples, F frequency bins, K frames,
H hidden units per direction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from sepcli.inference.equalize import preset_limit
from sepcli.inference.settings import InferenceSettings
from sepcli.models.common import (
    ConfigMembers,
    PITMaskMembers,
    check_mix,
    check_n_src,
    check_positive_ints,
    check_ref,
    one_pass_presets,
)
from sepcli.registry import register, register_preset

if TYPE_CHECKING:
    from sepcli.models.upit_lstm_stream import UPITLSTMStreaming

# Floor inside the log of the magnitude: digital silence stays finite.
_LOG_EPS = 1e-8


@dataclass
class UPITLSTMConfig:
    """Hyper-parameters. Defaults: the CPU-sized non-causal model (3 BLSTM layers
    of 256 units per direction over 129 bins; 32 ms window, 16 ms hop)."""

    n_src: int = 2
    sample_rate: int = 8000
    n_fft: int = 256  # window and FFT length in samples (32 ms at 8 kHz): the causal latency
    hop: int = 128  # frame shift in samples (16 ms at 8 kHz)
    hidden: int = 256  # LSTM units per direction
    layers: int = 3
    causal: bool = False  # True: unidirectional LSTM; False: BLSTM
    dropout: float = 0.0  # between LSTM layers and before the mask layer
    LEGACY_KEYS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        # ValueError is turned into SepError by registry.make_config.
        check_positive_ints(self, "n_src", "sample_rate", "n_fft", "hop", "hidden", "layers")
        if self.n_fft < 4 or self.n_fft % 2:
            raise ValueError(f"n_fft must be an even integer >= 4, got {self.n_fft}")
        # sqrt-Hann analysis and synthesis need at least 2x overlap to invert,
        # and the causal delay n_fft/2 - hop must not be negative.
        if self.hop > self.n_fft // 2:
            raise ValueError(f"hop ({self.hop}) must be at most n_fft/2 ({self.n_fft // 2})")
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal must be true or false, got {self.causal!r}")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not (
            0.0 <= self.dropout < 1.0
        ):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def n_freq(self) -> int:
        """F, the number of STFT bins."""
        return self.n_fft // 2 + 1

    @property
    def bidirectional(self) -> bool:
        return not self.causal


@register("upit-lstm", UPITLSTMConfig)
class UPITLSTM(ConfigMembers, PITMaskMembers, nn.Module):
    """uPIT-LSTM: (B)LSTM masks on the mixture STFT, utterance-level PIT; defaults: CPU-sized, non-causal.

    ``forward(mix)``: Shape: [B, T] or [B, 1, T] -> [B, S, T], any T >= 1.
    """

    config: UPITLSTMConfig

    title = "uPIT-LSTM"  # in messages
    accepts_silent_sources: bool = False
    """Training contract: SI-SNR is undefined for a silent reference, so every
    batch has ``n_src`` speakers."""

    def __init__(self, config: UPITLSTMConfig | None = None) -> None:
        super().__init__()
        self.config = c = config if config is not None else UPITLSTMConfig()
        # Derived from the config, so not saved in checkpoints.
        self.register_buffer("window", torch.hann_window(c.n_fft, periodic=True).sqrt(), persistent=False)
        self.norm = nn.LayerNorm(c.n_freq)
        self.lstm = nn.LSTM(
            input_size=c.n_freq,
            hidden_size=c.hidden,
            num_layers=c.layers,
            batch_first=True,
            bidirectional=c.bidirectional,
            dropout=c.dropout if c.layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(c.dropout)
        self.mask = nn.Linear(c.hidden * (2 if c.bidirectional else 1), c.n_src * c.n_freq)

    # -- the SeparationModel protocol (sepcli.inference.protocol)

    receptive_field: int | None = None  # recurrent: everything since the chunk's start

    @property
    def latency(self) -> int:
        """Algorithmic latency of the causal model in samples: one window (``n_fft``)."""
        return self.config.n_fft

    @property
    def frame_hop(self) -> int:
        """STFT frame shift in samples: the unit of the averaged passes' delays."""
        return self.config.hop

    def inference_presets(self) -> dict[str, InferenceSettings]:
        """One pass at every quality, 30-s chunks as for dpcl: the LSTM state
        starts afresh in every chunk, and long chunks give it the most context
        (and the fewest chunk borders where speakers could swap).
        Channel normalisation as :func:`sepcli.inference.equalize.preset_limit` says."""
        return one_pass_presets(30.0, equalize=preset_limit(self.config.causal))

    def streaming_layout(self) -> UPITLSTMStreaming | None:
        """A causal model streams statefully (LSTM state and the overlap-add tail
        carried between steps: :mod:`sepcli.models.upit_lstm_stream`, run by
        :class:`sepcli.streaming.Streamer`); None for BLSTMs, which look ahead."""
        if not self.config.causal:
            return None
        from sepcli.models.upit_lstm_stream import UPITLSTMStreaming  # it imports this module

        return UPITLSTMStreaming(self)

    def frame_padding(self, n_samples: int) -> tuple[int, int]:
        """Zeros (left, right) around T samples under the frames :meth:`stft` takes:
        ``n_fft - hop`` on the left (the delay plus torch's centring), and on the
        right up to the end of the last of the ``1 + (T + n_fft - hop) // hop`` frames."""
        c = self.config
        left = c.n_fft - c.hop
        frames = 1 + (n_samples + c.n_fft - c.hop) // c.hop
        return left, (frames - 1) * c.hop + c.n_fft - left - n_samples

    # ------------------------------------------------------------------ signal processing

    @property
    def _delay(self) -> int:
        """Zeros put before the input so that centred frames end one hop after their time."""
        return self.config.n_fft // 2 - self.config.hop

    def stft(self, mix: torch.Tensor) -> torch.Tensor:
        """Complex STFT with the causal window alignment (module docstring).

        Shape: [N, T] -> [N, F, K] with K = 1 + (T + n_fft - hop) // hop.
        """
        c = self.config
        # n_fft/2 zeros after the end: frames until the last sample lies under as many
        # frames as any other, so the iSTFT divides every sample by the same window
        # sum and a stream (which may run extra all-zero frames) gives the same output
        delayed = nn.functional.pad(mix, (self._delay, c.n_fft // 2))  # [N, T + n_fft - hop]
        return torch.stft(delayed, n_fft=c.n_fft, hop_length=c.hop, win_length=c.n_fft, window=self.window,
                          center=True, pad_mode="constant", return_complex=True)

    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """Inverse of :meth:`stft`, exactly ``length`` samples. Shape: [N, F, K] -> [N, T]."""
        c = self.config
        out = torch.istft(spec, n_fft=c.n_fft, hop_length=c.hop, win_length=c.n_fft, window=self.window,
                          center=True, length=length + self._delay + c.n_fft // 2)  # [N, T + n_fft - hop]
        return out[:, self._delay : self._delay + length]

    def masks(self, spec: torch.Tensor) -> torch.Tensor:
        """Sigmoid masks from the mixture STFT. Shape: [B, F, K] -> [B, S, F, K]."""
        return self.run_masks(spec)[0]

    def run_masks(self, spec: torch.Tensor, state: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        """:meth:`masks` from a given LSTM state (None: zeros, a stream's start),
        also returning the state after the last frame: a stream of the causal
        model continues from it (:mod:`sepcli.models.upit_lstm_stream`).
        Shape: [B, F, K] -> ([B, S, F, K], (h, c))."""
        batch, n_freq, frames = spec.shape
        feats = torch.log(spec.abs() + _LOG_EPS).transpose(1, 2)  # [B, K, F]
        hidden, state = self.lstm(self.norm(feats), state)  # [B, K, H or 2H]
        scores = self.mask(self.drop(hidden))  # [B, K, S*F]
        scores = scores.view(batch, frames, self.n_src, n_freq).permute(0, 2, 3, 1)  # [B, S, F, K]
        return torch.sigmoid(scores), state

    # ------------------------------------------------------------------ forward

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate. Shape: [B, T] or [B, 1, T] -> [B, S, T]."""
        mix = check_mix(mix)
        batch, length = mix.shape
        spec = self.stft(mix)  # [B, F, K]
        masked = self.masks(spec) * spec[:, None]  # [B, S, F, K]
        est = self.istft(masked.flatten(0, 1), length)  # [B*S, T]
        return est.view(batch, self.n_src, length)

    def inference_weight(self) -> torch.Tensor:
        """The mask layer's weight: the mixture goes to its device and dtype (the STFT's window follows it)."""
        return self.mask.weight


# ``upit-lstm`` itself (the family's defaults) is the CPU-sized non-causal model: a
# preset may not share its family's name.
register_preset(
    "upit-lstm-causal",
    "upit-lstm",
    "causal (32 ms latency, streams), CPU-sized: 3 LSTM layers of 384 units",
    causal=True, layers=3, hidden=384, n_fft=256, hop=128,
)
register_preset(
    "upit-lstm-paper",
    "upit-lstm",
    "size of the Conv-TasNet paper's causal uPIT-LSTM (46.3M): 3 LSTM layers of 1500 units, "
    "32 ms window, 8 ms hop (streams)",
    causal=True, layers=3, hidden=1500, n_fft=256, hop=64,
)

__all__ = ["UPITLSTM", "UPITLSTMConfig", "check_mix", "check_n_src", "check_positive_ints", "check_ref"]
