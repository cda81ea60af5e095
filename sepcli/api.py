"""Separate recordings: the :class:`Separator` class, the functional
:func:`separate`, and :func:`separate_files` (what ``sep separate`` runs).

    >>> from sepcli.api import Separator
    >>> sep = Separator("convtasnet")              # shipped name or a .safetensors path
    >>> est = sep.separate(mix, sample_rate=44100)  # [T] -> [S, T], same rate and length
    >>> sep.separate_file("meeting.flac", "out/")   # out/meeting/s1.wav, s2.wav, ...

Files of any length are processed in constant memory: blocks are read and
resampled to the model's rate on the fly (:class:`sepcli.audio.BlockReader`),
separated chunk by chunk with overlap-add and speaker alignment
(:mod:`sepcli.engine`), and written block by block.

Levels
------
Each chunk's estimates get least-squares gains so that they add back up to the
mixture (:func:`sepcli.engine.mixture_gains`); the tracks are therefore on the
mixture's scale. Sources can still peak above the mixture (where they cancel
in the mix), so file outputs are never written straight away: pass 1 writes
the model-rate tracks to a float32 temp file next to the outputs and measures
the peak of the tracks *after* resampling to the input rate; pass 2 resamples
again, and if the peak would pass full scale (1.0) scales **all** tracks of that
file by the same factor (keeping their balance and the sum-to-mixture
property up to that factor) and logs a warning. Memory stays bounded; the cost
is a temp file of ``4 * S`` bytes per model-rate sample (230 MB for an hour at
8 kHz, 2 speakers) and a second, cheap, resampling pass. :meth:`Separator.separate`
on arrays returns float tracks unscaled (nothing clips in memory).

Outputs
-------
One mono WAV per speaker at the input's sample rate with exactly the input's
number of frames, named by a template (default ``{stem}/s{i}.wav``; fields
``{stem}`` input name without extension, ``{i}`` speaker number from 1,
``{n}`` number of speakers, ``{parent}`` the input's folder relative to the
folder argument it was found in). Writes are atomic; existing outputs are
skipped (all of a file's outputs present) unless ``force``.

Shape legend: S sources, T samples, C channels.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from sepcli import audio, engine, registry
from sepcli.errors import SepError
from sepcli.inference import protocol
from sepcli.inference.settings import (
    DEFAULT_OVERLAP,
    DEFAULT_QUALITY,
    DEFAULT_SEGMENT,
    QUALITIES,
    InferenceSettings,
    check_quality,
    check_segment,
    check_speeds,
    preset_settings,
)

log = logging.getLogger(__name__)

DEFAULT_FILENAME = "{stem}/s{i}.wav"
PRECISIONS = engine.PRECISIONS
"""``precision`` choices (see :func:`sepcli.engine.set_precision`)."""
PEAK_TARGET = 0.999
"""Peak level (linear) that tracks are scaled down to when they would pass full scale."""
TEMPLATE_FIELDS = ("stem", "i", "n", "parent")
_IO_BLOCK = 1 << 16  # model-rate samples per block in the second pass

ProgressFn = Callable[[int, int], None]
"""``progress(done, total)`` in samples at the model's rate."""
BlocksFn = Callable[[Iterable[np.ndarray], Any], Iterable[np.ndarray]]
"""``blocks_fn(blocks, stats)``: mono model-rate blocks ``[n]`` -> tracks ``[S, m]``, all of the input."""


# ----------------------------------------------------------------------------- results


@dataclass
class SeparationResult:
    """What happened to one input file."""

    input: str
    status: str  # "ok", "skipped" or "failed"
    outputs: list[str] = field(default_factory=list)
    n_src: int = 0
    sample_rate: int = 0
    frames: int = 0
    duration: float = 0.0  # seconds of audio
    seconds: float = 0.0  # wall-clock processing time
    rtf: float = 0.0  # seconds / duration
    peak: float = 0.0  # largest |sample| of the tracks before any scaling
    gain_db: float = 0.0  # applied to all tracks to avoid clipping (0 or negative)
    reordered_chunks: int = 0  # chunks whose speaker order was corrected
    chunks: int = 0
    plot: str | None = None
    error: str | None = None
    message: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class BatchResult:
    """Outcome of :func:`separate_files`: one result per input file found (in
    argument order), then one per argument that matched nothing."""

    results: list[SeparationResult]
    model: str = ""
    quality: str | None = DEFAULT_QUALITY  # preset the settings came from (Separator.quality)
    precision: str = "float32"  # of the matrix products (Separator.precision)
    passes: int = 1  # forward passes averaged (Separator.passes)
    pass_signs: bool = False  # whether they alternate the input's sign (Separator.pass_signs)
    speeds: list[float] = field(default_factory=lambda: [1.0])  # speed views averaged (Separator.speeds)

    @property
    def ok(self) -> int:
        return sum(r.status == "ok" for r in self.results)

    @property
    def skipped(self) -> int:
        return sum(r.status == "skipped" for r in self.results)

    @property
    def failed(self) -> int:
        return sum(r.status == "failed" for r in self.results)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "quality": self.quality,
            "precision": self.precision,
            "passes": self.passes,
            "pass_signs": self.pass_signs,
            "speeds": self.speeds,
            "ok": self.ok,
            "skipped": self.skipped,
            "failed": self.failed,
            "files": [r.to_dict() for r in self.results],
        }


