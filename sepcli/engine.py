"""Chunked separation of inputs of any length: windowed overlap-add with
speaker-order alignment. Model-agnostic and rate-agnostic (everything here is
in samples at the model's rate).

How a stream is processed
-------------------------
The input is cut into chunks of ``segment`` samples that start every
``hop = segment - round(segment * overlap)`` samples. The last chunk is
end-aligned (it starts at ``T - segment``) so that every chunk the model sees
is full length and has real context; an input shorter than one segment is one
chunk of its own length. For each chunk:

1. **Model.** ``fn(mix [B, segment]) -> [B, S, segment]``; ``batch_size``
   chunks go through one call.
2. **Levels.** Per-source gains ``g`` are fitted so that ``sum_i g_i est_i``
   matches the chunk's mixture in the least-squares sense
   (:func:`mixture_gains`). This puts every chunk on the mixture's scale (a
   model trained with the scale-invariant SI-SNR loss outputs arbitrary gains
   and signs per chunk, which would otherwise jump at chunk borders), and the
   separated tracks add back up to the mixture. A chunk of digital silence
   gives exact zeros.
3. **Alignment.** A model trained with permutation-invariant training may put
   a speaker in a different output slot in each chunk. The chunk's slots are
   reordered to the permutation that best matches the output accumulated so far
   over the region where they overlap (largest summed inner product, i.e.
   smallest squared error, as a fraction of the overlap's energy; exhaustive
   for a few sources, Hungarian above: :func:`sepcli.metrics.pit_permutation`).
   So speaker 1 stays speaker 1. A coarse voice signature of each track
   (its average spectral shape over the frames it dominates, kept as a
   running average per output track, :func:`voice_signatures`) weighs in
   too, and more than the overlap when both are clear: where a model separates
   a stretch poorly, the two chunks split the overlap differently and its
   inner products can point the wrong way, while the voices' spectral shapes
   over the whole chunk still tell them apart (on the valid speakers' 10-min
   recordings, 10-s pieces left in the other order fell from 129 to 9 with
   4-s chunks, and from 45 to 20 and 150 to 51 with Conv-TasNet's and Deep
   Clustering's 30-s chunks; :data:`SIGNATURE_WEIGHT`). Tracks that are
   silent in the overlap, and pauses of everyone longer than the overlap,
   leave the signatures alone to decide. They separate voices with different
   spectral envelopes (most male/female pairs and many same-gender ones), not
   every pair of similar voices.
4. **Overlap-add.** The chunk is multiplied by a window (raised-cosine fades of
   ``round(segment * overlap)`` samples, flat in between, strictly positive)
   and added to an accumulator together with the window itself; output is the
   accumulator divided by the summed windows, so the weights at every sample
   sum to one: an identity model gives back its input exactly, also at the
   first and last chunk.

Memory is bounded by a few segments whatever the input length: a sample is
emitted as soon as no later chunk can cover it (this is at most about
``(batch_size + 1) * segment`` samples behind the input), and input that no
chunk needs any more is dropped. :func:`separate_stream` is the generator
form; :class:`ChunkedSeparator` is the push form (``feed`` / ``finish``) for
callers that own the loop; :func:`separate_array` is the whole-array
convenience.

Variable source counts: a clustering model asked for ``n_src="auto"`` may give
a different number of tracks per chunk. Chunks with fewer tracks are padded with
silent ones before alignment; a chunk with more tracks opens new output tracks
(silent before that point). Emitted blocks then grow from ``[S, n]`` to
``[S', n]``; callers that write files must handle it (``sepcli.api`` does).

Shape legend: B batch (chunks per call), S sources, T samples.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sepcli.audio import resample
from sepcli.errors import SepError
from sepcli.inference import protocol, settings
from sepcli.metrics import EXHAUSTIVE_MAX_SRC, permutations, pit_permutation

log = logging.getLogger(__name__)

SeparateFn = Callable[[np.ndarray], Any]
"""``fn(mix) -> est``: mix float32 numpy ``[B, T]``; est numpy or torch ``[B, S, T]``."""

GAIN_COND = 1e-3
"""Eigenvalue (of the estimates' correlation matrix) below which
:func:`mixture_gains` leaves a direction at the model's own level: combinations
of estimates that cancel to within -30 dB."""


QUIET_OVERLAP = 1e-3
"""An overlap region whose mixture power is below this fraction (-30 dB) of the
stream's average chunk power carries no evidence for alignment: voice
signatures alone decide (:func:`voice_signatures`). In an informative overlap
they are added to its evidence (:data:`SIGNATURE_WEIGHT`)."""

SIGNATURE_WEIGHT = 4.0
"""Weight of the voice-signature similarity (``exp(-distance)``, in (0, 1]) against
the overlap's inner products (fractions of the overlap's energy, at most about
1) in the alignment score. Chosen on 10-minute two-talker recordings of the
valid speakers (never the test ones) with ``bench/stitch_alignment.py``: of
0.01, 0.3, 1, 2, 4 and 10, 4 is within one swapped 10-s piece of the best for
both shipped models at 30-s chunks and for Conv-TasNet at 4-s chunks (the
figures: docs/long-recordings.md, "Stitching")."""
SIGNATURE_FFT = 256
SIGNATURE_BANDS = 32
SIGNATURE_MEMORY = 4000
"""Frames (about 64 s at 8 kHz) after which a track's signature becomes a
running average that follows slow changes of the voice."""


@dataclass
class EngineStats:
    """Counters filled while a stream is processed (for tests and diagnostics)."""

    chunks: int = 0
    """Chunks separated."""
    calls: int = 0
    """Calls of the model function (a call takes up to ``batch_size`` chunks)."""
    reordered: int = 0
    """Chunks whose output slots were reordered to match the previous output."""
    silent: int = 0
    """Chunks of digital silence (output exact zeros)."""
    n_src: int = 0
    """Number of output tracks so far."""
    max_buffered: int = 0
    """Largest number of samples held in the output accumulator (memory bound check)."""
    by_signature: int = 0
    """Chunks ordered by voice signature because the overlap region was quiet."""
    overruled: int = 0
    """Chunks whose order the voice signatures changed against the overlap's evidence."""


