"""The long-term average spectrum of training speech: the target that
``equalize`` (sepcli/inference/equalize.py) pulls each chunk's spectrum toward.

Measured on mixtures of *training* speakers only (never the valid or test ones):

    sep mix ../shared/data/librispeech-8k/*/ --out data/trainlt -n 200 \\
        --speakers-split recipes/splits/librispeech-8k.json --split train --seed 9
    python recipes/speech_spectrum.py data/trainlt

prints ``SPEECH_SPECTRUM_DB`` (dB per 31.25-Hz bin from 0 to 4 kHz, mean power 0 dB):
the geometric mean over mixtures of each mixture's spectrum, as
:func:`sepcli.inference.equalize.long_term_spectrum` measures it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sepcli.audio import read_audio
from sepcli.inference.equalize import N_FFT, SAMPLE_RATE, long_term_spectrum


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mixtures", type=Path, help="a mixture set of training speakers (its mix/*.wav)")
    args = ap.parse_args()
    logs = []
    for path in sorted((args.mixtures / "mix").glob("*.wav")):
        x, rate = read_audio(path)
        if rate != SAMPLE_RATE:
            raise SystemExit(f"{path}: {rate} Hz; the target is measured at {SAMPLE_RATE} Hz")
        power = long_term_spectrum(x.reshape(1, -1), N_FFT)[0]  # [F]
        logs.append(np.log(power / power.mean()))
    mean_db = 10 * np.log10(np.exp(np.mean(logs, axis=0)))
    mean_db -= 10 * np.log10(np.mean(10 ** (mean_db / 10)))  # mean power 0 dB
    print(f"# {len(logs)} mixtures of {args.mixtures}")
    print("SPEECH_SPECTRUM_DB = (")
    values = [f"{v:.1f}" for v in mean_db]
    for i in range(0, len(values), 12):
        print("    " + ", ".join(values[i:i + 12]) + ",")
    print(")")


if __name__ == "__main__":
    main()
