"""Causal channel normalisation: :mod:`sepcli.inference.equalize` for streams.

The look-ahead equalize measures a whole chunk's long-term spectrum before it filters the
chunk, which a live stream cannot do. :class:`CausalEqualizer` measures a *running* spectrum
instead and filters with no look-ahead, so a causal model (``convtasnet-causal``,
``sep stream``) keeps its latency:

- every hop (a quarter of the 32-ms window: 8 ms at 8 kHz) the window that has just ended
  updates a forgetting average (time constant :data:`TAU`) of the power spectra of the active
  frames: those within :data:`~sepcli.inference.equalize.ACTIVE_DB` of a running peak that
  forgets at the same rate;
- every :data:`UPDATE_HOPS` hops (a block, 32 ms at 8 kHz) gains come from that average by
  the look-ahead rule (half way in dB toward training speech, median 0 dB, at most
  ``limit_db`` per band), shrunk toward 0 dB while little speech has been heard (half
  strength after :data:`WARMUP` seconds of active frames);
- they are applied as a minimum-phase FIR filter of ``n_fft / 2`` taps (16 ms at 8 kHz),
  blended linearly from one block's filter to the next, so no output sample waits for a
  later input sample;
- the tracks go through the inverse minimum-phase filters on the same schedule (sample ``t`` of
  a track through the filter that sample ``t`` of the input went through), which brings them
  back to the recording's channel and level.

Everything is computed in hops counted from the start of the stream, so the output does not
depend on how the input is cut into chunks: :meth:`CausalEqualizer.filter` on a whole signal
equals the concatenated calls on its pieces (tested), and the offline form
(:func:`causal_equalized_fn`) is what a stream gives.

Shape legend: B batch (chunks per call), S sources, T samples, F frequency bins, K hops
(frames; also blocks of :data:`UPDATE_HOPS` hops where said).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import lfilter

from sepcli.errors import SepError
from sepcli.inference.equalize import ACTIVE_DB, _n_fft, check_limit, gains_db_for
from sepcli.inference.passes import to_numpy

TAU = 5.0
"""Seconds over which the running spectrum and the running peak forget (1/e)."""
WARMUP = 0.5
"""Seconds of active frames after which the gains reach half their strength: ``n / (n + WARMUP)``."""
UPDATE_HOPS = 4
"""The filters are redesigned every this many hops (32 ms at 8 kHz) and blended linearly from one
design to the next over that block; the running spectrum still takes every hop's frame."""
DESIGN_OVERSAMPLING = 4
"""The minimum-phase design runs on a frequency grid this many times finer than the window's,
which keeps the cepstrum's time aliasing far below the filters' precision."""


@functools.lru_cache(maxsize=4)
def _ramp(block: int) -> np.ndarray:
    """The blend from one block's filter to the next: ``(i + 1) / block``. Shape: [block]."""
    ramp = (np.arange(block) + 1.0) / block
    ramp.flags.writeable = False
    return ramp


