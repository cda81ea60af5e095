"""What the model families share: the protocol values their configs hold, one-pass
presets, and the check of a mixture's shape.

Shape: mix ``[B, T]`` (or ``[B, 1, T]``), B batch, T samples.
"""
from __future__ import annotations

from typing import Any

import torch

from sepcli.errors import SepError
from sepcli.inference.settings import InferenceSettings


class ConfigMembers:
    """:class:`~sepcli.inference.protocol.SeparationModel`'s ``sample_rate``, ``n_src``
    and ``causal`` read from ``self.config``, and ``set_products`` for a family whose
    products are float32 only. A family overrides what it computes otherwise."""

    config: Any

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def n_src(self) -> int:
        return self.config.n_src

    @property
    def causal(self) -> bool:
        return bool(self.config.causal)

    def set_products(self, dtype: torch.dtype) -> bool:
        return False  # float32 only


class TorchStepLayout:
    """The parts of a :class:`~sepcli.inference.protocol.StreamingLayout` that a
    causal family without a compiled step shares: its framing, and the device
    and dtype of ``weight``. ``what`` names the model in the error for a
    non-causal one."""

    backends = ("torch",)  # no compiled step: Streamer runs "auto" as torch

    def __init__(self, model: Any, frame_length: int, hop: int, weight: torch.Tensor, what: str) -> None:
        if not model.causal:
            raise SepError(f"streaming needs a causal {what}")
        self.model = model
        self.frame_length = frame_length  # samples per frame
        self.hop = hop  # samples between frames
        self.device, self.dtype = weight.device, weight.dtype


def one_pass_presets(segment: float) -> dict[str, InferenceSettings]:
    """The same single pass at every quality, over chunks of ``segment`` seconds: for
    families with nothing worth averaging."""
    settings = InferenceSettings(segment=segment)
    return {"fast": settings, "high": settings}


def as_batch(mix: torch.Tensor) -> torch.Tensor:
    """Accept a ``[B, T]`` or ``[B, 1, T]`` tensor; return ``[B, T]``."""
    if not isinstance(mix, torch.Tensor):
        raise SepError(f"mix must be a torch.Tensor, got {type(mix).__name__}")
    if mix.dim() == 3 and mix.shape[1] == 1:
        mix = mix[:, 0]  # [B, T]
    if mix.dim() != 2:
        raise SepError(f"mix must have shape [B, T] or [B, 1, T], got {list(mix.shape)}")
    return mix


def check_mix(mix: torch.Tensor) -> torch.Tensor:
    """Accept ``[B, T]`` or ``[B, 1, T]`` floating-point input; return ``[B, T]``."""
    mix = as_batch(mix)
    if mix.shape[0] == 0 or mix.shape[1] == 0:
        raise SepError(f"mix is empty: shape {list(mix.shape)}")
    if not mix.is_floating_point():
        raise SepError(f"mix must be a real floating-point tensor, got {mix.dtype}")
    return mix


__all__ = ["ConfigMembers", "TorchStepLayout", "as_batch", "check_mix", "one_pass_presets"]
