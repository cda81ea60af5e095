"""Channel normalisation around a separator (``equalize``, ``sep separate --equalize``).

A recording's channel (microphone, phone line, room colouration) tilts its
long-term spectrum away from the speech the models were trained on, and the
networks are fragile to that (docs/experiments.md, "Equalize"). Before a chunk
is separated, :func:`equalized_fn` measures its long-term average spectrum,
filters it half way (in dB) toward :data:`SPEECH_SPECTRUM_DB` (that of the
training speech), by at most ``limit_db`` per frequency band, and filters every output track by the
inverse gains. The tracks so come back in the recording's own channel: on the
mixture's scale, adding up to it as before, and scored against references
recorded through that channel. The filter is a fixed gain per STFT bin, smooth
across frequency (:data:`SMOOTH_BINS`), so the forward and inverse filters nearly
cancel: an identity separator gives back its input to about -40 dB (the gains'
impulse responses are short against the 32-ms window, but not zero beyond it).

The gains are measured per chunk (30 s for the shipped models), from frames within
:data:`ACTIVE_DB` of the chunk's loudest, and only their shape matters: their
median over the bands is 0 dB, so the level is left alone. Bands outside the
target's 0-4 kHz (models at rates above 8 kHz) keep 0 dB.

This form reads a whole chunk before filtering it. Causal models use the running form,
:mod:`sepcli.inference.equalize_causal`, which applies the same rule (:func:`gains_db_for`)
to the spectrum heard so far and streams.

Shape legend: B batch (chunks per call), S sources, T samples, F frequency bins,
K frames.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

from sepcli.errors import SepError

SAMPLE_RATE = 8000
"""Rate at which :data:`SPEECH_SPECTRUM_DB` was measured."""
N_FFT = 256
"""Window at :data:`SAMPLE_RATE` (32 ms, sqrt-Hann, hop a quarter); other rates use the nearest
power of two to 32 ms."""
SMOOTH_BINS = 9
"""Moving average across frequency (9 bins of 31.25 Hz at 8 kHz) of both spectra before their
ratio: the filter follows the channel's shape, not the harmonics of the voices in the chunk."""
ACTIVE_DB = 40.0
"""Frames more than this below the chunk's loudest frame (pauses, padding) are left out of its spectrum."""
MAX_LIMIT_DB = 40.0
PRESET_DB = 12.0
"""The limit in the ``fast`` presets of the shipped non-causal models, chosen on the valid
speakers (docs/experiments.md, "Equalize")."""
STRENGTH = 0.5
"""Fraction (in dB) of the way from the chunk's spectrum to the target that the filter goes.
On the validation speakers (docs/experiments.md, "Equalize") the full way scored no better on
the shifted set and worse on the clean one than half."""

# Measured by recipes/speech_spectrum.py on 200 mixtures of training speakers (data/trainlt,
# LibriSpeech at 8 kHz): dB per bin of 31.25 Hz from 0 Hz to 4 kHz, mean power 0 dB.
SPEECH_SPECTRUM_DB = (
    -3.1, -3.3, -3.8, 1.2, 5.1, 7.0, 8.7, 9.3, 8.8, 7.5, 6.7, 6.7,
    7.1, 7.6, 7.9, 7.6, 7.3, 6.9, 6.6, 6.2, 5.6, 4.9, 4.1, 3.4,
    2.7, 2.2, 1.5, 0.6, 0.0, -0.3, -0.8, -1.2, -1.5, -1.9, -2.3, -2.7,
    -2.9, -3.0, -3.3, -3.5, -3.9, -4.2, -4.2, -4.3, -4.5, -4.7, -4.9, -4.7,
    -4.7, -4.5, -4.5, -5.0, -5.3, -5.5, -5.8, -5.8, -6.0, -6.1, -6.3, -6.7,
    -7.0, -7.1, -7.3, -7.6, -7.9, -8.3, -8.7, -9.1, -9.2, -9.5, -9.8, -10.0,
    -10.1, -10.1, -9.9, -10.0, -10.0, -10.0, -9.9, -9.8, -9.8, -9.6, -9.6, -9.6,
    -9.6, -9.7, -9.8, -10.0, -10.2, -10.3, -10.4, -10.5, -10.7, -11.0, -11.1, -11.2,
    -11.4, -11.6, -11.5, -11.5, -11.6, -11.7, -11.8, -11.9, -12.0, -12.2, -12.3, -12.1,
    -12.0, -12.1, -12.0, -12.2, -12.2, -12.3, -12.3, -12.2, -12.4, -12.3, -12.4, -12.6,
    -13.0, -14.1, -17.0, -22.1, -30.1, -40.5, -48.5, -51.1, -51.8,
)


def _n_fft(sample_rate: int) -> int:
    return 2 ** round(math.log2(N_FFT * sample_rate / SAMPLE_RATE))