# ----------------------------------------------------------------------------- building blocks


def chunk_plan(segment: int, overlap: float) -> tuple[int, int]:
    """``(hop, fade)`` in samples for a segment length and overlap fraction.

    SepError unless ``segment >= 1`` and ``0 <= overlap < 1``.
    """
    if isinstance(segment, bool) or int(segment) != segment or segment < 1:
        raise SepError(f"segment must be a positive number of samples, got {segment!r}")
    try:
        overlap = float(overlap)
    except (TypeError, ValueError):
        raise SepError(f"overlap must be a number in [0, 1), got {overlap!r}") from None
    if not 0.0 <= overlap < 1.0:
        raise SepError(f"overlap must be in [0, 1), got {overlap}")
    segment = int(segment)
    fade = int(round(segment * overlap))
    hop = max(1, segment - fade)
    return hop, fade


def chunk_starts(n_samples: int, segment: int, overlap: float) -> list[tuple[int, int]]:
    """The chunks the engine cuts an input of ``n_samples`` into, in order.

    Returns ``[(start, length), ...]``: regular chunks every ``hop`` samples,
    then an end-aligned final chunk if the regular ones stop short of the end.
    Mirrors the streaming logic exactly (tests and oracle models use it).
    """
    hop, _ = chunk_plan(segment, overlap)
    out: list[tuple[int, int]] = []
    start = 0
    while start + segment <= n_samples:
        out.append((start, segment))
        start += hop
    covered = out[-1][0] + segment if out else 0
    if covered < n_samples:
        first = max(0, n_samples - segment)
        out.append((first, n_samples - first))
    return out


