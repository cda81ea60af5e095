"""``sep stream``: files and raw PCM pipes run through a :class:`~sepcli.inference.streaming.Streamer`
in fixed-size chunks, as a live input would arrive, written as ``sep separate`` writes
(:func:`stream_file`, :func:`stream_pcm`), with every chunk's compute time (:class:`ChunkTimes`).

Shape legend: S sources, T samples.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from sepcli import engine
from sepcli.errors import SepError
from sepcli.inference.settings import DEFAULT_QUALITY
from sepcli.inference.streaming import (
    AveragedStreamer,
    EqualizedStreamer,
    Streamer,
    make_streamer,
    streaming_layout,
)

DEFAULT_CHUNK_MS = 8.0
PCM_FORMATS = {"s16le": ("<i2", 32768.0), "f32le": ("<f4", 1.0)}
"""Raw PCM sample formats read from a pipe: numpy dtype and full-scale value."""
_YIELD_SAMPLES = 4096  # output samples gathered before they go to the writers


@dataclass
class ChunkTimes:
    """Compute time of every ``process`` call of a stream (seconds)."""

    chunk_samples: int
    sample_rate: int
    seconds: list[float] = field(default_factory=list)

    @property
    def chunk_ms(self) -> float:
        return 1000.0 * self.chunk_samples / self.sample_rate

    def summary(self) -> dict:
        """``chunks``, ``compute_rtf`` (compute / audio time), ``p50_ms``, ``p99_ms``, ``max_ms``."""
        if not self.seconds:
            return {"chunks": 0, "compute_rtf": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        ms = np.asarray(self.seconds) * 1000.0
        return {
            "chunks": len(ms),
            "compute_rtf": float(ms.sum() / (len(ms) * self.chunk_ms)),
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()),
        }


@dataclass
class StreamResult:
    """Outcome of :func:`stream_file` or :func:`stream_pcm`."""

    input: str
    status: str  # "ok" or "skipped"
    outputs: list[str]
    model: str
    n_src: int
    sample_rate: int  # of the outputs (the input's)
    frames: int  # samples per output
    duration: float
    seconds: float  # wall clock, reading and writing included
    chunk_ms: float
    chunks: int
    compute_rtf: float  # streaming compute only
    p50_ms: float
    p99_ms: float
    max_ms: float
    gain_db: float = 0.0  # applied to all tracks to avoid clipping (0 or negative)
    message: str = ""
    passes: int = 1  # averaged passes streamed (AveragedStreamer above 1)
    backend: str = "torch"  # the streaming step's implementation: "native" or "torch"
    equalize: float = 0.0  # the causal equalizer's limit in dB (0: off)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _chunk_samples(chunk_ms: float, sample_rate: int) -> int:
    try:
        chunk_ms = float(chunk_ms)
    except (TypeError, ValueError):
        raise SepError(f"chunk length must be a number of milliseconds, got {chunk_ms!r}") from None
    if not (chunk_ms > 0 and math.isfinite(chunk_ms)):
        raise SepError(f"chunk length must be positive, got {chunk_ms} ms")
    return max(1, int(round(chunk_ms * sample_rate / 1000.0)))


def _load_causal(model: str | os.PathLike | torch.nn.Module | None, device: str) -> tuple[torch.nn.Module, str]:
    """A causal model by name, path or module; default: the shipped ``convtasnet-causal``."""
    from sepcli import registry

    dev = engine.resolve_device(device)
    if isinstance(model, torch.nn.Module):
        net, name = model.to(dev).eval(), type(model).__name__
    else:
        if model is None:
            if "convtasnet-causal" not in registry.shipped_models():
                raise SepError(
                    "no causal model is installed (convtasnet-causal is not shipped yet); pass "
                    "--model PATH.safetensors of a causal Conv-TasNet (see `sep models`)"
                )
            model = "convtasnet-causal"
        net, name = registry.load_model(model, dev).eval(), str(model)
    streaming_layout(net)
    return net, name


class _Runner:
    """Feeds a :class:`Streamer` (or :class:`AveragedStreamer`) fixed-size chunks cut from blocks of any size,
    timing each call; yields the output gathered into blocks of a few thousand samples."""

    def __init__(self, streamer: Streamer | AveragedStreamer | EqualizedStreamer, chunk: int) -> None:
        self.streamer = streamer
        self.chunk = chunk
        self.times = ChunkTimes(chunk, streamer.sample_rate)

    def _process(self, x: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        y = self.streamer.process(x)
        self.times.seconds.append(time.perf_counter() - t0)
        return y

    def run(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Shape: blocks [n] at the model's rate -> yields [S, m]; all of it adds up to the input."""
        self.streamer.reset()
        chunk = self.chunk
        pending = np.zeros(0, dtype=np.float32)
        out: list[np.ndarray] = []
        ready = 0
        for block in blocks:
            buf = np.concatenate((pending, block)) if pending.size else np.asarray(block, dtype=np.float32)
            n_full = buf.shape[0] // chunk
            for i in range(n_full):
                y = self._process(buf[i * chunk : (i + 1) * chunk])
                if y.shape[1]:
                    out.append(y)
                    ready += y.shape[1]
                if ready >= _YIELD_SAMPLES:
                    yield np.concatenate(out, axis=1)
                    out, ready = [], 0
            pending = buf[n_full * chunk :]
        if pending.size:
            out.append(self._process(pending))
        out.append(self.streamer.flush())
        rest = np.concatenate(out, axis=1)
        if rest.shape[1]:
            yield rest


