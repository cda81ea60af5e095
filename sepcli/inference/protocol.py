"""What every model family offers inference: the :class:`SeparationModel` protocol.

The engine, :class:`sepcli.api.Separator` and the streamer use these members
only; nothing is probed by name. A plain ``nn.Module`` that follows just the
registry's training contract (``config.sample_rate``, ``config.n_src``,
``forward``) is wrapped by :func:`describe` with neutral defaults (one pass,
float32, no streaming). A family that streams statefully returns a
:class:`StreamingLayout` from ``streaming_layout()``; the generic
:class:`sepcli.streaming.Streamer` buffers, frames and times the input and
runs the family's :class:`StreamingNetwork` step by step.

Shape: mix ``[B, T]`` -> ``[B, S, T]`` (B batch, S sources, T samples).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from sepcli.errors import SepError
from sepcli.inference.settings import InferenceSettings


class StreamingNetwork(Protocol):
    """One stream's state of a streaming family, for G lanes in lockstep (copies
    of the stream that share every product; :class:`sepcli.streaming.AveragedStreamer`)."""

    device: torch.device
    dtype: torch.dtype

    def reset(self) -> None:
        """Start a new stream (the state before the first sample)."""
        ...

    def step(self, xs: list[torch.Tensor], frames: int) -> torch.Tensor:
        """The next ``frames`` frames of every lane, in order since the stream's start.
        Shape: xs [(K-1)*hop + frame_length] per lane -> [G, S, K*hop], the output
        hops these frames complete (the first ones belong to the left padding)."""
        ...

    def drain(self) -> torch.Tensor:
        """At the end of the stream: the output that only past frames still add to.
        Shape: [G, S, n] (n fixed by the family, n >= 0)."""
        ...


class StreamingLayout(Protocol):
    """What the generic streamer needs of a family that streams: its framing, and
    :meth:`network` to start a stream. Returned by ``streaming_layout()``."""

    frame_length: int  # samples per frame
    hop: int  # samples between frames
    device: torch.device
    dtype: torch.dtype

    def frame_padding(self, n_samples: int) -> tuple[int, int]:
        """Zeros (left, right) the offline forward pads around T samples."""
        ...

    def network(self, lanes: int, chunk_size: int | None, backend: str, max_frames: int) -> StreamingNetwork:
        """A new stream of ``lanes`` lanes; buffers sized for ``chunk_size`` samples
        per call (None: one hop) and steps of at most ``max_frames`` frames;
        ``backend``: ``"native"`` (the compiled kernel, float32 on the CPU) or ``"torch"``."""
        ...


@runtime_checkable
class SeparationModel(Protocol):
    """Implemented by every registered family (``convtasnet``, ``dpcl``)."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def n_src(self) -> int: ...

    @property
    def causal(self) -> bool:
        """Each output sample depends on past and present input only."""
        ...

    @property
    def receptive_field(self) -> int | None:
        """Input samples one output sample depends on; None: unbounded (recurrent)."""
        ...

    @property
    def frame_hop(self) -> int:
        """Samples per frame: the unit of the averaged passes' delays."""
        ...

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Shape: [B, T] -> [B, S, T]."""
        ...

    def separate(self, mix: torch.Tensor, n_src: int | str | None = None) -> torch.Tensor:
        """Inference route (may be faster than ``forward``, same function). Shape: [B, T] -> [B, S, T]."""
        ...

    def inference_presets(self) -> dict[str, InferenceSettings]:
        """Settings per quality preset (``fast``, ``high``)."""
        ...

    def set_products(self, dtype: torch.dtype) -> bool:
        """Use ``dtype`` for the matrix products' operands; False if the model has no such choice."""
        ...

    def streaming_layout(self) -> StreamingLayout | None:
        """How the model streams statefully (:class:`StreamingLayout`), or None for
        a model that cannot be streamed (non-causal, recurrent)."""
        ...


@dataclass(frozen=True)
class ModelInfo:
    """The protocol's values for one model (a protocol model or a plain module)."""

    sample_rate: int
    n_src: int | None
    causal: bool
    frame_hop: int
    presets: dict[str, InferenceSettings] | None
    protocol: bool


def describe(model: torch.nn.Module) -> ModelInfo:
    """The protocol values of ``model``; SepError if it has no sample rate."""
    if isinstance(model, SeparationModel):
        return ModelInfo(int(model.sample_rate), int(model.n_src), bool(model.causal), int(model.frame_hop),
                         dict(model.inference_presets()), True)
    # The registry's training contract: a config dataclass with sample_rate and n_src.
    config = getattr(model, "config", None)
    rate = getattr(config, "sample_rate", None)
    if not isinstance(rate, int) or rate <= 0:
        raise SepError("the model has no config.sample_rate; it does not follow the model contract")
    n_src = getattr(config, "n_src", None)
    return ModelInfo(rate, n_src if isinstance(n_src, int) else None, bool(getattr(config, "causal", False)),
                     1, None, False)


def separate_method(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """The inference route ``f(mix, n_src=...)``: :meth:`SeparationModel.separate`;
    for a plain module its own ``separate`` if it has one, else its forward
    (which takes no ``n_src``). Shape: ``[B, T] -> [B, S, T]``."""
    separate = getattr(model, "separate", None)
    if separate is not None:
        return separate
    return lambda mix, n_src=None: model(mix)


def set_products(model: torch.nn.Module, dtype: torch.dtype) -> bool:
    """:meth:`SeparationModel.set_products`, False for plain modules."""
    return bool(model.set_products(dtype)) if isinstance(model, SeparationModel) else False


__all__ = ["ModelInfo", "SeparationModel", "StreamingLayout", "StreamingNetwork", "describe", "separate_method",
           "set_products"]
