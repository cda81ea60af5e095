"""Separation metrics: SI-SNR, SDR (BSS-eval) and permutation-invariant matching.

numpy functions (float64, for evaluation) and batched torch functions (for
training losses, differentiable).

Definitions
-----------
SI-SNR (Le Roux et al. 2019; Luo & Mesgarani 2019), on zero-mean signals::

    s_target = <est, ref> ref / ||ref||^2
    e_noise  = est - s_target
    SI-SNR   = 10 log10(||s_target||^2 / ||e_noise||^2)

SDR is BSS-eval's (Vincent et al. 2006; v3 as in mir_eval): the reference may
be passed through a 512-tap filter; computed with ``fast_bss_eval``.
SI-SNRi / SDRi are the improvement over using the mixture as the estimate.

The numpy metrics are limited to ``[-MAX_DB, MAX_DB]``: a perfect estimate has
zero error (infinite dB), and beyond about 100 dB float64 results are rounding
noise anyway.

Permutations
------------
``perm[i]`` is the index of the estimate matched to reference ``i``, so
``est[perm]`` puts the estimates in reference order. Pairwise score matrices are
indexed ``[ref, est]``.

Shape legend: B batch, S sources, T samples.
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import linear_sum_assignment

from sepcli.errors import SepError

if TYPE_CHECKING:  # torch is imported where used: scoring files does not need it
    import torch

MAX_DB = 100.0
"""Numpy SI-SNR and SDR values are clipped to ``[-MAX_DB, MAX_DB]``."""

EXHAUSTIVE_MAX_SRC = 4
"""PIT tries every permutation up to this many sources (24); above, it uses
the Hungarian algorithm (scipy ``linear_sum_assignment``), which finds the same
optimum in polynomial time."""

SDR_FILTER_LENGTH = 512
"""BSS-eval's distortion filter length (mir_eval's default)."""

TORCH_EPS = 1e-8


# ----------------------------------------------------------------------------- numpy


def _as_signals(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 0 or a.shape[-1] == 0:
        raise SepError(f"{name} must have a non-empty last (time) axis, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise SepError(f"{name} contains NaN or infinite samples")
    return a


def _check_same_shape(est: np.ndarray, ref: np.ndarray) -> None:
    if est.shape != ref.shape:
        raise SepError(f"est and ref shapes differ: {est.shape} vs {ref.shape}")


def _ratio_db(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        db = 10.0 * np.log10(num / den)
    # 0/0 only happens for a silent estimate: no target at all, worst score.
    db = np.where(np.isnan(db), -MAX_DB, db)
    return np.clip(db, -MAX_DB, MAX_DB)


def is_silent(x: np.ndarray) -> np.ndarray | bool:
    """True where a signal is all zeros or constant, i.e. has no energy once its
    mean is removed (up to float rounding of the mean). Shape: ``[..., T]`` -> ``[...]``."""
    a = np.asarray(x, dtype=np.float64)
    centered = np.sum((a - a.mean(axis=-1, keepdims=True)) ** 2, axis=-1)
    out = centered <= 1e-20 * np.sum(a**2, axis=-1)
    return bool(out) if out.ndim == 0 else out


def si_snr(est: np.ndarray, ref: np.ndarray) -> np.ndarray | float:
    """SI-SNR in dB of ``est`` against ``ref`` along the last axis.

    Shape: est, ref ``[..., T]`` -> ``[...]`` (a float for 1-D input).
    SepError if a reference is all zeros after removing its mean (undefined).
    """
    est = _as_signals(est, "est")
    ref = _as_signals(ref, "ref")
    _check_same_shape(est, ref)
    if np.any(is_silent(ref)):
        raise SepError("a reference is all zeros (or constant): SI-SNR is undefined")
    est = est - est.mean(axis=-1, keepdims=True)
    ref = ref - ref.mean(axis=-1, keepdims=True)
    ref_energy = np.sum(ref**2, axis=-1, keepdims=True)  # [..., 1]
    alpha = np.sum(est * ref, axis=-1, keepdims=True) / ref_energy  # [..., 1]
    target = alpha * ref
    noise = est - target
    out = _ratio_db(np.sum(target**2, axis=-1), np.sum(noise**2, axis=-1))
    return float(out) if out.ndim == 0 else out


def si_snri(est: np.ndarray, ref: np.ndarray, mix: np.ndarray) -> np.ndarray | float:
    """SI-SNR improvement: ``si_snr(est, ref) - si_snr(mix, ref)``.

    Shape: est, ref ``[S, T]``, mix ``[T]`` -> ``[S]`` (or est, ref, mix ``[T]`` -> float).
    """
    ref = np.asarray(ref)
    mix_b = np.broadcast_to(np.asarray(mix, dtype=np.float64), ref.shape)
    return si_snr(est, ref) - si_snr(mix_b, ref)


def pairwise_si_snr(est: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """SI-SNR of every (reference, estimate) pair.

    Shape: est ``[S_est, T]``, ref ``[S_ref, T]`` -> ``[S_ref, S_est]``.
    """
    est = _as_signals(est, "est")
    ref = _as_signals(ref, "ref")
    if est.ndim != 2 or ref.ndim != 2 or est.shape[1] != ref.shape[1]:
        raise SepError(f"expected est [S, T] and ref [S, T], got {est.shape} and {ref.shape}")
    shape = (ref.shape[0], est.shape[0], ref.shape[1])
    # [1, S_est, T] and [S_ref, 1, T] both -> [S_ref, S_est, T]; scores [S_ref, S_est]
    return np.asarray(si_snr(np.broadcast_to(est[None, :, :], shape), np.broadcast_to(ref[:, None, :], shape)))


def pit_permutation(score: np.ndarray) -> np.ndarray:
    """The assignment of estimates to references that maximizes the summed score.

    ``score[i, j]`` is the score (higher is better) of estimate ``j`` against
    reference ``i``. Exhaustive for ``S <= EXHAUSTIVE_MAX_SRC``, Hungarian
    algorithm above. Ties go to the lexicographically first permutation.
    Shape: score ``[S, S]`` -> perm ``[S]`` (``perm[i]`` = estimate for reference ``i``).
    """
    score = np.asarray(score, dtype=np.float64)
    if score.ndim != 2 or score.shape[0] != score.shape[1] or score.shape[0] == 0:
        raise SepError(f"PIT needs a square [S, S] score matrix, got shape {score.shape}")
    n_src = score.shape[0]
    if n_src <= EXHAUSTIVE_MAX_SRC:
        perms = permutations(n_src)  # [P, S]
        totals = score[np.arange(n_src)[None, :], perms].sum(axis=1)  # [P]
        return perms[int(np.argmax(totals))].copy()
    rows, cols = linear_sum_assignment(score, maximize=True)
    perm = np.empty(n_src, dtype=np.int64)
    perm[rows] = cols
    return perm


_PERMUTATIONS: dict[int, np.ndarray] = {}


def permutations(n_src: int) -> np.ndarray:
    """All orders of ``n_src`` sources, cached. A plain dict, not lru_cache:
    torch.compile (training's --compile) warns on lru_cache and skips it."""
    perms = _PERMUTATIONS.get(n_src)
    if perms is None:
        perms = _PERMUTATIONS[n_src] = np.array(list(itertools.permutations(range(n_src))), dtype=np.int64)
    return perms  # [P, S]


def pit_si_snr(est: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best-permutation SI-SNR.

    Returns ``(values, perm)``: ``values[i] = si_snr(est[perm[i]], ref[i])``.
    Shape: est, ref ``[S, T]`` -> values ``[S]``, perm ``[S]``.
    """
    est = np.asarray(est)
    ref = np.asarray(ref)
    if est.shape != ref.shape or est.ndim != 2:
        raise SepError(f"expected est and ref of the same shape [S, T], got {est.shape} and {ref.shape}")
    pw = pairwise_si_snr(est, ref)  # [S_ref, S_est]
    perm = pit_permutation(pw)
    return pw[np.arange(len(perm)), perm], perm


def sdr(est: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """BSS-eval SDR in dB of each estimate against the reference at the same index.

    No permutation is searched: reorder with ``est[perm]`` first. Computed by
    fast_bss_eval with a 512-tap filter (matches mir_eval's
    ``bss_eval_sources``). Shape: est, ref ``[S, T]`` (or ``[T]``) -> ``[S]``.
    SepError for an all-zero reference or signals shorter than 512 samples.
    """
    import fast_bss_eval

    est = _as_signals(est, "est")
    ref = _as_signals(ref, "ref")
    _check_same_shape(est, ref)
    if est.ndim == 1:
        est, ref = est[None], ref[None]  # [1, T]
    if est.ndim != 2:
        raise SepError(f"sdr expects [S, T] signals, got shape {est.shape}")
    if est.shape[-1] < SDR_FILTER_LENGTH:
        raise SepError(
            f"signals of {est.shape[-1]} samples are too short for BSS-eval SDR "
            f"(need at least {SDR_FILTER_LENGTH})"
        )
    if np.any(np.sum(ref**2, axis=-1) == 0):
        raise SepError("a reference is all zeros: SDR is undefined")
    # One 1x1 problem per source ([S, 1, T]) so fast_bss_eval pairs est i with
    # ref i instead of searching its own permutation. Its numpy element-wise
    # path fails under numpy 2; the pairwise path is fine.
    with np.errstate(divide="ignore", invalid="ignore"):  # perfect copies: inf, clipped below
        neg = fast_bss_eval.sdr_loss(
            est[:, None, :], ref[:, None, :], filter_length=SDR_FILTER_LENGTH, pairwise=True
        )  # [S, 1, 1]
    out = -np.asarray(neg, dtype=np.float64).reshape(est.shape[0])  # [S]
    out = np.where(np.isnan(out), -MAX_DB, out)
    return np.clip(out, -MAX_DB, MAX_DB)


def sdri(est: np.ndarray, ref: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """SDR improvement over the mixture. Shape: est, ref ``[S, T]``, mix ``[T]`` -> ``[S]``."""
    ref = _as_signals(ref, "ref")
    if ref.ndim == 1:
        ref = ref[None]  # [1, T]
    mix_b = np.broadcast_to(_as_signals(mix, "mix"), ref.shape)
    return sdr(np.asarray(est).reshape(ref.shape), ref) - sdr(mix_b, ref)


# ----------------------------------------------------------------------------- torch


def si_snr_torch(est: torch.Tensor, ref: torch.Tensor, eps: float = TORCH_EPS) -> torch.Tensor:
    """Differentiable SI-SNR in dB along the last axis.

    ``eps`` keeps silent references and perfect estimates finite; it adds
    ``eps`` to both energies, so results match :func:`si_snr` except at the
    extremes. Shape: est, ref ``[..., T]`` -> ``[...]``.
    """
    import torch

    if est.shape != ref.shape:
        raise SepError(f"est and ref shapes differ: {tuple(est.shape)} vs {tuple(ref.shape)}")
    est = est - est.mean(dim=-1, keepdim=True)
    ref = ref - ref.mean(dim=-1, keepdim=True)
    alpha = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps)  # [..., 1]
    target = alpha * ref
    noise = est - target
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


def pairwise_si_snr_torch(est: torch.Tensor, ref: torch.Tensor, eps: float = TORCH_EPS) -> torch.Tensor:
    """SI-SNR of every (reference, estimate) pair, batched.

    Shape: est, ref ``[B, S, T]`` -> ``[B, S_ref, S_est]``.
    """
    if est.dim() != 3 or est.shape != ref.shape:
        raise SepError(
            f"expected est and ref of the same shape [B, S, T], got {tuple(est.shape)} and {tuple(ref.shape)}"
        )
    b, s, t = ref.shape
    # [B, S_ref, 1, T] against [B, 1, S_est, T] -> [B, S_ref, S_est, T]
    return si_snr_torch(est[:, None, :, :].expand(b, s, s, t), ref[:, :, None, :].expand(b, s, s, t), eps)


def pit_from_pairwise_torch(pw: torch.Tensor) -> torch.Tensor:
    """Best permutation per batch item from a pairwise score (higher is better).

    Shape: pw ``[B, S_ref, S_est]`` -> perm ``[B, S]`` (long, on pw's device).
    """
    import torch

    b, s, _ = pw.shape
    if s <= EXHAUSTIVE_MAX_SRC:
        perms = torch.from_numpy(permutations(s)).to(pw.device)  # [P, S]
        idx = perms.T.unsqueeze(0).expand(b, s, perms.shape[0])  # [B, S, P]
        totals = pw.detach().gather(2, idx).sum(1)  # [B, P]: sum_i pw[b, i, perms[p, i]]
        return perms[totals.argmax(dim=1)]  # [B, S]
    scores = pw.detach().to("cpu", torch.float64).numpy()
    perm = np.stack([pit_permutation(m) for m in scores])  # [B, S]
    return torch.from_numpy(perm).to(pw.device)


def pit_si_snr_torch(est: torch.Tensor, ref: torch.Tensor, eps: float = TORCH_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-permutation SI-SNR, batched and differentiable.

    Returns ``(values, perm)`` with ``values[b, i] = SI-SNR(est[b, perm[b, i]], ref[b, i])``.
    Shape: est, ref ``[B, S, T]`` -> values ``[B, S]``, perm ``[B, S]``.
    """
    pw = pairwise_si_snr_torch(est, ref, eps)  # [B, S_ref, S_est]
    perm = pit_from_pairwise_torch(pw)  # [B, S]
    values = pw.gather(2, perm.unsqueeze(-1)).squeeze(-1)  # [B, S]
    return values, perm
