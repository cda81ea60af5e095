"""Test helpers: synthetic signals with known properties and an independent SI-SNR.

Kept separate from the code under test on purpose: ``si_snr_reference`` uses a
different formula (the correlation coefficient) from :mod:`sepcli.metrics`.
"""
from __future__ import annotations

import numpy as np
from scipy.signal import butter, sosfilt


def speechlike(rng: np.random.Generator, n: int, sample_rate: int = 8000) -> np.ndarray:
    """Band-limited (100-3000 Hz), amplitude-modulated noise at about -20 dBFS.

    Shape: ``[n]`` float64. Band-limited so that resampling round trips are near-lossless.
    """
    sos = butter(6, [100, min(3000, 0.4 * sample_rate)], btype="band", fs=sample_rate, output="sos")
    x = sosfilt(sos, rng.standard_normal(n))
    t = np.arange(n) / sample_rate
    env = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6))
    x = x * env
    return 0.1 * x / np.sqrt(np.mean(x**2))


def noise_at_snr(ref: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean noise orthogonal to zero-mean ``ref``, scaled so that
    ``ref + noise`` has an SI-SNR of exactly ``snr_db``. Shape: like ref ``[T]``."""
    r = ref - ref.mean()
    n = rng.standard_normal(ref.shape[-1])
    n -= n.mean()
    n -= (n @ r) / (r @ r) * r  # remove the component along ref
    n -= n.mean()
    return n * np.sqrt((r @ r) / (n @ n) / 10 ** (snr_db / 10))


def si_snr_reference(est: np.ndarray, ref: np.ndarray) -> float:
    """SI-SNR via the correlation coefficient: 10 log10(rho^2 / (1 - rho^2)).

    Algebraically equal to the projection definition for zero-mean signals.
    """
    e = np.asarray(est, np.float64) - np.mean(est)
    r = np.asarray(ref, np.float64) - np.mean(ref)
    rho2 = (e @ r) ** 2 / ((e @ e) * (r @ r))
    return float(10 * np.log10(rho2 / (1 - rho2)))
