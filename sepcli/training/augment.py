"""Training-time augmentation of dynamic mixtures: the talkers in a simulated room,
a random channel (EQ, band limits), vocal-tract-length perturbation and low-level noise.

Why: a model trained on clean, close-talking read speech at one polarity and one
channel separates other recordings worse (the hidden check and the shifted test,
``recipes/shifted.py``). These transforms widen what the model sees, in forms
kept apart from the shifted test's (which uses a statistical reverberation tail,
a linear EQ tilt, a Butterworth telephone band and a whole-mixture speed change),
so that the shifted test stays a test of generalisation.

Every transform is linear in the sources and applied to each reference row, so
the references still sum to the mixture, except noise, which goes into the
mixture only (the model is asked for the clean talkers).

Shapes: ref [S, T] float32 at ``sample_rate``; mix [T].
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.signal

from sepcli.errors import SepError, check_keys

__all__ = ["AugmentConfig", "augment_sources", "add_noise", "room_rirs", "vtlp", "random_eq"]

_EPS = 1e-12


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (0-1) and ranges of the training augmentations.

    ``reverb``: probability that a mixture's talkers are in one simulated
    shoebox room (pyroomacoustics' image-source method), each at its own place,
    one microphone; RT60 drawn from ``rt60``. The reference is the reverberant
    talker (the model separates, it does not dereverberate).
    ``vtlp``: probability, per talker, of a frequency warp by a factor from
    ``vtlp_range`` (pitch and formants move, duration does not; Jaitly & Hinton 2013).
    ``eq``: probability of 2-4 random peaking filters (+-``eq_db`` dB) on the channel.
    ``bandlimit``: probability of a random Chebyshev low-pass (cut-off
    ``lowpass_hz``) and/or a high-pass (``highpass_hz``) on the channel.
    ``noise``: probability of coloured noise in the mixture at ``noise_snr`` dB.
    """

    reverb: float = 0.0
    rt60: tuple[float, float] = (0.1, 0.6)
    vtlp: float = 0.0
    vtlp_range: tuple[float, float] = (0.9, 1.1)
    eq: float = 0.0
    eq_db: float = 8.0
    bandlimit: float = 0.0
    lowpass_hz: tuple[float, float] = (2400.0, 3900.0)
    highpass_hz: tuple[float, float] = (40.0, 250.0)
    noise: float = 0.0
    noise_snr: tuple[float, float] = (15.0, 40.0)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("reverb", "vtlp", "eq", "bandlimit", "noise"):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                    raise SepError(f"augment.{f.name} must be a probability from 0 to 1, got {v!r}")
            elif f.name == "eq_db":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                    raise SepError(f"augment.eq_db must be a non-negative number, got {v!r}")
            else:
                if (not isinstance(v, (list, tuple)) or len(v) != 2
                        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                        or not 0 < v[0] <= v[1]):
                    raise SepError(f"augment.{f.name} must be [low, high] with 0 < low <= high, got {v!r}")
                object.__setattr__(self, f.name, (float(v[0]), float(v[1])))

    @classmethod
    def from_dict(cls, values: dict | None) -> AugmentConfig | None:
        """From a recipe's ``augment = {...}`` table; None or {} means no augmentation."""
        if not values:
            return None
        if not isinstance(values, dict):
            raise SepError(f"augment must be a table like {{reverb = 0.5}}, got {values!r}")
        check_keys(values, (f.name for f in dataclasses.fields(cls)), "augment setting")
        return cls(**values)

    @property
    def active(self) -> bool:
        return any(getattr(self, k) > 0 for k in ("reverb", "vtlp", "eq", "bandlimit", "noise"))


# ----------------------------------------------------------------------------- rooms


