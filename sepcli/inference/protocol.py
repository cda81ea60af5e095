"""What every model family offers inference: the :class:`SeparationModel` protocol.

The engine, :class:`sepcli.api.Separator` and the streamer use these members
only; nothing is probed by name. A plain ``nn.Module`` that follows just the
registry's training contract (``config.sample_rate``, ``config.n_src``,
``forward``) is wrapped by :func:`describe` with neutral defaults (one pass,
float32, no streaming).

Shape: mix ``[B, T]`` -> ``[B, S, T]`` (B batch, S sources, T samples).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from sepcli.errors import SepError
from sepcli.inference.settings import InferenceSettings


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

    def streaming_layout(self) -> Any | None:
        """What a stateful streamer needs (Conv-TasNet: its causal layers), or
        None for a model that cannot be streamed."""
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


__all__ = ["ModelInfo", "SeparationModel", "describe", "separate_method", "set_products"]
