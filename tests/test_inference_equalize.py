"""Channel normalisation (sepcli.inference.equalize): the filter and its inverse cancel,
a known channel is taken out, the gains keep to their limit, and the Separator and
CLI run it when asked."""
import numpy as np
import pytest
import scipy.signal
from click.testing import CliRunner

from sepcli import api
from sepcli.cli import main
from sepcli.errors import SepError
from sepcli.inference import equalize as eq
from sepcli.inference.settings import InferenceSettings

RATE = 8000


@pytest.fixture
def tiny_convtasnet():
    import torch

    from sepcli import registry

    torch.manual_seed(0)
    return registry.build("convtasnet", N=16, L=16, B=8, H=16, Sc=8, X=2, R=1).eval()


@pytest.fixture
def tiny_convtasnet_path(tmp_path, tiny_convtasnet):
    from sepcli import registry

    path = tmp_path / "tiny.safetensors"
    registry.save_model(tiny_convtasnet, path)
    return path


def speech_like(n: int, seed: int = 0) -> np.ndarray:
    """Noise shaped to the target spectrum, with a slow on-off envelope. Shape: [T]."""
    rng = np.random.default_rng(seed)
    target, _ = eq.target_spectrum(RATE)  # [F] power
    taps = np.fft.irfft(np.sqrt(target), n=eq.N_FFT)
    taps = np.roll(taps, eq.N_FFT // 2) * np.hanning(eq.N_FFT)  # linear-phase FIR of that magnitude
    x = scipy.signal.lfilter(taps, [1.0], rng.standard_normal(n))
    envelope = 0.6 + 0.4 * np.sin(np.arange(n) / RATE * 2 * np.pi * 3)
    return (0.05 * x * envelope / x.std()).astype(np.float32)


def tilt(x: np.ndarray, db_per_octave: float) -> np.ndarray:
    """A zero-phase spectral tilt about 1 kHz, applied to the whole signal by FFT. Shape: [T] -> [T]."""
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    gain_db = db_per_octave * np.log2(np.maximum(freqs, 60.0) / 1000.0)
    return np.fft.irfft(spec * 10 ** (gain_db / 20), n=len(x)).astype(np.float32)


def spectrum_db(x: np.ndarray) -> np.ndarray:
    """The module's smoothed long-term spectrum in dB, level removed. Shape: [T] -> [F]."""
    power = eq._smooth(eq.long_term_spectrum(x[None]))[0]
    db = 10 * np.log10(power)
    return db - np.median(db)


def snr_db(est: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((est - ref).astype(np.float64) ** 2)))


def test_gains_then_inverse_gains_give_back_the_input():
    x = np.stack([speech_like(20000, 1), tilt(speech_like(20000, 2), 6.0)])  # [B, T]
    gains = eq.equalizer_gains(x, RATE, 12.0)  # [B, F]
    assert np.abs(20 * np.log10(gains)).max() > 3.0  # a real filter, not the identity
    back = eq.apply_gains(eq.apply_gains(x, gains, RATE), 1.0 / gains, RATE)
    for b in range(2):
        assert snr_db(back[b], x[b]) > 40.0


def test_an_identity_separator_returns_its_input_exactly_enough():
    x = tilt(speech_like(12000, 3), -5.0)[None]  # [1, T]
    seen = []

    def identity(mix: np.ndarray) -> np.ndarray:
        seen.append(mix)
        return np.stack([mix, 0.5 * mix], axis=1)  # [B, 2, T]

    out = eq.equalized_fn(identity, RATE, 12.0)(x)
    assert out.shape == (1, 2, 12000)
    assert snr_db(out[0, 0], x[0]) > 40.0 and snr_db(out[0, 1], 0.5 * x[0]) > 40.0
    assert np.abs(seen[0] - x).max() > 0.05 * np.abs(x).max()  # the separator heard an equalized input


def test_the_wrapper_is_the_public_gains_and_filter_composed():
    # equalized_fn shares one STFT of the chunk between its spectrum and its filtering:
    # it must hear exactly what apply_gains(mix, equalizer_gains(mix)) gives.
    x = np.stack([tilt(speech_like(9000, 4), 5.0), speech_like(9000, 5)])  # [B, T]
    heard = []

    def sep(mix: np.ndarray) -> np.ndarray:
        heard.append(mix)
        return np.stack([mix ** 2, -mix], axis=1)  # [B, 2, T]: not linear, so order matters

    out = eq.equalized_fn(sep, RATE, 12.0)(x)
    gains = eq.equalizer_gains(x, RATE, 12.0)  # [B, F]
    want_heard = eq.apply_gains(x, gains, RATE)
    np.testing.assert_allclose(heard[0], want_heard, atol=1e-7)
    want = eq.apply_gains(sep(want_heard), 1.0 / gains[:, None, :], RATE)
    np.testing.assert_allclose(out, want, atol=1e-7)


