"""Pack what a lent GPU machine needs to train the recipes into ``.gpu/`` (git-ignored).

The device tool sends the working tree plus at most 64 MiB of ignored paths
(``carry``), and ``../shared`` does not travel. This writes:

* ``.gpu/librispeech-8k/``: the ``train`` and ``valid`` speakers of
  ``recipes/splits/librispeech-8k.json`` (never the ``test`` speakers), same
  layout (``SUBSET/SPEAKER/UTT.flac``, so the split file applies unchanged),
  re-quantised to ``--bits`` significant bits (default 12: FLAC then takes about
  60% of the size; the quantisation noise sits about 70 dB below full scale,
  far under anything a separation model resolves). LICENSE, README and
  SPEAKERS.TXT come along (CC BY 4.0 attribution).
* ``.gpu/wheels/``: the wheels the machine's Python 3.12 lacks (soundfile,
  cffi, pycparser, soxr), downloaded from PyPI unless already there.

Run here, once per session that has a device machine, then see recipes/gpu/README.md::

    python recipes/gpu/pack.py
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sepcli.training.corpus import find_speakers, select_split  # noqa: E402

WHEELS = ["soundfile==0.13.1", "cffi==2.1.1", "pycparser==3.12", "soxr==1.1.0"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
LIMIT_MB = 64 * 1.048576  # the device tool's 64 MiB, in MB


def requantize(x: np.ndarray, bits: int) -> np.ndarray:
    """Round int16 samples to ``bits`` significant bits. Shape: [T] -> [T]."""
    if bits >= 16:
        return x
    step = 1 << (16 - bits)
    return np.clip(np.round(x.astype(np.int32) / step) * step, -32768, 32767).astype(np.int16)


def pack_data(data: Path, split: Path, out: Path, bits: int) -> int:
    """Copy the non-test speakers of ``data`` into ``out``. Returns bytes written."""
    speakers = find_speakers(data)
    keep = {**select_split(speakers, split, "train"), **select_split(speakers, split, "valid")}
    total = 0
    for files in keep.values():
        for src in files:
            dest = out / src.relative_to(data)
            dest.parent.mkdir(parents=True, exist_ok=True)
            x, rate = sf.read(src, dtype="int16")
            sf.write(dest, requantize(x, bits), rate, format="FLAC", subtype="PCM_16")
            total += dest.stat().st_size
    for name in ("LICENSE.TXT", "README.md", "SPEAKERS.TXT"):
        if (data / name).exists():
            shutil.copy2(data / name, out / name)
    print(f"{sum(map(len, keep.values()))} utterances of {len(keep)} speakers, "
          f"{total / 1e6:.1f} MB, in {out}")
    return total


def fetch_wheels(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for spec in WHEELS:
        name = spec.split("==")[0]
        if any(out.glob(f"{name}-*.whl")):
            continue
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", "-d", str(out), spec]
        for p in PLATFORMS:
            cmd += ["--platform", p]
        subprocess.run(cmd, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "librispeech-8k")
    ap.add_argument("--split", type=Path, default=ROOT / "recipes" / "splits" / "librispeech-8k.json")
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu")
    ap.add_argument("--bits", type=int, default=12, help="significant bits kept (16: lossless)")
    args = ap.parse_args()
    corpus = args.out / "librispeech-8k"
    if corpus.exists():
        shutil.rmtree(corpus)
    pack_data(args.data, args.split, corpus, args.bits)
    fetch_wheels(args.out / "wheels")
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file()) / 1e6
    print(f".gpu/ holds {size:.1f} MB; the device tool carries at most {LIMIT_MB:.1f} MB with the tree")
    return 0 if size < LIMIT_MB - 5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
