"""Speaker corpora: finding speakers' folders, speaker splits, and :class:`Corpus` in memory.

Speakers are the names of the folders that directly hold audio files; folders
of the same name under different roots (``dev-clean/84`` and
``train-clean-100/84``) are the same speaker. A split file (JSON,
``{"valid": [...], "test": [...]}``) holds whole speakers out: ``train`` is
every speaker not listed under another split.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sepcli.audio import AUDIO_EXTENSIONS, has_audio_suffix, read_audio
from sepcli.errors import SepError

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")

_GLOB_CHARS = set("*?[")
_MIN_RMS = 1e-5  # below this an utterance is digital silence: nothing to separate

# ----------------------------------------------------------------------------- corpus discovery


def _is_audio(path: Path) -> bool:
    return has_audio_suffix(path) and not path.name.startswith(".")


def _expand_roots(roots: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    out: list[Path] = []
    for root in roots:
        text = os.path.expanduser(str(root))
        if _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise SepError(f"no files or folders match {text!r}")
            out.extend(Path(m) for m in matches)
        else:
            p = Path(text)
            if not p.exists():
                raise SepError(f"corpus not found: {p}")
            out.append(p)
    return out


def find_speakers(roots: str | os.PathLike | Sequence[str | os.PathLike]) -> dict[str, list[Path]]:
    """Map speaker id -> sorted audio files, scanning folders (or a glob) at any depth.

    A speaker is a folder that directly holds audio files; its name is the id.
    ``roots`` may be a folder, a glob (``"corpus/*/"``), a file glob
    (``"corpus/*/*/*.flac"``) or a list of these.
    SepError if nothing matches or no audio file is found.
    """
    speakers: dict[str, set[Path]] = {}
    for root in _expand_roots(roots):
        if root.is_file():
            files: Iterable[Path] = [root] if _is_audio(root) else []
        else:
            files = (Path(d) / f for d, _, names in os.walk(root, followlinks=True) for f in names)
        for f in files:
            if _is_audio(f):
                speakers.setdefault(f.parent.name, set()).add(f)
    if not speakers:
        raise SepError(
            f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) found in {roots}; a corpus is "
            "one folder per speaker holding that speaker's utterances"
        )
    return {spk: sorted(files) for spk, files in sorted(speakers.items())}


def load_split(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a speaker split file: JSON ``{"valid": [...], "test": [...], ...}``.

    Keys starting with ``_`` are comments. A speaker listed in two splits is an error.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise SepError(f"speaker split file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SepError(f"{path}: not a readable JSON speaker split ({exc})") from None
    if not isinstance(raw, dict):
        raise SepError(f"{path}: a speaker split is a JSON object of split name -> speaker list")
    split: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for name, spks in raw.items():
        if name.startswith("_"):
            continue
        if not isinstance(spks, list):
            raise SepError(f"{path}: split {name!r} must be a list of speaker ids")
        split[name] = [str(s) for s in spks]
        for s in split[name]:
            if s in seen and seen[s] != name:
                raise SepError(f"{path}: speaker {s} is in both {seen[s]!r} and {name!r}")
            seen[s] = name
    if "train" in split:
        raise SepError(f"{path}: do not list 'train'; it is every speaker not held out")
    return split


def select_split(
    speakers: dict[str, list[Path]], split_file: str | os.PathLike | None, split: str
) -> dict[str, list[Path]]:
    """Keep the speakers of one split. ``train`` = every speaker not held out in the file.

    With no split file every speaker is kept for ``train`` (and any other split
    is an error: held-out speakers need a split file).
    """
    if split_file is None:
        if split != "train":
            raise SepError(f"split {split!r} needs a speaker split file (--speakers-split)")
        return dict(speakers)
    table = load_split(split_file)
    if split == "train":
        held = {s for spks in table.values() for s in spks}
        out = {k: v for k, v in speakers.items() if k not in held}
    else:
        if split not in table:
            valid = ", ".join(["train", *table])
            raise SepError(f"split {split!r} is not in {split_file}; valid: {valid}")
        wanted = set(table[split])
        out = {k: v for k, v in speakers.items() if k in wanted}
        missing = sorted(wanted - set(out))
        if missing:
            log.warning(
                "%d speaker(s) of split %r not found in the corpus: %s",
                len(missing), split, ", ".join(missing[:10]),
            )
    if not out:
        raise SepError(f"no speaker of split {split!r} found in the corpus")
    return out


# ----------------------------------------------------------------------------- in-memory corpus


@dataclass
class Utterance:
    path: Path
    speaker: str
    audio: np.ndarray  # int16 [T]: half the memory of float32
    scale: float  # int16 -> float32 factor that gives this utterance unit RMS


class Corpus:
    """Single-speaker utterances held in memory, grouped by speaker.

    Unreadable, empty or silent files are skipped with a warning; SepError if
    fewer than ``min_speakers`` usable speakers remain.

    Args:
        speakers: speaker id -> audio files (see :func:`find_speakers`).
        sample_rate: every file is resampled to this rate; None keeps the rate
            of the first file and resamples the others to it.
        min_speakers: the number of distinct speakers a mixture needs.
    """

    def __init__(
        self,
        speakers: dict[str, list[Path]],
        sample_rate: int | None = None,
        min_speakers: int = 2,
    ) -> None:
        self.utterances: list[Utterance] = []
        skipped = 0
        for spk in sorted(speakers):
            for path in speakers[spk]:
                try:
                    x, rate = read_audio(path, sample_rate)
                except SepError as exc:
                    log.warning("skipping %s", exc)
                    skipped += 1
                    continue
                if sample_rate is None:
                    sample_rate = rate
                rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
                if rms < _MIN_RMS:
                    log.warning("skipping %s: silent", path)
                    skipped += 1
                    continue
                peak = float(np.abs(x).max())
                if peak > 1.0:
                    x = x / peak  # keep int16 storage lossless in range
                    rms /= peak
                pcm = np.round(x * 32767.0).astype(np.int16)
                self.utterances.append(Utterance(Path(path), spk, pcm, 1.0 / (32767.0 * rms)))
        if sample_rate is None or not self.utterances:
            raise SepError("no usable audio in the corpus (every file was unreadable or silent)")
        self.sample_rate = int(sample_rate)
        self.speakers = sorted({u.speaker for u in self.utterances})
        if len(self.speakers) < min_speakers:
            raise SepError(
                f"the corpus has {len(self.speakers)} usable speaker(s); a mixture needs "
                f"{min_speakers} distinct speakers"
            )
        self.skipped = skipped
        spk_index = {s: i for i, s in enumerate(self.speakers)}
        by_spk: list[list[int]] = [[] for _ in self.speakers]
        for i, u in enumerate(self.utterances):
            by_spk[spk_index[u.speaker]].append(i)
        self.by_speaker = [np.array(ix, dtype=np.int64) for ix in by_spk]
        self.lengths = np.array([len(u.audio) for u in self.utterances], dtype=np.int64)
        log.info(
            "corpus: %d utterances, %d speakers, %.2f h at %d Hz%s",
            len(self.utterances), len(self.speakers), self.seconds / 3600, self.sample_rate,
            f" ({skipped} file(s) skipped)" if skipped else "",
        )

    @classmethod
    def from_path(
        cls,
        roots: str | os.PathLike | Sequence[str | os.PathLike],
        sample_rate: int | None = None,
        speakers_split: str | os.PathLike | None = None,
        split: str = "train",
        min_speakers: int = 2,
    ) -> Corpus:
        """Scan ``roots`` (folder or glob), keep one split's speakers and load them."""
        found = select_split(find_speakers(roots), speakers_split, split)
        return cls(found, sample_rate, min_speakers)

    @property
    def seconds(self) -> float:
        return float(self.lengths.sum()) / self.sample_rate

    def audio(self, index: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Utterance ``index`` (a slice of it) as float32 at unit RMS. Shape: [T]."""
        u = self.utterances[index]
        return u.audio[start:stop].astype(np.float32) * np.float32(u.scale)
