"""Training augmentation: each transform against a reference it must meet."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from sepcli.training.augment import AugmentConfig, _peaking, add_noise, augment_sources, room_rirs, vtlp
from sepcli.training.corpus import Corpus
from sepcli.training.data import MixingConfig, make_mixture
from sepcli.errors import SepError

SR = 8000


def _peak_hz(x: np.ndarray) -> float:
    w = np.hanning(len(x))
    spec = np.abs(np.fft.rfft(x * w))
    return float(np.fft.rfftfreq(len(x), 1 / SR)[np.argmax(spec)])


@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_vtlp_moves_a_tone_by_alpha_and_keeps_duration(alpha):
    t = np.arange(2 * SR) / SR
    x = np.sin(2 * np.pi * 500 * t).astype(np.float32)
    y = vtlp(x, alpha)
    assert y.shape == x.shape
    inner = y[1000:-1000]
    assert _peak_hz(inner) == pytest.approx(500 * alpha, abs=2.0)
    # a whole sinusoid, not beating bins: its envelope stays within a phase
    # vocoder's usual ripple (bins beating at random phases would give ~0.5)
    env = np.abs(scipy.signal.hilbert(inner))[500:-500]
    assert env.std() / env.mean() < 0.2


def test_vtlp_identity_at_one():
    x = np.random.default_rng(0).standard_normal(4000).astype(np.float32)
    np.testing.assert_array_equal(vtlp(x, 1.0), x)


def test_peaking_filter_gain_at_its_centre():
    sos = _peaking(1000.0, 6.0, 1.0, SR)
    _, h = scipy.signal.sosfreqz(sos, worN=[1000.0, 50.0, 3900.0], fs=SR)
    db = 20 * np.log10(np.abs(h))
    assert db[0] == pytest.approx(6.0, abs=1e-6)
    assert abs(db[1]) < 0.5 and abs(db[2]) < 0.5


def test_room_rirs_decay_at_the_asked_rt60():
    rng = np.random.default_rng(3)
    rirs = room_rirs(rng, 2, SR, 0.3)
    assert rirs.shape[0] == 2
    # the nearest talker's direct path starts the response
    assert np.argmax(np.abs(rirs).max(0)) < 20
    # Schroeder decay, T20 extrapolated to 60 dB, within the image method's spread
    e = np.cumsum(rirs[0, ::-1] ** 2)[::-1]
    db = 10 * np.log10(e / e[0])
    t5, t25 = np.argmax(db < -5), np.argmax(db < -25)
    rt60 = 3 * (t25 - t5) / SR
    assert 0.15 < rt60 < 0.5


def test_augment_sources_keeps_levels_and_is_linear_in_scale():
    ref = np.random.default_rng(1).standard_normal((2, 16000)).astype(np.float32)
    ref[1] *= 0.3
    cfg = AugmentConfig(reverb=1, vtlp=1, eq=1, bandlimit=1)
    a = augment_sources(ref, np.random.default_rng(5), cfg, SR)
    b = augment_sources(2 * ref, np.random.default_rng(5), cfg, SR)
    np.testing.assert_allclose(np.sqrt((a**2).mean(1)), np.sqrt((ref**2).mean(1)), rtol=1e-4)
    np.testing.assert_allclose(b, 2 * a, rtol=1e-4, atol=1e-5)
    assert not np.allclose(a, ref, atol=0.1)


def test_augment_sources_with_nothing_enabled_is_identity():
    ref = np.random.default_rng(1).standard_normal((2, 8000)).astype(np.float32)
    np.testing.assert_allclose(augment_sources(ref, np.random.default_rng(0), AugmentConfig(), SR), ref, rtol=1e-6)


def test_add_noise_at_the_asked_snr():
    mix = np.random.default_rng(0).standard_normal(32000).astype(np.float32)
    noisy = add_noise(mix, np.random.default_rng(1), 20.0)
    noise = noisy - mix
    assert 10 * np.log10(np.mean(mix**2) / np.mean(noise**2)) == pytest.approx(20.0, abs=0.01)


def _corpus() -> Corpus:
    rng = np.random.default_rng(0)
    corpus = Corpus.__new__(Corpus)
    # two speakers of noise "utterances" are enough to mix; built by hand so no file is read
    from sepcli.training.corpus import Utterance

    utts = []
    for spk in ("a", "b", "c"):
        x = rng.standard_normal(3 * SR)
        pcm = np.round(x / np.abs(x).max() * 32767).astype(np.int16)
        utts.append(Utterance(None, spk, pcm, 1.0 / float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))))
    corpus.utterances = utts
    corpus.sample_rate = SR
    corpus.speakers = ["a", "b", "c"]
    corpus.by_speaker = [np.array([0]), np.array([1]), np.array([2])]
    corpus.lengths = np.array([3 * SR] * 3)
    return corpus


def test_make_mixture_with_augmentation():
    corpus = _corpus()
    plain = MixingConfig(segment=2.0)
    aug = MixingConfig(segment=2.0, augment=AugmentConfig(reverb=1, eq=1))
    m0, r0, _ = make_mixture(corpus, np.random.default_rng(4), plain)
    m1, r1, _ = make_mixture(corpus, np.random.default_rng(4), aug)
    np.testing.assert_allclose(m1, r1.sum(0), atol=1e-6)  # no noise: still the sum
    assert not np.allclose(r1, r0, atol=1e-3)
    # an inactive config gives exactly the plain mixture (earlier runs' data)
    m2, r2, _ = make_mixture(corpus, np.random.default_rng(4), MixingConfig(segment=2.0, augment=AugmentConfig()))
    np.testing.assert_array_equal(m2, m0)
    np.testing.assert_array_equal(r2, r0)
    noisy = MixingConfig(segment=2.0, augment=AugmentConfig(noise=1, noise_snr=(20.0, 20.0)))
    m3, r3, _ = make_mixture(corpus, np.random.default_rng(4), noisy)
    n = m3 - r3.sum(0)
    assert 10 * np.log10(np.mean(r3.sum(0) ** 2) / np.mean(n**2)) == pytest.approx(20.0, abs=0.05)


@pytest.mark.parametrize("bad", [{"reverb": 1.5}, {"rt60": [0.5, 0.1]}, {"eq_db": -1}, {"nope": 1},
                                 {"vtlp": True}])
def test_bad_augment_settings_are_errors(bad):
    with pytest.raises(SepError):
        AugmentConfig.from_dict(bad)


def test_empty_augment_is_none():
    assert AugmentConfig.from_dict(None) is None
    assert AugmentConfig.from_dict({}) is None
