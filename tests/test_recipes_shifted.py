"""recipes/shifted.py: the shifted test set's channel, checked against references."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import scipy.signal

from sepcli.audio import read_audio, write_audio
from sepcli.errors import SepError

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("shifted", ROOT / "recipes" / "shifted.py")
shifted = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shifted)

SR = 8000


def test_tilt_gain_per_octave():
    t = np.arange(SR) / SR
    for f, octaves in ((1000, 0), (2000, 1), (500, -1)):
        x = np.sin(2 * np.pi * f * t)
        y = shifted.tilt(x, SR, 4.0)
        gain = 20 * np.log10(np.sqrt(np.mean(y**2)) / np.sqrt(np.mean(x**2)))
        assert gain == pytest.approx(4.0 * octaves, abs=0.05)


def test_telephone_band():
    sos = scipy.signal.butter(4, shifted.PHONE_BAND, btype="bandpass", fs=SR, output="sos")
    t = np.arange(2 * SR) / SR
    for f, passes in ((1000, True), (100, False), (3800, False)):
        y = shifted.telephone(np.sin(2 * np.pi * f * t), SR)[SR:]
        rms = np.sqrt(np.mean(y**2)) * np.sqrt(2)
        assert (rms > 0.9) == passes, f
    assert sos.shape[0] == 4


def test_statistical_rir_decay():
    rir = shifted.statistical_rir(np.random.default_rng(0), SR, 0.5)
    assert rir[0] == 1.0
    e = np.cumsum(rir[::-1] ** 2)[::-1]
    db = 10 * np.log10(e / e[0])
    late = db - db[int(0.02 * SR)]
    t5, t25 = np.argmax(late < -5), np.argmax(late < -25)
    assert 3 * (t25 - t5) / SR == pytest.approx(0.5, rel=0.15)


def test_shift_mixture_keeps_sum_levels_and_speed():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 2 * SR)) * np.array([[1.0], [0.5]])
    mix, new_ref, cond = shifted.shift_mixture(ref, 0.05, np.random.default_rng(3), SR)
    np.testing.assert_allclose(mix, new_ref.sum(0), atol=1e-6)
    assert new_ref.shape[1] == pytest.approx(2 * SR / cond["speed"], abs=2)
    assert np.sqrt(np.mean(mix.astype(np.float64) ** 2)) == pytest.approx(0.05, rel=1e-3)
    lv = np.sqrt(np.mean(new_ref.astype(np.float64) ** 2, axis=1))
    assert lv[0] / lv[1] == pytest.approx(2.0, rel=1e-3)  # the talkers' relative level holds


def test_build_shifted_set(tmp_path):
    src = tmp_path / "set"
    rng = np.random.default_rng(0)
    for i in range(3):
        s = rng.standard_normal((2, SR)).astype(np.float32) * 0.1
        for k in range(2):
            write_audio(src / f"s{k + 1}" / f"{i:04d}.wav", s[k], SR)
        write_audio(src / "mix" / f"{i:04d}.wav", s.sum(0), SR)
    out = tmp_path / "shifted"
    assert shifted.build_shifted(src, out, seed=1) == 3
    rows = list(csv.DictReader((out / "shift.csv").open()))
    assert [r["mixture_ID"] for r in rows] == ["0000", "0001", "0002"]
    mix, _ = read_audio(out / "mix" / "0001.wav")
    s1, _ = read_audio(out / "s1" / "0001.wav")
    s2, _ = read_audio(out / "s2" / "0001.wav")
    np.testing.assert_allclose(mix, s1 + s2, atol=2e-4)  # PCM16 rounding
    with pytest.raises(SepError, match="--force"):
        shifted.build_shifted(src, out, seed=1)
    first = (out / "mix" / "0000.wav").read_bytes()
    shifted.build_shifted(src, out, seed=1, force=True)
    assert (out / "mix" / "0000.wav").read_bytes() == first  # same seed, same bytes
