"""``sep bench``: measured latency of streaming causal Conv-TasNet.

For each chunk size the signal is fed to a :class:`~sepcli.streaming.Streamer`
(an :class:`~sepcli.streaming.AveragedStreamer` with ``passes > 1``) chunk by chunk, after a warm-up on the same chunk size, and every ``process``
call is timed (on CUDA with events, synchronised). Reported per chunk size:

* ``p50_ms`` ... ``max_ms``: compute time per chunk;
* ``rtf``: total compute time / duration of the audio (below 1: faster than real time);
  ``cpu_rtf`` the same with the process's CPU time (on a busy machine, the
  gap to ``rtf`` is time spent waiting for a core);
* ``algorithmic_latency_ms``: the encoder window L plus the chunk (plus the
  largest delay of averaged passes), the delay the method itself imposes
  before a sample's output can exist;
* ``total_latency_ms``: algorithmic latency plus the p99 compute time;
* ``backend``: the streaming step's implementation, ``native`` (the compiled
  kernel, :mod:`sepcli.native`) or ``torch``;
* ``max_abs_diff``: the largest difference between the streamed output and
  the offline causal forward on the same signal, or the offline average of
  the passes (``max_rel_diff``: divided by the offline output's peak);
* ``naive_rtf``: the baseline that re-runs the network over its receptive
  field plus the chunk for every chunk (what toolkits without state do),
  timed on ``naive_chunks`` chunks with a full context (once per pass); ``speedup`` =
  ``naive_rtf / rtf``.

Also measured once: ``offline_rtf``, the throughput of the non-causal model
(one forward over the whole signal).

The signal is synthetic (seeded amplitude-modulated noise): compute does
not depend on the content. Timings depend on everything else the machine is
doing; measure on an idle machine.
"""
from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from sepcli import engine, registry
from sepcli.errors import SepError
from sepcli.inference import protocol
from sepcli.inference.settings import DEFAULT_QUALITY
from sepcli.streaming import Streamer, make_streamer, model_equalize, offline

DEFAULT_CHUNKS_MS = (2.0, 4.0, 8.0, 16.0, 32.0)
DEFAULT_CAUSAL = "convtasnet-causal"  # shipped name
PAPER_CAUSAL = "convtasnet-paper-causal"  # preset used (random weights) until it ships
DEFAULT_OFFLINE = "convtasnet"
PAPER_OFFLINE = "convtasnet-paper"
WARMUP_SECONDS = 0.25


@dataclass
class ChunkResult:
    """Measurements for one chunk size (times in milliseconds)."""

    chunk_ms: float
    chunk_samples: int
    chunks: int  # chunks timed
    rtf: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    algorithmic_latency_ms: float
    total_latency_ms: float
    max_abs_diff: float
    max_rel_diff: float
    cpu_rtf: float | None = None  # process CPU time / audio time (CPU device): below rtf when waiting for a core
    naive_rtf: float | None = None
    naive_ms: float | None = None  # mean per chunk
    naive_chunks: int = 0
    speedup: float | None = None  # naive_rtf / rtf