@functools.lru_cache(maxsize=4)
def _design_tables(n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """For :meth:`CausalEqualizer.min_phase`: linear interpolation from the window's bins to a
    grid :data:`DESIGN_OVERSAMPLING` times finer, and the fold that turns a real cepstrum into
    a minimum-phase one. Shape: -> [F, F_fine], [N_design]."""
    n_bins = n_fft // 2 + 1
    fine = np.linspace(0, n_bins - 1, DESIGN_OVERSAMPLING * (n_bins - 1) + 1)  # [F_fine], in bins
    interp = np.maximum(0.0, 1.0 - np.abs(np.arange(n_bins)[:, None] - fine[None, :]))  # hat functions
    n_design = 2 * (len(fine) - 1)
    fold = np.zeros(n_design)
    fold[0] = fold[n_design // 2] = 1.0
    fold[1:n_design // 2] = 2.0
    interp.flags.writeable = fold.flags.writeable = False
    return interp, fold


class CausalEqualizer:
    """Running channel normalisation of one stream, and its inverse for the stream's tracks.

    Args:
        sample_rate: the stream's rate.
        limit_db: the most dB per band (0 < limit <= 40; 0 would be no filter at all).
        tau: seconds over which the running spectrum forgets (:data:`TAU`).

    :meth:`filter` takes the input's next samples (any count) and returns as many, equalized.
    :meth:`unfilter` takes the tracks' next samples, ``[S, m]``, which may lag the input but
    never lead it, and returns them through the inverse filters. :meth:`reset` starts a new stream.
    """

    def __init__(self, sample_rate: int, limit_db: float, tau: float = TAU) -> None:
        self.limit_db = check_limit(limit_db)
        if self.limit_db == 0:
            raise SepError("a causal equalizer needs a limit above 0 dB")
        if not (isinstance(tau, (int, float)) and tau > 0 and math.isfinite(tau)):
            raise SepError(f"tau must be a positive number of seconds, got {tau!r}")
        self.sample_rate = int(sample_rate)
        self.n_fft = _n_fft(self.sample_rate)
        self.hop = self.n_fft // 4
        self.block = UPDATE_HOPS * self.hop
        self.taps = self.n_fft // 2
        self.tau = float(tau)
        self._decay = math.exp(-self.hop / (self.tau * self.sample_rate))  # per hop, on power
        self._warmup = WARMUP * self.sample_rate / self.hop  # in frames
        self._window = np.sqrt(np.hanning(self.n_fft + 1)[:-1])  # periodic sqrt-Hann, as equalize's STFT
        self._interp, self._fold = _design_tables(self.n_fft)
        self._n_design = len(self._fold)
        self.reset()

    def reset(self) -> None:
        """Forget the stream."""
        self.samples_in = 0
        self.samples_out = 0
        # the last input samples (zeros before the start): a block's frames reach this far back
        self._hist = np.zeros(self.n_fft + self.block)
        self._hops_done = 0  # frames analysed
        self._power = np.zeros(self.n_fft // 2 + 1)  # forgetting sum of active frames' power, [F]
        self._weight = 0.0  # forgetting count of active frames
        self._heard = 0.0  # active frames, not forgotten (the warm-up)
        self._log_peak = -math.inf
        identity = np.zeros(self.taps)
        identity[0] = 1.0
        # Filters by block; entry 0 is block `_first - 1`.
        self._first = 0
        self._fwd = identity[None, :].copy()  # [blocks kept, taps]
        self._inv = identity[None, :].copy()
        self._out_hist: np.ndarray | None = None  # [S, taps - 1] of the tracks before samples_out

    # ------------------------------------------------------------------ design

    def running_gains_db(self, frames: np.ndarray, design: np.ndarray | None = None) -> np.ndarray:
        """Update the running spectrum with each hop's frame in turn; the gains in dB after
        each (only on the rows where ``design`` is true, zeros elsewhere; None: all rows).

        Shape: frames [K, n_fft] (the windows that end where hops start), design [K] bool
        -> [K, F] float64.
        """
        power = np.abs(np.fft.rfft(frames * self._window, axis=1)) ** 2  # [K, F]
        energy = power.sum(1)  # [K]
        with np.errstate(divide="ignore"):
            log_e = np.log(energy)  # [K], -inf for digital silence
        log_a = math.log(self._decay)
        steps = np.arange(1, len(energy) + 1)
        # running peak, forgetting at the spectrum's rate: max over j <= k of e_j a^(k-j), in logs
        log_peak = np.maximum.accumulate(np.concatenate(([self._log_peak], log_e - steps * log_a)))[1:] + steps * log_a
        self._log_peak = float(log_peak[-1])
        active = (energy > 0) & (log_e >= log_peak - ACTIVE_DB * math.log(10.0) / 10.0)  # [K]
        act = active.astype(np.float64)
        a = [1.0, -self._decay]
        sums, _ = lfilter([1.0], a, power * act[:, None], axis=0, zi=self._decay * self._power[None, :])  # [K, F]
        weights, _ = lfilter([1.0], a, act, zi=[self._decay * self._weight])  # [K]
        heard = self._heard + np.cumsum(act)  # [K]
        self._power, self._weight, self._heard = sums[-1].copy(), float(weights[-1]), float(heard[-1])
        gain_db = np.zeros_like(power)  # [K, F]
        rows = weights > 0
        if design is not None:
            rows &= design
        if rows.any():
            warm = heard[rows] / (heard[rows] + self._warmup)  # [K']
            gain_db[rows] = gains_db_for(sums[rows] / weights[rows, None], self.sample_rate,
                                         self.limit_db) * warm[:, None]
        return gain_db

    def min_phase(self, gain_db: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Minimum-phase FIR filters (``taps`` long) of the gains and of their inverse
        (cepstral method on a grid :data:`DESIGN_OVERSAMPLING` times finer).

        Shape: gain_db [K, F] -> forward, inverse [K, taps] float64.
        """
        log_mag = gain_db * (math.log(10.0) / 20.0) @ self._interp  # [K, F_fine], natural log of |H|
        cepstrum = np.fft.irfft(log_mag, n=self._n_design, axis=1) * self._fold  # [K, N_design]
        spectrum = np.fft.rfft(cepstrum, axis=1)  # log of the minimum-phase response
        fwd = np.fft.irfft(np.exp(spectrum), n=self._n_design, axis=1)[:, :self.taps]  # [K, taps]
        inv = np.fft.irfft(np.exp(-spectrum), n=self._n_design, axis=1)[:, :self.taps]
        return fwd, inv

    # ------------------------------------------------------------------ filtering

    @staticmethod
    def _apply(buf: np.ndarray, start: int, filters: np.ndarray, first: int, block: int, taps: int) -> np.ndarray:
        """Time-varying FIR: sample ``t`` (``start <= t``) gets ``(1 - r) y[b - 1] + r y[b]``, where
        ``y[b]`` is the input through block ``b``'s filter, ``b = t // block`` and
        ``r = (t % block + 1) / block``. ``buf`` holds the ``taps - 1`` samples before ``start``,
        then the samples to filter; ``filters[i]`` is block ``first + i - 1``'s.

        Shape: buf [..., taps - 1 + m] -> [..., m].
        """
        m = buf.shape[-1] - (taps - 1)
        rows = buf.reshape(-1, buf.shape[-1])  # [N, taps - 1 + m]
        out = np.empty((rows.shape[0], m))
        ramp = _ramp(block)  # [block]
        lo = 0
        while lo < m:  # one segment per block touched: a few per real-time call
            t = start + lo
            pos = t % block
            hi = min(m, lo + block - pos)
            b = t // block - first + 1  # this block's row in `filters`
            prev_h, now_h, r = filters[b - 1], filters[b], ramp[pos:pos + hi - lo]
            for i in range(rows.shape[0]):
                seg = rows[i, lo:hi + taps - 1]
                prev = np.convolve(seg, prev_h, "valid")  # [n], through the last block's filter
                out[i, lo:hi] = prev + r * (np.convolve(seg, now_h, "valid") - prev)
            lo = hi
        return out.reshape(*buf.shape[:-1], m)

    def filter(self, x: np.ndarray) -> np.ndarray:
        """The input's next samples, equalized. Shape: [n] -> [n] float32."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        p0, p1 = self.samples_in, self.samples_in + x.shape[0]
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        buf = np.concatenate((self._hist, x))  # samples p0 - len(hist) .. p1 - 1
        # Blocks that start in [p0, p1): each needs the frames (one per hop) that end up to its
        # start, analysed together once it has come (so a real-time call rarely does any).
        b0, b1 = -(-p0 // self.block), -(-p1 // self.block)
        if b1 > b0:
            hops = np.arange(self._hops_done, (b1 - 1) * UPDATE_HOPS + 1)
            ends = hops * self.hop - (p0 - len(self._hist))  # frame ends, as indices into buf
            frames = sliding_window_view(buf, self.n_fft)[ends - self.n_fft]  # [K, n_fft]
            design = hops % UPDATE_HOPS == 0
            fwd, inv = self.min_phase(self.running_gains_db(frames, design)[design])  # [blocks, taps] each
            self._fwd = np.concatenate((self._fwd, fwd))
            self._inv = np.concatenate((self._inv, inv))
            self._hops_done = int(hops[-1]) + 1
        y = self._apply(buf[len(self._hist) - (self.taps - 1):], p0, self._fwd, self._first, self.block, self.taps)
        self.samples_in = p1
        self._hist = buf[-len(self._hist):].copy()
        self._trim()
        return y.astype(np.float32)

    def unfilter(self, est: np.ndarray) -> np.ndarray:
        """The tracks' next samples through the inverse filters. Shape: [S, m] -> [S, m] float32."""
        est = np.asarray(est, dtype=np.float64)
        if est.ndim != 2:
            raise SepError(f"tracks must have shape [S, m], got {list(est.shape)}")
        q0, q1 = self.samples_out, self.samples_out + est.shape[1]
        if q1 > self.samples_in:
            raise SepError(f"tracks ran ahead of the input ({q1} samples > {self.samples_in})")
        if self._out_hist is None or self._out_hist.shape[0] != est.shape[0]:
            if self._out_hist is not None or q0:
                raise SepError("the number of tracks changed within a stream")
            self._out_hist = np.zeros((est.shape[0], self.taps - 1))
        buf = np.concatenate((self._out_hist, est), axis=1)
        y = self._apply(buf, q0, self._inv, self._first, self.block, self.taps)
        self.samples_out = q1
        self._out_hist = buf[:, buf.shape[1] - (self.taps - 1):]
        self._trim()
        return y.astype(np.float32)

    def _trim(self) -> None:
        """Drop the filters of blocks before the one both sides still need."""
        keep_from = min(self.samples_in, self.samples_out) // self.block - 1  # a block's filter and the one before
        drop = keep_from - (self._first - 1)
        if drop > 0:
            self._fwd, self._inv = self._fwd[drop:], self._inv[drop:]
            self._first += drop


def causal_equalized_fn(fn: Any, sample_rate: int, limit_db: float, tau: float = TAU) -> Any:
    """``fn`` (a separator of chunks) hearing each chunk through a :class:`CausalEqualizer`
    started at the chunk's first sample, its tracks filtered back: what a stream of the
    chunk gives. Shape: mix [B, T] -> [B, S, T] float32."""
    limit_db = check_limit(limit_db)

    def equalized(mix: np.ndarray) -> np.ndarray:
        eqs = [CausalEqualizer(sample_rate, limit_db, tau) for _ in range(mix.shape[0])]
        heard = np.stack([eq.filter(row) for eq, row in zip(eqs, mix, strict=True)])  # [B, T]
        est = to_numpy(fn(heard))  # [B, S, T]
        return np.stack([eq.unfilter(tracks) for eq, tracks in zip(eqs, est, strict=True)])

    return equalized


__all__ = ["DESIGN_OVERSAMPLING", "TAU", "UPDATE_HOPS", "WARMUP", "CausalEqualizer", "causal_equalized_fn"]
