"""Stateful streaming of a causal LSTM-TasNet, equal to its offline forward.

The generic :class:`sepcli.inference.streaming.Streamer` buffers and frames the
input exactly as :meth:`LSTMTasNet.frame_padding` pads it; this module holds
one stream's state per lane and runs the steps:

* the LSTM states ``(h, c)`` of every block after the last frame (a
  unidirectional LSTM over frames 0..k is the same computation whether the
  frames come at once or in pieces, given the state in between);
* the overlap-add tail: the second half of the last frame's decoded output
  (frames overlap by half, L = 2 * hop), which the next frame completes.

Every other layer (segment norm, gated encoder, LayerNorm over N, mask layer,
decoder basis) works frame by frame. Reached only through
``LSTMTasNet.streaming_layout()``. There is no compiled kernel for it: the
layout's ``backends`` is ``("torch",)``, so the Streamer runs ``"auto"`` as torch.

Shape legend: G lanes, S sources, K frames, N basis signals, L frame length.
"""
from __future__ import annotations

import torch

from sepcli.errors import SepError
from sepcli.models.common import TorchStepLayout
from sepcli.models.lstm_tasnet import LSTMTasNet


class LSTMTasNetStream:
    """One stream's state of ``lanes`` lanes (a :class:`~sepcli.inference.protocol.StreamingNetwork`)."""

    def __init__(self, model: LSTMTasNet, lanes: int) -> None:
        self.model = model
        self.lanes = lanes
        self.hop = model.config.stride
        weight = model.decoder.weight  # [N, 1, L]
        self.device, self.dtype = weight.device, weight.dtype
        self.reset()

    def reset(self) -> None:
        self._states: list | None = None  # zeros: the LSTMs' state before frame 0
        self._tail = torch.zeros(self.lanes, self.model.n_src, self.hop, device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def step(self, xs: list[torch.Tensor], frames: int) -> torch.Tensor:
        """The next ``frames`` frames of every lane. Shape: xs [(K-1)*hop + L] per lane
        -> [G, S, K*hop], the output hops these frames complete."""
        c = self.model.config
        x = torch.stack(xs).to(device=self.device, dtype=self.dtype)  # [G, (K-1)*hop + L]
        windows = x.unfold(-1, c.L, self.hop)  # [G, K, L]
        if windows.shape[1] != frames:
            raise SepError(f"LSTM-TasNet stream: expected {frames} frames, got {windows.shape[1]}")
        masked, self._states = self.model.masked_encoding(windows, self._states)  # [G, S, K, N]
        # each frame's decoded samples, then overlap-add by halves: [G, S, K, L]
        decoded = torch.einsum("gskn,nl->gskl", masked, self.model.decoder.weight[:, 0])
        first, second = decoded[..., : self.hop], decoded[..., self.hop :]  # [G, S, K, hop] each
        prev = torch.cat((self._tail[:, :, None], second[:, :, :-1]), 2)  # [G, S, K, hop]
        self._tail = second[:, :, -1].clone()  # [G, S, hop]
        return (first + prev).flatten(2)  # [G, S, K*hop]

    def drain(self) -> torch.Tensor:
        """The last frame's second half, which no later frame adds to. Shape: [G, S, hop]."""
        tail, self._tail = self._tail, torch.zeros_like(self._tail)
        return tail


class LSTMTasNetStreaming(TorchStepLayout):
    """A causal LSTM-TasNet's :class:`~sepcli.inference.protocol.StreamingLayout`."""

    model: LSTMTasNet

    def __init__(self, model: LSTMTasNet) -> None:
        super().__init__(model, model.config.L, model.config.stride, model.decoder.weight,
                         "LSTM-TasNet (unidirectional LSTMs)")

    def frame_padding(self, n_samples: int) -> tuple[int, int]:
        """As the offline forward pads T samples (:meth:`LSTMTasNet.frame_padding`)."""
        return self.model.frame_padding(n_samples)

    def network(self, lanes: int, chunk_size: int | None, backend: str, max_frames: int) -> LSTMTasNetStream:
        """A new stream of ``lanes`` lanes (chunk_size, backend and max_frames need no buffers here)."""
        return LSTMTasNetStream(self.model, lanes)


__all__ = ["LSTMTasNetStream", "LSTMTasNetStreaming"]