@dataclass
class BenchResult:
    """Everything ``sep bench --json`` prints."""

    device: str
    device_name: str
    threads: int
    model: str
    params: int
    random_weights: bool
    sample_rate: int
    duration_s: float
    L: int
    hop: int
    receptive_field_ms: float  # inf for a recurrent model (no naive baseline then)
    offline_model: str | None
    offline_random_weights: bool
    offline_rtf: float | None
    torch_version: str
    offline_precision: str | None = None
    passes: int = 1  # forward passes averaged per chunk (the model's default unless asked)
    pass_signs: bool = False
    backend: str = "torch"  # the streaming step's implementation: "native" (compiled kernel) or "torch"
    equalize: float = 0.0  # the causal equalizer's limit in dB (0: off), part of the timed step
    results: list[ChunkResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- setup


def cpu_name() -> str:
    """The CPU's model name (for labelling figures)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def resolve_device(device: str) -> torch.device:
    """``cpu`` or ``cuda[:N]`` (timings name a device, so no ``auto``).
    SepError (one line) when CUDA is not available."""
    return engine.resolve_device(device, kinds=("cpu", "cuda"))


def load_bench_model(
    model: str | torch.nn.Module | None, device: torch.device, *, causal: bool = True, seed: int = 0
) -> tuple[torch.nn.Module, str, bool]:
    """Resolve a model for benchmarking. Returns (model, label, random_weights).

    ``None``: the shipped ``convtasnet-causal`` (``convtasnet`` with
    ``causal=False``) if installed, else the paper configuration with random
    weights. A preset or family name builds untrained weights (seeded); a
    shipped name or a checkpoint path loads trained ones.
    """
    if isinstance(model, torch.nn.Module):
        return model.to(device).eval(), type(model).__name__, False
    shipped = registry.shipped_models()
    if model is None:
        name = DEFAULT_CAUSAL if causal else DEFAULT_OFFLINE
        if name in shipped:
            return registry.load_model(name, device).eval(), name, False
        model = PAPER_CAUSAL if causal else PAPER_OFFLINE
    name = str(model)
    if name not in shipped and (name in registry.presets() or name in registry.families()):
        torch.manual_seed(seed)
        return registry.build(name).to(device).eval(), name, True
    return registry.load_model(name, device).eval(), name, False


def bench_signal(n_samples: int, sample_rate: int, seed: int = 0) -> np.ndarray:
    """Seeded noise with a syllable-rate envelope at about -20 dBFS. Shape: [T] float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / sample_rate
    env = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6))
    return (0.1 * env * rng.standard_normal(n_samples)).astype(np.float32)


def _chunk_samples(chunk_ms: float, sample_rate: int, hop: int) -> int:
    n = int(round(chunk_ms * sample_rate / 1000))
    if n < hop:
        raise SepError(
            f"chunk of {chunk_ms:g} ms is {n} samples, less than one hop ({hop} samples = "
            f"{1000 * hop / sample_rate:g} ms at {sample_rate} Hz); use a larger --chunk-ms"
        )
    return n


