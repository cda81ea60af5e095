"""The project's I/O module: audio files, atomic writes, the audio-extension
list, the resampler.

* **Audio files.** Every reader returns float32 mono ``[T]``: multichannel
  files are averaged to mono (logged once per file). Every writer takes
  ``[T]`` or ``[C, T]`` and writes WAV.
* **Atomic writes.** Every output of the package (audio, weights,
  checkpoints, CSV/JSON, plots, folders of files) goes through a temp file or
  folder beside the destination followed by ``os.replace``
  (:class:`AtomicFile`, :func:`atomic_write`, :func:`atomic_dir`), so an
  interrupted write never leaves a partial output.
* **Extensions.** :data:`AUDIO_EXTENSIONS` is the one list of file endings
  treated as audio when a folder is searched (inputs, corpora, mixture sets,
  estimates).
* **Resampling** uses soxr at ``"HQ"`` quality, built here only: the one-shot
  :func:`resample` and the streaming :class:`Resampler` (what
  :class:`BlockReader` and :func:`resample_blocks` run) give bit-identical
  output for the same input (soxr's one-shot call is its streaming resampler
  run over the whole signal), so whole-file and streamed processing agree.
  The output length of a conversion is ``floor(T * sr_out / sr_in + 1/2)``
  (:func:`resampled_length`).

Shape legend: T samples, C channels.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import numpy as np
import soundfile as sf
import soxr

from sepcli.errors import SepError

log = logging.getLogger(__name__)

SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
"""WAV sample formats :func:`write_audio` and :class:`AudioWriter` accept."""

RESAMPLE_QUALITY = "HQ"
DEFAULT_BLOCK_FRAMES = 65536

AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .ogg .oga .opus .mp3 .aif .aiff .aifc .au .snd .caf .w64 .rf64 .sph .nist".split()
)
"""File endings treated as audio when a folder is searched (any file given by name is tried)."""

# Files written via a private temp file (mode 0600) get the mode an ordinary
# open() would have given them; the umask is read once, at import.
_UMASK = os.umask(0)
os.umask(_UMASK)
NEW_FILE_MODE = 0o666 & ~_UMASK


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says. ``frames`` counts samples per channel."""

    sample_rate: int
    frames: int
    channels: int
    duration: float
    format: str
    subtype: str


# ----------------------------------------------------------------------------- reading


