"""Separate recordings: the :class:`Separator` class and the functional
:func:`separate` (public through :mod:`sepcli.api`).

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
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sepcli import audio, plots, registry
from sepcli.errors import SepError
from sepcli.inference import device as devices
from sepcli.inference import protocol
from sepcli.inference.chunking import EngineStats, chunk_plan, separate_array, separate_stream
from sepcli.inference.equalize import equalized_fn
from sepcli.inference.equalize_causal import causal_equalized_fn
from sepcli.inference.outputs import (
    DEFAULT_FILENAME,
    PEAK_TARGET,
    SeparationResult,
    TrackTemp,
    check_template,
    render_filename,
)
from sepcli.inference.passes import averaged_fn, ensemble_fn, model_fn, pass_transforms, speed_fn
from sepcli.inference.settings import (
    DEFAULT_QUALITY,
    InferenceSettings,
    check_quality,
    check_segment,
    check_speeds,
    preset_settings,
)

log = logging.getLogger(__name__)

PRECISIONS = devices.PRECISIONS
"""``precision`` choices (see :func:`sepcli.engine.set_precision`)."""

ProgressFn = Callable[[int, int], None]
"""``progress(done, total)`` in samples at the model's rate."""
BlocksFn = Callable[[Iterable[np.ndarray], Any], Iterable[np.ndarray]]
"""``blocks_fn(blocks, stats)``: mono model-rate blocks ``[n]`` -> tracks ``[S, m]``, all of the input."""


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


