"""Training losses (batched torch). Metrics themselves live in :mod:`sepcli.metrics`.

Shape legend: B batch, S sources, T samples, F bins, K frames, D embedding dim.
"""
from __future__ import annotations

import torch

from sepcli.errors import SepError

# ---------------------------------------------------------------- waveform losses (PIT SI-SNR)


def pit_si_snr_loss(est: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Permutation-invariant negative SI-SNR (Conv-TasNet's training objective).

    For each item the assignment of estimates to references with the highest
    total SI-SNR is chosen (every permutation up to 4 sources, Hungarian
    algorithm above); the loss is minus the mean SI-SNR in dB over batch and
    sources under those assignments. Gradients flow through the chosen pairs.

    Args:
        est: estimated sources. Shape: [B, S, T].
        ref: reference sources. Shape: [B, S, T].

    Returns:
        ``(loss, perm)``: scalar loss, and ``perm`` [B, S] (long) with
        ``perm[b, i]`` = index of the estimate matched to reference ``i``, so
        ``est[b, perm[b]]`` is in reference order.
    """
    from sepcli.metrics import pit_si_snr_torch

    values, perm = pit_si_snr_torch(est, ref)  # [B, S], [B, S]
    return -values.mean(), perm


def distillation_loss(est: torch.Tensor, ref: torch.Tensor, teacher_est: torch.Tensor,
                      weight: float) -> torch.Tensor:
    """``(1 - weight) * PIT(est, ref) + weight * PIT(est, teacher_est)``, both
    negative PIT SI-SNR in dB; each term picks its own permutation, so the
    teacher's output order does not matter.

    est, ref, teacher_est Shape: [B, S, T].
    """
    loss_ref, _ = pit_si_snr_loss(est, ref)
    if weight == 0:
        return loss_ref
    loss_teacher, _ = pit_si_snr_loss(est, teacher_est.detach())
    return (1 - weight) * loss_ref + weight * loss_teacher


# ---------------------------------------------------------------- deep clustering loss


def deep_clustering_loss(
    emb: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Deep clustering loss ``‖VVᵀ − YYᵀ‖²_F`` (Hershey et al. 2016), low-rank form.

    Computed as ``‖VᵀV‖² − 2‖VᵀY‖² + ‖YᵀY‖²`` so memory is O(TF·(D+S)); the
    TF×TF affinity matrices are never formed. With weights ``w`` (e.g. 0 for
    silent bins) each pair of bins counts ``w_i·w_j``, which is the same as
    scaling every row of V and Y by ``√w_i``. Each item is divided by ``(Σ w)²``
    so the loss does not grow with the utterance length; the batch is averaged.
    An item whose weights are all zero contributes 0.

    Args:
        emb: embeddings V. Shape: [B, TF, D] (unit-norm rows in deep clustering).
        target: source labels Y (one-hot ideal binary mask). Shape: [B, TF, S].
        weight: non-negative bin weights, or None for all ones. Shape: [B, TF].

    Returns:
        Scalar tensor.
    """
    if emb.dim() != 3 or target.dim() != 3 or emb.shape[:2] != target.shape[:2]:
        raise SepError(
            f"deep_clustering_loss: emb [B, TF, D] and target [B, TF, S] must agree, "
            f"got {tuple(emb.shape)} and {tuple(target.shape)}"
        )
    if weight is None:
        weight = emb.new_ones(emb.shape[:2])
    elif weight.shape != emb.shape[:2]:
        raise SepError(
            f"deep_clustering_loss: weight must be [B, TF] = {tuple(emb.shape[:2])}, "
            f"got {tuple(weight.shape)}"
        )
    work = torch.float64 if emb.dtype == torch.float64 else torch.float32  # half -> float32
    weight = weight.to(work)
    total = weight.sum(dim=1).clamp_min(torch.finfo(work).tiny)  # [B]
    # Folding 1/Σw into the rows keeps the terms O(1) instead of O((TF)²).
    scale = (weight / total[:, None]).sqrt().unsqueeze(-1)  # [B, TF, 1]
    v = emb.to(work) * scale  # [B, TF, D]
    y = target.to(work) * scale  # [B, TF, S]
    # The three terms nearly cancel near convergence and each sums ~1e5 bins:
    # one float32 reduction loses ~1e-3 of the loss there and all-float64 is
    # ~7x slower on CPU. Partial sums over blocks of bins, added in float64,
    # keep ~1e-5 at float32 speed.
    block = 1024
    pad = (-v.shape[1]) % block
    v = torch.nn.functional.pad(v, (0, 0, 0, pad))
    y = torch.nn.functional.pad(y, (0, 0, 0, pad))
    v = v.view(v.shape[0], -1, block, v.shape[2])  # [B, TF/blk, blk, D]
    y = y.view(y.shape[0], -1, block, y.shape[2])  # [B, TF/blk, blk, S]
    vv = torch.einsum("bnkd,bnke->bnde", v, v).double().sum(1)  # [B, D, D]
    vy = torch.einsum("bnkd,bnks->bnds", v, y).double().sum(1)  # [B, D, S]
    yy = torch.einsum("bnks,bnkr->bnsr", y, y).double().sum(1)  # [B, S, S]
    per_item = vv.square().sum((1, 2)) - 2 * vy.square().sum((1, 2)) + yy.square().sum((1, 2))
    return per_item.mean().to(emb.dtype)


def oracle_soft_masks(emb: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                      temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft k-means masks around each source's own centroid: what deep clustering's
    inference (:func:`sepcli.models.deep_clustering_clusters.cluster_masks`) gives
    when k-means finds the sources' centroids, made differentiable for training
    (the soft k-means step that Isik et al. 2016 unfold, started from the
    oracle assignment so the tracks come out in reference order).

    ``mu_s = sum_n w_n y_ns v_n / sum_n w_n y_ns``, masks
    ``softmax_s((2 v_n . mu_s - |mu_s|^2) / temperature)``, which is
    ``softmax_s(-|v_n - mu_s|^2 / temperature)`` because ``|v_n|^2`` does not
    depend on s. A source that owns no weighted bin (a silent reference) has no
    centroid and gets no share of any bin.

    Args:
        emb: embeddings V. Shape: [B, N, D].
        target: one-hot source labels Y (ideal binary mask). Shape: [B, N, S].
        weight: non-negative bin weights for the centroids. Shape: [B, N].
        temperature: softmax temperature, > 0.

    Returns:
        ``(masks, present)``: masks [B, N, S] (rows sum to 1 where any source is
        present) and present [B, S] bool.
    """
    if not temperature > 0:
        raise SepError(f"oracle_soft_masks: temperature must be positive, got {temperature}")
    if emb.dim() != 3 or target.shape[:2] != emb.shape[:2] or weight.shape != emb.shape[:2]:
        raise SepError(f"oracle_soft_masks: emb [B, N, D], target [B, N, S] and weight [B, N] must agree, "
                       f"got {tuple(emb.shape)}, {tuple(target.shape)} and {tuple(weight.shape)}")
    yw = target.to(emb.dtype) * weight.to(emb.dtype).unsqueeze(-1)  # [B, N, S]
    mass = yw.sum(1)  # [B, S]
    present = mass > 0  # [B, S]
    mu = torch.einsum("bns,bnd->bsd", yw, emb) / mass.clamp_min(torch.finfo(emb.dtype).tiny).unsqueeze(-1)  # [B, S, D]
    logits = 2 * torch.einsum("bnd,bsd->bns", emb, mu) - mu.square().sum(-1).unsqueeze(1)  # [B, N, S]
    # An item with no present source keeps every column, so its softmax stays finite.
    keep = present | ~present.any(1, keepdim=True)  # [B, S]
    logits = (logits / temperature).masked_fill(~keep.unsqueeze(1), float("-inf"))
    return logits.softmax(-1), present