def has_audio_suffix(path: str | os.PathLike) -> bool:
    """Whether ``path`` ends in one of :data:`AUDIO_EXTENSIONS` (any case)."""
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def _check_file(path: Path) -> None:
    if not path.exists():
        raise SepError(f"file not found: {path}")
    if not path.is_file():
        raise SepError(f"not a file: {path}")


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header information of an audio file. SepError if missing or not audio."""
    path = Path(path)
    _check_file(path)
    if path.stat().st_size == 0:
        raise SepError(f"{path}: empty file (0 bytes)")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise SepError(f"{path}: not a readable audio file ({_short(exc)})") from None
    if info.samplerate <= 0:
        raise SepError(f"{path}: invalid sample rate {info.samplerate}")
    return AudioInfo(
        sample_rate=int(info.samplerate),
        frames=int(info.frames),
        channels=int(info.channels),
        duration=float(info.frames) / info.samplerate,
        format=str(info.format),
        subtype=str(info.subtype),
    )


def _short(exc: BaseException) -> str:
    # libsndfile messages can span lines; the CLI prints errors on one line.
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_rate(sample_rate: int, what: str = "sample_rate") -> int:
    try:
        ok = not isinstance(sample_rate, bool) and int(sample_rate) == sample_rate and sample_rate > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise SepError(f"{what} must be a positive integer, got {sample_rate!r}")
    return int(sample_rate)


def _check_finite(x: np.ndarray, path: Path, offset: int = 0, sample_rate: int = 0) -> None:
    if not np.isfinite(x).all():
        where = ""
        if sample_rate:
            first = offset + int(np.argwhere(~np.isfinite(x))[0][0])
            where = f" (first at {first / sample_rate:.3f} s)"
        raise SepError(f"{path}: contains NaN or infinite samples{where}")


def _downmix(x: np.ndarray) -> np.ndarray:
    """``[T, C]`` -> ``[T]`` float32 by averaging channels."""
    if x.shape[1] == 1:
        return x[:, 0]
    return x.mean(axis=1, dtype=np.float32)


def _log_downmix(path: Path, channels: int) -> None:
    log.warning("%s: %d channels downmixed to mono (average)", path, channels)


def resampled_length(frames: int, sr_in: int, sr_out: int) -> int:
    """Number of samples soxr produces for ``frames`` input samples:
    ``floor(frames * sr_out / sr_in + 1/2)`` (exact rational arithmetic)."""
    if sr_in == sr_out:
        return int(frames)
    return math.floor(Fraction(int(frames) * int(sr_out), int(sr_in)) + Fraction(1, 2))


def read_audio(path: str | os.PathLike, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read a whole file as float32 mono, resampled to ``sample_rate`` if given.

    Returns ``(audio, rate)``; ``rate`` is ``sample_rate`` if given, else the
    file's rate. Shape: audio ``[T]``.
    SepError for a missing file, a file that is not audio, an empty file, or
    NaN/inf samples.
    """
    path = Path(path)
    if sample_rate is not None:
        sample_rate = _check_rate(sample_rate)
    info = audio_info(path)
    if info.frames == 0:
        raise SepError(f"{path}: empty audio file (0 samples)")
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)  # [T, C]
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise SepError(f"{path}: cannot decode audio ({_short(exc)})") from None
    if data.shape[0] == 0:
        raise SepError(f"{path}: empty audio file (0 samples)")
    _check_finite(data, path, 0, file_rate)
    if data.shape[1] > 1:
        _log_downmix(path, data.shape[1])
    x = _downmix(data)  # [T]
    if sample_rate is None or sample_rate == file_rate:
        return np.ascontiguousarray(x), int(file_rate)
    return resample(x, int(file_rate), sample_rate), sample_rate


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample ``x`` from ``sr_in`` to ``sr_out`` Hz with soxr (HQ).

    Shape: ``[T]`` -> ``[T']`` or ``[C, T]`` -> ``[C, T']`` with
    ``T' = resampled_length(T, sr_in, sr_out)``. Returns ``x`` itself when the
    rates are equal. float32 input stays float32.
    """
    sr_in = _check_rate(sr_in, "sr_in")
    sr_out = _check_rate(sr_out, "sr_out")
    if sr_in == sr_out:
        return x
    if x.ndim not in (1, 2):
        raise SepError(f"resample expects [T] or [C, T] audio, got shape {tuple(x.shape)}")
    if x.shape[-1] == 0:
        return x.copy()
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    if x.ndim == 1:
        return _soxr_resample(x, sr_in, sr_out)
    # soxr wants frames first: [C, T] -> [T, C] -> resample -> [C, T']
    return np.ascontiguousarray(_soxr_resample(np.ascontiguousarray(x.T), sr_in, sr_out).T)


def play_faster(x: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """``x`` played ``factor`` times as fast (tempo and pitch together): resampled
    from ``sample_rate * factor`` to ``sample_rate`` Hz, a fractional ratio
    :func:`resample` does not take. Shape: ``[T]`` -> ``[~T / factor]``."""
    return _soxr_resample(x, sample_rate * factor, sample_rate)


def _soxr_resample(x: np.ndarray, sr_in: float, sr_out: float) -> np.ndarray:
    return soxr.resample(x, sr_in, sr_out, quality=RESAMPLE_QUALITY)


class Resampler:
    """Streaming soxr resampling of one mono track; a pass-through at equal rates.

    ``resampler(block)`` returns what is ready, ``resampler(empty, last=True)``
    the rest. Shape: ``[n]`` -> ``[m]`` float32.
    """

    def __init__(self, sr_in: int, sr_out: int) -> None:
        self.stream = None if sr_in == sr_out else soxr.ResampleStream(
            sr_in, sr_out, 1, dtype="float32", quality=RESAMPLE_QUALITY
        )

    def __call__(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        if self.stream is None:
            return x
        return self.stream.resample_chunk(x, last=last)

    resample_chunk = __call__  # soxr.ResampleStream's name, so a stream can be swapped for this


def resample_blocks(blocks: Iterable[np.ndarray], sr_in: int, sr_out: int, length: int) -> Iterator[np.ndarray]:
    """Stream mono blocks through a :class:`Resampler`, pinned to exactly ``length``
    output samples (cut, or zero-padded at the end). Output blocks are never
    empty. Shape: blocks ``[n]`` -> yields float32 ``[m]``."""
    resampler = Resampler(sr_in, sr_out)
    left = length

    def pinned(y: np.ndarray) -> Iterator[np.ndarray]:
        nonlocal left
        # Header frame counts of compressed formats can disagree with what the
        # decoder delivers, and resampling twice can add or lose a sample.
        y = y[:left]
        left -= y.shape[0]
        if y.shape[0]:
            yield np.ascontiguousarray(y, dtype=np.float32)

    for block in blocks:
        yield from pinned(resampler(block))
    if resampler.stream is not None:
        yield from pinned(resampler(np.zeros(0, np.float32), last=True))
    if left > 0:
        yield np.zeros(left, np.float32)


class BlockReader:
    """Stream a file as float32 mono blocks, resampled on the fly, in constant memory.

    ``block_frames`` file frames are read per step; each yielded block holds
    about ``block_frames * sample_rate / file_rate`` samples (exactly
    ``block_frames`` without resampling, except the last). Blocks are never
    empty. Their concatenation has exactly :attr:`out_frames` samples and equals
    ``read_audio(path, sample_rate)[0]``.

    Use as a context manager (closes the file) and iterate; iterating again
    restarts from the beginning::

        with BlockReader("long.flac", sample_rate=8000) as reader:
            for block in reader:  # [n]
                ...

    Shape: each block ``[n]``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sample_rate: int | None = None,
        block_frames: int = DEFAULT_BLOCK_FRAMES,
    ) -> None:
        self.path = Path(path)
        if int(block_frames) != block_frames or block_frames <= 0:
            raise SepError(f"block_frames must be a positive integer, got {block_frames!r}")
        self.block_frames = int(block_frames)
        self.info = audio_info(self.path)
        if self.info.frames == 0:
            raise SepError(f"{self.path}: empty audio file (0 samples)")
        self.sample_rate = (
            self.info.sample_rate if sample_rate is None else _check_rate(sample_rate)
        )
        self.out_frames = resampled_length(self.info.frames, self.info.sample_rate, self.sample_rate)
        try:
            self._file: sf.SoundFile | None = sf.SoundFile(str(self.path))
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise SepError(f"{self.path}: cannot open audio ({_short(exc)})") from None
        if self.info.channels > 1:
            _log_downmix(self.path, self.info.channels)

    def __enter__(self) -> BlockReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _file_blocks(self) -> Iterator[np.ndarray]:
        """Mono blocks at the file's rate. Shape: each ``[n]``."""
        f = self._file
        if f is None:
            raise SepError(f"{self.path}: reader is closed")
        f.seek(0)
        offset = 0
        while True:
            try:
                data = f.read(self.block_frames, dtype="float32", always_2d=True)  # [n, C]
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise SepError(f"{self.path}: cannot decode audio ({_short(exc)})") from None
            if data.shape[0] == 0:
                return
            _check_finite(data, self.path, offset, self.info.sample_rate)
            offset += data.shape[0]
            yield _downmix(data)

    def __iter__(self) -> Iterator[np.ndarray]:
        # The output length is pinned to out_frames (see resample_blocks).
        return resample_blocks(self._file_blocks(), self.info.sample_rate, self.sample_rate, self.out_frames)