def stream_file(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    model: str | os.PathLike | torch.nn.Module | None = None,
    *,
    chunk_ms: float = DEFAULT_CHUNK_MS,
    device: str = "cpu",
    force: bool = False,
    filename: str = "{stem}/s{i}.wav",
    subtype: str = "PCM_16",
    progress: Callable[[int, int], None] | None = None,
    passes: int | None = None,
    quality: str = DEFAULT_QUALITY,
    backend: str = "auto",
    equalize: float | None = None,
) -> StreamResult:
    """Separate a file by streaming it through a causal model in chunks of
    ``chunk_ms``, as a live input would arrive; write the same files as
    ``sep separate`` (``OUT/<stem>/s1.wav`` ..., the input's rate and length,
    atomic, existing outputs skipped unless ``force``, scaled down only if
    they would clip).

    The tracks are the causal model's own output, identical to its offline
    forward over the whole file (no per-chunk level fitting, which would need
    the whole chunk before any output). ``passes``: forward passes averaged
    (:class:`AveragedStreamer`; None: the ``quality`` preset's, as ``sep separate``);
    equal to their offline average (:func:`offline`). ``backend``: the
    streaming step's implementation (see :class:`Streamer`). ``equalize``: the causal
    equalizer's limit in dB (:class:`EqualizedStreamer`; 0 off, None: the preset's).
    """
    from sepcli import api

    net, name = _load_causal(model, device)
    separator = api.Separator(net, device=device)
    chunk = _chunk_samples(chunk_ms, separator.sample_rate)
    streamer = make_streamer(separator.model, chunk_size=chunk, passes=passes, backend=backend, quality=quality,
                             equalize=equalize)
    runner = _Runner(streamer, chunk)

    def separate_blocks(blocks: Iterable[np.ndarray], stats: Any = None) -> Iterator[np.ndarray]:
        for y in runner.run(blocks):
            if stats is not None:
                stats.n_src = y.shape[0]
            yield y
        if stats is not None:
            stats.chunks = len(runner.times.seconds)

    res = separator.separate_file(path, out_dir, force=force, filename=filename, subtype=subtype, progress=progress,
                                  blocks_fn=separate_blocks)
    timing = runner.times.summary()
    return StreamResult(
        input=res.input, status=res.status, outputs=list(res.outputs), model=name, n_src=res.n_src,
        sample_rate=res.sample_rate, frames=res.frames, duration=res.duration, seconds=res.seconds,
        chunk_ms=runner.times.chunk_ms, gain_db=res.gain_db, message=res.message,
        passes=getattr(streamer, "passes", 1), backend=streamer.backend,
        equalize=getattr(streamer, "equalize", 0.0), **timing,
    )


