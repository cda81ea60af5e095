"""The causal equalizer: chunking-invariant, causal, invertible, and a running form of the
look-ahead rule (checked against a plain per-hop loop)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from sepcli import api
from sepcli.errors import SepError
from sepcli.inference import equalize as eq
from sepcli.inference import equalize_causal as ceq
from tests.test_inference_equalize import RATE, snr_db, speech_like, tilt


def cut(n: int, seed: int) -> list[slice]:
    """Random chunk boundaries over n samples, with 1-sample chunks among them."""
    rng = np.random.default_rng(seed)
    sizes = rng.choice([1, 3, 16, 64, 100, 257, 1000], size=n)
    ends = np.cumsum(sizes)
    starts = np.concatenate(([0], ends[:-1]))
    return [slice(int(a), int(min(b, n))) for a, b in zip(starts, ends) if a < n]


def test_the_output_does_not_depend_on_how_the_stream_is_cut():
    x = tilt(speech_like(12000, 1), 6.0)
    whole = ceq.CausalEqualizer(RATE, 12.0)
    y = whole.filter(x)
    tracks = np.stack([y, -0.5 * y + 0.01])  # [S, T]
    back = whole.unfilter(tracks)
    pieces = ceq.CausalEqualizer(RATE, 12.0)
    y_cut, back_cut = [], []
    for part in cut(len(x), 2):
        y_cut.append(pieces.filter(x[part]))
        # the tracks lag the input by a varying amount, as a stream's do
        lag = slice(max(0, part.start - 300), max(0, part.stop - 300))
        back_cut.append(pieces.unfilter(tracks[:, lag]))
    back_cut.append(pieces.unfilter(tracks[:, max(0, len(x) - 300):]))
    np.testing.assert_allclose(np.concatenate(y_cut), y, atol=1e-6)
    np.testing.assert_allclose(np.concatenate(back_cut, axis=1), back, atol=1e-6)
    assert np.abs(y - x).max() > 0.1 * np.abs(x).max()  # it did filter


def test_no_output_sample_depends_on_a_later_input_sample():
    x = tilt(speech_like(8000, 3), -6.0)
    y = ceq.CausalEqualizer(RATE, 12.0).filter(x)
    x2 = x.copy()
    x2[5000:] += np.random.default_rng(4).standard_normal(3000).astype(np.float32)
    y2 = ceq.CausalEqualizer(RATE, 12.0).filter(x2)
    np.testing.assert_array_equal(y2[:5000], y[:5000])
    assert np.abs(y2[5000:] - y[5000:]).max() > 0.1


def test_an_identity_separator_returns_its_input_exactly_enough():
    x = tilt(speech_like(16000, 5), 8.0)[None]  # [1, T]
    heard = []

    def identity(mix: np.ndarray) -> np.ndarray:
        heard.append(mix)
        return np.stack([mix, 0.5 * mix], axis=1)  # [B, 2, T]

    out = ceq.causal_equalized_fn(identity, RATE, 12.0)(x)
    assert out.shape == (1, 2, 16000)
    # the filters change every hop, so forward and inverse do not cancel exactly
    assert snr_db(out[0, 0], x[0]) > 35.0 and snr_db(out[0, 1], 0.5 * x[0]) > 35.0
    assert np.abs(heard[0] - x).max() > 0.05 * np.abs(x).max()


def reference_gains_db(x: np.ndarray, limit_db: float, tau: float) -> np.ndarray:
    """The running gains written as a plain loop over hops. Shape: [T] -> [K, F]."""
    n_fft, hop = 256, 64
    window = np.sqrt(np.hanning(n_fft + 1)[:-1])
    a = math.exp(-hop / (tau * RATE))
    padded = np.concatenate((np.zeros(n_fft), x))
    total, weight, heard, peak = np.zeros(n_fft // 2 + 1), 0.0, 0.0, 0.0
    out = []
    for k in range(-(-len(x) // hop)):
        frame = padded[k * hop:k * hop + n_fft]  # the window that ends where hop k starts
        power = np.abs(np.fft.rfft(frame * window)) ** 2
        energy = power.sum()
        peak = max(energy, peak * a)
        active = energy > 0 and energy >= peak * 10 ** (-eq.ACTIVE_DB / 10)
        total = a * total + (power if active else 0.0)
        weight = a * weight + active
        heard += active
        if weight == 0:
            out.append(np.zeros_like(power))
            continue
        gains = eq.gains_db_for((total / weight)[None], RATE, limit_db)[0]
        out.append(gains * heard / (heard + ceq.WARMUP * RATE / hop))
    return np.array(out)


def test_running_gains_match_a_plain_loop():
    x = np.concatenate((np.zeros(700), tilt(speech_like(6000, 6), 6.0), 0.01 * tilt(speech_like(3000, 7), -6.0)))
    equalizer = ceq.CausalEqualizer(RATE, 9.0, tau=0.5)
    frames = np.lib.stride_tricks.sliding_window_view(np.concatenate((np.zeros(256), x)), 256)[::64]
    got = equalizer.running_gains_db(frames[:-(-len(x) // 64)])
    want = reference_gains_db(x, 9.0, 0.5)
    assert np.abs(want).max() > 3.0
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_filters_have_the_gains_and_their_inverse_as_magnitudes():
    equalizer = ceq.CausalEqualizer(RATE, 12.0)
    rng = np.random.default_rng(8)
    gain_db = np.clip(np.cumsum(rng.normal(0, 0.5, (3, 129)), axis=1), -12, 12)  # smooth, like the real gains
    gain_db[0] = 0.0
    fwd, inv = equalizer.min_phase(gain_db)  # [K, taps]
    np.testing.assert_allclose(fwd[0], np.eye(128)[0], atol=1e-12)  # 0 dB: the identity
    response = 20 * np.log10(np.abs(np.fft.rfft(fwd, n=256, axis=1)))
    np.testing.assert_allclose(response, gain_db, atol=0.5)
    # minimum phase: the inverse filter undoes the forward one (a delta, up to truncation)
    both = np.stack([np.convolve(f, i)[:128] for f, i in zip(fwd, inv)])
    np.testing.assert_allclose(both, np.broadcast_to(np.eye(128)[0], both.shape), atol=1e-3)


def test_in_the_steady_state_half_of_a_known_channel_is_taken_out():
    """As the look-ahead equalizer does (tests/test_inference_equalize.py), once the running
    spectrum has settled: the last 4 s of the same talker through two channels."""
    x = speech_like(64000, 9)
    y = tilt(x, -6.0)
    ex, ey = (ceq.CausalEqualizer(RATE, 20.0, tau=2.0).filter(v)[-32000:] for v in (x, y))
    freqs = np.fft.rfftfreq(256, 1 / RATE)
    band = (freqs > 200) & (freqs < 3500)

    def spectrum_db(v):
        power = eq._smooth(eq.long_term_spectrum(v[None]))[0]
        return 10 * np.log10(power) - np.median(10 * np.log10(power))

    before = (spectrum_db(y[-32000:]) - spectrum_db(x[-32000:]))[band]
    after = (spectrum_db(ey) - spectrum_db(ex))[band]
    assert np.abs(before).max() > 10.0
    np.testing.assert_allclose(after, 0.5 * before, atol=1.0)


def test_digital_silence_stays_silent():
    equalizer = ceq.CausalEqualizer(RATE, 12.0)
    y = equalizer.filter(np.zeros(3000))
    back = equalizer.unfilter(np.zeros((2, 3000)))
    assert np.isfinite(y).all() and not y.any() and not back.any()


def test_misuse_raises():
    with pytest.raises(SepError):
        ceq.CausalEqualizer(RATE, 0.0)
    with pytest.raises(SepError):
        ceq.CausalEqualizer(RATE, 12.0, tau=0.0)
    equalizer = ceq.CausalEqualizer(RATE, 12.0)
    equalizer.filter(np.zeros(100))
    with pytest.raises(SepError, match="ahead"):
        equalizer.unfilter(np.zeros((2, 101)))
    equalizer.unfilter(np.zeros((2, 50)))
    with pytest.raises(SepError, match="changed"):
        equalizer.unfilter(np.zeros((3, 10)))


def test_a_causal_separator_uses_the_causal_form():
    import torch

    from sepcli import registry

    torch.manual_seed(0)
    model = registry.build("convtasnet", N=16, L=16, B=8, H=16, Sc=8, X=2, R=1, causal=True).eval()
    x = tilt(speech_like(9000, 10), 6.0)
    plain = api.Separator(model, device="cpu", equalize=0.0)
    eqd = api.Separator(model, device="cpu", equalize=12.0)
    np.testing.assert_array_equal(eqd.fn(x[None]), ceq.causal_equalized_fn(plain.fn, RATE, 12.0)(x[None]))
    assert np.abs(eqd.separate(x, RATE) - plain.separate(x, RATE)).max() > 1e-3
