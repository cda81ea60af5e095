"""What the model families share: the protocol values their configs hold, one-pass
presets, the checks of a mixture's, references' and config's values, and the
inference and training entry points of the mask families.

Shape: mix ``[B, T]`` (or ``[B, 1, T]``), B batch, T samples.
"""
from __future__ import annotations

from typing import Any, ClassVar

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


def one_pass_presets(segment: float, equalize: float = 0.0) -> dict[str, InferenceSettings]:
    """The same single pass at every quality, over chunks of ``segment`` seconds, with
    channel normalisation up to ``equalize`` dB (0: off): for families with nothing worth
    averaging."""
    settings = InferenceSettings(segment=segment, equalize=equalize)
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


def check_positive_ints(config: object, *names: str) -> None:
    """ValueError (SepError through registry.make_config) unless each named field is an int >= 1."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_ref(mix: torch.Tensor, ref: torch.Tensor, n_src: int) -> None:
    """SepError unless ref is ``[B, S, T]`` for mix ``[B, T]``."""
    want = [mix.shape[0], n_src, mix.shape[-1]]
    if not isinstance(ref, torch.Tensor) or list(ref.shape) != want:
        got = list(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
        raise SepError(f"ref must have shape [B, S, T] = {want}, got {got}")


def check_n_src(n_src: int | str | None, model_n_src: int, name: str) -> None:
    """Mask models have one output per trained source: ``n_src`` must be None or that."""
    if n_src is not None and n_src != model_n_src:
        hint = ("it cannot count them: --num-speakers auto needs a clustering model (dpcl)" if n_src == "auto"
                else f"choose a model trained for {n_src} speakers")
        raise SepError(f"this {name} separates exactly {model_n_src} speakers, not {n_src}; {hint}")


class PITMaskMembers:
    """``separate`` and ``compute_loss`` of a family with one waveform output per
    trained source (``forward``: ``[B, T] -> [B, S, T]``), trained with PIT SI-SNR:
    uPIT-LSTM, LSTM-TasNet, SuDoRM-RF. ``title`` names the family in errors."""

    title: ClassVar[str]
    n_src: int

    def inference_weight(self) -> torch.Tensor:
        """A weight whose device and dtype :meth:`separate` moves the mixture to."""
        return self.decoder.weight  # type: ignore[attr-defined]

    @torch.no_grad()
    def separate(self, mix: torch.Tensor, n_src: int | str | None = None) -> torch.Tensor:
        """Inference entry point (no gradients). Shape: [B, T] or [B, 1, T] -> [B, S, T]."""
        check_n_src(n_src, self.n_src, self.title)
        mix = check_mix(mix)
        weight = self.inference_weight()
        return self(mix.to(device=weight.device, dtype=weight.dtype))  # type: ignore[operator]

    def compute_loss(self, mix: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Scalar negative utterance-level PIT SI-SNR (dB) of the waveforms.
        mix Shape: [B, T]; ref Shape: [B, S, T]."""
        from sepcli.losses import pit_si_snr_loss

        mix = check_mix(mix)
        check_ref(mix, ref, self.n_src)
        loss, _ = pit_si_snr_loss(self(mix), ref)  # type: ignore[operator]
        return loss


__all__ = ["ConfigMembers", "PITMaskMembers", "TorchStepLayout", "as_batch", "check_mix", "check_n_src",
           "check_positive_ints", "check_ref", "one_pass_presets"]
