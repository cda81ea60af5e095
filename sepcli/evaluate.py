"""``sep evaluate``: score separated tracks against references (library part).

Two modes, both returning plain data (dataclasses with ``to_dict()``):

* :func:`evaluate_files`: one mixture, reference and estimate files given in
  any order; the best assignment of estimates to references (PIT on SI-SNR) is
  found and used for every metric.
* :func:`evaluate_set`: a whole set in the wsj0-2mix / Libri2Mix layout
  (``DIR/mix/NAME.wav``, ``DIR/s1/NAME.wav``, ``DIR/s2/NAME.wav``, optional
  ``s3/`` ...) against estimates in ``EST_DIR/NAME/s1.wav ...`` (what
  ``sep separate`` writes). Missing estimates are counted and listed.

Rules for the inputs: estimates (and the mixture) at another sample rate are
resampled to the references' rate; a length that differs from the references'
by at most 1% is trimmed or zero-padded with a warning, by more is an error.
Every bad input raises :class:`SepError` with a one-line message.

Set statistics (mean, median, 10th percentile) are over per-mixture values,
each the mean over that mixture's sources.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sepcli import metrics
from sepcli.audio import atomic_write, has_audio_suffix, read_audio, resample
from sepcli.errors import SepError

log = logging.getLogger(__name__)

METRICS = ("si_snr", "si_snri", "sdr", "sdri")
LENGTH_TOLERANCE = 0.01
"""Largest relative length difference that is trimmed/padded instead of refused."""
MIX_FOLDERS = ("mix", "mix_clean")
_MAX_LOGGED_NOTES = 5


# ----------------------------------------------------------------------------- results


@dataclass
class MixtureScore:
    """Scores of one mixture. Per-source lists are in reference order:
    ``si_snr[i]`` scores estimate ``perm[i]`` against reference ``i``.
    ``si_snri``/``sdri`` are None when no mixture was given."""

    name: str
    perm: list[int]
    si_snr: list[float]
    sdr: list[float]
    si_snri: list[float] | None = None
    sdri: list[float] | None = None
    refs: list[str] = field(default_factory=list)
    est: list[str] = field(default_factory=list)
    mix: str | None = None
    sample_rate: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def n_src(self) -> int:
        return len(self.si_snr)

    def mean(self, metric: str) -> float | None:
        """Mean over sources of ``metric`` (one of :data:`METRICS`), or None."""
        values = getattr(self, metric)
        return None if values is None else float(np.mean(values))

    def to_dict(self) -> dict:
        out: dict = {"name": self.name}
        for m in METRICS:
            out[m] = self.mean(m)
        out["perm"] = list(self.perm)
        out["per_source"] = [
            {
                "ref": self.refs[i] if self.refs else None,
                "est": self.est[self.perm[i]] if self.est else None,
                **{m: (None if getattr(self, m) is None else getattr(self, m)[i]) for m in METRICS},
            }
            for i in range(self.n_src)
        ]
        out["mix"] = self.mix
        out["sample_rate"] = self.sample_rate
        out["notes"] = list(self.notes)
        return out


@dataclass(frozen=True)
class Stats:
    mean: float
    median: float
    p10: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        a = np.asarray(values, dtype=np.float64)
        return cls(float(a.mean()), float(np.median(a)), float(np.percentile(a, 10)))


@dataclass
class SetResult:
    """Scores of a whole set. ``missing`` names mixtures without (all) estimates."""

    set_dir: str
    est_dir: str
    scores: list[MixtureScore]
    missing: list[str]
    stats: dict[str, Stats]

    @property
    def n(self) -> int:
        return len(self.scores)

    def to_dict(self) -> dict:
        """JSON-ready: ``n``, ``missing`` (count), the four metric means,
        ``per_file``, plus ``missing_names`` and ``stats`` (mean/median/p10)."""
        out: dict = {"n": self.n, "missing": len(self.missing)}
        for m in METRICS:
            out[m] = self.stats[m].mean if m in self.stats else None
        out["missing_names"] = list(self.missing)
        out["stats"] = {m: vars(s).copy() for m, s in self.stats.items()}
        out["set_dir"] = self.set_dir
        out["est_dir"] = self.est_dir
        out["per_file"] = [s.to_dict() for s in self.scores]
        return out


# ----------------------------------------------------------------------------- scoring


def score_arrays(
    est: np.ndarray, ref: np.ndarray, mix: np.ndarray | None = None, name: str = ""
) -> MixtureScore:
    """Score estimates against references, in any order, at one rate and length.

    Shape: est ``[S, T]``, ref ``[S, T]``, mix ``[T]``.
    SepError for a different number of estimates and references, a length
    mismatch, or an all-zero reference.
    """
    est = np.asarray(est, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if est.ndim != 2 or ref.ndim != 2:
        raise SepError(f"expected est and ref as [S, T], got shapes {est.shape} and {ref.shape}")
    if est.shape[0] != ref.shape[0]:
        raise SepError(f"{est.shape[0]} estimate(s) for {ref.shape[0]} reference(s): the numbers must match")
    if est.shape != ref.shape:
        raise SepError(f"est and ref lengths differ: {est.shape[1]} vs {ref.shape[1]} samples")
    for i in np.flatnonzero(metrics.is_silent(ref)):
        raise SepError(f"reference {i + 1} is all zeros (or constant): SI-SNR is undefined")
    values, perm = metrics.pit_si_snr(est, ref)  # [S], [S]
    ordered = est[perm]  # estimates in reference order
    score = MixtureScore(
        name=name,
        perm=[int(p) for p in perm],
        si_snr=[float(v) for v in values],
        sdr=[float(v) for v in metrics.sdr(ordered, ref)],
    )
    if mix is not None:
        mix = np.asarray(mix, dtype=np.float64)
        if mix.shape != (ref.shape[1],):
            raise SepError(f"mix must be [T] with T = {ref.shape[1]}, got shape {mix.shape}")
        mix_b = np.broadcast_to(mix, ref.shape)  # [S, T]
        score.si_snri = [float(v) for v in values - metrics.si_snr(mix_b, ref)]
        score.sdri = [float(v) for v in np.asarray(score.sdr) - metrics.sdr(mix_b, ref)]
    return score


def _fit_length(x: np.ndarray, length: int, path: Path, notes: list[str]) -> np.ndarray:
    """Trim or zero-pad ``x`` ``[T]`` to ``length`` if within the 1% tolerance."""
    diff = x.shape[0] - length
    if diff == 0:
        return x
    if abs(diff) > LENGTH_TOLERANCE * length:
        raise SepError(
            f"{path}: {x.shape[0]} samples but the references have {length} "
            f"({abs(diff) / length:.1%} {'longer' if diff > 0 else 'shorter'}; more than 1% is an error)"
        )
    notes.append(
        f"{path}: {abs(diff)} samples {'longer' if diff > 0 else 'shorter'} than the references; "
        f"{'trimmed' if diff > 0 else 'zero-padded'}"
    )
    if diff > 0:
        return x[:length]
    return np.concatenate([x, np.zeros(-diff, dtype=x.dtype)])


def _read_at(path: Path, sample_rate: int, length: int, notes: list[str], what: str) -> np.ndarray:
    x, rate = read_audio(path)
    if rate != sample_rate:
        log.info("%s: %s at %d Hz resampled to the references' %d Hz", path, what, rate, sample_rate)
        x = resample(x, rate, sample_rate)
    x = _fit_length(x, length, path, notes)
    if what == "estimate" and not np.any(x):
        notes.append(f"{path}: estimate is silent (all zeros)")
    return x


def _score_files(
    refs: Sequence[Path], ests: Sequence[Path], mix: Path | None, name: str
) -> MixtureScore:
    """Read, check and score one mixture's files; notes are returned, not logged."""
    if not refs:
        raise SepError("no reference files given")
    if len(ests) != len(refs):
        raise SepError(
            f"{len(ests)} estimate(s) for {len(refs)} reference(s): give one estimate per reference"
        )
    notes: list[str] = []
    ref_list: list[np.ndarray] = []
    sample_rate = 0
    length = 0
    for p in refs:
        x, rate = read_audio(p)
        if not ref_list:
            sample_rate, length = rate, x.shape[0]
            if length < metrics.SDR_FILTER_LENGTH:
                raise SepError(
                    f"{p}: {length} samples is too short to score "
                    f"(BSS-eval SDR needs at least {metrics.SDR_FILTER_LENGTH})"
                )
        elif rate != sample_rate:
            raise SepError(f"{p}: references must share one sample rate ({rate} Hz vs {sample_rate} Hz)")
        else:
            x = _fit_length(x, length, p, notes)
        if metrics.is_silent(x):
            raise SepError(f"{p}: reference is all zeros (or constant): SI-SNR is undefined")
        ref_list.append(x)
    est_list = [_read_at(p, sample_rate, length, notes, "estimate") for p in ests]
    mix_x = None if mix is None else _read_at(mix, sample_rate, length, notes, "mixture")
    if mix_x is not None and metrics.is_silent(mix_x):
        raise SepError(f"{mix}: mixture is all zeros (or constant)")
    score = score_arrays(np.stack(est_list), np.stack(ref_list), mix_x, name)  # [S, T] each
    score.refs = [str(p) for p in refs]
    score.est = [str(p) for p in ests]
    score.mix = None if mix is None else str(mix)
    score.sample_rate = sample_rate
    score.notes = notes
    return score


