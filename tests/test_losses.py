"""PIT SI-SNR training loss (the deep clustering loss is tested in test_losses_dpcl.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sepcli.errors import SepError
from sepcli.losses import distillation_loss, pit_si_snr_loss
from tests.sigtools import noise_at_snr, si_snr_reference, speechlike


def batch(n_src: int = 2, b: int = 3, n: int = 1600, snr_db: float = 10.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    ref = np.stack([np.stack([speechlike(rng, n) for _ in range(n_src)]) for _ in range(b)])  # [B, S, T]
    est = ref + np.stack([[noise_at_snr(r, snr_db, rng) for r in item] for item in ref])
    return torch.from_numpy(est).float(), torch.from_numpy(ref).float()


def test_loss_is_minus_mean_si_snr_in_reference_order():
    est, ref = batch()
    order = torch.tensor([1, 0])
    loss, perm = pit_si_snr_loss(est[:, order], ref)  # estimates swapped
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(-10.0, abs=0.01)
    assert perm.tolist() == [[1, 0]] * 3  # reference 0 is estimate 1
    # independent check of the value through the returned permutation
    want = np.mean(
        [si_snr_reference(est[b, order][p].double().numpy(), ref[b, i].double().numpy())
         for b in range(3) for i, p in enumerate(perm[b].tolist())]
    )
    assert loss.item() == pytest.approx(-want, abs=1e-3)


@pytest.mark.parametrize("n_src", [2, 3, 5])
def test_loss_is_invariant_to_estimate_order(n_src):
    est, ref = batch(n_src=n_src, b=2, seed=n_src)
    base, _ = pit_si_snr_loss(est, ref)
    shuffled = est[:, torch.randperm(n_src)]
    loss, perm = pit_si_snr_loss(shuffled, ref)
    assert loss.item() == pytest.approx(base.item(), abs=1e-5)
    ordered = torch.stack([shuffled[b, perm[b]] for b in range(2)])
    torch.testing.assert_close(ordered, est)


def test_gradient_step_improves_si_snr():
    est, ref = batch(snr_db=0.0)
    est = est.clone().requires_grad_(True)
    loss, _ = pit_si_snr_loss(est, ref)
    loss.backward()
    assert torch.isfinite(est.grad).all() and est.grad.abs().sum() > 0
    with torch.no_grad():
        stepped, _ = pit_si_snr_loss(est - 0.5 * est.grad / est.grad.norm(), ref)
    assert stepped.item() < loss.item()


def test_perfect_estimate_and_silent_reference_stay_finite():
    _, ref = batch()
    loss, _ = pit_si_snr_loss(ref.clone(), ref)
    assert loss.item() < -60
    ref[0, 0] = 0.0
    est = ref + 0.01
    est.requires_grad_(True)
    loss, _ = pit_si_snr_loss(est, ref)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(est.grad).all()


def test_shape_mismatch_is_an_error():
    est, ref = batch()
    with pytest.raises(SepError, match=r"\[B, S, T\]"):
        pit_si_snr_loss(est[:, :1], ref)
    with pytest.raises(SepError, match=r"\[B, S, T\]"):
        pit_si_snr_loss(est[0], ref[0])


# ---------------------------------------------------------------- distillation


def neg_pit_si_snr_reference(est: torch.Tensor, ref: torch.Tensor) -> float:
    """Independent reference for two sources: minus the mean SI-SNR (dB) under the
    better of the two orders. est, ref Shape: [B, 2, T]."""
    total = 0.0
    for e, r in zip(est.double().numpy(), ref.double().numpy()):
        same = si_snr_reference(e[0], r[0]) + si_snr_reference(e[1], r[1])
        swapped = si_snr_reference(e[1], r[0]) + si_snr_reference(e[0], r[1])
        total += max(same, swapped) / 2
    return -total / est.shape[0]


def test_distillation_loss_weighs_two_pit_terms():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(3, 2, 400, generator=g)
    est = ref + 0.5 * torch.randn(3, 2, 400, generator=g)
    teacher = ref + 0.2 * torch.randn(3, 2, 400, generator=g)
    to_ref, to_teacher = neg_pit_si_snr_reference(est, ref), neg_pit_si_snr_reference(est, teacher)
    for w in (0.0, 0.3, 1.0):
        got = float(distillation_loss(est, ref, teacher, w))
        assert got == pytest.approx((1 - w) * to_ref + w * to_teacher, abs=1e-4)
    # the teacher's output order does not matter
    swapped = float(distillation_loss(est, ref, teacher[:, [1, 0]], 0.5))
    assert swapped == pytest.approx(float(distillation_loss(est, ref, teacher, 0.5)), abs=1e-5)