def _read_pcm(stream: BinaryIO, n_bytes: int) -> bytes:
    """Up to ``n_bytes`` from a pipe (short only at the end of the stream)."""
    parts, got = [], 0
    while got < n_bytes:
        data = stream.read(n_bytes - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def stream_pcm(
    stream: BinaryIO,
    sample_rate: int,
    out_dir: str | os.PathLike,
    model: str | os.PathLike | torch.nn.Module | None = None,
    *,
    name: str = "stdin",
    sample_format: str = "s16le",
    chunk_ms: float = DEFAULT_CHUNK_MS,
    device: str = "cpu",
    force: bool = False,
    filename: str = "{stem}/s{i}.wav",
    subtype: str = "FLOAT",
    passes: int | None = None,
    quality: str = DEFAULT_QUALITY,
    backend: str = "auto",
    equalize: float | None = None,
) -> StreamResult:
    """Separate raw mono PCM read from a pipe (e.g. ``sys.stdin.buffer``) until
    it ends, one chunk at a time, into ``OUT/<name>/s1.wav`` ... at
    ``sample_rate`` with exactly as many samples as were read.

    The outputs are written as the stream goes (they appear, atomically, when
    it ends). ``subtype="FLOAT"`` (default) cannot clip; with PCM the samples
    beyond full scale are clipped (with a warning), since the peak is unknown
    until the end. ``passes``, ``backend`` and ``equalize`` as in :func:`stream_file`.
    """
    from sepcli import api, audio

    if sample_format not in PCM_FORMATS:
        raise SepError(f"unknown PCM format {sample_format!r}; valid: {', '.join(PCM_FORMATS)}")
    sample_rate = audio._check_rate(sample_rate)
    net, model_name = _load_causal(model, device)
    api.check_template(filename)
    sr_model = int(net.sample_rate)
    n_src = int(net.n_src)
    outs = [Path(out_dir) / api.render_filename(filename, stem=name, i=i, n=n_src) for i in range(1, n_src + 1)]
    existing = [str(p) for p in outs if p.exists()]
    if existing and not force:
        raise SepError(f"{', '.join(existing)} exist(s); use --force to overwrite")
    dtype, scale = PCM_FORMATS[sample_format]
    width = np.dtype(dtype).itemsize
    chunk = _chunk_samples(chunk_ms, sample_rate)  # read size, at the input's rate
    model_chunk = _chunk_samples(chunk_ms, sr_model)
    streamer = make_streamer(net, chunk_size=model_chunk, passes=passes, backend=backend, quality=quality,
                             equalize=equalize)
    times = ChunkTimes(model_chunk, sr_model)
    resample = sample_rate != sr_model
    down = audio.Resampler(sample_rate, sr_model) if resample else None
    ups = [audio.Resampler(sr_model, sample_rate) for _ in range(n_src)] if resample else None
    t_start = time.perf_counter()
    n_in = 0
    held = np.zeros((n_src, 0), dtype=np.float32)  # output at the input's rate, not yet written
    written = 0
    # Resampling twice can give a few samples more or fewer than were read; the
    # last HOLD samples are held back so that the files end at exactly n_in.
    hold = 4096
    with contextlib.ExitStack() as stack:
        writers = [
            stack.enter_context(audio.AudioWriter(p, sample_rate, 1, subtype=subtype, force=force)) for p in outs
        ]

        def emit(y: np.ndarray, last: bool = False) -> None:
            nonlocal held, written
            if ups is not None:
                y = np.stack([up.resample_chunk(np.ascontiguousarray(t), last=last)
                              for up, t in zip(ups, y, strict=True)])
            held = np.concatenate((held, y), axis=1) if held.shape[1] else y
            if last:
                held = held[:, : max(0, n_in - written)]
                if held.shape[1] < n_in - written:
                    held = np.pad(held, ((0, 0), (0, n_in - written - held.shape[1])))
                cut = held.shape[1]
            else:
                cut = max(0, min(held.shape[1] - hold, n_in - written))
            if cut:
                for w, t in zip(writers, held[:, :cut], strict=True):
                    w.write(t)
                written += cut
                held = held[:, cut:]

        while True:
            data = _read_pcm(stream, chunk * width)
            usable = len(data) - len(data) % width  # a torn last sample is dropped
            if usable == 0:
                break
            x = np.frombuffer(data[:usable], dtype=dtype).astype(np.float32) / np.float32(scale)
            n_in += x.shape[0]
            if down is not None:
                x = down.resample_chunk(x)
            t0 = time.perf_counter()
            y = streamer.process(x)
            times.seconds.append(time.perf_counter() - t0)
            if y.shape[1]:
                emit(y)
        if n_in == 0:
            raise SepError(f"no audio on {name} (0 samples read)")
        rest = [streamer.process(down.resample_chunk(np.zeros(0, np.float32), last=True))] if down else []
        rest.append(streamer.flush())
        emit(np.concatenate(rest, axis=1), last=True)
    timing = times.summary()
    return StreamResult(
        input=name, status="ok", outputs=[str(p) for p in outs], model=model_name, n_src=n_src,
        sample_rate=sample_rate, frames=n_in, duration=n_in / sample_rate,
        seconds=time.perf_counter() - t_start, chunk_ms=times.chunk_ms,
        passes=getattr(streamer, "passes", 1), backend=streamer.backend,
        equalize=getattr(streamer, "equalize", 0.0), **timing,
    )


__all__ = ["DEFAULT_CHUNK_MS", "PCM_FORMATS", "ChunkTimes", "StreamResult", "stream_file", "stream_pcm"]