def room_rirs(rng: np.random.Generator, n_src: int, sample_rate: int, rt60: float) -> np.ndarray:
    """Impulse responses from ``n_src`` random places in one random shoebox room to one microphone.

    The common leading delay (the nearest talker's direct path) is removed, so the
    talkers keep their relative delays. Shape: [S, taps].
    """
    try:
        import pyroomacoustics as pra  # only training needs it
    except ImportError:
        raise SepError("simulated rooms (augment.reverb) need pyroomacoustics: pip install 'sepcli[train]'") from None

    dim = rng.uniform([3.0, 3.0, 2.4], [10.0, 8.0, 4.0])
    while True:
        try:
            e_abs, max_order = pra.inverse_sabine(rt60, dim)
            break
        except ValueError:  # a short RT60 needs more absorption than a large room's walls can have
            dim = np.maximum(dim * 0.85, [2.0, 2.0, 2.2])
            if dim[0] <= 2.0 and dim[1] <= 2.0:
                rt60 = rt60 * 1.2
    # inverse_sabine asks for more images than a short 8-kHz RIR needs at high RT60;
    # capping the order keeps a room at ~30 ms while the early part stays exact.
    room = pra.ShoeBox(dim, fs=sample_rate, materials=pra.Material(e_abs), max_order=int(min(max_order, 40)))
    margin = 0.5
    mic = rng.uniform([margin, margin, 0.7], dim - [margin, margin, 1.0])
    for _ in range(n_src):
        for _try in range(20):
            pos = rng.uniform([margin, margin, 1.0], dim - [margin, margin, 0.6])
            if 0.4 <= np.linalg.norm(pos - mic) <= 3.5:
                break
        room.add_source(pos)
    room.add_microphone(mic)
    room.compute_rir()
    rirs = [np.asarray(room.rir[0][k], dtype=np.float64) for k in range(n_src)]
    taps = max(len(r) for r in rirs)
    out = np.zeros((n_src, taps))  # [S, taps]
    for k, r in enumerate(rirs):
        out[k, : len(r)] = r
    first = int(np.argmax(np.abs(out).max(0) > 0.3 * np.abs(out).max()))  # nearest direct path
    first = max(0, first - 8)  # keep the fractional-delay filter's onset
    return out[:, first:]


def _convolve_rows(ref: np.ndarray, rirs: np.ndarray) -> np.ndarray:
    """Each row of ``ref`` [S, T] through its impulse response, cut to T. Shape: [S, T]."""
    t = ref.shape[1]
    return scipy.signal.fftconvolve(ref, rirs, axes=1)[:, :t]


# ----------------------------------------------------------------------------- VTLP


def vtlp(x: np.ndarray, alpha: float, n_fft: int = 256, hop: int = 64) -> np.ndarray:
    """Warp the frequency axis of ``x`` by ``alpha`` (>1 raises pitch and formants), same duration.

    A phase vocoder in the frequency domain: bin k of the output takes the
    magnitude at k/alpha, and its phase advances alpha times the source's
    instantaneous frequency there, so partials move as whole sinusoids. The
    warp is piecewise linear (it bends at 85% of the band) so the output keeps
    the whole band for either direction. Shape: [T] -> [T].
    """
    t = len(x)
    if alpha == 1.0 or t < n_fft:
        return x.astype(np.float32, copy=True)
    win = scipy.signal.windows.hann(n_fft, sym=False)
    _, _, spec = scipy.signal.stft(x, nperseg=n_fft, noverlap=n_fft - hop, window=win, boundary="zeros",
                                   padded=True)  # [F, K]
    n_bins = spec.shape[0]
    k = np.arange(n_bins, dtype=np.float64)
    bend = 0.85 * (n_bins - 1) * min(alpha, 1.0)
    nyq = n_bins - 1
    # source bin for each output bin: inverse of f -> alpha f below the bend, linear to Nyquist above
    src = np.where(k <= alpha * bend, k / alpha, bend + (k - alpha * bend) * (nyq - bend) / (nyq - alpha * bend))
    src = np.clip(src, 0, nyq)
    mag = np.abs(spec)
    phase = np.angle(spec)
    # instantaneous frequency per bin (rad/hop), unwrapped around each bin's centre frequency
    omega = 2 * np.pi * hop * k / n_fft  # [F]
    dphi = np.diff(phase, axis=1, prepend=phase[:, :1]) - omega[:, None]
    dphi = omega[:, None] + (dphi + np.pi) % (2 * np.pi) - np.pi  # [F, K]
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, nyq)
    w = (src - lo)[:, None]
    new_mag = (1 - w) * mag[lo] + w * mag[hi]  # [F, K]
    new_dphi = ((1 - w) * dphi[lo] + w * dphi[hi]) * (k[:, None] / np.maximum(src[:, None], 1e-9))
    new_dphi[0] = 0.0
    new_phase = np.cumsum(new_dphi, axis=1)
    new_phase += phase[lo, :1] - new_phase[:, :1]
    _, y = scipy.signal.istft(new_mag * np.exp(1j * new_phase), nperseg=n_fft, noverlap=n_fft - hop, window=win,
                              boundary=True)
    y = y[:t]
    if len(y) < t:
        y = np.pad(y, (0, t - len(y)))
    return y.astype(np.float32)


