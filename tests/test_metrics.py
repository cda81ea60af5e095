"""Metrics: SI-SNR against hand-built cases and an independent formula, SDR against
mir_eval, PIT recovery of every permutation, torch versions against numpy."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from sepcli import metrics
from sepcli.errors import SepError
from tests.sigtools import noise_at_snr, si_snr_reference, speechlike

RNG = np.random.default_rng(7)
T = 4000


def sources(n_src: int, n: int = T, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([speechlike(rng, n) for _ in range(n_src)])  # [S, T]


# ----------------------------------------------------------------------------- SI-SNR


@pytest.mark.parametrize("scale", [1.0, 0.01, 37.0, -2.0])
def test_scaled_copy_scores_very_high(scale):
    ref = speechlike(RNG, T)
    assert metrics.si_snr(scale * ref, ref) > 90
    assert metrics.si_snr(scale * ref + 0.3, ref) > 90  # DC offsets are removed too


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 5.0, 12.3, 30.0])
@pytest.mark.parametrize("scale", [1.0, 0.2, 5.0])
def test_noise_at_known_snr(snr_db, scale):
    ref = speechlike(RNG, T)
    est = scale * (ref + noise_at_snr(ref, snr_db, RNG))
    assert metrics.si_snr(est, ref) == pytest.approx(snr_db, abs=0.01)


def test_agrees_with_independent_formula_on_random_signals():
    for _ in range(20):
        ref = RNG.standard_normal(T) + RNG.uniform(-1, 1)
        est = 0.5 * ref + RNG.standard_normal(T) * RNG.uniform(0.1, 3)
        assert metrics.si_snr(est, ref) == pytest.approx(si_snr_reference(est, ref), abs=1e-9)


def test_batched_shapes_match_loop():
    ref = sources(3)
    est = ref + 0.5 * RNG.standard_normal(ref.shape)
    out = metrics.si_snr(est[None], ref[None])  # [1, 3]
    assert out.shape == (1, 3)
    np.testing.assert_allclose(out[0], [si_snr_reference(e, r) for e, r in zip(est, ref, strict=True)], atol=1e-9)
    assert isinstance(metrics.si_snr(est[0], ref[0]), float)


def test_si_snri_is_improvement_over_mixture():
    ref = sources(2)
    mix = ref.sum(0)
    est = ref + np.stack([noise_at_snr(r, 15.0, RNG) for r in ref])
    got = metrics.si_snri(est, ref, mix)
    want = [15.0 - si_snr_reference(mix, r) for r in ref]
    np.testing.assert_allclose(got, want, atol=0.01)


def test_all_zero_or_constant_reference_is_an_error():
    est = RNG.standard_normal(T)
    for ref in (np.zeros(T), np.full(T, 0.1, np.float32)):
        with pytest.raises(SepError, match="undefined"):
            metrics.si_snr(est, ref)


def test_silent_estimate_gets_worst_score_and_values_are_bounded():
    ref = speechlike(RNG, T)
    assert metrics.si_snr(np.zeros(T), ref) == -metrics.MAX_DB
    assert metrics.si_snr(ref, ref) == metrics.MAX_DB


def test_bad_inputs():
    with pytest.raises(SepError, match="shapes differ"):
        metrics.si_snr(np.ones(10), np.ones(11))
    with pytest.raises(SepError, match="NaN"):
        metrics.si_snr(np.array([1.0, np.nan, 0.0]), np.array([1.0, 2.0, 0.0]))


# ----------------------------------------------------------------------------- PIT


def shuffled(ref: np.ndarray, order: tuple[int, ...], snr_db: float = 20.0) -> np.ndarray:
    """Estimates ``est[j] = ref[order[j]] + noise``."""
    return np.stack([ref[k] + noise_at_snr(ref[k], snr_db, RNG) for k in order])


@pytest.mark.parametrize("n_src", [2, 3, 4])
def test_every_permutation_recovered_exhaustive(n_src):
    ref = sources(n_src, 2000, seed=n_src)
    for order in itertools.permutations(range(n_src)):
        est = shuffled(ref, order)
        values, perm = metrics.pit_si_snr(est, ref)
        # perm[i] is the estimate holding reference i
        assert [order[p] for p in perm] == list(range(n_src))
        np.testing.assert_allclose(values, 20.0, atol=0.01)
        np.testing.assert_allclose(metrics.si_snr(est[perm], ref), values)


@pytest.mark.parametrize("n_src", [5, 7])
def test_permutations_recovered_with_hungarian(n_src):
    ref = sources(n_src, 2000, seed=n_src)
    for _ in range(5):
        order = tuple(RNG.permutation(n_src))
        _, perm = metrics.pit_si_snr(shuffled(ref, order), ref)
        assert [order[p] for p in perm] == list(range(n_src))


@pytest.mark.parametrize("n_src", [2, 3, 4])
def test_exhaustive_search_finds_the_assignment_optimum(n_src):
    for _ in range(50):
        score = RNG.standard_normal((n_src, n_src))
        perm = metrics.pit_permutation(score)
        rows, cols = linear_sum_assignment(score, maximize=True)
        assert sorted(perm) == list(range(n_src))
        assert score[np.arange(n_src), perm].sum() == pytest.approx(score[rows, cols].sum())


def test_pit_permutation_rejects_non_square():
    with pytest.raises(SepError, match="square"):
        metrics.pit_permutation(np.zeros((2, 3)))


def test_pairwise_is_indexed_ref_then_est():
    ref = sources(2)
    est = np.stack([ref[1], ref[0] + 0.3 * RNG.standard_normal(T)])
    pw = metrics.pairwise_si_snr(est, ref)
    assert pw[1, 0] > 90  # reference 1 is estimate 0
    assert pw[0, 1] == pytest.approx(si_snr_reference(est[1], ref[0]), abs=1e-9)


# ----------------------------------------------------------------------------- SDR


@pytest.mark.filterwarnings("ignore:mir_eval.separation.bss_eval_sources:FutureWarning")
def test_sdr_matches_mir_eval():
    mir_eval = pytest.importorskip("mir_eval")
    ref = sources(2, 6000, seed=3)
    rng = np.random.default_rng(5)
    # Distortions BSS-eval treats differently: a short filter (allowed), crosstalk, noise.
    est = np.stack(
        [
            np.convolve(ref[0], [1.0, 0.4, -0.2], mode="same") + 0.2 * ref[1] + 0.05 * rng.standard_normal(6000),
            0.7 * ref[1] + 0.3 * ref[0] + 0.1 * rng.standard_normal(6000),
        ]
    )
    want, _, _, _ = mir_eval.separation.bss_eval_sources(ref, est, compute_permutation=False)
    np.testing.assert_allclose(metrics.sdr(est, ref), want, atol=0.01)
    mix = ref.sum(0)
    want_mix, _, _, _ = mir_eval.separation.bss_eval_sources(ref, np.stack([mix, mix]), compute_permutation=False)
    np.testing.assert_allclose(metrics.sdri(est, ref, mix), want - want_mix, atol=0.01)


def test_sdr_hand_cases():
    ref = sources(2)
    assert np.all(metrics.sdr(3 * ref, ref) > 90)
    # White noise is (almost) not explained by a 512-tap filter of ref: SDR ~ SNR.
    noise = np.stack([noise_at_snr(r, 20.0, RNG) for r in ref])
    np.testing.assert_allclose(metrics.sdr(ref + noise, ref), 20.0, atol=0.7)
    assert metrics.sdr(ref[0], ref[0]).shape == (1,)


def test_sdr_errors():
    with pytest.raises(SepError, match="too short"):
        metrics.sdr(np.ones(100), np.ones(100))
    with pytest.raises(SepError, match="all zeros"):
        metrics.sdr(np.ones((1, 1000)), np.zeros((1, 1000)))


# ----------------------------------------------------------------------------- torch


def test_torch_si_snr_matches_numpy():
    ref = sources(3)
    est = ref + RNG.standard_normal(ref.shape) * np.array([[0.01], [0.1], [1.0]])
    got = metrics.si_snr_torch(torch.from_numpy(est), torch.from_numpy(ref))
    np.testing.assert_allclose(got.numpy(), metrics.si_snr(est, ref), atol=1e-6)
    got32 = metrics.si_snr_torch(torch.from_numpy(est).float(), torch.from_numpy(ref).float())
    np.testing.assert_allclose(got32.numpy(), metrics.si_snr(est, ref), atol=1e-3)


def test_torch_pairwise_matches_numpy():
    ref = sources(3)
    est = shuffled(ref, (2, 0, 1), 10.0)
    pw = metrics.pairwise_si_snr_torch(torch.from_numpy(est)[None], torch.from_numpy(ref)[None])
    # eps (1e-8 on energies) shifts the poorly matched pairs (about -50 dB) by ~1e-3 dB
    np.testing.assert_allclose(pw[0].numpy(), metrics.pairwise_si_snr(est, ref), atol=0.01)
    diag = pw[0].numpy()[np.arange(3), [1, 2, 0]]
    np.testing.assert_allclose(diag, 10.0, atol=1e-6)


@pytest.mark.parametrize("n_src", [2, 3, 5])
def test_torch_pit_recovers_permutations_per_item(n_src):
    ref = sources(n_src, 2000, seed=11)
    orders = [tuple(RNG.permutation(n_src)) for _ in range(4)]
    est = np.stack([shuffled(ref, o, 15.0) for o in orders])  # [B, S, T]
    ref_b = np.broadcast_to(ref, est.shape).copy()
    values, perm = metrics.pit_si_snr_torch(torch.from_numpy(est), torch.from_numpy(ref_b))
    assert values.shape == perm.shape == (4, n_src) and perm.dtype == torch.long
    for b, order in enumerate(orders):
        assert [order[p] for p in perm[b].tolist()] == list(range(n_src))
        np_values, np_perm = metrics.pit_si_snr(est[b], ref)
        assert perm[b].tolist() == np_perm.tolist()
        np.testing.assert_allclose(values[b].numpy(), np_values, atol=1e-6)
