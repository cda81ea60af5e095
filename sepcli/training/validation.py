"""Validation during training: mean SI-SNRi of a model's estimates over a dataset."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sepcli.errors import SepError


@torch.no_grad()
def validate(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    indices: list[int] | None = None,
) -> tuple[float, int]:
    """Sum of per-mixture SI-SNRi (dB) over ``dataset`` (or ``indices`` of it), and the count.

    Estimates come from ``model.separate(mix)``; SI-SNRi is the best-permutation
    SI-SNR minus the mixture's SI-SNR, averaged over sources.
    """
    from sepcli.metrics import pit_si_snr_torch, si_snr_torch

    device = torch.device(device)
    indices = list(range(len(dataset))) if indices is None else indices
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(indices), batch_size):
            items = [dataset[i] for i in indices[start : start + batch_size]]
            mix = torch.stack([m for m, _ in items]).to(device)  # [B, T]
            ref = torch.stack([r for _, r in items]).to(device)  # [B, S, T]
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                est = model.separate(mix)  # [B, S, T]
            est, ref, mix = est.double(), ref.double(), mix.double()
            if est.shape != ref.shape:
                raise SepError(f"model returned {tuple(est.shape)} for references {tuple(ref.shape)}")
            values, _ = pit_si_snr_torch(est, ref)  # [B, S]
            base = si_snr_torch(mix[:, None, :].expand_as(ref), ref)  # [B, S]
            total += float((values - base).mean(1).sum())
            count += len(items)
    finally:
        model.train(was_training)
    return total, count