def segment_window(length: int, fade: int) -> np.ndarray:
    """Overlap-add weights: raised-cosine fade-in and fade-out of ``fade``
    samples (at most half the length), flat 1 in between. Strictly positive, so
    dividing by the summed weights is always defined.

    Shape: ``[length]`` float64.
    """
    fade = max(0, min(int(fade), length // 2))
    w = np.ones(length, dtype=np.float64)
    if fade:
        # Half-sample offset: ramp values are in (0, 1) and ramp[i] + ramp[fade-1-i] == 1,
        # so two chunks that cross-fade over exactly `fade` samples already sum to one.
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade)
        w[:fade] = ramp
        w[length - fade :] = ramp[::-1]
    return w


def mixture_gains(est: np.ndarray, mix: np.ndarray, cond: float = GAIN_COND) -> np.ndarray:
    """Per-source gains ``g`` with ``sum_i g_i * est_i ≈ mix`` (least squares).

    Solved on unit-norm estimates (their correlation matrix) through its
    eigen-decomposition. Directions with eigenvalue below ``cond`` are
    combinations of estimates that nearly cancel (near-copies of each other):
    the data cannot pin them down, and fitting them would give huge opposite
    gains, so there the gains keep the model's own level (``g = 1``). Elsewhere
    the fit is the plain, unbiased least-squares one. A final common factor puts
    ``sum_i g_i est_i`` at the mixture's least-squares scale. Silent estimates
    get gain 0; an estimate that already is the mixture gets gain 1.

    Shape: est ``[S, T]``, mix ``[T]`` -> ``[S]`` float64.
    """
    e = np.asarray(est, dtype=np.float64)
    m = np.asarray(mix, dtype=np.float64)
    norms = np.sqrt(np.einsum("st,st->s", e, e))  # [S]
    g = np.zeros(e.shape[0])
    live = norms > 0
    if not live.any():
        return g
    u = e[live] / norms[live, None]  # [S', T] unit-norm estimates
    corr = u @ u.T  # [S', S']
    w, v = np.linalg.eigh(corr)
    keep = w > cond
    b = u @ m  # [S']
    h = v[:, keep] @ ((v[:, keep].T @ b) / w[keep])  # least squares in the determined directions
    prior = norms[live]  # h for g = 1
    h += v[:, ~keep] @ (v[:, ~keep].T @ prior)
    g[live] = h / norms[live]
    total_est = g @ e  # [T]
    energy = float(total_est @ total_est)
    if energy > 0.0:
        g *= float(total_est @ m) / energy
    return g


def voice_signatures(est: np.ndarray, mix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A coarse voice fingerprint of each track: its mean log-power spectrum
    (``SIGNATURE_BANDS`` bands, level removed) over the frames where it
    dominates (at least -10 dB of the mixture, and the mixture itself within
    30 dB of its loudest frame). Used to keep speakers apart across pauses
    that leave nothing to match in an overlap region: it tells apart voices
    with different spectral envelopes, not every pair of similar voices.

    Shape: est ``[S, T]``, mix ``[T]`` -> (signatures ``[S, SIGNATURE_BANDS]``,
    weights ``[S]`` = frames used; 0 means no evidence for that track).
    """
    n_fft, hop = SIGNATURE_FFT, SIGNATURE_FFT // 2
    x = np.concatenate([np.asarray(est, np.float64), np.asarray(mix, np.float64)[None]])  # [S+1, T]
    if x.shape[1] < n_fft:
        x = np.pad(x, ((0, 0), (0, n_fft - x.shape[1])))
    n_frames = (x.shape[1] - n_fft) // hop + 1
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]  # [K, n_fft]
    spec = np.abs(np.fft.rfft(x[:, idx] * np.hanning(n_fft), axis=-1)) ** 2  # [S+1, K, F]
    spec = spec[:, :, 1 : 1 + (spec.shape[-1] - 1) // SIGNATURE_BANDS * SIGNATURE_BANDS]  # drop DC
    bands = spec.reshape(spec.shape[0], n_frames, SIGNATURE_BANDS, -1).mean(axis=-1)  # [S+1, K, Bd]
    power = bands.sum(axis=-1)  # [S+1, K]
    track, mix_power = power[:-1], power[-1]
    active = (track > 0.1 * mix_power) & (mix_power > 1e-3 * mix_power.max()) & (mix_power > 0)  # [S, K]
    logb = np.log(bands[:-1] + 1e-12 * max(float(mix_power.max()), 1e-30))  # [S, K, Bd]
    logb -= logb.mean(axis=-1, keepdims=True)  # level-independent shape
    weight = active.sum(axis=1).astype(np.float64)  # [S]
    sig = (logb * active[..., None]).sum(axis=1) / np.maximum(weight, 1.0)[:, None]  # [S, Bd]
    return sig, weight


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU. SepError (one line) if the
    requested device is unknown or not available here."""
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise SepError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU found"
            raise SepError(f"device {device!r} requested but CUDA is not available ({why}); use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SepError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SepError(f"device {device!r} requested but MPS is not available; use --device cpu")
    elif dev.type != "cpu":
        raise SepError(f"unsupported device {device!r}; use auto, cpu or cuda")
    return dev


def available_cpus() -> int:
    """CPU cores this process may run on (respects affinity / container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_threads(jobs: int = 1) -> int:
    """Give torch an equal share of the cores when ``jobs`` files run at once.
    Returns the thread count set."""
    n = max(1, available_cpus() // max(1, int(jobs)))
    torch.set_num_threads(n)
    return n


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_blas_thread() -> Any:
    """Context: numpy's BLAS on one thread. The stitching products are small,
    and OpenBLAS's worker threads busy-wait after a threaded call, taking the
    cores from torch's threads during the next model call: that made the
    model ~25% slower inside the engine than alone (bench/separate_long.py)."""
    return _blas_controller().limit(limits=1, user_api="blas")


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), so
    that bfloat16 matrix products are faster than float32 ones; elsewhere
    oneDNN emulates them and they are slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


PRECISIONS = settings.PRECISIONS
"""``precision`` choices (:func:`set_precision`)."""


def set_precision(
    model: torch.nn.Module, precision: str = "auto", device: str | torch.device = "cpu", name: str = "this model"
) -> str:
    """Set the dtype of the matrix products of a model that has that choice
    (:meth:`SeparationModel.set_products`; Conv-TasNet with gLN).
    ``auto``: bfloat16 on CPUs that multiply it natively (AVX512-BF16 / AMX),
    float32 elsewhere and on CUDA. Other models run float32; asking them for
    ``"bfloat16"`` raises SepError. Returns the resolved name."""
    if precision not in PRECISIONS:
        raise SepError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    resolved = precision
    if precision == "auto":
        resolved = "bfloat16" if torch.device(device).type == "cpu" and native_bfloat16() else "float32"
    if not protocol.set_products(model, torch.bfloat16 if resolved == "bfloat16" else torch.float32):
        if precision == "bfloat16":
            raise SepError(f"{name} has no bfloat16 path; use --precision float32 or auto")
        return "float32"
    return resolved


def model_fn(
    model: torch.nn.Module, device: str | torch.device | None = None, n_src: int | str | None = None
) -> SeparateFn:
    """Wrap a model following the registry contract as an engine function.

    Calls ``model.separate(mix, n_src=n_src)`` (``model(mix)`` if the model has
    no ``separate``) without gradients on ``device`` (default: where the
    model's parameters are). Shape: ``[B, T]`` numpy -> ``[B, S, T]`` numpy float32.
    """
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    model.eval()
    separate = getattr(model, "separate", None)

    def fn(mix: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(mix, dtype=np.float32)).to(device)
            y = separate(x, n_src=n_src) if separate is not None else model(x)
            return y.detach().float().cpu().numpy()

    return fn


def model_passes(model: Any, passes: int | None = None, signs: bool | None = None,
                 quality: str = settings.DEFAULT_QUALITY) -> tuple[int, bool]:
    """``(passes, signs)`` with None filled in from the model's ``quality``
    preset (:meth:`SeparationModel.inference_presets`; default ``fast``: one
    pass), validated: what :class:`sepcli.api.Separator` and ``sep stream`` average."""
    preset = settings.preset_settings(protocol.describe(model).presets, quality)
    if passes is None:
        passes = preset.passes
    if signs is None:
        signs = preset.pass_signs
    settings.check_passes(passes)
    if not isinstance(signs, bool):
        raise SepError(f"pass_signs must be True, False or None, got {signs!r}")
    return passes, signs


def pass_transforms(passes: int, frame_hop: int = 1, signs: bool = True) -> list[tuple[int, int]]:
    """The input transforms of :func:`averaged_fn`: ``(delay, sign)`` per pass.

    Pass 0 is the input itself. Each further pass (each further pair with
    ``signs``) delays the input by a fraction of the model's frame hop (1/2,
    1/4, 3/4, 1/8, ...: the encoder's frames then fall between those of pass
    0). With ``signs``, passes also alternate the input's sign, in pairs of
    the same delay, so that with an even count the average is exactly odd,
    ``f(-x) = -f(x)``, as a separator should be. :class:`sepcli.api.Separator`
    asks for signs where the preset does (``high`` for convtasnet): they pay
    only for a model trained with random polarity (docs/experiments.md, "Passes"). Delays
    are whole samples; a hop too short to split repeats delay 0.
    """
    settings.check_passes(passes)
    if isinstance(frame_hop, bool) or not isinstance(frame_hop, int) or frame_hop < 1:
        raise SepError(f"frame_hop must be a positive integer, got {frame_hop!r}")

    def fraction(j: int) -> float:  # van der Corput: 0, 1/2, 1/4, 3/4, 1/8, ...
        f, base = 0.0, 0.5
        while j:
            f += base * (j & 1)
            j >>= 1
            base /= 2
        return f

    per_delay = 2 if signs else 1
    return [(int(round(frame_hop * fraction(k // per_delay))) % frame_hop,
             -1 if signs and k % 2 else 1) for k in range(passes)]


class CausalAlign:
    """Causal speaker-order alignment of one pass's output to a reference pass.

    At every sample ``t`` the pass's sources take the order that maximises
    their summed inner products with the reference's over samples ``0..t``
    (ties: the order they came in). The decision at ``t`` uses nothing after
    ``t``, so averaging passes of a causal model stays causal, and fed block
    by block it decides as in one piece: the running sums carry over and are
    added in the same order (:class:`sepcli.streaming.AveragedStreamer`
    relies on this). Exhaustive over the orders, so at most
    ``EXHAUSTIVE_MAX_SRC`` sources.

    Shape: ref ``[S, n]``, est ``[S, n]`` -> ``[S, n]`` (est's rows reordered per sample).
    """

    def __init__(self, n_src: int) -> None:
        if n_src > EXHAUSTIVE_MAX_SRC:
            raise SepError(f"causal alignment of passes handles at most {EXHAUSTIVE_MAX_SRC} sources, got {n_src}")
        self.perms = permutations(n_src)  # [P, S]; row 0 is the identity
        self.totals = np.zeros(self.perms.shape[0], dtype=np.float64)  # [P] running scores

    def __call__(self, ref: np.ndarray, est: np.ndarray) -> np.ndarray:
        n_src, n = est.shape
        if n == 0:
            return est
        prods = np.einsum("it,jt->ijt", ref.astype(np.float64), est.astype(np.float64))  # [S, S, n]
        steps = prods[np.arange(n_src)[None, :], self.perms].sum(axis=1)  # [P, n]
        # cumsum from the carried totals: the same additions as one long cumsum
        running = np.cumsum(np.concatenate((self.totals[:, None], steps), axis=1), axis=1)[:, 1:]  # [P, n]
        self.totals = running[:, -1].copy()
        order = self.perms[np.argmax(running, axis=0)]  # [n, S]
        return est[order.T, np.arange(n)[None, :]]  # [S, n]


def averaged_fn(fn: SeparateFn, transforms: Sequence[tuple[int, int]], causal: bool = False) -> SeparateFn:
    """Average ``fn`` over transformed copies of its input (test-time augmentation).

    Each pass runs ``fn`` on the input delayed by ``delay`` samples (zeros in
    front) and multiplied by ``sign``, undoes both on the output, and reorders
    its sources to match pass 0 (:func:`ensemble_fn`: a permutation-invariant
    model may order them differently per pass). The mean of the passes is
    the output. For a model that is exactly odd and shift-equivariant every
    pass is the same and the mean changes nothing; a trained model's errors
    differ between passes and partly cancel (``pass_transforms``; docs/experiments.md:
    quality gains per model).

    A delay puts zeros in front, so a causal ``fn`` stays causal. With
    ``causal`` the reordering is causal too (:class:`CausalAlign`, decided
    per sample from the samples so far): the average of a causal model's
    passes can then be streamed, equal to this offline result.

    Shape: mix ``[B, T]`` -> ``[B, S, T]`` float32.
    """
    transforms = [(int(d), int(g)) for d, g in transforms]
    if not transforms or any(d < 0 or g not in (-1, 1) for d, g in transforms):
        raise SepError(f"transforms must be (delay >= 0, sign +-1) pairs, got {transforms!r}")
    if len(transforms) == 1 and transforms[0] == (0, 1):
        return fn

    def transformed(delay: int, sign: int) -> SeparateFn:
        def run(mix: np.ndarray) -> np.ndarray:
            x = np.asarray(mix, dtype=np.float32)
            n = x.shape[-1]
            xt = np.pad(x, ((0, 0), (delay, 0))) if delay else x  # [B, T + delay]
            y = _to_numpy(fn(xt * sign if sign < 0 else xt)).astype(np.float32)  # [B, S, T + delay]
            return y[..., delay : delay + n] * sign  # [B, S, T]
        return run

    return ensemble_fn([transformed(d, g) for d, g in transforms], causal=causal, what="passes")


def ensemble_fn(fns: Sequence[SeparateFn], causal: bool = False, what: str = "views") -> SeparateFn:
    """The mean of several separators' outputs on the same input.

    Each output's sources are put in the order of the first's before they are
    added: the order with the largest summed inner products per item (as the
    chunk alignment decides), or with ``causal`` per sample from the samples
    so far (:class:`CausalAlign`). The outputs must have the same shape
    (a fixed number of speakers). ``what`` names them in errors.

    Shape: mix ``[B, T]`` -> ``[B, S, T]`` float32.
    """
    fns = list(fns)
    if not fns:
        raise SepError("ensemble_fn needs at least one function")
    if len(fns) == 1:
        return fns[0]

    def mean(mix: np.ndarray) -> np.ndarray:
        first = _to_numpy(fns[0](mix)).astype(np.float32)  # [B, S, T]
        total = first.copy()
        for f in fns[1:]:
            y = _to_numpy(f(mix)).astype(np.float32)  # [B, S, T]
            if y.shape != first.shape:
                raise SepError(f"{what} gave different shapes: {first.shape} and {y.shape}; "
                               "averaging needs a fixed number of speakers")
            if causal:
                for b in range(y.shape[0]):
                    total[b] += CausalAlign(y.shape[1])(first[b], y[b])
                continue
            score = np.einsum("bit,bjt->bij", first, y)  # [B, S_first, S_y]
            for b in range(y.shape[0]):
                total[b] += y[b, pit_permutation(score[b])]
        return total / len(fns)

    return mean


SPEED_RANGE = settings.SPEED_RANGE
check_speeds = settings.check_speeds


def model_speeds(model: Any, speeds: Sequence[float] | None = None,
                 quality: str = settings.DEFAULT_QUALITY) -> list[float]:
    """The speed views to average: ``speeds`` if given, else the model's
    ``quality`` preset's (default ``fast``: ``[1.0]``); validated (:func:`check_speeds`)."""
    if speeds is None:
        speeds = list(settings.preset_settings(protocol.describe(model).presets, quality).speeds)
    return check_speeds(speeds)


def speed_fn(fn: SeparateFn, sample_rate: int, speed: float) -> SeparateFn:
    """``fn`` hearing its input played ``speed`` times as fast (tempo and pitch
    together, as speed perturbation in training), its output played back at
    the input's speed.

    The input is resampled from ``sample_rate`` to ``round(sample_rate /
    speed)`` Hz (soxr) and handed to ``fn`` as if at ``sample_rate``; the
    output is resampled back and cut or zero-padded to the input's length.
    A speed below 1 spreads speech over more of the model's frames, which
    helped the shipped ``convtasnet`` (docs/experiments.md, "Speeds"): as an extra view for
    :func:`ensemble_fn`, a view of the input that differs more from the plain
    one than a delay does. Not causal (the resampler looks ahead): offline only.

    Shape: mix ``[B, T]`` -> ``[B, S, T]`` float32.
    """
    speed = check_speeds([speed])[0]
    rate = int(round(sample_rate / speed))
    if rate == sample_rate:
        return fn

    def run(mix: np.ndarray) -> np.ndarray:
        x = np.asarray(mix, dtype=np.float32)
        n_batch, n = x.shape
        y = _to_numpy(fn(resample(x, sample_rate, rate))).astype(np.float32)  # [B, S, T']
        n_src, m = y.shape[1], y.shape[2]
        back = resample(y.reshape(n_batch * n_src, m), rate, sample_rate)  # [B*S, ~T]
        out = np.zeros((n_batch * n_src, n), dtype=np.float32)
        k = min(n, back.shape[1])
        out[:, :k] = back[:, :k]
        return out.reshape(n_batch, n_src, n)  # [B, S, T]

    return run


def _as_fn(fn: SeparateFn | torch.nn.Module, n_src: int | str | None) -> SeparateFn:
    if isinstance(fn, torch.nn.Module):
        return model_fn(fn, n_src=n_src)
    if not callable(fn):
        raise SepError(f"expected a model or a callable, got {type(fn).__name__}")
    return fn


def _to_numpy(y: Any) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().float().cpu().numpy()
    return np.asarray(y)


# ----------------------------------------------------------------------------- the engine


class ChunkedSeparator:
    """Push-style chunked separation of one stream (see the module docstring).

    ``feed(block)`` returns the samples that became final (``[S, n]``, possibly
    ``n == 0``); ``finish()`` flushes the rest. Over a stream, the outputs
    concatenate to exactly as many samples as were fed. Before the first chunk
    has been separated the number of sources is unknown and empty outputs have
    shape ``[n_src or 0, 0]``.

    Args:
        fn: the model: a callable ``[B, T] -> [B, S, T]`` or an ``nn.Module``
            (wrapped with :func:`model_fn`).
        segment: chunk length in samples.
        overlap: fraction of a chunk shared with the next one, in ``[0, 1)``.
            0 disables alignment (there is no shared region to match).
        batch_size: chunks per model call.
        rescale: fit per-chunk mixture gains (:func:`mixture_gains`).
        align: reorder each chunk's sources to match the previous output.
        n_src: minimum number of output tracks (also the count given to a
            wrapped ``nn.Module``'s ``separate``).
        signature_weight: weight of the voice signatures against the overlap's
            evidence when aligning (:data:`SIGNATURE_WEIGHT`; 0 aligns on the
            overlap alone, as other toolkits do).
    """

    def __init__(
        self,
        fn: SeparateFn | torch.nn.Module,
        *,
        segment: int,
        overlap: float = 0.25,
        batch_size: int = 1,
        rescale: bool = True,
        align: bool = True,
        n_src: int | str | None = None,
        signature_weight: float = SIGNATURE_WEIGHT,
    ) -> None:
        self.hop, self.fade = chunk_plan(segment, overlap)
        if not (math.isfinite(signature_weight) and signature_weight >= 0):
            raise SepError(f"signature_weight must be a finite number >= 0, got {signature_weight!r}")
        self.signature_weight = float(signature_weight)
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise SepError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.segment = int(segment)
        self.batch_size = int(batch_size)
        self.rescale = rescale
        self.align = align and self.fade > 0
        self.fn = _as_fn(fn, n_src)
        self.stats = EngineStats()
        self._min_src = n_src if isinstance(n_src, int) and not isinstance(n_src, bool) else 0
        self._window = segment_window(self.segment, self.fade)
        self._in = np.zeros(0, dtype=np.float32)  # input from absolute sample _in_start
        self._in_start = 0
        self._read = 0  # samples fed so far
        self._next = 0  # start of the next regular chunk to schedule
        self._pending: list[int] = []  # scheduled regular chunk starts, not yet separated
        self._acc = np.zeros((self._min_src, 0))  # [S, L] windowed sum from _out_start
        self._wsum = np.zeros(0)  # [L] summed window weights from _out_start
        self._out_start = 0  # samples emitted so far
        self._covered = 0  # end of the region that has contributions
        self._finished = False
        self._power_sum = 0.0  # mixture power summed over non-silent chunks
        self._power_n = 0
        self._sig = np.zeros((self._min_src, SIGNATURE_BANDS))  # [S, Bd] voice signatures
        self._sig_w = np.zeros(self._min_src)  # [S] frames behind each signature

    @property
    def n_src(self) -> int:
        """Output tracks so far."""
        return self._acc.shape[0]

    # -- public

    def feed(self, block: np.ndarray) -> np.ndarray:
        """Add input samples; return the output samples that are now final.

        Shape: block ``[n]`` -> ``[S, m]`` float32.
        """
        if self._finished:
            raise SepError("this stream is finished; start a new ChunkedSeparator")
        x = np.asarray(block, dtype=np.float32)
        if x.ndim != 1:
            raise SepError(f"blocks must be mono [n], got shape {tuple(x.shape)}")
        if x.size:
            self._in = np.concatenate([self._in, x])
            self._read += x.size
        while self._next + self.segment <= self._read:
            self._pending.append(self._next)
            self._next += self.hop
        while len(self._pending) >= self.batch_size:
            batch, self._pending = self._pending[: self.batch_size], self._pending[self.batch_size :]
            self._run([(s, self.segment) for s in batch])
        # The end-aligned last chunk starts at T - segment >= read - segment, and
        # pending chunks may still add to everything after their start.
        final = min(self._covered, self._read - self.segment)
        if self._pending:
            final = min(final, self._pending[0])
        out = self._emit(final)
        self._trim_input()
        return out

    def finish(self) -> np.ndarray:
        """Separate what is left and return the remaining output. Shape: ``[S, m]``."""
        if self._finished:
            raise SepError("this stream is already finished")
        self._finished = True
        total = self._read
        if self._pending:
            self._run([(s, self.segment) for s in self._pending])
            self._pending = []
        if self._covered < total:
            first = max(0, total - self.segment)
            self._run([(first, total - first)])
        out = self._emit(total)
        self._in = np.zeros(0, dtype=np.float32)
        return out

    # -- internals

    def _trim_input(self) -> None:
        keep_from = self._pending[0] if self._pending else self._next
        keep_from = max(0, min(keep_from, self._read - self.segment))
        drop = keep_from - self._in_start
        if drop > 0:
            self._in = self._in[drop:]
            self._in_start = keep_from

    def _run(self, chunks: list[tuple[int, int]]) -> None:
        """Separate chunks of equal length in one model call and add them."""
        length = chunks[0][1]
        mix = np.stack(
            [self._in[s - self._in_start : s - self._in_start + length] for s, _ in chunks]
        )  # [B, length]
        est = _to_numpy(self.fn(mix))
        self.stats.calls += 1
        if est.ndim == 2 and est.shape[0] == len(chunks):
            est = est[:, None, :]  # a single-output model: [B, T] -> [B, 1, T]
        if est.ndim != 3 or est.shape[0] != len(chunks) or est.shape[2] != length:
            raise SepError(
                f"the model returned shape {tuple(est.shape)} for input {tuple(mix.shape)}; "
                f"expected [{len(chunks)}, S, {length}]"
            )
        with _one_blas_thread():
            for (start, _), m, e in zip(chunks, mix, est, strict=True):
                self._add_chunk(start, m, e)

    def _add_chunk(self, start: int, mix: np.ndarray, est: np.ndarray) -> None:
        est = np.nan_to_num(est.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)  # [S, n]
        n = mix.shape[0]
        self.stats.chunks += 1
        if not np.any(mix):
            est[:] = 0.0
            self.stats.silent += 1
        elif self.rescale:
            est *= mixture_gains(est, mix)[:, None]
        n_out = max(self.n_src, est.shape[0])
        if n_out > self.n_src:
            self._acc = np.concatenate(
                [self._acc, np.zeros((n_out - self.n_src, self._acc.shape[1]))]
            )  # [S', L]
        if est.shape[0] < n_out:
            est = np.concatenate([est, np.zeros((n_out - est.shape[0], n))])  # [S', n]
        if self._sig.shape[0] < n_out:
            grow_s = n_out - self._sig.shape[0]
            self._sig = np.concatenate([self._sig, np.zeros((grow_s, SIGNATURE_BANDS))])
            self._sig_w = np.concatenate([self._sig_w, np.zeros(grow_s)])
        self.stats.n_src = n_out
        a = start - self._out_start
        shared = self._covered - start  # samples this chunk shares with earlier output
        if self.align and n_out > 1:
            sig, sig_w = voice_signatures(est, mix)
            order = np.arange(n_out)
            if shared > 0:
                # Voice similarity in (0, 1], 0 where a track has no evidence. It
                # outweighs the overlap where the voices' shapes differ clearly: a
                # badly separated overlap can point the wrong way, a whole chunk's
                # spectral shape rarely does (see SIGNATURE_WEIGHT).
                dist = ((self._sig[:, None, :] - sig[None, :, :]) ** 2).mean(axis=-1)  # [S_ref, S_est]
                known = (self._sig_w[:, None] > 0) & (sig_w[None, :] > 0)
                voice = self.signature_weight * np.where(known, np.exp(-dist), 0.0)  # [S_ref, S_est]
                overlap_energy = float(np.sum(np.square(mix[:shared], dtype=np.float64)))
                average = self._power_sum / max(1, self._power_n)
                if overlap_energy > QUIET_OVERLAP * average * shared:
                    ref = self._acc[:, a : a + shared] / self._wsum[a : a + shared]  # [S, shared]
                    # Fraction of the overlap's energy each pairing explains (least squared error).
                    matched = (ref @ est[:, :shared].T) / overlap_energy  # [S_ref, S_est]
                    order = pit_permutation(matched + voice)
                    if known.any() and np.any(order != pit_permutation(matched)):
                        self.stats.overruled += 1
                else:
                    if known.any():
                        self.stats.by_signature += 1
                    order = pit_permutation(voice)
            if np.any(order != np.arange(n_out)):
                est = est[order]
                sig, sig_w = sig[order], sig_w[order]
                self.stats.reordered += 1
            total = self._sig_w + sig_w
            upd = sig_w > 0
            self._sig[upd] = (self._sig[upd] * self._sig_w[upd, None] + sig[upd] * sig_w[upd, None]) / total[upd, None]
            self._sig_w = np.minimum(total, SIGNATURE_MEMORY)
        if np.any(mix):
            self._power_sum += float(np.mean(np.square(mix, dtype=np.float64)))
            self._power_n += 1
        w = self._window if n == self.segment else segment_window(n, self.fade)
        grow = a + n - self._wsum.shape[0]
        if grow > 0:
            self._acc = np.concatenate([self._acc, np.zeros((n_out, grow))], axis=1)  # [S, L']
            self._wsum = np.concatenate([self._wsum, np.zeros(grow)])
        self._acc[:, a : a + n] += est * w
        self._wsum[a : a + n] += w
        self._covered = max(self._covered, start + n)
        self.stats.max_buffered = max(self.stats.max_buffered, self._wsum.shape[0])

    def _emit(self, end: int) -> np.ndarray:
        k = end - self._out_start
        if k <= 0:
            return np.zeros((self.n_src, 0), dtype=np.float32)
        out = (self._acc[:, :k] / self._wsum[:k]).astype(np.float32)  # [S, k]
        self._acc = self._acc[:, k:]
        self._wsum = self._wsum[k:]
        self._out_start = end
        return out


def separate_stream(
    blocks: Iterable[np.ndarray],
    fn: SeparateFn | torch.nn.Module,
    *,
    segment: int,
    overlap: float = 0.25,
    batch_size: int = 1,
    rescale: bool = True,
    align: bool = True,
    n_src: int | str | None = None,
    stats: EngineStats | None = None,
    signature_weight: float = SIGNATURE_WEIGHT,
) -> Iterator[np.ndarray]:
    """Separate a stream of mono blocks chunk by chunk, in bounded memory.

    Yields the output as soon as it is final; the yielded blocks concatenate to
    exactly as many samples as the input. Block sizes are unrelated to the
    input's. See :class:`ChunkedSeparator` for the arguments; ``stats`` (if
    given) is filled in as the stream is processed.

    Shape: blocks ``[n]`` -> yields ``[S, m]`` float32 (``S`` may grow with
    ``n_src="auto"``; never shrinks).
    """
    eng = ChunkedSeparator(
        fn, segment=segment, overlap=overlap, batch_size=batch_size,
        rescale=rescale, align=align, n_src=n_src, signature_weight=signature_weight,
    )
    if stats is not None:
        eng.stats = stats
    for block in blocks:
        out = eng.feed(block)
        if out.shape[1]:
            yield out
    out = eng.finish()
    if out.shape[1]:
        yield out


def separate_array(
    mix: np.ndarray,
    fn: SeparateFn | torch.nn.Module,
    *,
    segment: int,
    overlap: float = 0.25,
    batch_size: int = 1,
    rescale: bool = True,
    align: bool = True,
    n_src: int | str | None = None,
    stats: EngineStats | None = None,
    signature_weight: float = SIGNATURE_WEIGHT,
) -> np.ndarray:
    """Whole-array convenience over :func:`separate_stream`.

    Shape: mix ``[T]`` -> ``[S, T]`` float32.
    """
    x = np.asarray(mix, dtype=np.float32)
    if x.ndim != 1:
        raise SepError(f"mix must be mono [T], got shape {tuple(x.shape)}")
    parts = list(
        separate_stream(
            [x], fn, segment=segment, overlap=overlap, batch_size=batch_size,
            rescale=rescale, align=align, n_src=n_src, stats=stats,
            signature_weight=signature_weight,
        )
    )
    if not parts:
        n = n_src if isinstance(n_src, int) and not isinstance(n_src, bool) else 0
        return np.zeros((n, 0), dtype=np.float32)
    n_out = parts[-1].shape[0]
    parts = [np.pad(p, ((0, n_out - p.shape[0]), (0, 0))) for p in parts]  # tracks opened late: silent before
    return np.concatenate(parts, axis=1)  # [S, T]


__all__ = [
    "PRECISIONS",
    "ChunkedSeparator",
    "EngineStats",
    "SeparateFn",
    "CausalAlign",
    "averaged_fn",
    "available_cpus",
    "chunk_plan",
    "chunk_starts",
    "mixture_gains",
    "model_fn",
    "resolve_device",
    "segment_window",
    "separate_array",
    "separate_stream",
    "native_bfloat16",
    "model_passes",
    "pass_transforms",
    "set_precision",
    "set_threads",
    "voice_signatures",
]

