"""Build a *shifted* copy of a mixture set: the same talkers through channels that
nothing in training used in that form, to test generalisation rather than fit.

Every mixture gets, in this order (all seeded by the mixture's index):

- a whole-recording speed change by 0.9 or 1.1 (both talkers together; training
  only changes each talker's speed on its own);
- with probability 1/2, a reverberant room from a *statistical* model (a direct
  path, then a Gaussian tail decaying at RT60 0.3-0.8 s; training's rooms come
  from pyroomacoustics' image sources and stop at RT60 0.6);
- with probability 1/2, a telephone band (Butterworth band-pass 300-3400 Hz,
  order 4 per edge; training's band limits are Chebyshev low-passes and gentle
  high-passes below 250 Hz);
- a random spectral tilt of 2-6 dB per octave either way about 1 kHz (a
  zero-phase linear-in-log-frequency gain; training's EQ is peaking biquads).

The references go through the same channel as the mixture (each talker's own
room), and the mixture is their sum at the original mixture's level, so SI-SNR
against them scores separation, not dereverberation. The set keeps the
Libri2Mix layout (``mix/``, ``s1/``, ``s2/``) and adds ``shift.csv`` (what each
mixture got).

    sep mix ../shared/data/librispeech-8k/*/ --out data/test2 -n 300 \\
        --speakers-split recipes/splits/librispeech-8k.json --split test --seed 1
    python recipes/shifted.py data/test2 --out data/test2-shifted --seed 7
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import scipy.signal
import soxr

from sepcli.audio import publish_dir, read_audio, write_audio
from sepcli.errors import SepError
from sepcli.evaluate import source_dirs
from sepcli.training.data import check_replaceable

SPEEDS = (0.9, 1.1)
RT60 = (0.3, 0.8)
TILT_DB_PER_OCTAVE = (2.0, 6.0)
PHONE_BAND = (300.0, 3400.0)


def statistical_rir(rng: np.random.Generator, sample_rate: int, rt60: float) -> np.ndarray:
    """A direct path and an exponentially decaying Gaussian tail (Polack's model). Shape: [taps].

    Direct-to-reverberant ratio 0-8 dB; the tail starts 2-10 ms after the direct path.
    """
    taps = int(round(1.2 * rt60 * sample_rate))
    t = np.arange(taps) / sample_rate
    tail = rng.standard_normal(taps) * np.exp(-6.9078 * t / rt60)  # -60 dB at rt60
    onset = int(rng.uniform(0.002, 0.010) * sample_rate)
    tail[:onset] = 0.0
    drr_db = rng.uniform(0.0, 8.0)
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / max(float(np.sum(tail**2)), 1e-12))
    rir = tail
    rir[0] = 1.0
    return rir


def tilt(x: np.ndarray, sample_rate: int, db_per_octave: float) -> np.ndarray:
    """A zero-phase gain of ``db_per_octave`` per octave about 1 kHz, within +-18 dB.

    Shape: [..., T] -> [..., T].
    """
    n = x.shape[-1]
    f = np.fft.rfftfreq(n, 1.0 / sample_rate)
    gain_db = np.clip(db_per_octave * np.log2(np.maximum(f, 50.0) / 1000.0), -18.0, 18.0)
    return np.fft.irfft(np.fft.rfft(x, axis=-1) * 10.0 ** (gain_db / 20.0), n=n, axis=-1)


def telephone(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Butterworth band-pass 300-3400 Hz. Shape: [..., T] -> [..., T]."""
    sos = scipy.signal.butter(4, PHONE_BAND, btype="bandpass", fs=sample_rate, output="sos")
    return scipy.signal.sosfilt(sos, x, axis=-1)


def shift_mixture(ref: np.ndarray, mix_rms: float, rng: np.random.Generator,
                  sample_rate: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """One mixture's sources through a random shifted channel.

    Returns ``(mix, ref, conditions)``: the mixture is the shifted sources' sum,
    scaled to ``mix_rms`` (peak at most 0.95). Shape: ref [S, T] -> mix [T'], ref [S, T'].
    """
    speed = float(rng.choice(SPEEDS))
    room = bool(rng.random() < 0.5)
    phone = bool(rng.random() < 0.5)
    slope = float(rng.uniform(*TILT_DB_PER_OCTAVE) * rng.choice([-1.0, 1.0]))
    rt60 = float(rng.uniform(*RT60))
    rms0 = np.sqrt(np.mean(np.square(ref, dtype=np.float64), axis=1))  # [S]
    # Played `speed` times faster: resample to sr / speed, then read at sr.
    y = np.stack([soxr.resample(r.astype(np.float64), sample_rate, sample_rate / speed, quality="HQ")
                  for r in ref])  # [S, T']
    if room:
        t = y.shape[1]
        y = np.stack([scipy.signal.fftconvolve(r, statistical_rir(rng, sample_rate, rt60))[:t] for r in y])
    if phone:
        y = telephone(y, sample_rate)
    y = tilt(y, sample_rate, slope)
    rms = np.sqrt(np.mean(np.square(y), axis=1))
    y *= (rms0 / np.maximum(rms, 1e-12))[:, None]  # each talker keeps its level
    mix = y.sum(0)
    scale = mix_rms / max(float(np.sqrt(np.mean(np.square(mix)))), 1e-12)
    peak = float(np.abs(y).sum(0).max()) * scale
    if peak > 0.95:
        scale *= 0.95 / peak
    y *= scale
    cond = {"speed": speed, "room": room, "rt60": round(rt60, 3) if room else "",
            "phone": phone, "tilt_db_per_octave": round(slope, 2)}
    return (y.sum(0)).astype(np.float32), y.astype(np.float32), cond


def build_shifted(src: str | os.PathLike, out: str | os.PathLike, seed: int = 7, force: bool = False) -> int:
    """Write the shifted copy of the Libri2Mix-layout set ``src`` to ``out``. Returns the mixture count.

    Built in a temporary sibling folder and moved into place, so a killed run
    leaves nothing half-written. Mixture ``i`` depends only on ``(seed, i)``
    and its sources.
    """
    src, out = Path(src), Path(out)
    mixes = sorted((src / "mix").glob("*.wav"))
    if not mixes:
        raise SepError(f"{src} is not a mixture set (no mix/*.wav)")
    n_src = len(source_dirs(src))
    check_replaceable(out, force, marker="shift.csv", what="a shifted set")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    rows = []
    try:
        for sub in ["mix"] + [f"s{k}" for k in range(1, n_src + 1)]:
            (tmp / sub).mkdir()
        for i, path in enumerate(mixes):
            mix, sr = read_audio(path)
            ref = np.stack([read_audio(src / f"s{k}" / path.name, sr)[0] for k in range(1, n_src + 1)])
            mix_rms = float(np.sqrt(np.mean(np.square(mix, dtype=np.float64))))
            new_mix, new_ref, cond = shift_mixture(ref, mix_rms, np.random.default_rng([seed, i]), sr)
            write_audio(tmp / "mix" / path.name, new_mix, sr)
            for k in range(n_src):
                write_audio(tmp / f"s{k + 1}" / path.name, new_ref[k], sr)
            rows.append({"mixture_ID": path.stem, **cond})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (tmp / "shift.csv").write_text(buf.getvalue())
        if (src / "metadata.csv").is_file():
            shutil.copy(src / "metadata.csv", tmp / "metadata.csv")
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="mixture set (mix/, s1/, s2/)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the shifted set")
    ap.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    ap.add_argument("--force", action="store_true", help="replace an existing shifted set")
    args = ap.parse_args()
    try:
        n = build_shifted(args.src, args.out, args.seed, args.force)
    except SepError as exc:
        raise SystemExit(f"Error: {exc}") from None
    print(f"{n} shifted mixtures in {args.out}")


if __name__ == "__main__":
    main()