# ----------------------------------------------------------------------------- writing


def _check_subtype(subtype: str) -> str:
    st = str(subtype).upper()
    if st not in SUBTYPES:
        raise SepError(f"unknown WAV subtype {subtype!r}; valid: {', '.join(SUBTYPES)}")
    return st


def _frames_first(audio: np.ndarray, channels: int | None = None) -> np.ndarray:
    """``[T]`` or ``[C, T]`` -> ``[T, C]`` float (what soundfile writes)."""
    a = np.asarray(audio)
    if a.ndim == 1:
        a = a[None, :]  # [1, T]
    if a.ndim != 2:
        raise SepError(f"audio must be [T] or [C, T], got shape {tuple(a.shape)}")
    if channels is not None and a.shape[0] != channels:
        raise SepError(f"expected {channels} channel(s), got a block of shape {tuple(a.shape)}")
    if not np.issubdtype(a.dtype, np.floating):
        raise SepError(f"audio must be floating point, got {a.dtype}")
    return np.ascontiguousarray(a.T)  # [T, C]


def _count_clipped(a: np.ndarray, subtype: str) -> int:
    if subtype == "FLOAT":
        return 0
    return int(np.count_nonzero(np.abs(a) > 1.0))


def temp_path_for(path: str | os.PathLike) -> Path:
    """A new empty temp file beside ``path`` (same folder, so ``os.replace`` onto
    ``path`` is atomic), with the permissions an ordinary new file would get."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, NEW_FILE_MODE)
    return Path(tmp)


class AtomicFile:
    """A temp file beside ``path`` (:func:`temp_path_for`) that becomes ``path``
    on :meth:`commit` (``os.replace``) or is removed by :meth:`discard`: the
    one way the package writes a file.

    As a context manager it gives the temp path, commits on a clean exit and
    removes the temp file on an exception::

        with AtomicFile("scores.csv") as tmp:
            tmp.write_text(text)
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.tmp = temp_path_for(self.path)

    def commit(self) -> None:
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if exc_type is None:
                self.commit()
        finally:
            self.discard()


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], Any], *,
                 fsync: bool = False) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a function that writes to the
    open binary file) to ``path`` atomically (:class:`AtomicFile`). ``fsync``:
    the data reach the disk before the rename does (state a crash must not
    lose). Returns the path."""
    with AtomicFile(path) as tmp, open(tmp, "wb") as f:
        if callable(data):
            data(f)
        else:
            f.write(data.encode() if isinstance(data, str) else data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """A new folder beside ``out`` to fill; on a clean exit it replaces ``out``
    (:func:`publish_dir`), on an exception it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing an old ``out``.

    ``tmp`` must be a sibling of ``out`` (same file system). The old folder is
    moved aside before the new one takes its name, so ``out`` is at every
    moment either the old set or the new one, never half of each.
    """
    tmp, out = Path(tmp), Path(out)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _prepare_dest(path: str | os.PathLike, force: bool) -> Path:
    path = Path(path)
    if path.is_dir():
        raise SepError(f"{path} is a folder, not a file name")
    if path.exists() and not force:
        raise SepError(f"{path} exists; use --force (force=True) to overwrite")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SepError(f"cannot create folder {path.parent}: {exc.strerror}") from None
    return path


def write_audio(
    path: str | os.PathLike,
    audio: np.ndarray,
    sample_rate: int,
    *,
    subtype: str = "PCM_16",
    force: bool = False,
) -> Path:
    """Write ``audio`` to a WAV file atomically. Returns the path.

    ``subtype``: ``"PCM_16"`` (default), ``"PCM_24"`` or ``"FLOAT"``. PCM
    samples beyond ±1.0 are clipped (with a warning). Parent folders are
    created. SepError if the file exists and ``force`` is false.
    Shape: audio ``[T]`` or ``[C, T]``.
    """
    subtype = _check_subtype(subtype)
    sample_rate = _check_rate(sample_rate)
    data = _frames_first(audio)  # [T, C]
    if data.shape[0] == 0:
        raise SepError(f"{path}: refusing to write empty audio (0 samples)")
    if not np.isfinite(data).all():
        raise SepError(f"{path}: audio to write contains NaN or infinite samples")
    path = _prepare_dest(path, force)
    clipped = _count_clipped(data, subtype)
    try:
        with AtomicFile(path) as tmp:
            sf.write(str(tmp), data, sample_rate, subtype=subtype, format="WAV")
    except (sf.LibsndfileError, OSError) as exc:
        raise SepError(f"{path}: cannot write ({_short(exc)})") from None
    if clipped:
        log.warning("%s: %d samples beyond ±1.0 clipped (subtype FLOAT keeps them)", path, clipped)
    return path


class AudioWriter:
    """Write a WAV file block by block; it appears only when the ``with`` block ends cleanly.

    Blocks go to a temp file in the destination folder that is renamed over
    ``path`` on a clean exit and deleted on an exception, so no partial output
    is ever left. Shape: each block ``[n]`` (mono) or ``[C, n]``.

    ::

        with AudioWriter("out.wav", 8000) as w:
            for block in blocks:
                w.write(block)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sample_rate: int,
        channels: int = 1,
        *,
        subtype: str = "PCM_16",
        force: bool = False,
    ) -> None:
        self.subtype = _check_subtype(subtype)
        self.sample_rate = _check_rate(sample_rate)
        if int(channels) != channels or channels <= 0:
            raise SepError(f"channels must be a positive integer, got {channels!r}")
        self.channels = int(channels)
        self.path = _prepare_dest(path, force)
        self.frames = 0
        self._clipped = 0
        self._target: AtomicFile | None = None
        self._file: sf.SoundFile | None = None

    def __enter__(self) -> AudioWriter:
        self._target = AtomicFile(self.path)
        try:
            self._file = sf.SoundFile(
                str(self._target.tmp), "w", self.sample_rate, self.channels, self.subtype, format="WAV"
            )
        except BaseException:
            self._target.discard()
            raise
        return self

    def write(self, block: np.ndarray) -> None:
        """Append a block. Shape: ``[n]`` (mono writer) or ``[C, n]``."""
        if self._file is None:
            raise SepError(f"{self.path}: writer is not open (use it in a with block)")
        data = _frames_first(block, self.channels)  # [n, C]
        if not np.isfinite(data).all():
            raise SepError(f"{self.path}: audio to write contains NaN or infinite samples")
        self._clipped += _count_clipped(data, self.subtype)
        self._file.write(data)
        self.frames += data.shape[0]

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        f, target = self._file, self._target
        self._file = self._target = None
        if f is None or target is None:
            return
        try:
            f.close()
            if exc_type is not None:
                return
            if self.frames == 0:
                raise SepError(f"{self.path}: nothing was written (0 samples)")
            target.commit()
        finally:
            target.discard()
        if self._clipped:
            log.warning(
                "%s: %d samples beyond ±1.0 clipped (subtype FLOAT keeps them)",
                self.path,
                self._clipped,
            )