# ----------------------------------------------------------------------------- helpers


def _check_n_src(n_src: Any) -> int | str | None:
    if n_src is None:
        return None
    if isinstance(n_src, str):
        text = n_src.strip().lower()
        if text == "auto":
            return "auto"
        if not text.isdigit():
            raise SepError(f"number of speakers must be a positive integer or 'auto', got {n_src!r}")
        n_src = int(text)
    if isinstance(n_src, bool) or int(n_src) != n_src or n_src < 1:
        raise SepError(f"number of speakers must be a positive integer or 'auto', got {n_src!r}")
    return int(n_src)


def _load_model(model: Any, device: torch.device) -> tuple[torch.nn.Module, str]:
    if model is None:
        name = registry.default_model_name()
        if name is None:
            raise SepError(
                "no model given and no shipped weights are installed; pass --model NAME or "
                "--model PATH.safetensors (run `sep models` to see what is available)"
            )
        return registry.load_model(name, device), name
    if isinstance(model, torch.nn.Module):
        return model.to(device).eval(), type(model).__name__
    if isinstance(model, (str, os.PathLike)):
        return registry.load_model(model, device), str(model)
    raise SepError(f"model must be a name, a path or a torch.nn.Module, got {type(model).__name__}")


def _as_mono(mix: Any) -> np.ndarray:
    """``[T]`` or ``[C, T]`` (numpy or torch) -> float32 ``[T]``."""
    if isinstance(mix, torch.Tensor):
        mix = mix.detach().cpu().numpy()
    x = np.asarray(mix)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise SepError(f"mix must be a real numeric array, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.integer):
        raise SepError("mix must be floating point in [-1, 1]; convert integer PCM first")
    if x.ndim == 2:
        if x.shape[0] > 16 and x.shape[1] <= 16:
            raise SepError(f"mix of shape {x.shape} looks like [T, C]; pass [C, T] (mix.T)")
        x = x.mean(axis=0)  # [C, T] -> [T]
    elif x.ndim != 1:
        raise SepError(f"mix must be [T] or [C, T], got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise SepError("mix contains NaN or infinite samples")
    return x


def _fit_length(x: np.ndarray, length: int) -> np.ndarray:
    """Trim or zero-pad the last axis to ``length``. Shape: ``[..., T] -> [..., length]``."""
    if x.shape[-1] >= length:
        return x[..., :length]
    pad = [(0, 0)] * (x.ndim - 1) + [(0, length - x.shape[-1])]
    return np.pad(x, pad)


def render_filename(template: str, *, stem: str, i: int, n: int, parent: str = "") -> Path:
    """Relative output path from a filename template (see the module docstring)."""
    try:
        text = template.format(stem=stem, i=i, n=n, parent=parent)
    except (KeyError, IndexError, ValueError) as exc:
        raise SepError(
            f"bad --filename template {template!r} ({exc}); fields: "
            + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
        ) from None
    return Path(text.lstrip("/"))


def check_template(template: str) -> None:
    """SepError unless the template names one distinct WAV file per speaker."""
    a = render_filename(template, stem="x", i=1, n=2)
    b = render_filename(template, stem="x", i=2, n=2)
    if a == b:
        raise SepError(f"--filename template {template!r} must contain {{i}} (the speaker number)")
    if render_filename(template, stem="x", i=1, n=2) == render_filename(template, stem="y", i=1, n=2):
        raise SepError(f"--filename template {template!r} must contain {{stem}}")
    if a.suffix.lower() != ".wav":
        raise SepError(f"--filename template {template!r} must end in .wav (outputs are WAV files)")


class _TrackTemp:
    """One model-rate float32 track in a temp file next to the outputs."""

    def __init__(self, folder: Path, stem: str, prefix_zeros: int) -> None:
        fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=".sep.f32", dir=folder)
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")
        self.frames = 0
        zeros = np.zeros(_IO_BLOCK, dtype=np.float32)
        while self.frames < prefix_zeros:  # a track that appears late is silent before
            self.write(zeros[: min(_IO_BLOCK, prefix_zeros - self.frames)])

    def write(self, x: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(x, dtype=np.float32).tobytes())
        self.frames += x.shape[0]

    def blocks(self) -> Iterator[np.ndarray]:
        self.file.flush()
        with open(self.path, "rb") as f:
            while True:
                data = np.fromfile(f, dtype=np.float32, count=_IO_BLOCK)
                if data.size == 0:
                    return
                yield data

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.path.unlink(missing_ok=True)


def _resampled_blocks(blocks: Iterable[np.ndarray], sr_in: int, sr_out: int, length: int) -> Iterator[np.ndarray]:
    """Streaming soxr resampling of a mono track, pinned to exactly ``length`` output samples."""
    import soxr

    stream = None if sr_in == sr_out else soxr.ResampleStream(
        sr_in, sr_out, 1, dtype="float32", quality=audio.RESAMPLE_QUALITY
    )
    left = length
    for block in blocks:
        y = block if stream is None else stream.resample_chunk(block)
        y = y[:left]
        left -= y.shape[0]
        if y.shape[0]:
            yield y
    if stream is not None:
        y = stream.resample_chunk(np.zeros(0, np.float32), last=True)[:left]
        left -= y.shape[0]
        if y.shape[0]:
            yield y
    if left > 0:
        yield np.zeros(left, np.float32)


class _Spectrogram:
    """Streaming, bounded-memory log-power spectrogram for display.

    Each of at most ``max_cols`` columns is the mean power spectrum (Hann frames
    of ``n_fft``) over ``col_len`` consecutive samples."""

    def __init__(self, sample_rate: int, total: int, max_cols: int = 1200) -> None:
        self.sample_rate = sample_rate
        self.n_fft = 1 << max(7, int(np.ceil(np.log2(0.032 * sample_rate))))  # ~32 ms
        self.col_len = max(self.n_fft, -(-total // max_cols))
        self.window = np.hanning(self.n_fft).astype(np.float32)
        self.cols: list[np.ndarray] = []
        self.buf = np.zeros(0, dtype=np.float32)

    def feed(self, x: np.ndarray) -> None:
        self.buf = np.concatenate([self.buf, x])
        while self.buf.shape[0] >= self.col_len:
            self._column(self.buf[: self.col_len])
            self.buf = self.buf[self.col_len :]

    def _column(self, seg: np.ndarray) -> None:
        if seg.shape[0] < self.n_fft:
            seg = np.pad(seg, (0, self.n_fft - seg.shape[0]))
        n_frames = max(1, (seg.shape[0] - self.n_fft) // (self.n_fft // 2) + 1)
        idx = np.arange(self.n_fft)[None, :] + (self.n_fft // 2) * np.arange(n_frames)[:, None]
        frames = seg[idx] * self.window  # [frames, n_fft]
        power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [frames, F]
        self.cols.append(power.mean(axis=0).astype(np.float32))

    def finish(self) -> np.ndarray:
        """Shape: ``[F, columns]`` power."""
        if self.buf.shape[0] or not self.cols:
            self._column(self.buf)
            self.buf = np.zeros(0, dtype=np.float32)
        return np.stack(self.cols, axis=1)


def _save_plot(path: Path, specs: list[np.ndarray], titles: list[str], sample_rate: int,
               duration: float, force: bool, fmax: float) -> None:
    """Spectrograms (``[F, columns]`` power each, one panel per title) as a PNG, atomically."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SepError("--plot needs matplotlib: pip install 'sepcli[plot]'") from None
    n_bins = specs[0].shape[0]
    keep = min(n_bins, int(np.floor(fmax / (sample_rate / 2) * (n_bins - 1))) + 1)
    fmax = (keep - 1) / (n_bins - 1) * sample_rate / 2
    db = [10 * np.log10(np.maximum(s[:keep], 1e-20)) for s in specs]  # [F', columns]
    top = max(float(d.max()) for d in db)
    fig = Figure(figsize=(10, 1.8 * len(specs) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(specs), 1, sharex=True, squeeze=False)[:, 0]
    for ax, d, title in zip(axes, db, titles, strict=True):
        im = ax.imshow(
            d, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
            extent=(0.0, duration, 0.0, fmax / 1000),
        )
        ax.set_title(title, loc="left", fontsize=9)
        ax.set_ylabel("kHz")
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(im, ax=list(axes), label="dB", shrink=0.8)
    tmp = audio.temp_path_for(path)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        if path.exists() and not force:
            raise SepError(f"{path} exists; use --force to overwrite")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- Separator


class Separator:
    """A loaded model plus chunking settings; reusable for many inputs.

    Args:
        model: a shipped model name, a ``.safetensors`` checkpoint path, or an
            ``nn.Module`` that follows the registry's model contract (its
            ``config`` has ``sample_rate`` and ``n_src``). ``None``: the best
            shipped non-causal model (SepError if none is installed).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        quality: preset that chooses the inference settings (:data:`QUALITIES`):
            ``"fast"`` (default) one pass at speed 1; ``"high"`` the averaged
            passes and speeds the shipped models were tuned with (each model's
            ``inference_presets()``; Conv-TasNet: 4 passes with sign flips at
            3 speeds, about 12x the work). The options below override it.
        settings: an :class:`InferenceSettings` to use instead of a preset.
        segment: chunk length in seconds; ``None`` for the preset's (Conv-TasNet
            and ``dpcl``: 30 s; models without presets: :data:`DEFAULT_SEGMENT`).
        overlap: fraction of each chunk shared with the next, in ``[0, 1)``.
        n_src: number of speakers; ``None`` for the model's own; ``"auto"`` lets
            a clustering model (``dpcl``) estimate it per chunk (tracks may then
            open part-way, silent before). A model with a fixed number of
            outputs refuses any other count.
        batch_size: chunks per model call (default 1 on CPU, 8 on GPU).
        precision: one of :data:`PRECISIONS` (None: the preset's, ``"auto"``), for
            models whose ``set_products`` accepts it: ``"bfloat16"`` rounds the operands of
            the matrix products only (activations and statistics stay float32):
            faster offline Conv-TasNet on CPUs with native bfloat16 (measured in
            docs/long-recordings.md). Other models run float32;
            asking them for ``"bfloat16"`` raises SepError. The resolved choice
            is :attr:`precision`.
        passes: forward passes averaged per chunk (test-time augmentation: the
            input delayed by fractions of the model's ``frame_hop``,
            :func:`sepcli.engine.pass_transforms`); ``None`` for the preset's
            (``high``: ``convtasnet`` 4, ``convtasnet-causal`` 2; ``fast``: 1). Each pass costs one forward.
            Needs a fixed number of speakers (not ``n_src="auto"``). A causal
            model's passes are aligned causally (:class:`sepcli.engine.CausalAlign`),
            as :class:`sepcli.streaming.AveragedStreamer` streams them.
        pass_signs: alternate the input's sign between passes (pairs of the
            same delay), which makes the output odd, ``f(-x) = -f(x)``: the same
            tracks whatever the recording's polarity. Needs an even ``passes``
            to be exact. ``None`` for the preset's (``convtasnet`` at ``high``).
        speeds: speed factors at which the model also hears each chunk
            (:func:`sepcli.engine.speed_fn`: resampled, so 0.92 plays it 8 %
            slower and lower), each view averaging ``passes`` forwards, the
            views' tracks averaged in turn (:func:`sepcli.engine.ensemble_fn`);
            ``None`` for the preset's (``convtasnet`` at ``high``: 1, 0.92, 0.88). Costs
            about ``1/speed`` of a view at speed 1 each. Offline only: a
            causal model refuses speeds other than 1.
    """

    def __init__(
        self,
        model: str | os.PathLike | torch.nn.Module | None = None,
        *,
        device: str | torch.device = "auto",
        quality: str = DEFAULT_QUALITY,
        settings: InferenceSettings | None = None,
        segment: float | None = None,
        overlap: float | None = None,
        n_src: int | str | None = None,
        batch_size: int | None = None,
        precision: str | None = None,
        passes: int | None = None,
        pass_signs: bool | None = None,
        speeds: Sequence[float] | None = None,
    ) -> None:
        self.device = engine.resolve_device(device)
        if segment is not None:
            segment = check_segment(segment)
        check_quality(quality)
        self.model, self.model_name = _load_model(model, self.device)
        info = protocol.describe(self.model)
        base = settings if settings is not None else preset_settings(info.presets, quality)
        self.quality: str | None = None if settings is not None else quality
        self.settings: InferenceSettings = base.override(
            segment=segment, overlap=overlap, passes=passes, pass_signs=pass_signs, precision=precision,
            speeds=None if speeds is None else check_speeds(speeds),
        )
        s = self.settings
        self.precision: str = engine.set_precision(self.model, s.precision, self.device, self.model_name)
        self.sample_rate: int = info.sample_rate
        self.segment_samples = max(1, int(round(s.segment * info.sample_rate)))
        engine.chunk_plan(self.segment_samples, s.overlap)  # validates overlap against the chunk
        n_src = _check_n_src(n_src)
        self.n_src: int | str | None = None if n_src == info.n_src else n_src
        if batch_size is None:
            batch_size = 1 if self.device.type == "cpu" else 8
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise SepError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)
        if (s.passes > 1 or len(s.speeds) > 1) and self.n_src == "auto":
            raise SepError("averaging several passes or speeds needs a fixed number of speakers, not 'auto'")
        # A causal model's passes are aligned causally, as its stream is (sep stream).
        if info.causal and any(v != 1 for v in s.speeds):
            raise SepError("speeds other than 1 need a non-causal model: the resampling looks ahead")
        transforms = engine.pass_transforms(s.passes, info.frame_hop, signs=s.pass_signs)
        views = engine.averaged_fn(engine.model_fn(self.model, self.device, self.n_src), transforms,
                                   causal=info.causal)
        self.fn = engine.ensemble_fn([engine.speed_fn(views, info.sample_rate, v) for v in s.speeds], what="speeds")
        if self.n_src is not None:
            # Fail now, once, rather than on every file: models with a fixed
            # number of outputs refuse another count.
            probe = np.random.default_rng(0).standard_normal((1, min(self.segment_samples, 1024)))
            self.fn(probe.astype(np.float32) * 0.01)

    # The settings' values, as attributes (what BatchResult and the CLI report).
    segment = property(lambda self: self.settings.segment)
    overlap = property(lambda self: self.settings.overlap)
    passes = property(lambda self: self.settings.passes)
    pass_signs = property(lambda self: self.settings.pass_signs)
    speeds = property(lambda self: list(self.settings.speeds))

    @property
    def expected_n_src(self) -> int | None:
        """Number of tracks each input gives, if known in advance."""
        if self.n_src == "auto":
            return None
        if isinstance(self.n_src, int):
            return self.n_src
        n = getattr(self.model.config, "n_src", None)
        return int(n) if isinstance(n, int) else None

    # -- streams

    def separate_blocks(
        self, blocks: Iterable[np.ndarray], stats: engine.EngineStats | None = None
    ) -> Iterator[np.ndarray]:
        """Separate mono blocks at the model's rate, yielding final output as it
        is ready (bounded memory). Shape: blocks ``[n]`` -> yields ``[S, m]``.
        """
        return engine.separate_stream(
            blocks, self.fn, segment=self.segment_samples, overlap=self.overlap,
            batch_size=self.batch_size,
            n_src=self.n_src if isinstance(self.n_src, int) else self.expected_n_src,
            stats=stats,
        )

    # -- arrays

    def separate(
        self, mix: np.ndarray | torch.Tensor, sample_rate: int, stats: engine.EngineStats | None = None
    ) -> np.ndarray:
        """Separate an in-memory recording.

        The mix is resampled to the model's rate and the tracks back to
        ``sample_rate``; they have exactly the input's length and add up to
        the (downmixed) mixture. Not peak-limited (see the module docstring).
        ``stats``, if given, is filled with the engine's counters.

        Shape: mix ``[T]`` or ``[C, T]`` (channels averaged) -> ``[S, T]`` float32.
        """
        sample_rate = audio._check_rate(sample_rate)
        x = _as_mono(mix)
        length = x.shape[0]
        if length == 0:
            raise SepError("mix is empty (0 samples)")
        y = audio.resample(x, sample_rate, self.sample_rate)  # [T_model]
        est = engine.separate_array(
            y, self.fn, segment=self.segment_samples, overlap=self.overlap,
            batch_size=self.batch_size,
            n_src=self.n_src if isinstance(self.n_src, int) else self.expected_n_src, stats=stats,
        )  # [S, T_model]
        est = audio.resample(est, self.sample_rate, sample_rate)  # [S, T']
        return np.ascontiguousarray(_fit_length(est, length), dtype=np.float32)

    # -- files

    def output_paths(
        self, path: str | os.PathLike, out_dir: str | os.PathLike, n_src: int,
        filename: str = DEFAULT_FILENAME, parent: str = "",
    ) -> list[Path]:
        """Output files of ``path`` for ``n_src`` speakers."""
        stem = Path(path).stem
        return [
            Path(out_dir) / render_filename(filename, stem=stem, i=i, n=n_src, parent=parent)
            for i in range(1, n_src + 1)
        ]

    def _existing_outputs(self, path: Path, out_dir: Path, filename: str, parent: str) -> tuple[list[Path], bool]:
        """(existing outputs, complete?) of a previous run."""
        n = self.expected_n_src
        if n is not None:
            outs = self.output_paths(path, out_dir, n, filename, parent)
            have = [p for p in outs if p.exists()]
            return have, len(have) == len(outs)
        # Unknown count ("auto"): the tracks a previous run wrote are s1, s2, ...
        have = []
        i = 1
        while True:
            p = Path(out_dir) / render_filename(filename, stem=path.stem, i=i, n=0, parent=parent)
            if "{n}" in filename or not p.exists():
                break
            have.append(p)
            i += 1
        return have, bool(have)

    def separate_file(
        self,
        path: str | os.PathLike,
        out_dir: str | os.PathLike,
        *,
        force: bool = False,
        filename: str = DEFAULT_FILENAME,
        subtype: str = "PCM_16",
        plot: bool = False,
        parent: str = "",
        progress: ProgressFn | None = None,
        blocks_fn: BlocksFn | None = None,
    ) -> SeparationResult:
        """Separate one audio file into one WAV per speaker (see the module docstring).

        ``blocks_fn``: what separates the model-rate blocks, instead of
        :meth:`separate_blocks` (``sep stream`` passes its stateful streamer).

        Returns a result with ``status="skipped"`` if all its outputs exist and
        ``force`` is false. SepError for an unreadable input, partial earlier
        outputs (without ``force``), or a failed write; no partial output is
        ever left behind.
        """
        t0 = time.perf_counter()
        path = Path(path)
        out_dir = Path(out_dir)
        check_template(filename)
        subtype = audio._check_subtype(subtype)
        info = audio.audio_info(path)
        have, complete = self._existing_outputs(path, out_dir, filename, parent)
        if have and not force:
            if complete:
                return SeparationResult(
                    input=str(path), status="skipped", outputs=[str(p) for p in have],
                    n_src=len(have), sample_rate=info.sample_rate, frames=info.frames,
                    duration=info.duration, message="outputs exist (use --force to redo)",
                )
            raise SepError(
                f"{path}: some outputs exist ({', '.join(str(p) for p in have)}) but not all "
                "(interrupted run?); use --force to redo"
            )
        if plot:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise SepError("--plot needs matplotlib: pip install 'sepcli[plot]'") from None
        first = self.output_paths(path, out_dir, 1, filename, parent)[0]
        folder = first.parent
        plot_path = folder / f"{path.stem}.spectrogram.png" if plot else None
        if plot_path is not None and plot_path.exists() and not force:
            raise SepError(f"{plot_path} exists; use --force to overwrite")
        new_folders = [d for d in [folder, *folder.parents] if not d.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SepError(f"cannot create folder {folder}: {exc.strerror}") from None

        stats = engine.EngineStats()
        temps: list[_TrackTemp] = []
        try:
            peak = self._pass1(path, folder, temps, stats, progress, blocks_fn or self.separate_blocks)
            n_src = len(temps)
            outs = self.output_paths(path, out_dir, n_src, filename, parent)
            gain = 1.0
            if peak > 1.0:
                gain = PEAK_TARGET / peak
                log.warning(
                    "%s: separated tracks peak at %+.1f dBFS; all %d tracks scaled by %.1f dB to avoid clipping",
                    path, 20 * np.log10(peak), n_src, 20 * np.log10(gain),
                )
            specs = self._pass2(path, temps, outs, info, gain, subtype, force, plot)
        except BaseException:
            for t in temps:
                t.close()
            for d in new_folders:  # innermost first; only folders this call created and left empty
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise
        for t in temps:
            t.close()
        if plot_path is not None:
            titles = ["mixture"] + [f"speaker {i}" for i in range(1, n_src + 1)]
            # Speech lives below 8 kHz, and the tracks stop at the model's Nyquist
            # frequency; a 48 kHz plot would be mostly empty.
            fmax = min(info.sample_rate / 2, max(8000.0, self.sample_rate / 2))
            _save_plot(plot_path, specs, titles, info.sample_rate, info.duration, force, fmax)
        seconds = time.perf_counter() - t0
        return SeparationResult(
            input=str(path), status="ok", outputs=[str(p) for p in outs], n_src=n_src,
            sample_rate=info.sample_rate, frames=info.frames, duration=info.duration,
            seconds=seconds, rtf=seconds / info.duration if info.duration else 0.0,
            peak=float(peak), gain_db=float(20 * np.log10(gain)),
            reordered_chunks=stats.reordered, chunks=stats.chunks,
            plot=str(plot_path) if plot_path is not None else None,
        )

    def _pass1(
        self, path: Path, folder: Path, temps: list[_TrackTemp], stats: engine.EngineStats,
        progress: ProgressFn | None, blocks_fn: BlocksFn,
    ) -> float:
        """Separate into model-rate temp tracks (appended to ``temps``); return
        their peak after resampling to the input rate, over the input's length."""
        import soxr

        with audio.BlockReader(path, sample_rate=self.sample_rate) as reader:
            total = reader.out_frames
            sr_in = reader.info.sample_rate
            target = reader.info.frames
            resamplers: list[Any] = []
            seen: list[int] = []  # input-rate samples counted per track (pinned to target)
            peak = 0.0
            written = 0

            def track_peak(k: int, y: np.ndarray) -> None:
                nonlocal peak
                y = y[: target - seen[k]]
                seen[k] += y.shape[0]
                if y.size:
                    peak = max(peak, float(np.abs(y).max()))

            def resample(k: int, x: np.ndarray, last: bool = False) -> np.ndarray:
                if resamplers[k] is None:
                    return x
                return resamplers[k].resample_chunk(x, last=last)

            if progress is not None:
                progress(0, total)
            for block in blocks_fn(reader, stats):  # [S, n]
                while len(temps) < block.shape[0]:  # a new track (n_src="auto")
                    temps.append(_TrackTemp(folder, path.stem, written))
                    resamplers.append(
                        None if sr_in == self.sample_rate else soxr.ResampleStream(
                            self.sample_rate, sr_in, 1, dtype="float32", quality=audio.RESAMPLE_QUALITY
                        )
                    )
                    seen.append(0)
                    k = len(temps) - 1
                    for z in temps[k].blocks():  # keep its resampler aligned: feed the silence too
                        track_peak(k, resample(k, z))
                for k, track in enumerate(block):
                    temps[k].write(track)
                    track_peak(k, resample(k, track))
                written += block.shape[1]
                if progress is not None:
                    progress(written, total)
            if written != total:  # the engine emits exactly its input; this is a bug guard
                raise SepError(f"{path}: internal error: {written} of {total} samples separated")
            if not temps:
                n = self.expected_n_src or 1
                for _ in range(n):
                    temps.append(_TrackTemp(folder, path.stem, written))
                    resamplers.append(None)
                    seen.append(0)
            for k in range(len(temps)):
                if resamplers[k] is not None:
                    track_peak(k, resample(k, np.zeros(0, np.float32), last=True))
        return peak

    def _pass2(
        self, path: Path, temps: list[_TrackTemp], outs: list[Path], info: audio.AudioInfo, gain: float,
        subtype: str, force: bool, plot: bool,
    ) -> list[np.ndarray]:
        """Resample the temp tracks to the input rate, scale, write the outputs
        (all renamed into place together at the end). Returns spectrograms if
        ``plot`` (mixture first)."""
        specs: list[np.ndarray] = []
        with contextlib.ExitStack() as stack:
            writers = [
                stack.enter_context(audio.AudioWriter(p, info.sample_rate, 1, subtype=subtype, force=force))
                for p in outs
            ]
            if plot:
                mix_spec = _Spectrogram(info.sample_rate, info.frames)
                # Straight from soundfile: BlockReader would log the downmix warning a second time.
                for block in sf.blocks(str(path), blocksize=_IO_BLOCK, dtype="float32", always_2d=True):
                    mix_spec.feed(block.mean(axis=1, dtype=np.float32))  # [n, C] -> [n]
                specs.append(mix_spec.finish())
            for temp, writer in zip(temps, writers, strict=True):
                spec = _Spectrogram(info.sample_rate, info.frames) if plot else None
                for y in _resampled_blocks(temp.blocks(), self.sample_rate, info.sample_rate, info.frames):
                    if gain != 1.0:
                        y = y * np.float32(gain)
                    writer.write(y)
                    if spec is not None:
                        spec.feed(y)
                if spec is not None:
                    specs.append(spec.finish())
        return specs


# ----------------------------------------------------------------------------- functional


def separate(
    mix: np.ndarray | torch.Tensor,
    sample_rate: int,
    model: str | os.PathLike | torch.nn.Module | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """One-shot :meth:`Separator.separate`; ``kwargs`` go to :class:`Separator`.

    Shape: mix ``[T]`` or ``[C, T]`` -> ``[S, T]``.
    """
    return Separator(model, **kwargs).separate(mix, sample_rate)


# ----------------------------------------------------------------------------- batches

AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .ogg .oga .opus .mp3 .aif .aiff .aifc .au .snd .caf .w64 .rf64 .sph .nist".split()
)
"""File extensions picked up when a folder is searched (any file given by name is tried)."""


@dataclass(frozen=True)
class InputFile:
    """An input found by :func:`find_audio_files`; ``parent`` is its folder
    relative to the folder argument it was found in (``""`` for files named directly)."""

    path: Path
    parent: str = ""


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def find_audio_files(
    inputs: Sequence[str | os.PathLike], exclude: Sequence[str | os.PathLike] = ()
) -> tuple[list[InputFile], list[tuple[str, str]]]:
    """Expand files, folders (searched recursively for audio files) and glob
    patterns into a de-duplicated list of inputs, in argument order.

    Hidden files and anything under an ``exclude`` folder (e.g. the output
    folder, so re-running on a folder never separates earlier outputs) are left
    out of folder searches. Returns ``(inputs, problems)``; ``problems`` are
    ``(argument, message)`` for arguments that matched nothing.
    """
    excluded = [Path(e).resolve() for e in exclude]
    found: list[InputFile] = []
    seen: set[Path] = set()
    problems: list[tuple[str, str]] = []

    def add(p: Path, parent: str) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            found.append(InputFile(p, parent))

    def walk(folder: Path) -> int:
        n = 0
        for root, dirs, files in os.walk(folder):
            r = Path(root)
            dirs[:] = sorted(
                d for d in dirs
                if not d.startswith(".") and not any((r / d).resolve() == e for e in excluded)
            )
            for name in sorted(files):
                if name.startswith(".") or Path(name).suffix.lower() not in AUDIO_EXTENSIONS:
                    continue
                rel = r.relative_to(folder).as_posix()
                add(r / name, "" if rel == "." else rel)
                n += 1
        return n

    for arg in inputs:
        text = os.fspath(arg)
        p = Path(text)
        if p.is_dir():
            if walk(p) == 0:
                problems.append((text, f"{text}: no audio files found in this folder"))
        elif p.exists():
            add(p, "")
        elif _has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                problems.append((text, f"{text}: no files match this pattern"))
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    walk(mp)
                elif mp.suffix.lower() in AUDIO_EXTENSIONS:
                    add(mp, "")
        else:
            problems.append((text, f"file not found: {text}"))
    return found, problems


class BatchEvents:
    """Callbacks of :func:`separate_files` (all no-ops here; the CLI draws
    progress bars with them). Always called in the calling process and thread."""

    def files_found(self, n_files: int) -> None:
        """The inputs are known (``n_files`` results will follow)."""

    def file_started(self, index: int, path: str) -> None:
        """Work on input ``index`` began."""

    def file_progress(self, index: int, done: int, total: int) -> None:
        """``done`` of ``total`` model-rate samples of input ``index`` separated."""

    def file_done(self, index: int, result: SeparationResult) -> None:
        """Input ``index`` finished (ok, skipped or failed)."""


def _failed(path: str, exc: BaseException) -> SeparationResult:
    msg = str(exc) if isinstance(exc, SepError) else f"{type(exc).__name__}: {exc}"
    return SeparationResult(input=path, status="failed", error=" ".join(msg.split()))


def _run_one(
    sep: Separator, index: int, item: InputFile, out_dir: Path, options: dict,
    events: BatchEvents, throttle: float = 0.1,
) -> SeparationResult:
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] >= throttle:
            last[0] = now
            events.file_progress(index, done, total)

    events.file_started(index, str(item.path))
    try:
        return sep.separate_file(item.path, out_dir, parent=item.parent, progress=progress, **options)
    except Exception as exc:  # one bad file must not stop the batch
        if not isinstance(exc, SepError):
            log.debug("unexpected error on %s", item.path, exc_info=True)
        return _failed(str(item.path), exc)


# Worker-process state for jobs > 1 (one Separator per process).
_WORKER: dict[str, Any] = {}


class _QueueEvents(BatchEvents):
    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def file_started(self, index: int, path: str) -> None:
        self.queue.put(("started", index, path))

    def file_progress(self, index: int, done: int, total: int) -> None:
        self.queue.put(("progress", index, done, total))


def _worker_init(spec: dict, threads: int, queue: Any) -> None:
    import logging.handlers

    torch.set_num_threads(threads)
    logger = logging.getLogger("sepcli")
    logger.handlers[:] = [logging.handlers.QueueHandler(queue)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    _WORKER["sep"] = Separator(**spec)
    _WORKER["events"] = _QueueEvents(queue)


def _worker_run(index: int, item: InputFile, out_dir: Path, options: dict) -> SeparationResult:
    return _run_one(_WORKER["sep"], index, item, out_dir, options, _WORKER["events"], throttle=0.25)


def separate_files(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    model: str | os.PathLike | torch.nn.Module | None = None,
    device: str | torch.device = "auto",
    segment: float | None = None,
    overlap: float | None = None,
    n_src: int | str | None = None,
    batch_size: int | None = None,
    jobs: int = 1,
    force: bool = False,
    filename: str = DEFAULT_FILENAME,
    subtype: str = "PCM_16",
    plot: bool = False,
    threads: int | None = None,
    events: BatchEvents | None = None,
    precision: str | None = None,
    passes: int | None = None,
    pass_signs: bool | None = None,
    speeds: Sequence[float] | None = None,
    quality: str = DEFAULT_QUALITY,
) -> BatchResult:
    """Separate many files (what ``sep separate`` runs).

    ``inputs``: files, folders (searched recursively) and glob patterns
    (:func:`find_audio_files`). A problem with one input (unreadable, partial
    earlier outputs, ...) is recorded in its result and the batch goes on;
    problems with the model or the options raise SepError before any work.
    ``jobs > 1`` separates that many files at once in worker processes (the
    model is loaded once per worker). ``threads``: torch threads per job
    (default ``cores // jobs``); with ``jobs == 1`` it is set in this process.
    """
    events = events or BatchEvents()
    out = Path(out_dir)
    check_template(filename)
    subtype = audio._check_subtype(subtype)
    if isinstance(jobs, bool) or int(jobs) != jobs or jobs < 1:
        raise SepError(f"jobs must be a positive integer, got {jobs!r}")
    jobs = int(jobs)
    if threads is not None and (isinstance(threads, bool) or int(threads) != threads or threads < 1):
        raise SepError(f"threads must be a positive integer, got {threads!r}")
    per_job = int(threads) if threads else max(1, engine.available_cpus() // jobs)
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SepError("--plot needs matplotlib: pip install 'sepcli[plot]'") from None
    spec = dict(model=model, device=device, quality=quality, segment=segment, overlap=overlap, n_src=n_src,
                batch_size=batch_size, precision=precision, passes=passes, pass_signs=pass_signs, speeds=speeds)
    sep = Separator(**spec)  # model and option errors surface here, once
    found, problems = find_audio_files(inputs, exclude=[out])

    # Two inputs with the same name would write the same outputs.
    results: list[SeparationResult | None] = [None] * len(found)
    owner: dict[Path, Path] = {}
    todo: list[int] = []
    for k, item in enumerate(found):
        key = (out / render_filename(filename, stem=item.path.stem, i=1, n=1, parent=item.parent)).resolve()
        if key in owner:
            results[k] = SeparationResult(
                input=str(item.path), status="failed",
                error=f"its outputs would overwrite those of {owner[key]}; add {{parent}} to --filename "
                "(e.g. '{parent}/{stem}/s{i}.wav') or rename the file",
            )
        else:
            owner[key] = item.path
            todo.append(k)
    events.files_found(len(found) + len(problems))
    for k, r in enumerate(results):
        if r is not None:
            events.file_done(k, r)

    options = dict(force=force, filename=filename, subtype=subtype, plot=plot)
    jobs = min(jobs, max(1, len(todo)))
    if jobs == 1:
        if threads:
            torch.set_num_threads(int(threads))
        for k in todo:
            results[k] = _run_one(sep, k, found[k], out, options, events)
            events.file_done(k, results[k])
    else:
        _run_parallel(spec, jobs, per_job, found, todo, out, options, events, results, sep)

    final = [r for r in results if r is not None]
    base = len(final)
    for j, (arg, msg) in enumerate(problems):
        r = SeparationResult(input=arg, status="failed", error=msg)
        final.append(r)
        events.file_done(base + j, r)
    return BatchResult(final, model=sep.model_name, quality=sep.quality, precision=sep.precision, passes=sep.passes,
                       pass_signs=sep.pass_signs, speeds=sep.speeds)


def _run_parallel(
    spec: dict, jobs: int, threads: int, found: list[InputFile], todo: list[int], out: Path, options: dict,
    events: BatchEvents, results: list[SeparationResult | None], sep: Separator,
) -> None:
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    if isinstance(spec["model"], torch.nn.Module):
        spec = dict(spec, model=sep.model.cpu())  # pickled once per worker
    elif spec["model"] is None:
        spec = dict(spec, model=sep.model_name)
    ctx = mp.get_context("spawn")  # fork after torch threads started can deadlock
    q = ctx.Queue()
    pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init, initargs=(spec, threads, q))

    def drain() -> None:
        while True:
            try:
                item = q.get_nowait()
            except queue_mod.Empty:
                return
            if isinstance(item, logging.LogRecord):
                logger = logging.getLogger(item.name)
                # handle() skips the level check that the worker's own logger had not made (-q)
                if logger.isEnabledFor(item.levelno):
                    logger.handle(item)
            elif item[0] == "started":
                events.file_started(item[1], item[2])
            elif item[0] == "progress":
                events.file_progress(*item[1:])

    try:
        futures = {pool.submit(_worker_run, k, found[k], out, options): k for k in todo}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            drain()
            for f in done:
                k = futures[f]
                try:
                    results[k] = f.result()
                except Exception as exc:  # a worker that died (out of memory, ...)
                    results[k] = _failed(str(found[k].path), exc)
                events.file_done(k, results[k])
        drain()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        pool.shutdown()


def __getattr__(name: str) -> Any:
    # ConsoleReport (progress bars, per-file lines) is CLI code now; the old
    # import path keeps working for scripts.
    if name == "ConsoleReport":
        from sepcli.cli_console import ConsoleReport

        return ConsoleReport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AUDIO_EXTENSIONS",
    "BatchEvents",
    "BatchResult",
    "DEFAULT_FILENAME",
    "DEFAULT_OVERLAP",
    "DEFAULT_QUALITY",
    "DEFAULT_SEGMENT",
    "InferenceSettings",
    "InputFile",
    "QUALITIES",
    "SeparationResult",
    "Separator",
    "check_template",
    "find_audio_files",
    "render_filename",
    "separate",
    "separate_files",
]