class Separator:
    """A loaded model plus chunking settings; reusable for many inputs.

    Args:
        model: a shipped model name, a ``.safetensors`` checkpoint path, or an
            ``nn.Module`` that follows the registry's model contract (its
            ``config`` has ``sample_rate`` and ``n_src``). ``None``: the best
            shipped non-causal model of one network, not an ensemble
            (:func:`sepcli.registry.default_model_name`; SepError if none is installed).
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
        equalize: channel normalisation (dB, 0 off): each chunk is filtered toward
            the long-term spectrum of training speech by at most this much per
            band before it is separated, and its tracks by the inverse after
            (:mod:`sepcli.inference.equalize`; for a causal model the running form,
            :mod:`sepcli.inference.equalize_causal`, which streams); ``None`` for the
            preset's (12 dB for every shipped model at ``fast``).
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
        equalize: float | None = None,
    ) -> None:
        self.device = devices.resolve_device(device)
        if segment is not None:
            segment = check_segment(segment)
        check_quality(quality)
        self.model, self.model_name = _load_model(model, self.device)
        self.model_info: protocol.ModelInfo = protocol.describe(self.model)
        info = self.model_info
        base = settings if settings is not None else preset_settings(info.presets, quality)
        self.quality: str | None = None if settings is not None else quality
        self.settings: InferenceSettings = base.override(
            segment=segment, overlap=overlap, passes=passes, pass_signs=pass_signs, precision=precision,
            speeds=None if speeds is None else check_speeds(speeds), equalize=equalize,
        )
        s = self.settings
        self.precision: str = devices.set_precision(self.model, s.precision, self.device, self.model_name)
        self.sample_rate: int = info.sample_rate
        self.segment_samples = max(1, int(round(s.segment * info.sample_rate)))
        chunk_plan(self.segment_samples, s.overlap)  # validates overlap against the chunk
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
        transforms = pass_transforms(s.passes, info.frame_hop, signs=s.pass_signs)
        views = averaged_fn(model_fn(self.model, self.device, self.n_src), transforms,
                                   causal=info.causal)
        self.fn = ensemble_fn([speed_fn(views, info.sample_rate, v) for v in s.speeds], what="speeds")
        if s.equalize > 0:
            # Outermost: each chunk's gains are measured once, whatever passes and speeds it runs.
            # A causal model gets the running (causal) form, so that its chunks equal its stream.
            wrap = causal_equalized_fn if info.causal else equalized_fn
            self.fn = wrap(self.fn, info.sample_rate, s.equalize)
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
    equalize = property(lambda self: self.settings.equalize)

    @property
    def expected_n_src(self) -> int | None:
        """Number of tracks each input gives, if known in advance."""
        if self.n_src == "auto":
            return None
        if isinstance(self.n_src, int):
            return self.n_src
        return self.model_info.n_src

    # -- streams

    def separate_blocks(
        self, blocks: Iterable[np.ndarray], stats: EngineStats | None = None
    ) -> Iterator[np.ndarray]:
        """Separate mono blocks at the model's rate, yielding final output as it
        is ready (bounded memory). Shape: blocks ``[n]`` -> yields ``[S, m]``.
        """
        return separate_stream(
            blocks, self.fn, segment=self.segment_samples, overlap=self.overlap,
            batch_size=self.batch_size,
            n_src=self.n_src if isinstance(self.n_src, int) else self.expected_n_src,
            stats=stats,
        )

    # -- arrays

    def separate(
        self, mix: np.ndarray | torch.Tensor, sample_rate: int, stats: EngineStats | None = None
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
        est = separate_array(
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
            plots.require_matplotlib()
        first = self.output_paths(path, out_dir, 1, filename, parent)[0]
        folder = first.parent
        plot_path = folder / f"{path.stem}.spectrogram.png" if plot else None
        if plot_path is not None and plot_path.exists() and not force:
            raise SepError(f"{plot_path} exists; use --force to overwrite")
        figure = plots.FilePlot(plot_path, info, self.sample_rate) if plot_path is not None else None
        new_folders = [d for d in [folder, *folder.parents] if not d.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SepError(f"cannot create folder {folder}: {exc.strerror}") from None

        stats = EngineStats()
        temps: list[TrackTemp] = []
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
            self._pass2(path, temps, outs, info, gain, subtype, force, figure)
        except BaseException:
            for t in temps:
                t.close()
            for d in new_folders:  # innermost first; only folders this call created and left empty
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise
        for t in temps:
            t.close()
        if figure is not None:
            figure.save(force)
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
        self, path: Path, folder: Path, temps: list[TrackTemp], stats: EngineStats,
        progress: ProgressFn | None, blocks_fn: BlocksFn,
    ) -> float:
        """Separate into model-rate temp tracks (appended to ``temps``); return
        their peak after resampling to the input rate, over the input's length."""
        with audio.BlockReader(path, sample_rate=self.sample_rate) as reader:
            total = reader.out_frames
            sr_in = reader.info.sample_rate
            target = reader.info.frames
            resamplers: list[audio.Resampler] = []
            seen: list[int] = []  # input-rate samples counted per track (pinned to target)
            peak = 0.0
            written = 0

            def track_peak(k: int, y: np.ndarray) -> None:
                nonlocal peak
                y = y[: target - seen[k]]
                seen[k] += y.shape[0]
                if y.size:
                    peak = max(peak, float(np.abs(y).max()))

            if progress is not None:
                progress(0, total)
            for block in blocks_fn(reader, stats):  # [S, n]
                while len(temps) < block.shape[0]:  # a new track (n_src="auto")
                    temps.append(TrackTemp(folder, path.stem, written))
                    resamplers.append(audio.Resampler(self.sample_rate, sr_in))
                    seen.append(0)
                    k = len(temps) - 1
                    for z in temps[k].blocks():  # keep its resampler aligned: feed the silence too
                        track_peak(k, resamplers[k](z))
                for k, track in enumerate(block):
                    temps[k].write(track)
                    track_peak(k, resamplers[k](track))
                written += block.shape[1]
                if progress is not None:
                    progress(written, total)
            if written != total:  # the engine emits exactly its input; this is a bug guard
                raise SepError(f"{path}: internal error: {written} of {total} samples separated")
            if not temps:
                n = self.expected_n_src or 1
                for _ in range(n):
                    temps.append(TrackTemp(folder, path.stem, written))
                    resamplers.append(audio.Resampler(sr_in, sr_in))  # silent: nothing to resample
                    seen.append(0)
            for k, resampler in enumerate(resamplers):
                if resampler.stream is not None:
                    track_peak(k, resampler(np.zeros(0, np.float32), last=True))
        return peak

    def _pass2(
        self, path: Path, temps: list[TrackTemp], outs: list[Path], info: audio.AudioInfo, gain: float,
        subtype: str, force: bool, figure: plots.FilePlot | None,
    ) -> None:
        """Resample the temp tracks to the input rate, scale, write the outputs
        (all renamed into place together at the end); feed ``figure`` (the
        mixture first) if there is one."""
        with contextlib.ExitStack() as stack:
            writers = [
                stack.enter_context(audio.AudioWriter(p, info.sample_rate, 1, subtype=subtype, force=force))
                for p in outs
            ]
            if figure is not None:
                figure.add_mixture(path)
            for temp, writer in zip(temps, writers, strict=True):
                spec = figure.track() if figure is not None else None
                for y in audio.resample_blocks(temp.blocks(), self.sample_rate, info.sample_rate, info.frames):
                    if gain != 1.0:
                        y = y * np.float32(gain)
                    writer.write(y)
                    if spec is not None:
                        spec.feed(y)
                if figure is not None and spec is not None:
                    figure.add(spec)


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


__all__ = ["PRECISIONS", "BlocksFn", "ProgressFn", "Separator", "separate"]
