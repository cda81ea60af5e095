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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sepcli.errors import SepError
from sepcli.inference.alignment import SIGNATURE_WEIGHT, ChunkAligner
from sepcli.inference.passes import SeparateFn, as_fn, to_numpy

GAIN_COND = 1e-3
"""Eigenvalue (of the estimates' correlation matrix) below which
:func:`mixture_gains` leaves a direction at the model's own level: combinations
of estimates that cancel to within -30 dB."""


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
        min_src = n_src if isinstance(n_src, int) and not isinstance(n_src, bool) else 0
        self._aligner = ChunkAligner(min_src, signature_weight)
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise SepError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.segment = int(segment)
        self.batch_size = int(batch_size)
        self.rescale = rescale
        self.align = align and self.fade > 0
        self.fn = as_fn(fn, n_src)
        self.stats = EngineStats()
        self._min_src = min_src
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

    signature_weight = property(lambda self: self._aligner.signature_weight)

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
        est = to_numpy(self.fn(mix))
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
        self._aligner.grow(n_out)
        self.stats.n_src = n_out
        a = start - self._out_start
        shared = self._covered - start  # samples this chunk shares with earlier output
        if self.align and n_out > 1:
            est = self._aligner.align(
                est, mix, shared, lambda: self._acc[:, a : a + shared] / self._wsum[a : a + shared], self.stats
            )  # ref: [S, shared]
        self._aligner.observe(mix)
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
    stats: EngineStats | None = None,
    **options: Any,
) -> Iterator[np.ndarray]:
    """Separate a stream of mono blocks chunk by chunk, in bounded memory.

    Yields the output as soon as it is final; the yielded blocks concatenate to
    exactly as many samples as the input. Block sizes are unrelated to the
    input's. ``options``: the keyword arguments of :class:`ChunkedSeparator`
    (``segment`` required); ``stats`` (if given) is filled in as the stream is
    processed.

    Shape: blocks ``[n]`` -> yields ``[S, m]`` float32 (``S`` may grow with
    ``n_src="auto"``; never shrinks).
    """
    eng = ChunkedSeparator(fn, **options)
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
    n_src: int | str | None = None,
    **options: Any,
) -> np.ndarray:
    """Whole-array convenience over :func:`separate_stream` (``options``: its
    keyword arguments, ``segment`` required).

    Shape: mix ``[T]`` -> ``[S, T]`` float32.
    """
    x = np.asarray(mix, dtype=np.float32)
    if x.ndim != 1:
        raise SepError(f"mix must be mono [T], got shape {tuple(x.shape)}")
    parts = list(separate_stream([x], fn, n_src=n_src, **options))
    if not parts:
        n = n_src if isinstance(n_src, int) and not isinstance(n_src, bool) else 0
        return np.zeros((n, 0), dtype=np.float32)
    n_out = parts[-1].shape[0]
    parts = [np.pad(p, ((0, n_out - p.shape[0]), (0, 0))) for p in parts]  # tracks opened late: silent before
    return np.concatenate(parts, axis=1)  # [S, T]


__all__ = ["GAIN_COND", "ChunkedSeparator", "EngineStats", "chunk_plan", "chunk_starts", "mixture_gains",
           "segment_window", "separate_array", "separate_stream"]