class _Timer:
    """Wall-clock timing of one call; on CUDA with events (synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def __call__(self, fn: Callable[[], object]) -> tuple[object, float]:
        if self.cuda:
            torch.cuda.synchronize()
            self.start.record()
            out = fn()
            self.end.record()
            self.end.synchronize()
            return out, self.start.elapsed_time(self.end) / 1000.0
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0


# ----------------------------------------------------------------------------- measurements


def naive_chunk_seconds(
    model: torch.nn.Module, mix: torch.Tensor, chunk: int, n_chunks: int, timer: _Timer, passes: int = 1
) -> list[float]:
    """Time the stateless baseline: for each chunk, the network runs over its
    receptive field plus the chunk (``passes`` times) and the last ``chunk``
    samples are kept. ``mix`` is on the model's device and at least one window long."""
    window = model.receptive_field + chunk
    if mix.shape[0] < window + n_chunks * chunk:
        reps = -(-(window + n_chunks * chunk) // mix.shape[0])
        mix = mix.repeat(reps)
    times = []
    with torch.inference_mode():
        model(mix[None, :window])  # warm-up at full size
        for i in range(n_chunks):
            end = window + i * chunk
            seg = mix[None, end - window : end]
            _, dt = timer(lambda seg=seg: [model(seg)[..., -chunk:].cpu() for _ in range(passes)])
            times.append(dt)
    return times


def offline_rtf(model: torch.nn.Module, mix: torch.Tensor, sample_rate: int, timer: _Timer) -> float:
    """Seconds of compute per second of audio for one pass over ``mix``, through
    ``model.separate`` (what ``sep separate`` runs; for Conv-TasNet with gLN the
    folded forward) where the model has it."""
    run = protocol.separate_method(model)
    with torch.inference_mode():
        run(mix[None, : min(mix.shape[0], sample_rate)])  # warm-up
        _, dt = timer(lambda: run(mix[None]).cpu())
    return dt / (mix.shape[0] / sample_rate)


def bench_chunk(
    streamer_model: torch.nn.Module,
    mix: torch.Tensor,
    ref: torch.Tensor,
    chunk: int,
    timer: _Timer,
    *,
    naive_chunks: int = 5,
    passes: int = 1,
    signs: bool = False,
    backend: str = "auto",
    equalize: float = 0.0,
) -> ChunkResult:
    """Stream ``mix`` (CPU, [T]) in chunks of ``chunk`` samples and compare with
    ``ref`` ([S, T], the offline causal output, or the offline average of the passes, with the
    causal equalizer around it for ``equalize`` > 0, on the CPU)."""
    sr = streamer_model.config.sample_rate
    streamer = make_streamer(streamer_model, chunk_size=chunk, passes=passes, signs=signs, backend=backend,
                             equalize=equalize)
    n_warm = max(3, int(WARMUP_SECONDS * sr) // chunk)
    for i in range(n_warm):
        streamer.process(mix[(i * chunk) % max(1, mix.shape[0] - chunk) :][:chunk])
    streamer.reset()
    n_full = mix.shape[0] // chunk
    if n_full < 1:
        raise SepError(f"--duration is shorter than one chunk ({chunk} samples)")
    outs, times = [], []
    cpu0 = time.process_time()
    for i in range(n_full):
        piece = mix[i * chunk : (i + 1) * chunk]
        y, dt = timer(lambda piece=piece: streamer.process(piece))
        outs.append(y)
        times.append(dt)
    cpu = time.process_time() - cpu0
    if n_full * chunk < mix.shape[0]:
        outs.append(streamer.process(mix[n_full * chunk :]))
    outs.append(streamer.flush())
    est = torch.cat([torch.as_tensor(o).cpu() for o in outs], 1)  # [S, T]
    diff = float((est - ref).abs().max())
    peak = float(ref.abs().max())
    ms = np.asarray(times) * 1000.0
    chunk_ms = 1000.0 * chunk / sr
    p99 = float(np.percentile(ms, 99))
    alg = 1000.0 * streamer.algorithmic_latency(chunk) / sr
    rtf = float(ms.sum() / (n_full * chunk_ms))
    result = ChunkResult(
        chunk_ms=chunk_ms, chunk_samples=chunk, chunks=n_full, rtf=rtf, mean_ms=float(ms.mean()),
        p50_ms=float(np.percentile(ms, 50)), p90_ms=float(np.percentile(ms, 90)), p99_ms=p99,
        max_ms=float(ms.max()), algorithmic_latency_ms=alg, total_latency_ms=alg + p99,
        max_abs_diff=diff, max_rel_diff=diff / peak if peak > 0 else diff,
        cpu_rtf=None if timer.cuda else cpu / (n_full * chunk_ms / 1000.0),
    )
    if naive_chunks > 0:
        device_mix = mix.to(streamer_model.encoder.weight.device)
        naive = np.asarray(naive_chunk_seconds(streamer_model, device_mix, chunk, naive_chunks, timer, passes))
        result.naive_chunks = naive_chunks
        result.naive_ms = float(naive.mean() * 1000.0)
        result.naive_rtf = float(result.naive_ms / chunk_ms)
        result.speedup = result.naive_rtf / rtf if rtf > 0 else None
    return result


def run_bench(
    model: str | torch.nn.Module | None = None,
    *,
    device: str = "cpu",
    chunk_ms: Sequence[float] = DEFAULT_CHUNKS_MS,
    threads: int | None = 1,
    duration: float = 10.0,
    naive_chunks: int = 5,
    offline_model: str | torch.nn.Module | None | bool = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    passes: int | None = None,
    quality: str = DEFAULT_QUALITY,
    backend: str = "auto",
    equalize: float | None = None,
) -> BenchResult:
    """Measure streaming latency (see the module docstring).

    Args:
        model: causal Conv-TasNet to stream: shipped name, checkpoint path,
            preset/family name (random weights) or module. None: shipped
            ``convtasnet-causal``, else ``convtasnet-paper-causal`` with random weights.
        device: ``cpu`` or ``cuda`` (SepError when CUDA is not available).
        chunk_ms: chunk sizes in milliseconds, each at least one hop.
        threads: torch CPU threads during the benchmark (None: leave as is).
        duration: seconds of audio streamed per chunk size.
        naive_chunks: chunks timed for the naive baseline (0: skip it).
        offline_model: non-causal model whose offline RTF is measured; None:
            shipped ``convtasnet``, else ``convtasnet-paper`` (random weights);
            False: skip.
        progress: called with a short message before each measurement.
        passes: forward passes averaged per chunk (None: the model's default,
            as ``sep stream`` and ``sep separate`` use; 1 for the paper preset).
        backend: the streaming step's implementation (see
            :class:`~sepcli.streaming.Streamer`): ``auto`` (the compiled kernel
            for float32 on the CPU when it builds), ``native`` or ``torch``.
        equalize: the causal equalizer's limit in dB, timed with the step (0: off; None:
            the model's ``quality`` preset's, as ``sep stream`` uses).
    """
    say = progress or (lambda msg: None)
    dev = resolve_device(device)
    if not chunk_ms:
        raise SepError("give at least one chunk size")
    try:
        duration = float(duration)
    except (TypeError, ValueError):
        raise SepError(f"duration must be a number of seconds, got {duration!r}") from None
    if not (duration > 0 and np.isfinite(duration)):
        raise SepError(f"duration must be positive, got {duration}")
    if threads is not None and (isinstance(threads, bool) or int(threads) != threads or threads < 1):
        raise SepError(f"threads must be a positive integer, got {threads!r}")
    if isinstance(naive_chunks, bool) or int(naive_chunks) != naive_chunks or naive_chunks < 0:
        raise SepError(f"naive_chunks must be a non-negative integer, got {naive_chunks!r}")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        net, label, random_weights = load_bench_model(model, dev, seed=seed)
        # SepError now if it cannot stream (non-causal, other family) or the backend is unavailable
        probe = Streamer(net, backend=backend)
        used, frame_length, hop = probe.backend, probe.L, probe.hop  # the family's framing (its streaming layout)
        passes, signs = engine.model_passes(net, passes, quality=quality)
        equalize = model_equalize(net, equalize, quality)
        c = net.config
        sr = c.sample_rate
        if net.receptive_field is None:  # recurrent (LSTM-TasNet): no finite context to re-run per chunk
            naive_chunks = 0
        chunks = [_chunk_samples(float(ms), sr, hop) for ms in chunk_ms]
        n = max(int(round(duration * sr)), max(chunks))
        mix = torch.from_numpy(bench_signal(n, sr, seed))  # [T] on the CPU
        timer = _Timer(dev)
        say(f"offline causal forward on {n / sr:g} s (reference output)")
        ref = torch.from_numpy(offline(net, mix, passes=passes, signs=signs, equalize=equalize))  # [S, T] on the CPU
        result = BenchResult(
            device=str(dev), device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
            threads=torch.get_num_threads(), model=label, params=registry.count_parameters(net),
            random_weights=random_weights, sample_rate=sr, duration_s=n / sr, L=frame_length, hop=hop,
            receptive_field_ms=float("inf") if net.receptive_field is None else 1000.0 * net.receptive_field / sr,
            offline_model=None,
            offline_random_weights=False, offline_rtf=None, torch_version=torch.__version__,
            passes=passes, pass_signs=signs, backend=used, equalize=equalize,
        )
        for chunk in chunks:
            say(f"streaming in {1000 * chunk / sr:g} ms chunks")
            result.results.append(bench_chunk(net, mix, ref, chunk, timer, naive_chunks=naive_chunks,
                                              passes=passes, signs=signs, backend=used, equalize=equalize))
        if offline_model is not False:
            off, off_label, off_random = load_bench_model(offline_model, dev, causal=False, seed=seed)
            off_rate = protocol.describe(off).sample_rate
            if off_rate != sr:
                raise SepError(f"offline model {off_label} runs at {off_rate} Hz, the streamed one at {sr} Hz")
            say(f"offline forward of {off_label} on {n / sr:g} s")
            result.offline_model = off_label
            result.offline_random_weights = off_random
            # the matrix-product precision that `sep separate` would use here
            result.offline_precision = engine.set_precision(off, "auto", dev, off_label)
            result.offline_rtf = offline_rtf(off, mix.to(dev), sr, timer)
        return result
    finally:
        torch.set_num_threads(before)
