"""Training data: speaker corpora, dynamic mixing, pre-mixed sets and ``sep mix``.

Two kinds of data feed training (:mod:`sepcli.training`):

* a **corpus** of single-speaker utterances, one folder per speaker (for example
  ``librispeech-8k/*/SPEAKER/*.flac``). :class:`Corpus` loads it into memory
  once (int16) and :class:`DynamicMixDataset` draws a fresh mixture for every
  index: distinct speakers, a random segment of each, a random relative level
  (wsj0-2mix: the sources differ by 0-5 dB) and optional speed perturbation.
  Item ``i`` of epoch ``e`` depends only on ``(seed, e, i)``, so a resumed or
  multi-process run sees exactly the mixtures an uninterrupted one would.
* a **mixture set** in the Libri2Mix / wsj0-2mix layout (``mix/`` or
  ``mix_clean/``, ``s1/``, ``s2/``, optionally ``s3/``, same file names in each), read lazily by
  :class:`MixtureSetDataset` and resampled to the model's rate.
  :func:`build_mixture_set` (``sep mix``) writes such sets, with a
  ``metadata.csv`` that records every source, offset and gain.

Speakers are the names of the folders that directly hold audio files; folders
of the same name under different roots (``dev-clean/84`` and
``train-clean-100/84``) are the same speaker. A split file (JSON,
``{"valid": [...], "test": [...]}``) holds whole speakers out: ``train`` is
every speaker not listed under another split.

Shape legend: S sources, T samples.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sepcli.audio import atomic_dir, play_faster, read_audio, write_audio
from sepcli.errors import SepError
from sepcli.training.augment import AugmentConfig, add_noise, augment_sources
from sepcli.training.corpus import Corpus, _is_audio

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- mixing


@dataclass(frozen=True)
class MixingConfig:
    """How :func:`make_mixture` builds a mixture.

    ``segment``: seconds per mixture (shorter sources are zero-padded at a random
    place), or None for whole utterances joined by ``mode``: ``"min"`` cuts
    every source to the shortest, ``"max"`` pads to the longest (Libri2Mix).
    ``snr_range``: the sources' levels differ by up to this many dB
    (wsj0-2mix: 0-5). ``speed_range``: per-source speed factor (resampling,
    so pitch moves too), None for no perturbation. ``level_range``: mixture
    RMS in dBFS. ``sampling``: ``"duration"`` makes every second of audio
    equally likely to be used; ``"speaker"`` makes every speaker equally likely.
    ``n_active``: numbers of talking speakers to draw from, each equally
    likely (e.g. ``(2, 3)``); the reference keeps ``n_src`` rows and those past
    the drawn count are silent. None: all ``n_src`` talk. For models whose loss
    takes silent references (deep clustering), to train on several counts.
    ``random_polarity``: flip each source's sign with probability 1/2 (the
    mixture is still their sum). Speech waveforms are asymmetric and a corpus
    tends to keep one polarity, so a model trained without it can separate
    a sign-flipped recording much worse (docs/experiments.md, "Passes").
    ``augment``: rooms, channel filters, VTLP and noise
    (:class:`sepcli.training.augment.AugmentConfig`), None for none. With noise the
    mixture is the references' sum plus the noise.
    """

    n_src: int = 2
    segment: float | None = 4.0
    mode: str = "min"
    snr_range: tuple[float, float] = (0.0, 5.0)
    speed_range: tuple[float, float] | None = None
    level_range: tuple[float, float] = (-30.0, -20.0)
    sampling: str = "duration"
    n_active: tuple[int, ...] | None = None
    random_polarity: bool = False
    augment: AugmentConfig | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.n_src, int) or self.n_src < 1:
            raise SepError(f"n_src must be a positive integer, got {self.n_src!r}")
        if self.n_active is not None and (
            not self.n_active
            or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.n_src for k in self.n_active)
        ):
            raise SepError(f"n_active must list speaker counts from 1 to n_src={self.n_src}, got {self.n_active!r}")
        if self.segment is not None and not self.segment > 0:
            raise SepError(f"segment must be positive seconds, got {self.segment!r}")
        if self.mode not in ("min", "max"):
            raise SepError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.sampling not in ("duration", "speaker"):
            raise SepError(f"sampling must be 'duration' or 'speaker', got {self.sampling!r}")
        for name in ("snr_range", "speed_range", "level_range"):
            value = getattr(self, name)
            if value is None and name == "speed_range":
                continue
            if len(value) != 2 or not value[0] <= value[1]:
                raise SepError(f"{name} must be [low, high] with low <= high, got {value!r}")
        if self.speed_range is not None and not self.speed_range[0] > 0:
            raise SepError(f"speed_range must be positive, got {self.speed_range!r}")


@dataclass
class MixtureInfo:
    """What went into one mixture (one row of ``metadata.csv``)."""

    utterances: list[int]
    speakers: list[str]
    offsets: list[int]  # first sample used, in the utterance (at the corpus rate)
    pads: list[int]  # zeros placed before the source in the mixture
    speeds: list[float]
    gains_db: list[float]  # gain applied to each unit-RMS source
    length: int


def _pick_sources(corpus: Corpus, rng: np.random.Generator, cfg: MixingConfig) -> list[int]:
    """Utterance indices of ``n_src`` distinct speakers."""
    if cfg.sampling == "speaker":
        spk = rng.choice(len(corpus.speakers), size=cfg.n_src, replace=False)
        return [int(rng.choice(corpus.by_speaker[s])) for s in spk]
    # Duration-weighted: speaker by total duration, then utterance by duration.
    spk_dur = np.array([corpus.lengths[ix].sum() for ix in corpus.by_speaker], dtype=np.float64)
    spk = rng.choice(len(corpus.speakers), size=cfg.n_src, replace=False, p=spk_dur / spk_dur.sum())
    out = []
    for s in spk:
        ix = corpus.by_speaker[s]
        w = corpus.lengths[ix].astype(np.float64)
        out.append(int(rng.choice(ix, p=w / w.sum())))
    return out


def _gains_db(rng: np.random.Generator, cfg: MixingConfig) -> np.ndarray:
    lo, hi = cfg.snr_range
    rel = np.concatenate([[0.0], -rng.uniform(lo, hi, size=cfg.n_src - 1)])  # [S]
    # Centred, so two sources sit at +r/2 and -r/2 dB as in wsj0-2mix.
    return rel - rel.mean()


def make_mixture(
    corpus: Corpus, rng: np.random.Generator, cfg: MixingConfig
) -> tuple[np.ndarray, np.ndarray, MixtureInfo]:
    """Draw one mixture. Returns ``(mix, ref, info)`` with ``mix == ref.sum(0)`` (plus noise, if augmented).

    Shape: mix [T], ref [S, T].
    """
    if cfg.n_active is not None:
        k = int(rng.choice(cfg.n_active))
        mix, ref, info = make_mixture(corpus, rng, dataclasses.replace(cfg, n_src=k, n_active=None))
        silent = np.zeros((cfg.n_src - k, ref.shape[1]), dtype=np.float32)  # [S-k, T]
        return mix, np.concatenate([ref, silent]), info
    sr = corpus.sample_rate
    utts = _pick_sources(corpus, rng, cfg)
    speeds = (
        rng.uniform(*cfg.speed_range, size=cfg.n_src) if cfg.speed_range else np.ones(cfg.n_src)
    )
    seg = None if cfg.segment is None else int(round(cfg.segment * sr))
    srcs, offsets = [], []
    for u, f in zip(utts, speeds, strict=True):
        n = int(corpus.lengths[u])
        # Read just enough input for `seg` output samples after the speed change.
        need = n if seg is None else min(n, int(math.ceil(seg * f)) + 32)
        off = int(rng.integers(0, n - need + 1))
        x = corpus.audio(u, off, off + need)
        if f != 1.0:
            x = play_faster(x, f, sr).astype(np.float32)
        if seg is not None:
            x = x[:seg]
        srcs.append(x)
        offsets.append(off)
    lengths = [len(x) for x in srcs]
    if seg is not None:
        length = seg
    else:
        length = min(lengths) if cfg.mode == "min" else max(lengths)
    ref = np.zeros((cfg.n_src, length), dtype=np.float32)  # [S, T]
    pads = []
    for k, x in enumerate(srcs):
        x = x[:length]
        pad = int(rng.integers(0, length - len(x) + 1)) if seg is not None else 0
        ref[k, pad : pad + len(x)] = x
        pads.append(pad)
    aug = cfg.augment if cfg.augment is not None and cfg.augment.active else None
    # Its own stream, seeded only when asked, so mixtures without augmentation
    # stay the ones earlier runs saw.
    arng = np.random.default_rng(rng.integers(2**63)) if aug is not None else None
    if aug is not None:
        ref = augment_sources(ref, arng, aug, sr)
    gains = _gains_db(rng, cfg)
    ref *= (10.0 ** (gains / 20.0)).astype(np.float32)[:, None]
    level_db = rng.uniform(*cfg.level_range)
    if cfg.random_polarity:
        # Drawn last and only when asked, so mixtures without it stay the ones earlier runs saw.
        ref *= rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=cfg.n_src)[:, None]
    mix = ref.sum(0)  # [T]
    rms = float(np.sqrt(np.mean(np.square(mix, dtype=np.float64)))) or 1.0
    scale = 10.0 ** (level_db / 20.0) / rms
    peak = float(np.abs(ref).sum(0).max()) * scale
    if peak > 0.9:
        scale *= 0.9 / peak  # no clipping in the mixture or any source
    ref *= np.float32(scale)
    mix = ref.sum(0)
    if aug is not None and arng.random() < aug.noise:
        mix = add_noise(mix, arng, float(arng.uniform(*aug.noise_snr)))
    info = MixtureInfo(
        utterances=list(utts),
        speakers=[corpus.utterances[u].speaker for u in utts],
        offsets=offsets,
        pads=pads,
        speeds=[float(f) for f in speeds],
        gains_db=[float(g + 20 * math.log10(scale)) for g in gains],
        length=length,
    )
    return mix.astype(np.float32), ref, info


class DynamicMixDataset(torch.utils.data.Dataset):
    """A fresh mixture for every index: ``epoch_size`` items per epoch.

    Item ``i`` depends only on ``(seed, epoch, i)``; call :meth:`set_epoch`
    before each epoch (a fixed validation set keeps epoch 0).
    Items: ``(mix [T], ref [S, T])`` float32 tensors.
    """

    def __init__(
        self, corpus: Corpus, mixing: MixingConfig, epoch_size: int, seed: int = 0
    ) -> None:
        if mixing.segment is None:
            raise SepError("dynamic mixing needs a segment length (seconds)")
        if epoch_size < 1:
            raise SepError(f"epoch_size must be positive, got {epoch_size}")
        if len(corpus.speakers) < mixing.n_src:
            raise SepError(
                f"{mixing.n_src}-speaker mixtures need {mixing.n_src} speakers; "
                f"the corpus has {len(corpus.speakers)}"
            )
        self.corpus = corpus
        self.mixing = mixing
        self.epoch_size = int(epoch_size)
        self.seed = int(seed)
        self.epoch = 0
        self.sample_rate = corpus.sample_rate
        self.n_src = mixing.n_src

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.epoch_size

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def mixture(self, index: int) -> tuple[np.ndarray, np.ndarray, MixtureInfo]:
        """Item ``index`` with its :class:`MixtureInfo`. Shape: mix [T], ref [S, T]."""
        if not 0 <= index < self.epoch_size:
            raise IndexError(index)
        return make_mixture(self.corpus, self.rng(index), self.mixing)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        mix, ref, _ = self.mixture(index)
        return torch.from_numpy(mix), torch.from_numpy(ref)


# ----------------------------------------------------------------------------- pre-mixed sets


MIX_FOLDERS = ("mix", "mix_clean")
"""Mixture folder names tried in order (``mix_clean`` is Libri2Mix's)."""


def mixture_folder(path: str | os.PathLike) -> Path | None:
    """The mixture folder of a Libri2Mix-style set, or None if ``path`` is not one."""
    p = Path(path)
    if not (p / "s1").is_dir():
        return None
    for name in MIX_FOLDERS:
        if (p / name).is_dir():
            return p / name
    return None


def is_mixture_set(path: str | os.PathLike) -> bool:
    """True if ``path`` looks like a Libri2Mix-style set (``mix/`` or ``mix_clean/``, and ``s1/``)."""
    return mixture_folder(path) is not None


def _audio_by_stem(folder: Path) -> dict[str, Path]:
    return {f.stem: f for f in sorted(folder.iterdir()) if f.is_file() and _is_audio(f)}


class MixtureSetDataset(torch.utils.data.Dataset):
    """A pre-mixed set: ``root/mix/X.wav`` with sources ``root/s1/X.wav``, ``root/s2/X.wav``...

    Files of a mixture are matched by name (any audio suffix) and resampled to
    ``sample_rate``. A mixture whose source file is missing, or whose files
    differ in length by more than ``tolerance`` seconds, is skipped with a
    warning (when the set is opened; files are then read lazily). Smaller
    differences (resampling round-off) are resolved by ``mode``: ``"min"`` cuts
    to the shortest file, ``"max"`` zero-pads to the longest.

    With ``segment`` (seconds) each item is a crop of that length, random per
    ``(seed, epoch, index)`` (zero-padded if shorter); with None, whole files,
    cut to ``max_seconds`` if given.
    Items: ``(mix [T], ref [S, T])`` float32 tensors.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        sample_rate: int,
        n_src: int | None = None,
        *,
        mode: str = "min",
        segment: float | None = None,
        max_seconds: float | None = None,
        seed: int = 0,
        tolerance: float = 0.02,
        check_lengths: bool = True,
    ) -> None:
        from sepcli.audio import audio_info

        self.root = Path(root)
        if not self.root.is_dir():
            raise SepError(f"mixture set not found: {self.root}")
        mix_dir = mixture_folder(self.root)
        if mix_dir is None:
            raise SepError(f"{self.root}: not a mixture set (expected folders mix/, s1/, s2/ ...)")
        if mode not in ("min", "max"):
            raise SepError(f"mode must be 'min' or 'max', got {mode!r}")
        found = 0
        while (self.root / f"s{found + 1}").is_dir():
            found += 1
        if n_src is None:
            n_src = found
        if found < n_src or found < 1:
            raise SepError(f"{self.root}: has {found} source folder(s) (s1/...); need {n_src}")
        if found > n_src:
            raise SepError(
                f"{self.root}: has {found} sources per mixture (s1..s{found}) but the model "
                f"separates {n_src}"
            )
        self.n_src = int(n_src)
        self.sample_rate = int(sample_rate)
        self.mode, self.segment, self.max_seconds = mode, segment, max_seconds
        self.seed, self.epoch = int(seed), 0
        mixes = _audio_by_stem(mix_dir)
        if not mixes:
            raise SepError(f"{mix_dir}: no audio files")
        src_maps = [_audio_by_stem(self.root / f"s{k + 1}") for k in range(self.n_src)]
        self.items: list[tuple[Path, list[Path]]] = []
        skipped = 0
        for stem, mix_path in mixes.items():
            srcs = [m.get(stem) for m in src_maps]
            if any(s is None for s in srcs):
                missing = [f"s{k + 1}" for k, s in enumerate(srcs) if s is None]
                log.warning("skipping mixture %s: no source file in %s", stem, ", ".join(missing))
                skipped += 1
                continue
            paths = [mix_path, *srcs]
            if check_lengths:
                try:
                    durs = [audio_info(p).duration for p in paths]
                except SepError as exc:
                    log.warning("skipping mixture %s: %s", stem, exc)
                    skipped += 1
                    continue
                if max(durs) - min(durs) > tolerance:
                    desc = ", ".join(f"{p.parent.name}/{p.name} {d:.3f} s" for p, d in zip(paths, durs, strict=True))
                    log.warning("skipping mixture %s: files differ in length (%s)", stem, desc)
                    skipped += 1
                    continue
            self.items.append((mix_path, srcs))  # type: ignore[arg-type]
        self.skipped = skipped
        if not self.items:
            raise SepError(f"{self.root}: no usable mixture ({skipped} skipped, see warnings)")
        if skipped:
            log.warning("%s: %d of %d mixtures skipped", self.root, skipped, len(mixes))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Whole mixture ``index``, lengths reconciled by ``mode``. Shape: mix [T], ref [S, T]."""
        mix_path, src_paths = self.items[index]
        sigs = [read_audio(p, self.sample_rate)[0] for p in (mix_path, *src_paths)]
        lens = [len(s) for s in sigs]
        length = min(lens) if self.mode == "min" else max(lens)
        out = np.zeros((len(sigs), length), dtype=np.float32)  # [1 + S, T]
        for k, s in enumerate(sigs):
            out[k, : min(length, len(s))] = s[:length]
        return out[0], out[1:]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        mix, ref = self.load(index)
        n = mix.shape[-1]
        if self.segment is not None:
            seg = int(round(self.segment * self.sample_rate))
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            if n >= seg:
                off = int(rng.integers(0, n - seg + 1))
                mix, ref = mix[off : off + seg], ref[:, off : off + seg]
            else:
                pad = int(rng.integers(0, seg - n + 1))
                mix = np.pad(mix, (pad, seg - n - pad))
                ref = np.pad(ref, ((0, 0), (pad, seg - n - pad)))
        elif self.max_seconds is not None:
            cut = int(round(self.max_seconds * self.sample_rate))
            mix, ref = mix[:cut], ref[:, :cut]
        return torch.from_numpy(np.ascontiguousarray(mix)), torch.from_numpy(np.ascontiguousarray(ref))


# ----------------------------------------------------------------------------- sep mix


@dataclass
class MixtureSetSummary:
    """What :func:`build_mixture_set` wrote."""

    out: Path
    n_mixtures: int
    n_src: int
    sample_rate: int
    speakers: list[str]
    seconds: float
    metadata: Path = field(init=False)

    def __post_init__(self) -> None:
        self.metadata = self.out / "metadata.csv"


def check_replaceable(out: Path, force: bool, marker: str = "metadata.csv", what: str = "a mixture set") -> None:
    """SepError unless ``out`` is absent, empty, or (with ``force``) a folder holding ``marker``."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SepError(f"{out} exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not force:
        raise SepError(f"{out} exists and is not empty; use --force to replace it")
    if not (out / marker).is_file():
        # --force replaces a set, never an arbitrary folder.
        raise SepError(f"refusing to replace {out}: it is not {what} (no {marker})")


def build_mixture_set(
    corpus: str | os.PathLike | Sequence[str | os.PathLike] | Corpus,
    out: str | os.PathLike,
    n_mixtures: int,
    *,
    n_src: int = 2,
    sample_rate: int | None = None,
    mode: str = "min",
    segment: float | None = None,
    snr_range: tuple[float, float] = (0.0, 5.0),
    speed_range: tuple[float, float] | None = None,
    sampling: str = "duration",
    seed: int = 0,
    speakers_split: str | os.PathLike | None = None,
    split: str = "train",
    subtype: str = "PCM_16",
    force: bool = False,
) -> MixtureSetSummary:
    """Write a fixed mixture set in the Libri2Mix layout (``sep mix``).

    ``out/mix/ID.wav``, ``out/s1/ID.wav``, ``out/s2/ID.wav`` (``s3/`` for three
    speakers) and ``out/metadata.csv`` (sources, offsets, speeds and gains).
    Only the speakers of ``split`` are used, so sets built with the same split
    file and different splits share no speaker. Mixture ``i`` depends only on
    ``(seed, i)`` and the corpus: the same call writes byte-identical files.
    The set is built in a temporary sibling folder and moved into place at the
    end, so an interrupted run leaves nothing half-written.
    """
    out = Path(out)
    if n_mixtures < 1:
        raise SepError(f"n_mixtures must be positive, got {n_mixtures}")
    check_replaceable(out, force)
    mixing = MixingConfig(
        n_src=n_src, segment=segment, mode=mode, snr_range=tuple(snr_range),
        speed_range=None if speed_range is None else tuple(speed_range), sampling=sampling,
    )
    if not isinstance(corpus, Corpus):
        corpus = Corpus.from_path(corpus, sample_rate, speakers_split, split, min_speakers=n_src)
    elif sample_rate is not None and corpus.sample_rate != sample_rate:
        raise SepError(f"corpus is at {corpus.sample_rate} Hz, not {sample_rate}")
    if len(corpus.speakers) < n_src:
        raise SepError(f"{n_src}-speaker mixtures need {n_src} speakers; found {len(corpus.speakers)}")
    sr = corpus.sample_rate
    width = max(4, len(str(n_mixtures - 1)))
    header = ["mixture_ID", "mixture_path", "length", "sample_rate"]
    for k in range(1, n_src + 1):
        header += [
            f"source_{k}_path", f"source_{k}_speaker", f"source_{k}_file", f"source_{k}_offset",
            f"source_{k}_pad", f"source_{k}_speed", f"source_{k}_gain_db",
        ]
    rows = []
    used: set[str] = set()
    total = 0
    with atomic_dir(out) as tmp:
        for sub in ["mix"] + [f"s{k}" for k in range(1, n_src + 1)]:
            (tmp / sub).mkdir()
        for i in range(n_mixtures):
            rng = np.random.default_rng([int(seed), i])
            mix, ref, info = make_mixture(corpus, rng, mixing)
            mid = f"{i:0{width}d}"
            write_audio(tmp / "mix" / f"{mid}.wav", mix, sr, subtype=subtype)
            row = [mid, f"mix/{mid}.wav", info.length, sr]
            for k in range(n_src):
                write_audio(tmp / f"s{k + 1}" / f"{mid}.wav", ref[k], sr, subtype=subtype)
                utt = corpus.utterances[info.utterances[k]]
                row += [
                    f"s{k + 1}/{mid}.wav", info.speakers[k], str(utt.path), info.offsets[k],
                    info.pads[k], f"{info.speeds[k]:.6f}", f"{info.gains_db[k]:.4f}",
                ]
                used.add(info.speakers[k])
            rows.append(row)
            total += info.length
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        (tmp / "metadata.csv").write_text(buf.getvalue())
    return MixtureSetSummary(out, n_mixtures, n_src, sr, sorted(used), total / sr)
