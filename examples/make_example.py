"""Build the shipped example: a two-speaker mixture, wsj0-2mix style.

Run by hand from the repository root (it reads ../shared, which user clones do not have)::

    python examples/make_example.py --force

Sources (LibriSpeech dev-clean, CC BY 4.0, both speakers in the held-out
``test`` split of recipes/splits/librispeech-8k.json; 8 kHz copies):

* s1: 1272-135031-0015, speaker 1272 (male)
* s2: 1462-170138-0013, speaker 1462 (female)

Recipe: both utterances are cut to the shorter one (``min`` mode), scaled to
the same RMS, then s1 is raised and s2 lowered by half of a relative level
drawn uniformly from 0-5 dB (seed 2). s1, s2 and mix = s1 + s2 are finally
scaled together so the mixture peaks at 0.85, and written as 8 kHz PCM16 WAV.
The run prints the resulting gains; the last run gave:

    7.02 s; relative level 1.31 dB; gains s1 x1.1204, s2 x1.1908 (applied to the source files); mix peak 0.85
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sepcli.audio import read_audio, write_audio
from sepcli.errors import SepError

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "librispeech-8k" / "dev-clean"
S1_ID = "1272-135031-0015"
S2_ID = "1462-170138-0013"
SAMPLE_RATE = 8000
SEED = 2
PEAK = 0.85


def _path(utt: str) -> Path:
    return DATA / utt.split("-")[0] / f"{utt}.flac"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite the example files")
    args = parser.parse_args()

    s1, _ = read_audio(_path(S1_ID), SAMPLE_RATE)
    s2, _ = read_audio(_path(S2_ID), SAMPLE_RATE)
    n = min(len(s1), len(s2))
    s1, s2 = s1[:n].astype(np.float64), s2[:n].astype(np.float64)

    def rms(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean(x**2)))

    level_db = float(np.random.default_rng(SEED).uniform(0.0, 5.0))
    g1 = 10 ** (level_db / 40) / rms(s1)  # +level/2 dB after RMS normalization
    g2 = 10 ** (-level_db / 40) / rms(s2)  # -level/2 dB
    mix = g1 * s1 + g2 * s2
    scale = PEAK / float(np.max(np.abs(mix)))
    g1, g2 = g1 * scale, g2 * scale
    s1, s2 = g1 * s1, g2 * s2
    mix = s1 + s2

    for name, x in (("s1", s1), ("s2", s2), ("mix", mix)):
        write_audio(HERE / f"{name}.wav", x.astype(np.float32), SAMPLE_RATE, force=args.force)
    print(
        f"{n / SAMPLE_RATE:.2f} s; relative level {level_db:.2f} dB; "
        f"gains s1 x{g1:.4f}, s2 x{g2:.4f} (applied to the source files); mix peak {PEAK}"
    )


if __name__ == "__main__":
    try:
        main()
    except SepError as exc:
        raise SystemExit(f"Error: {exc}") from None