def _stft(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Shape: [N, T] -> [N, F, K] complex."""
    window = torch.hann_window(n_fft, periodic=True, dtype=x.dtype).sqrt()
    return torch.stft(x, n_fft, n_fft // 4, window=window, center=True, pad_mode="constant",
                      return_complex=True)


def _istft(spec: torch.Tensor, n_fft: int, length: int) -> torch.Tensor:
    """Shape: [N, F, K] -> [N, T]."""
    window = torch.hann_window(n_fft, periodic=True, dtype=spec.real.dtype).sqrt()
    return torch.istft(spec, n_fft, n_fft // 4, window=window, center=True, length=length)


def _active_mean_power(spec: torch.Tensor) -> np.ndarray:
    """Mean power of each row's frames within :data:`ACTIVE_DB` of its loudest.

    Shape: spec [B, F, K] complex -> [B, F] float64.
    """
    power = spec.abs().square()  # [B, F, K]
    frames = power.sum(1)  # [B, K]
    active = frames > frames.amax(1, keepdim=True) * 10.0 ** (-ACTIVE_DB / 10.0)  # [B, K]
    total = (power * active[:, None, :]).sum(2)  # [B, F]
    return (total / active.sum(1, keepdim=True).clamp(min=1)).numpy()


def long_term_spectrum(x: np.ndarray, n_fft: int = N_FFT) -> np.ndarray:
    """Mean power spectrum of each row's frames within :data:`ACTIVE_DB` of its loudest.

    Shape: [B, T] -> [B, F] float64.
    """
    return _active_mean_power(_stft(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)), n_fft))


def _smooth(power: np.ndarray) -> np.ndarray:
    """Moving average over :data:`SMOOTH_BINS` bins, edges repeated. Shape: [B, F] -> [B, F]."""
    half = SMOOTH_BINS // 2
    padded = np.concatenate((np.repeat(power[:, :1], half, 1), power, np.repeat(power[:, -1:], half, 1)), 1)
    sums = np.cumsum(padded, axis=1)  # [B, F + 2 half]
    sums = np.concatenate((np.zeros((len(power), 1)), sums), 1)
    return (sums[:, SMOOTH_BINS:] - sums[:, :-SMOOTH_BINS]) / SMOOTH_BINS


def target_spectrum(sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """:data:`SPEECH_SPECTRUM_DB` as power on the bins of ``sample_rate``'s window, and
    which bins it covers. Shape: -> [F] float64, [F] bool."""
    n_fft = _n_fft(sample_rate)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)  # [F]
    grid = np.linspace(0.0, SAMPLE_RATE / 2, len(SPEECH_SPECTRUM_DB))
    covered = freqs <= grid[-1] + 1e-9
    db = np.interp(freqs, grid, SPEECH_SPECTRUM_DB)
    return 10.0 ** (db / 10.0), covered


@functools.lru_cache(maxsize=8)
def _smoothed_target_db(sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`target_spectrum` smoothed as the spectra it is compared with, in dB (computed once
    per rate: the causal equalizer asks for it every 32 ms). Shape: -> [F] float64, [F] bool."""
    target, covered = target_spectrum(sample_rate)
    target_db = 10.0 * np.log10(_smooth(target[None, :])[0])
    target_db.flags.writeable = covered.flags.writeable = False
    return target_db, covered


def equalizer_gains(mix: np.ndarray, sample_rate: int, limit_db: float) -> np.ndarray:
    """Amplitude gains per bin that bring each row's long-term spectrum toward the
    speech target: ``(target / spectrum) ** (STRENGTH / 2)`` after smoothing both (so half
    way in dB), median 0 dB over the covered bins, clipped to ``+-limit_db``; 0 dB outside
    the target's band.

    Shape: mix [B, T] -> gains [B, F] float64 (F of ``sample_rate``'s window).
    """
    return _gains_for(long_term_spectrum(mix, _n_fft(sample_rate)), sample_rate, limit_db)


def _gains_for(power: np.ndarray, sample_rate: int, limit_db: float) -> np.ndarray:
    """:func:`equalizer_gains` from the long-term spectrum. Shape: power [B, F] -> [B, F] float64."""
    return 10.0 ** (gains_db_for(power, sample_rate, limit_db) / 20.0)


def gains_db_for(power: np.ndarray, sample_rate: int, limit_db: float) -> np.ndarray:
    """The gains of :func:`equalizer_gains` in dB, from long-term power spectra on the bins of
    ``sample_rate``'s window (also the running ones of :mod:`sepcli.inference.equalize_causal`).

    Shape: power [B, F] -> [B, F] float64.
    """
    target_db, covered = _smoothed_target_db(int(sample_rate))  # [F], [F]
    # A relative floor: a band with no energy at all (digital silence, a hard band
    # limit) gets the full limit, not an infinite gain.
    floor = 1e-10 * power.max(1, keepdims=True) + 1e-30
    gain_db = STRENGTH * (target_db - 10.0 * np.log10(_smooth(power + floor)))  # [B, F]
    gain_db -= np.median(gain_db[:, covered], axis=1, keepdims=True)
    gain_db = np.clip(gain_db, -limit_db, limit_db)
    gain_db[:, ~covered] = 0.0
    return gain_db


def apply_gains(x: np.ndarray, gains: np.ndarray, sample_rate: int) -> np.ndarray:
    """Filter each row of ``x`` by its gains per bin (STFT, multiply, inverse STFT).

    Shape: x [..., T], gains [..., F] (the same leading dims, or broadcastable) -> [..., T] float32.
    """
    n_fft = _n_fft(sample_rate)
    lead, length = x.shape[:-1], x.shape[-1]
    flat = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).reshape(-1, length)  # [N, T]
    g = torch.from_numpy(np.broadcast_to(gains, (*lead, gains.shape[-1])).reshape(-1, gains.shape[-1]).copy())  # [N, F]
    out = _istft(_stft(flat, n_fft) * g[:, :, None], n_fft, length)  # [N, T]
    return out.reshape(*lead, length).numpy().astype(np.float32)