# ----------------------------------------------------------------------------- channel


def _peaking(f0: float, gain_db: float, q: float, sample_rate: int) -> np.ndarray:
    """A peaking-EQ biquad (the RBJ audio-EQ cookbook) as one SOS row. Shape: [1, 6]."""
    a = 10.0 ** (gain_db / 40.0)
    w0 = 2 * np.pi * f0 / sample_rate
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a, -2 * np.cos(w0), 1 - alpha * a])
    den = np.array([1 + alpha / a, -2 * np.cos(w0), 1 - alpha / a])
    return np.concatenate([b / den[0], den / den[0]])[None]


def random_eq(rng: np.random.Generator, sample_rate: int, max_db: float) -> np.ndarray:
    """2-4 peaking filters at log-uniform centres, +-``max_db`` dB, Q 0.5-2. Shape: [n, 6] (SOS)."""
    n = int(rng.integers(2, 5))
    f0 = np.exp(rng.uniform(np.log(80.0), np.log(0.45 * sample_rate), size=n))
    return np.concatenate([
        _peaking(float(f), float(rng.uniform(-max_db, max_db)), float(rng.uniform(0.5, 2.0)), sample_rate)
        for f in f0
    ])


def _random_bandlimit(rng: np.random.Generator, cfg: AugmentConfig, sample_rate: int) -> np.ndarray:
    """A random Chebyshev-I low-pass and/or Butterworth high-pass. Shape: [n, 6] (SOS)."""
    sos = []
    which = int(rng.integers(0, 3))  # 0: low-pass, 1: high-pass, 2: both
    if which in (0, 2):
        fc = min(rng.uniform(*cfg.lowpass_hz), 0.49 * sample_rate)
        sos.append(scipy.signal.cheby1(int(rng.integers(4, 9)), rng.uniform(0.1, 1.0), fc, btype="low",
                                       fs=sample_rate, output="sos"))
    if which in (1, 2):
        fc = rng.uniform(*cfg.highpass_hz)
        sos.append(scipy.signal.butter(int(rng.integers(1, 3)), fc, btype="high", fs=sample_rate, output="sos"))
    return np.concatenate(sos)


def augment_sources(ref: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig,
                    sample_rate: int) -> np.ndarray:
    """The talkers ``ref`` through the random transforms of ``cfg``; each row keeps its RMS.

    Keeping each talker's level lets the mixing's relative levels (snr_range)
    mean what they say whatever the room or filter did. Shape: [S, T] -> [S, T].
    """
    n_src, _ = ref.shape
    rms0 = np.sqrt(np.mean(np.square(ref, dtype=np.float64), axis=1))  # [S]
    y = ref.astype(np.float64)
    for k in range(n_src):
        if rng.random() < cfg.vtlp:
            y[k] = vtlp(y[k], float(rng.uniform(*cfg.vtlp_range)))
    if rng.random() < cfg.reverb:
        y = _convolve_rows(y, room_rirs(rng, n_src, sample_rate, float(rng.uniform(*cfg.rt60))))
    sos = []
    if rng.random() < cfg.eq:
        sos.append(random_eq(rng, sample_rate, cfg.eq_db))
    if rng.random() < cfg.bandlimit:
        sos.append(_random_bandlimit(rng, cfg, sample_rate))
    if sos:
        y = scipy.signal.sosfilt(np.concatenate(sos), y, axis=1)
    rms = np.sqrt(np.mean(np.square(y), axis=1))
    y *= (rms0 / np.maximum(rms, _EPS))[:, None]
    return y.astype(np.float32)


def add_noise(mix: np.ndarray, rng: np.random.Generator, snr_db: float) -> np.ndarray:
    """``mix`` plus Gaussian noise of random colour (spectral slope 0 to -6 dB/octave) at ``snr_db``.

    Shape: [T] -> [T].
    """
    t = len(mix)
    spec = np.fft.rfft(rng.standard_normal(t))
    f = np.maximum(np.arange(len(spec)), 1.0)
    spec *= f ** (-rng.uniform(0.0, 1.0))  # amplitude ~ f^-beta: 0 (white) to 1 (brown-ish)
    noise = np.fft.irfft(spec, n=t)
    p_mix = float(np.mean(np.square(mix, dtype=np.float64)))
    p_noise = float(np.mean(np.square(noise))) or 1.0
    noise *= np.sqrt(p_mix / p_noise * 10.0 ** (-snr_db / 10.0))
    return (mix + noise).astype(np.float32)