@pytest.mark.parametrize("db_per_octave", [-6.0, 4.0])
def test_half_of_a_known_channel_is_taken_out(db_per_octave):
    """The same talker through two channels: after equalizing, the difference between
    their spectra is half what it was (STRENGTH), band by band over 200-3500 Hz."""
    assert eq.STRENGTH == 0.5
    x = speech_like(40000, 4)
    y = tilt(x, db_per_octave)
    freqs = np.fft.rfftfreq(eq.N_FFT, 1 / RATE)
    band = (freqs > 200) & (freqs < 3500)
    before = (spectrum_db(y) - spectrum_db(x))[band]
    ex, ey = (eq.apply_gains(v[None], eq.equalizer_gains(v[None], RATE, 20.0), RATE)[0] for v in (x, y))
    after = (spectrum_db(ey) - spectrum_db(ex))[band]
    assert np.abs(before).max() > 10.0
    np.testing.assert_allclose(after, 0.5 * before, atol=1.0)


def test_gains_keep_to_the_limit_and_leave_the_level_alone():
    x = tilt(speech_like(20000, 5), 12.0)[None]
    for limit in (3.0, 12.0):
        gains_db = 20 * np.log10(eq.equalizer_gains(x, RATE, limit))
        assert np.abs(gains_db).max() <= limit + 1e-9
        assert abs(np.median(gains_db)) < 1e-9


def test_bands_above_the_target_keep_their_level_at_16_khz():
    x = np.random.default_rng(6).standard_normal((1, 32000)).astype(np.float32)
    gains = eq.equalizer_gains(x, 16000, 12.0)
    freqs = np.fft.rfftfreq(512, 1 / 16000)
    assert gains.shape == (1, 257)
    np.testing.assert_array_equal(gains[0, freqs > 4000], 1.0)


def test_digital_silence_stays_silent():
    out = eq.equalized_fn(lambda mix: mix[:, None] * 1.0, RATE, 12.0)(np.zeros((1, 4000), np.float32))
    assert np.isfinite(out).all() and not out.any()


@pytest.mark.parametrize("bad", [-1.0, 41.0, True, "12"])
def test_bad_limits_raise(bad):
    with pytest.raises(SepError):
        InferenceSettings(equalize=bad)


def test_separator_applies_it_around_the_whole_model(tiny_convtasnet):
    """Separator(equalize=E) gives what equalized_fn gives around the plain separator."""
    x = tilt(speech_like(9000, 7), 6.0)
    plain = api.Separator(tiny_convtasnet, device="cpu", equalize=0.0)
    eqd = api.Separator(tiny_convtasnet, device="cpu", equalize=12.0)
    assert eqd.equalize == 12.0 and plain.equalize == 0.0
    np.testing.assert_array_equal(eqd.fn(x[None]), eq.equalized_fn(plain.fn, RATE, 12.0)(x[None]))
    assert np.abs(eqd.separate(x, RATE) - plain.separate(x, RATE)).max() > 1e-3


def test_cli_option_reaches_the_separator(tmp_path, tiny_convtasnet_path):
    import soundfile as sf

    sf.write(tmp_path / "mix.wav", tilt(speech_like(8000, 8), 6.0), RATE)
    runner = CliRunner()
    for value in ("0", "9"):
        res = runner.invoke(main, ["separate", str(tmp_path / "mix.wav"), "--model", str(tiny_convtasnet_path),
                                   "--out", str(tmp_path / f"out{value}"), "--equalize", value, "--json", "-q"])
        assert res.exit_code == 0, res.output
        assert f'"equalize": {float(value)}' in res.stdout
    a = sf.read(tmp_path / "out0" / "mix" / "s1.wav")[0]
    b = sf.read(tmp_path / "out9" / "mix" / "s1.wav")[0]
    assert np.abs(a - b).max() > 1e-3
    res = runner.invoke(main, ["separate", str(tmp_path / "mix.wav"), "--equalize", "50"])
    assert res.exit_code != 0 and "Traceback" not in res.output


def test_equalize_chunk_off_hands_the_chunk_back_untouched():
    x = np.random.default_rng(3).standard_normal((2, 4000)).astype(np.float32)
    heard, gains = eq.equalize_chunk(x, RATE, 0.0)
    np.testing.assert_array_equal(heard, x)
    assert gains.shape == eq.equalize_chunk(x, RATE, 12.0)[1].shape and (gains == 1.0).all()
    with pytest.raises(SepError):
        eq.equalize_chunk(x, RATE, -1.0)
