"""Distillation: the frozen teacher (:func:`load_teacher`) and the loss module
that adds its term (:class:`_LossModule`, also how DDP sees ``compute_loss``)."""
from __future__ import annotations

import torch
from torch import nn

from sepcli import registry
from sepcli.errors import SepError
from sepcli.losses import distillation_loss

WAVEFORM_FAMILIES = ("convtasnet", "lstm-tasnet", "upit-lstm", "sudormrf")  # forward(mix) gives waveforms: they can teach or learn from one
# An ensemble's forward gives waveforms too (its members' aligned average), so it can teach;
# it is never trained itself.
TEACHER_FAMILIES = (*WAVEFORM_FAMILIES, "ensemble")


class _LossModule(nn.Module):
    """DDP only synchronises gradients through ``forward``; this routes
    ``compute_loss`` through it, and adds the distillation term when a teacher
    is given (see :func:`sepcli.losses.distillation_loss`)."""

    def __init__(self, model: nn.Module, teacher: nn.Module | None = None, weight: float = 0.5) -> None:
        super().__init__()
        self.model = model
        # Not a submodule: DDP, state_dict and the optimiser must not see it.
        self._teacher = [teacher] if teacher is not None else []
        self.weight = float(weight)

    def forward(self, mix: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        if not self._teacher:
            return self.model.compute_loss(mix, ref)
        with torch.no_grad():
            target = self._teacher[0](mix)  # [B, S, T]
        return distillation_loss(self.model(mix), ref, target, self.weight)


def load_teacher(path: str, model: nn.Module, family: str, device: torch.device) -> tuple[nn.Module, str]:
    """The frozen teacher for distillation, and its file's SHA-256.

    Both models must map a mixture to waveforms ([B, T] -> [B, S, T]) with the
    same number of speakers and sample rate; an ensemble (e.g. ``convtasnet+dpcl``)
    may teach.
    """
    teacher = registry.load_model(path, device)
    for who, fam, allowed in (("student", family, WAVEFORM_FAMILIES), ("teacher", teacher.family, TEACHER_FAMILIES)):
        if fam not in allowed:
            raise SepError(f"distillation needs waveform models: a {who} of {', '.join(allowed)}; "
                           f"the {who} is {fam!r}")
    for key in ("n_src", "sample_rate"):
        a, b = getattr(model.config, key), getattr(teacher.config, key)
        if a != b:
            raise SepError(f"teacher {path}: {key} is {b}, but the model being trained has {a}")
    teacher.eval().requires_grad_(False)
    return teacher, registry.file_sha256(path)