def preset_limit(causal: bool, causal_validated: bool = False) -> float:
    """The limit a family's preset uses: :data:`PRESET_DB`. A causal model gets the running
    form (:mod:`sepcli.inference.equalize_causal`), which was validated for causal Conv-TasNet
    only (docs/experiments.md, "Causal equalize"): other causal builds keep 0 (off) unless
    ``causal_validated``."""
    return PRESET_DB if not causal or causal_validated else 0.0


def check_limit(limit_db: Any) -> float:
    """``equalize`` (dB) as a float in [0, :data:`MAX_LIMIT_DB`] (SepError otherwise); 0 is off."""
    if isinstance(limit_db, bool) or not isinstance(limit_db, (int, float)) or not (
            0.0 <= limit_db <= MAX_LIMIT_DB):
        raise SepError(f"equalize must be a number of dB from 0 (off) to {MAX_LIMIT_DB:g}, got {limit_db!r}")
    return float(limit_db)


def equalize_chunk(mix: np.ndarray, sample_rate: int, limit_db: float) -> tuple[np.ndarray, np.ndarray]:
    """A chunk as :func:`equalized_fn`'s separator hears it, and the gains that made it
    (what speaker counting must be fitted on, as it reads the same chunk).

    ``limit_db`` 0 (off) hands the chunk back as it is, with unit gains.

    Shape: mix [B, T] -> heard [B, T] float32, gains [B, F] float64.
    """
    limit_db = check_limit(limit_db)  # callers outside equalized_fn (the counter's recipe) pass it too
    length = mix.shape[-1]
    n_fft = _n_fft(sample_rate)
    if limit_db == 0.0:
        return np.asarray(mix, dtype=np.float32), np.ones((mix.shape[0], n_fft // 2 + 1))
    # One STFT of the chunk serves both its spectrum and its filtering.
    spec = _stft(torch.from_numpy(np.ascontiguousarray(mix, dtype=np.float64)), n_fft)  # [B, F, K]
    gains = _gains_for(_active_mean_power(spec), sample_rate, limit_db)  # [B, F]
    heard = _istft(spec * torch.from_numpy(gains)[:, :, None], n_fft, length)  # [B, T]
    return heard.numpy().astype(np.float32), gains


def equalized_fn(fn: Any, sample_rate: int, limit_db: float) -> Any:
    """``fn`` (a separator of chunks, ``sepcli.inference.passes.SeparateFn``) hearing each
    chunk equalized toward the speech target, its tracks filtered back.

    Shape: mix [B, T] -> [B, S, T] float32.
    """
    limit_db = check_limit(limit_db)

    def equalized(mix: np.ndarray) -> np.ndarray:
        heard, gains = equalize_chunk(mix, sample_rate, limit_db)  # [B, T], [B, F]
        est = fn(heard)  # [B, S, T]
        if isinstance(est, torch.Tensor):
            est = est.detach().float().cpu().numpy()
        return apply_gains(est, 1.0 / gains[:, None, :], sample_rate)

    return equalized


__all__ = [
    "ACTIVE_DB",
    "MAX_LIMIT_DB",
    "N_FFT",
    "PRESET_DB",
    "SAMPLE_RATE",
    "SMOOTH_BINS",
    "SPEECH_SPECTRUM_DB",
    "STRENGTH",
    "apply_gains",
    "check_limit",
    "equalize_chunk",
    "equalized_fn",
    "equalizer_gains",
    "gains_db_for",
    "long_term_spectrum",
    "preset_limit",
    "target_spectrum",
]
