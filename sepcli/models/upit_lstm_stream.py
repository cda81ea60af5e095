"""Stateful streaming of a causal uPIT-LSTM, equal to its offline forward.

The generic :class:`sepcli.inference.streaming.Streamer` buffers and frames the
input as :meth:`UPITLSTM.frame_padding` describes the offline STFT's frames
(``n_fft - hop`` zeros in front); this module holds one stream's state per lane
and runs the steps:

* the LSTM state ``(h, c)`` after the last frame;
* the overlap-add tail: the last ``n_fft - hop`` samples of the windowed
  inverse FFTs, which later frames still add to.

Every other part (window and FFT, log magnitude, LayerNorm over F, mask layer,
inverse FFT) works frame by frame. ``torch.istft`` divides the overlap-add by
the summed squared windows: every sample a step emits lies under all the
frames that cover it, so its divisor is the full sum (periodic in the hop).
Offline, frames run until the last input sample is under as many frames as any
other, so the tail that :meth:`UPITLSTMStream.drain` returns at the end of a
stream lies wholly after the input (the Streamer cuts it off).

Reached only through ``UPITLSTM.streaming_layout()``. No compiled kernel: the
layout's ``backends`` is ``("torch",)``.

Shape legend: G lanes, S sources, F frequency bins, K frames.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sepcli.errors import SepError
from sepcli.models.common import TorchStepLayout
from sepcli.models.upit_lstm import UPITLSTM


def _envelopes(window: torch.Tensor, hop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed squared windows at the samples a step emits (offset r in [0, hop)
    from a frame's start: that frame and every earlier one that still covers it)
    and at the tail after the last frame (offsets hop + i). Shapes: [hop], [n_fft - hop]."""
    sq = window.double().square()  # [n_fft]
    n_fft = sq.shape[0]

    def summed(offsets: torch.Tensor) -> torch.Tensor:
        # offsets + d*hop for d = 0, 1, ... while inside the window
        idx = offsets[:, None] + hop * torch.arange(-(-n_fft // hop) + 1)[None]  # [P, D]
        return torch.where(idx < n_fft, sq[idx.clamp(max=n_fft - 1)], 0.0).sum(1)

    full = summed(torch.arange(hop))
    tail = summed(torch.arange(hop, n_fft))
    return full, tail


class UPITLSTMStream:
    """One stream's state of ``lanes`` lanes (a :class:`~sepcli.inference.protocol.StreamingNetwork`)."""

    def __init__(self, model: UPITLSTM, lanes: int) -> None:
        self.model = model
        self.lanes = lanes
        c = model.config
        self.n_fft, self.hop = c.n_fft, c.hop
        self.window = model.window
        self.device, self.dtype = self.window.device, model.mask.weight.dtype
        full, tail = _envelopes(self.window, self.hop)
        self._env_full = full.to(self.device, self.dtype)  # [hop]
        self._env_tail = tail.to(self.device, self.dtype)  # [n_fft - hop]
        self.reset()

    def reset(self) -> None:
        self._state: tuple | None = None  # zeros: the LSTM's state before frame 0
        self._tail = torch.zeros(self.lanes, self.model.n_src, self.n_fft - self.hop,
                                 device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def step(self, xs: list[torch.Tensor], frames: int) -> torch.Tensor:
        """The next ``frames`` frames of every lane. Shape: xs [(K-1)*hop + n_fft] per lane
        -> [G, S, K*hop], the output hops these frames complete."""
        x = torch.stack(xs).to(device=self.device, dtype=self.dtype)  # [G, (K-1)*hop + n_fft]
        windows = x.unfold(-1, self.n_fft, self.hop)  # [G, K, n_fft]
        if windows.shape[1] != frames:
            raise SepError(f"uPIT-LSTM stream: expected {frames} frames, got {windows.shape[1]}")
        spec = torch.fft.rfft(windows * self.window, dim=-1).transpose(1, 2)  # [G, F, K]: torch.stft's
        masks, self._state = self.model.run_masks(spec, self._state)  # [G, S, F, K]
        masked = masks * spec[:, None]  # [G, S, F, K]
        pieces = torch.fft.irfft(masked.transpose(2, 3), n=self.n_fft, dim=-1) * self.window  # [G, S, K, n_fft]
        G, S, K, _ = pieces.shape
        length = (K - 1) * self.hop + self.n_fft
        # overlap-add of the K frames, then the previous frames' tail on top
        acc = F.fold(pieces.reshape(G * S, K, self.n_fft).transpose(1, 2), output_size=(1, length),
                     kernel_size=(1, self.n_fft), stride=(1, self.hop)).view(G, S, length)
        acc[..., : self.n_fft - self.hop] += self._tail
        self._tail = acc[..., K * self.hop :].clone()  # [G, S, n_fft - hop]
        return acc[..., : K * self.hop] / self._env_full.repeat(K)  # [G, S, K*hop]

    def drain(self) -> torch.Tensor:
        """The tail after the last frame, divided by its partial window sum as
        ``torch.istft`` would (it lies after the input's end, so the Streamer
        drops it; returned for the protocol's sake). Shape: [G, S, n_fft - hop]."""
        tail, self._tail = self._tail, torch.zeros_like(self._tail)
        return tail / self._env_tail


class UPITLSTMStreaming(TorchStepLayout):
    """A causal uPIT-LSTM's :class:`~sepcli.inference.protocol.StreamingLayout`."""

    model: UPITLSTM

    def __init__(self, model: UPITLSTM) -> None:
        super().__init__(model, model.config.n_fft, model.config.hop, model.mask.weight,
                         "uPIT-LSTM (a unidirectional LSTM)")

    def frame_padding(self, n_samples: int) -> tuple[int, int]:
        """As the offline STFT frames T samples (:meth:`UPITLSTM.frame_padding`)."""
        return self.model.frame_padding(n_samples)

    def network(self, lanes: int, chunk_size: int | None, backend: str, max_frames: int) -> UPITLSTMStream:
        """A new stream of ``lanes`` lanes (chunk_size, backend and max_frames need no buffers here)."""
        return UPITLSTMStream(self.model, lanes)


__all__ = ["UPITLSTMStream", "UPITLSTMStreaming"]
