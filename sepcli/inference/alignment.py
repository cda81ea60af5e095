"""Speaker alignment: keeping speaker 1 in track 1 between chunks
(:class:`ChunkAligner`, step 3 of :mod:`sepcli.inference.chunking`) and
between averaged passes of a causal model (:class:`CausalAlign`).

Shape legend: S sources, T samples, K frames, Bd signature bands.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from sepcli.errors import SepError
from sepcli.metrics import EXHAUSTIVE_MAX_SRC, permutations, pit_permutation

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


class ChunkAligner:
    """The speaker order of each new chunk against the output so far (step 3
    of :mod:`sepcli.inference.chunking`): the overlap's inner products with
    the output, plus the voice signatures (:func:`voice_signatures`) kept as a
    running average per output track.

    Shape: est ``[S, n]``, mix ``[n]``; ``ref()`` (the output so far over the
    ``shared`` samples at the chunk's start) ``[S, shared]``.
    """

    def __init__(self, n_src: int = 0, signature_weight: float = SIGNATURE_WEIGHT) -> None:
        if not (math.isfinite(signature_weight) and signature_weight >= 0):
            raise SepError(f"signature_weight must be a finite number >= 0, got {signature_weight!r}")
        self.signature_weight = float(signature_weight)
        self.sig = np.zeros((n_src, SIGNATURE_BANDS))  # [S, Bd] voice signatures
        self.sig_w = np.zeros(n_src)  # [S] frames behind each signature
        self.power_sum = 0.0  # mixture power summed over non-silent chunks
        self.power_n = 0

    def grow(self, n_src: int) -> None:
        """Open tracks up to ``n_src`` (no signature yet)."""
        if self.sig.shape[0] < n_src:
            grow_s = n_src - self.sig.shape[0]
            self.sig = np.concatenate([self.sig, np.zeros((grow_s, SIGNATURE_BANDS))])
            self.sig_w = np.concatenate([self.sig_w, np.zeros(grow_s)])

    def observe(self, mix: np.ndarray) -> None:
        """Count a chunk's mixture power (what a quiet overlap is measured against)."""
        if np.any(mix):
            self.power_sum += float(np.mean(np.square(mix, dtype=np.float64)))
            self.power_n += 1

    def align(self, est: np.ndarray, mix: np.ndarray, shared: int, ref: Callable[[], np.ndarray],
              stats: Any) -> np.ndarray:
        """``est`` with its rows in the order that continues the output's tracks;
        the signatures learn from it. ``stats`` (an ``EngineStats``) counts
        reordered, overruled and signature-decided chunks."""
        n_out = est.shape[0]
        sig, sig_w = voice_signatures(est, mix)
        order = self._order(est, mix, shared, ref, sig, sig_w, stats) if shared > 0 else np.arange(n_out)
        if np.any(order != np.arange(n_out)):
            est = est[order]
            sig, sig_w = sig[order], sig_w[order]
            stats.reordered += 1
        total = self.sig_w + sig_w
        upd = sig_w > 0
        self.sig[upd] = (self.sig[upd] * self.sig_w[upd, None] + sig[upd] * sig_w[upd, None]) / total[upd, None]
        self.sig_w = np.minimum(total, SIGNATURE_MEMORY)
        return est

    def _order(self, est: np.ndarray, mix: np.ndarray, shared: int, ref: Callable[[], np.ndarray],
               sig: np.ndarray, sig_w: np.ndarray, stats: Any) -> np.ndarray:
        # Voice similarity in (0, 1], 0 where a track has no evidence. It
        # outweighs the overlap where the voices' shapes differ clearly: a
        # badly separated overlap can point the wrong way, a whole chunk's
        # spectral shape rarely does (see SIGNATURE_WEIGHT).
        dist = ((self.sig[:, None, :] - sig[None, :, :]) ** 2).mean(axis=-1)  # [S_ref, S_est]
        known = (self.sig_w[:, None] > 0) & (sig_w[None, :] > 0)
        voice = self.signature_weight * np.where(known, np.exp(-dist), 0.0)  # [S_ref, S_est]
        overlap_energy = float(np.sum(np.square(mix[:shared], dtype=np.float64)))
        average = self.power_sum / max(1, self.power_n)
        if overlap_energy > QUIET_OVERLAP * average * shared:
            # Fraction of the overlap's energy each pairing explains (least squared error).
            matched = (ref() @ est[:, :shared].T) / overlap_energy  # [S_ref, S_est]
            order = pit_permutation(matched + voice)
            if known.any() and np.any(order != pit_permutation(matched)):
                stats.overruled += 1
            return order
        if known.any():
            stats.by_signature += 1
        return pit_permutation(voice)


__all__ = ["QUIET_OVERLAP", "SIGNATURE_BANDS", "SIGNATURE_FFT", "SIGNATURE_MEMORY", "SIGNATURE_WEIGHT",
           "CausalAlign", "ChunkAligner", "voice_signatures"]