def evaluate_files(
    refs: Sequence[str | os.PathLike],
    est: Sequence[str | os.PathLike],
    mix: str | os.PathLike | None = None,
) -> MixtureScore:
    """Score estimate files (any order) against reference files of one mixture.

    With ``mix`` the improvements SI-SNRi and SDRi are computed too.
    Warnings (length adjusted, silent estimate) are logged and kept in ``notes``.
    """
    ref_paths = [Path(p) for p in refs]
    est_paths = [Path(p) for p in est]
    mix_path = None if mix is None else Path(mix)
    name = mix_path.stem if mix_path is not None else (ref_paths[0].stem if ref_paths else "")
    score = _score_files(ref_paths, est_paths, mix_path, name)
    for note in score.notes:
        log.warning("%s", note)
    return score


# ----------------------------------------------------------------------------- whole set


def _audio_files(folder: Path) -> dict[str, Path]:
    """Stem -> path of the audio files directly in ``folder``."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and has_audio_suffix(p) and not p.name.startswith("."):
            out.setdefault(p.stem, p)
    return out


def source_dirs(set_dir: Path) -> list[Path]:
    found = {}
    for p in set_dir.iterdir():
        m = re.fullmatch(r"s([1-9][0-9]*)", p.name)
        if m and p.is_dir():
            found[int(m.group(1))] = p
    if not found:
        raise SepError(f"{set_dir}: no source folders s1/, s2/ ... (expected the wsj0-2mix/Libri2Mix layout)")
    n_src = max(found)
    gaps = [f"s{k}" for k in range(1, n_src + 1) if k not in found]
    if gaps:
        raise SepError(f"{set_dir}: source folders are not numbered from s1 without gaps (missing {', '.join(gaps)})")
    return [found[k] for k in range(1, n_src + 1)]


def _est_files(folder: Path) -> dict[int, Path]:
    """Source number -> estimate file in ``EST_DIR/NAME/`` (``s1.wav`` ...)."""
    out: dict[int, Path] = {}
    for p in folder.iterdir():
        m = re.fullmatch(r"s([1-9][0-9]*)", p.stem)
        if m and p.is_file() and has_audio_suffix(p):
            k = int(m.group(1))
            if k in out:
                raise SepError(f"{folder}: two estimate files for source {k}: {out[k].name}, {p.name}")
            out[k] = p
    return out


def evaluate_set(
    set_dir: str | os.PathLike,
    est_dir: str | os.PathLike,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> SetResult:
    """Score every mixture of ``set_dir`` against estimates in ``est_dir``.

    ``set_dir`` holds ``mix/`` (or ``mix_clean/``) and ``s1/``, ``s2/`` [, ``s3/`` ...]
    with one file per mixture name; estimates are ``est_dir/NAME/s1.wav`` ...
    ``progress(done, total)`` is called after each mixture.
    Mixtures without estimates are listed in ``missing``; SepError if none has any.
    """
    set_dir, est_dir = Path(set_dir), Path(est_dir)
    for d, what in ((set_dir, "set"), (est_dir, "estimates")):
        if not d.is_dir():
            raise SepError(f"{what} folder not found: {d}")
    mix_dir = next((set_dir / m for m in MIX_FOLDERS if (set_dir / m).is_dir()), None)
    if mix_dir is None:
        raise SepError(f"{set_dir}: no mixture folder ({' or '.join(m + '/' for m in MIX_FOLDERS)})")
    src_dirs = source_dirs(set_dir)
    mixes = _audio_files(mix_dir)
    if not mixes:
        raise SepError(f"{mix_dir}: no audio files")
    src_files = [_audio_files(d) for d in src_dirs]
    for d, files in zip(src_dirs, src_files, strict=True):
        absent = [n for n in mixes if n not in files]
        if absent:
            raise SepError(
                f"{d}: reference missing for {len(absent)} mixture(s), e.g. {absent[0]} "
                f"(every mixture in {mix_dir.name}/ needs one file in each source folder)"
            )

    n_src = len(src_dirs)
    scores: list[MixtureScore] = []
    missing: list[str] = []
    notes: list[str] = []
    total = len(mixes)
    for done, (name, mix_path) in enumerate(mixes.items(), start=1):
        folder = est_dir / name
        ests = _est_files(folder) if folder.is_dir() else {}
        extra = sorted(k for k in ests if k > n_src)
        if extra:
            raise SepError(
                f"{folder}: {max(ests)} estimates for {n_src} references "
                f"(s{extra[0]} has no reference): the numbers must match"
            )
        if len(ests) < n_src:
            missing.append(name)
        else:
            refs = [files[name] for files in src_files]
            score = _score_files(refs, [ests[k] for k in range(1, n_src + 1)], mix_path, name)
            notes.extend(score.notes)
            scores.append(score)
        if progress is not None:
            progress(done, total)

    if not scores:
        raise SepError(
            f"no estimates found in {est_dir} for any of the {total} mixtures "
            f"(expected {est_dir}/NAME/s1.wav ... for NAME in {mix_dir})"
        )
    for note in notes[:_MAX_LOGGED_NOTES]:
        log.warning("%s", note)
    if len(notes) > _MAX_LOGGED_NOTES:
        log.warning("... and %d more such warnings (see notes in --json)", len(notes) - _MAX_LOGGED_NOTES)
    if missing:
        log.warning(
            "%d of %d mixtures have no (complete) estimates in %s, e.g. %s",
            len(missing), total, est_dir, ", ".join(missing[:3]),
        )
    stats = {m: Stats.of([s.mean(m) for s in scores]) for m in METRICS}
    return SetResult(str(set_dir), str(est_dir), scores, missing, stats)


# ----------------------------------------------------------------------------- CSV


def csv_text(scores: Sequence[MixtureScore], missing: Sequence[str] = ()) -> str:
    """One row per mixture: name, status, the four per-mixture means, the
    permutation (0-based estimate indices in reference order, space-separated) and per-source
    values (``si_snr_s1`` ...). Missing mixtures get status ``missing``."""
    n_src = max((s.n_src for s in scores), default=0)
    header = ["name", "status", *METRICS, "perm"]
    header += [f"{m}_s{i + 1}" for m in METRICS for i in range(n_src)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)

    def fmt(v: float | None) -> str:
        return "" if v is None else f"{v:.4f}"

    for s in scores:
        row = [s.name, "ok", *(fmt(s.mean(m)) for m in METRICS), " ".join(str(p) for p in s.perm)]
        for m in METRICS:
            vals = getattr(s, m)
            row += [fmt(vals[i]) if vals is not None and i < len(vals) else "" for i in range(n_src)]
        w.writerow(row)
    for name in missing:
        w.writerow([name, "missing"] + [""] * (len(header) - 2))
    return buf.getvalue()


def check_output(path: str | os.PathLike, force: bool = False) -> Path:
    """SepError unless ``path`` can be (over)written; call before long work."""
    path = Path(path)
    if path.is_dir():
        raise SepError(f"{path} is a folder, not a file name")
    if path.exists() and not force:
        raise SepError(f"{path} exists; use --force to overwrite")
    return path


def write_csv(
    path: str | os.PathLike,
    scores: Sequence[MixtureScore],
    missing: Sequence[str] = (),
    *,
    force: bool = False,
) -> Path:
    """Write :func:`csv_text` to ``path`` atomically; SepError if it exists and not ``force``."""
    path = check_output(path, force)
    text = csv_text(scores, missing)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, text)
    except OSError as exc:
        raise SepError(f"cannot write {path}: {exc.strerror}") from None
