"""Stateful streaming inference (for a causal Conv-TasNet, the one family that streams).

A :class:`Streamer` takes a live signal in chunks of any size and returns, after
each chunk, every output sample that no later input can change. The
concatenation of all outputs plus :meth:`Streamer.flush` equals the offline
causal forward ``model(mix)`` on the whole signal (same length T; equal up to
float rounding, tested at 1e-5 of the peak). Each chunk costs compute in
proportion to the chunk: the network is never re-run over its receptive field.

    >>> from sepcli.streaming import Streamer
    >>> streamer = Streamer(model, chunk_size=64)   # a causal ConvTasNet
    >>> for chunk in microphone:                    # [n] float32, any n >= 1
    ...     play(streamer.process(chunk))           # [S, m], m about n
    >>> play(streamer.flush())                      # the last [S, rest]

This module is model-agnostic: it reaches the model only through the
:class:`~sepcli.inference.protocol.SeparationModel` protocol. The model's
``streaming_layout()`` (a :class:`~sepcli.inference.protocol.StreamingLayout`)
gives the framing (frame length, hop, padding) and builds the
:class:`~sepcli.inference.protocol.StreamingNetwork` that holds the stream's
state and runs its steps (Conv-TasNet: :mod:`sepcli.models.conv_tasnet_stream`,
the running cLN sums, the depthwise caches and the decoder's tail). Kept here:
the input not yet framed (samples arrive in any count and are consumed one hop
at a time), the lanes, and which output is final.

Framing matches the offline forward (``frame_padding``): ``L - L//2`` zeros in
front of the signal, and at :meth:`Streamer.flush` the right padding for the
total length T, with the output cropped to exactly T samples. Output sample t
is final once input sample ``t + L - L//2 - 1`` has arrived and the hop that
holds it is complete, so the algorithmic latency is at most one chunk plus the
window L.

Weights are read once, when the Streamer is built: rebuild it after changing
the model's weights. On the CPU in float32 each step runs by default in
compiled C (``backend="native"``, :mod:`sepcli.native`: a small-row kernel over
packed weight panels, faster for the few rows of real-time chunks); the torch
step (``backend="torch"``) is the fallback without a C compiler and computes
the same thing (docs/streaming.md has the timings).

:class:`EqualizedStreamer` wraps either streamer in the running channel normalisation of
:mod:`sepcli.inference.equalize_causal` (the shipped causal model's default, from its
presets through :func:`make_streamer`). :mod:`sepcli.inference.stream_files` (``sep stream``)
runs files and raw PCM pipes through them.

Shape legend: S sources, T samples, K frames, G lanes, and the paper's L.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from sepcli import engine
from sepcli.errors import SepError
from sepcli.inference import protocol
from sepcli.inference.equalize import check_limit
from sepcli.inference.equalize_causal import CausalEqualizer, causal_equalized_fn
from sepcli.inference.passes import to_numpy
from sepcli.inference.protocol import SeparationModel, StreamingLayout, StreamingNetwork
from sepcli.inference.settings import DEFAULT_QUALITY, preset_settings

MAX_STEP_FRAMES = 2048
"""Frames processed together at most; bounds memory when a long array is
passed in one call (2048 frames of the paper network hold ~4 MB per tensor)."""


def streaming_layout(model: torch.nn.Module) -> StreamingLayout:
    """``model.streaming_layout()``; SepError saying why for a model that cannot stream."""
    layout = model.streaming_layout() if isinstance(model, SeparationModel) else None
    if layout is not None:
        return layout
    if isinstance(model, SeparationModel) and not model.causal:
        family = getattr(model, "family", type(model).__name__)
        raise SepError(
            f"streaming needs a causal model; this {family} model is non-causal: "
            "it looks at future samples, so its output is not final until the input ends "
            "(use sep separate, or a causal model such as convtasnet-causal)"
        )
    if isinstance(model, SeparationModel):
        # causal but without an incremental step (the recurrent families): offline only
        family = getattr(model, "family", type(model).__name__)
        raise SepError(
            f"streaming needs a causal model with a streaming step; this {family} model is causal but "
            "runs offline only (use sep separate, or a causal Conv-TasNet such as convtasnet-causal)"
        )
    raise SepError(
        f"streaming needs a causal Conv-TasNet; got {type(model).__name__} "
        "(use sep separate for other models)"
    )


BACKENDS = ("auto", "native", "torch")


def _pick_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """``auto``: the compiled kernel (:mod:`sepcli.native`) for float32 on the CPU
    when it can be built, else torch; ``native`` insists on it."""
    if backend not in BACKENDS:
        raise SepError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return "torch"
    from sepcli import native

    fits = device.type == "cpu" and dtype == torch.float32
    if fits and native.available():
        return "native"
    if backend == "native":
        why = native.why_not() if fits else f"it runs float32 on the CPU only (model: {dtype} on {device.type})"
        raise SepError(f"the native streaming kernel is unavailable: {why}")
    return "torch"


class Streamer:
    """Chunk-by-chunk separation with a causal Conv-TasNet, equal to its offline forward.

    Args:
        model: a model whose ``streaming_layout()`` is not None (a causal
            :class:`~sepcli.models.conv_tasnet.ConvTasNet` with cLN); anything
            else raises SepError. Runs on the model's device and dtype.
        chunk_size: the number of samples you expect to pass to each
            :meth:`process` call. It only sizes the internal buffers so that
            the steady state allocates nothing new; any size >= 1 still works.
        backend: how each step runs: ``"native"`` (the compiled kernel of
            :mod:`sepcli.native`; float32 on the CPU; SepError if it cannot
            be built), ``"torch"``, or ``"auto"`` (native when it can be
            had, else torch). Same output either way; :attr:`backend` says
            which one runs.

    :meth:`process` takes ``[n]`` or ``[1, n]`` (torch tensor or numpy array)
    and returns ``[S, m]`` samples that are final (numpy in, numpy out; a
    tensor comes back on the input's device). :meth:`flush` ends the stream
    and returns the rest, so that exactly T samples come out for T in;
    :meth:`reset` starts a new stream. Samples are at the model's rate
    (:attr:`sample_rate`). Not thread-safe: one stream per Streamer.

    Internally a Streamer can run several *lanes* in lockstep: copies of the
    stream delayed by ``delay`` samples (zeros in front) and multiplied by
    ``sign``, whose frames share every matrix product (``lanes``, a list of
    ``(delay, sign)``; :class:`AveragedStreamer` uses them through
    :meth:`_process_lanes` and :meth:`_flush_lanes`). The public
    :meth:`process` and :meth:`flush` are for one lane.

    Everything here is generic: input buffering and framing, lanes, what is
    final, latency. The family's network (:attr:`network`, from
    ``model.streaming_layout().network(...)``; Conv-TasNet:
    :mod:`sepcli.models.conv_tasnet_stream`) holds the state and runs the steps.
    """

    def __init__(
        self, model: torch.nn.Module, chunk_size: int | None = None,
        lanes: Sequence[tuple[int, int]] = ((0, 1),), backend: str = "auto",
    ) -> None:
        layout = streaming_layout(model)
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1
        ):
            raise SepError(f"chunk_size must be a positive number of samples, got {chunk_size!r}")
        self.model = model
        self.layout = layout
        self.n_src: int = int(model.n_src)
        self.sample_rate: int = int(model.sample_rate)
        self.L: int = layout.frame_length
        self.hop: int = layout.hop
        self.left: int = layout.frame_padding(1)[0]  # zeros in front, as the offline forward pads
        self.chunk_size = int(chunk_size) if chunk_size is not None else None
        self.lanes = [(int(d), int(g)) for d, g in lanes]
        if not self.lanes or any(d < 0 or g not in (-1, 1) for d, g in self.lanes):
            raise SepError(f"lanes must be (delay >= 0, sign +-1) pairs, got {lanes!r}")
        self.device, self.dtype = layout.device, layout.dtype
        if "native" not in getattr(layout, "backends", BACKENDS):  # a family without a compiled step
            if backend == "native":
                raise SepError(f"the native streaming kernel runs Conv-TasNet only, not {type(model).__name__}")
            backend = "torch"
        self.backend = _pick_backend(backend, self.device, self.dtype)
        self.network: StreamingNetwork = layout.network(len(self.lanes), self.chunk_size, self.backend,
                                                        MAX_STEP_FRAMES)
        self.reset()

    @torch.inference_mode()
    def reset(self) -> None:
        """Forget the stream: the next :meth:`process` starts a new one."""
        # input not yet framed, per lane: the left padding, then the lane's delay
        self._in = [torch.zeros(self.left + d, device=self.device, dtype=self.dtype) for d, _ in self.lanes]
        self._to_drop = [self.left + d for d, _ in self.lanes]  # output of the padding and the delays
        self._lane_out = [0] * len(self.lanes)  # output samples given per lane
        self.samples_in = 0
        self.samples_out = 0  # of lane 0
        self._finished = False
        self._numpy_io: bool | None = None
        self._io_device: torch.device | None = None
        self.network.reset()

    # ------------------------------------------------------------------ properties

    @property
    def receptive_field(self) -> int:
        """Input samples one output sample depends on (the model's ``receptive_field``)."""
        return self.model.receptive_field

    def algorithmic_latency(self, chunk: int | None = None) -> int:
        """Window plus chunk, in samples: ``L + chunk`` (the encoder window L and
        the wait for a chunk to fill); ``chunk`` defaults to ``chunk_size`` or one hop."""
        return self.L + (chunk if chunk is not None else (self.chunk_size or self.hop))

    # ------------------------------------------------------------------ streaming

    def _as_tensor(self, chunk: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(chunk, np.ndarray):
            numpy_io, io_device = True, torch.device("cpu")
            if not np.issubdtype(chunk.dtype, np.floating):
                raise SepError(f"chunk must hold float samples, got {chunk.dtype}")
            x = torch.from_numpy(np.ascontiguousarray(chunk))
        elif isinstance(chunk, torch.Tensor):
            numpy_io, io_device, x = False, chunk.device, chunk.detach()
            if not x.is_floating_point():
                raise SepError(f"chunk must hold float samples, got {x.dtype}")
        else:
            raise SepError(f"chunk must be a torch.Tensor or numpy array, got {type(chunk).__name__}")
        if x.dim() == 2 and x.shape[0] == 1:
            x = x[0]
        if x.dim() != 1:
            raise SepError(f"chunk must have shape [n] or [1, n] (mono), got {list(x.shape)}")
        if self._numpy_io is None:
            self._numpy_io, self._io_device = numpy_io, io_device
        elif self._numpy_io != numpy_io:
            raise SepError("do not mix numpy arrays and torch tensors within one stream (call reset())")
        return x.to(device=self.device, dtype=self.dtype)

    def _output(self, y: torch.Tensor) -> torch.Tensor | np.ndarray:
        if self._numpy_io:
            return y.cpu().numpy()
        if self._io_device is not None and y.device != self._io_device:
            return y.to(self._io_device)
        return y

    def process(self, chunk: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Feed the next ``n >= 0`` samples; return the output samples that are now final.

        Shape: [n] or [1, n] -> [S, m]. Over a stream the outputs add up to the
        input minus a hold-back of less than one hop plus ``L - L//2`` samples,
        which :meth:`flush` returns. SepError on NaN or infinite samples (they
        would poison the running norms for the rest of the stream).
        """
        return self._output(self._process_lanes(chunk)[0])

    def flush(self) -> torch.Tensor | np.ndarray:
        """End the stream: pad the input as the offline model does and return the
        remaining output, so that exactly ``samples_in`` samples came out in total.
        Shape: [S, rest]. Call :meth:`reset` to start another stream."""
        return self._output(self._flush_lanes()[0])

    def _process_lanes(self, chunk: torch.Tensor | np.ndarray) -> list[torch.Tensor]:
        """:meth:`process` for every lane: each lane's new final output, [S, m_g],
        its delay already dropped (so sample i is the input's sample i) but
        not its sign (the caller undoes it)."""
        if self._finished:
            raise SepError("the stream was flushed; call reset() to start a new one")
        x = self._as_tensor(chunk)
        with torch.inference_mode():
            # one float64 sum: NaN or inf anywhere makes it non-finite, and float32
            # samples cannot overflow it
            if x.shape[0] and not math.isfinite(x.sum(dtype=torch.float64).item()):
                raise SepError("chunk contains NaN or infinite samples")
            self.samples_in += x.shape[0]
            if x.shape[0]:
                lanes = [x if sign > 0 else -x for _, sign in self.lanes]
                self._in = [torch.cat((buf, xg)) if buf.shape[0] else xg
                            for buf, xg in zip(self._in, lanes, strict=True)]
            return self._run()

    def _flush_lanes(self) -> list[torch.Tensor]:
        """:meth:`flush` for every lane: each lane's rest, so that every lane gave
        exactly ``samples_in`` samples."""
        if self._finished:
            raise SepError("the stream was already flushed; call reset() to start a new one")
        self._finished = True
        G = len(self.lanes)
        with torch.inference_mode():
            total = self.samples_in
            if total == 0:
                return [torch.zeros(self.n_src, 0, device=self.device, dtype=self.dtype) for _ in range(G)]
            before = list(self._lane_out)
            # Each lane padded as the offline model pads its delayed input, then all to
            # the same number of frames: the extra frames lie wholly in the zero
            # padding, so their encoder output is 0 and they add nothing to the output.
            ends = []
            for g, (d, _) in enumerate(self.lanes):
                _, right = self.layout.frame_padding(total + d)
                ends.append(self._in[g].shape[0] + right)
            n_frames = max((n - self.L) // self.hop + 1 for n in ends)
            size = (n_frames - 1) * self.hop + self.L
            self._in = [torch.cat((buf, buf.new_zeros(size - buf.shape[0]))) for buf in self._in]
            ys = self._run()
            rest = self.network.drain()  # [G, S, n] the last frames' overlap
            outs = []
            for g in range(G):
                y = torch.cat((ys[g], self._emit(g, rest[g])), 1)
                outs.append(y[:, : total - before[g]])  # exactly T in total
            self.samples_out = total
        return outs

    def _run(self) -> list[torch.Tensor]:
        """Compute every frame that the input buffers of all lanes complete (in
        lockstep: a lane with one more frame keeps it for the next call).
        Returns [S, m_g] per lane."""
        n_frames = min((buf.shape[0] - self.L) // self.hop + 1 if buf.shape[0] >= self.L else 0 for buf in self._in)
        outs: list[list[torch.Tensor]] = [[] for _ in self.lanes]
        done = 0
        while done < n_frames:
            step = min(MAX_STEP_FRAMES, n_frames - done)
            lo, hi = done * self.hop, (done + step - 1) * self.hop + self.L
            y = self.network.step([buf[lo:hi] for buf in self._in], step)  # [G, S, step*hop]
            for g in range(len(self.lanes)):
                outs[g].append(self._emit(g, y[g]))
            done += step
        if n_frames:
            self._in = [buf[n_frames * self.hop :] for buf in self._in]
        if all(len(o) == 1 for o in outs):
            return [o[0] for o in outs]
        empty = torch.zeros(self.n_src, 0, device=self.device, dtype=self.dtype)
        return [empty if not o else o[0] if len(o) == 1 else torch.cat(o, 1) for o in outs]

    def _emit(self, g: int, y: torch.Tensor) -> torch.Tensor:
        """Drop what belongs to lane g's left padding and delay. Shape: [S, n] -> [S, m]."""
        if self._to_drop[g]:
            drop = min(self._to_drop[g], y.shape[1])
            self._to_drop[g] -= drop
            y = y[:, drop:]
        self._lane_out[g] += y.shape[1]
        if g == 0:
            self.samples_out += y.shape[1]
        return y


class AveragedStreamer:
    """Streaming of a causal Conv-TasNet's averaged passes, equal to their offline average.

    The offline counterpart is what ``sep separate`` runs for a causal model
    with ``passes > 1``: :func:`sepcli.engine.averaged_fn` with
    ``causal=True`` over :func:`sepcli.engine.pass_transforms` (see
    :func:`offline`). Pass k is a lane of one :class:`Streamer`: the input
    delayed by the pass's delay (zeros in front, a fraction of a hop) and,
    with ``signs``, sign-flipped. The lanes run in lockstep, so every matrix
    product reads its weights once for all of them (with 8-frame steps two
    passes cost well under twice one). Each lane's output is shifted back,
    put in pass 0's speaker order by :class:`sepcli.engine.CausalAlign`, and
    averaged.

    The output waits for the most delayed pass: the algorithmic latency grows
    by that delay (less than one hop). Same interface as :class:`Streamer`.
    """

    def __init__(self, model: torch.nn.Module, chunk_size: int | None = None, passes: int = 2,
                 signs: bool = False, backend: str = "auto") -> None:
        streaming_layout(model)  # SepError before anything else for a model that cannot stream
        if not isinstance(signs, bool):
            raise SepError(f"signs must be True or False, got {signs!r}")
        self.transforms = engine.pass_transforms(passes, model.frame_hop, signs=signs)
        self.passes = len(self.transforms)
        self.signs = signs
        self.streamer = Streamer(model, chunk_size=chunk_size, lanes=self.transforms, backend=backend)
        self.backend = self.streamer.backend
        self.model = model
        self.n_src: int = self.streamer.n_src
        self.sample_rate: int = self.streamer.sample_rate
        self.L: int = self.streamer.L
        self.hop: int = self.streamer.hop
        self.chunk_size = self.streamer.chunk_size
        self.max_delay: int = max(d for d, _ in self.transforms)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next :meth:`process` starts a new one."""
        self.streamer.reset()
        self._held = [np.zeros((self.n_src, 0), dtype=np.float32) for _ in self.transforms]  # [S, m] per pass
        self._aligns = [engine.CausalAlign(self.n_src) for _ in self.transforms[1:]]
        self._io_device: torch.device | None = None  # None: numpy in, numpy out
        self.samples_out = 0

    @property
    def samples_in(self) -> int:
        return self.streamer.samples_in

    @property
    def receptive_field(self) -> int:
        """Input samples one output sample depends on (the most delayed pass's)."""
        return self.model.receptive_field + self.max_delay

    def algorithmic_latency(self, chunk: int | None = None) -> int:
        """``L + chunk + max delay`` in samples: the most delayed pass's output comes last."""
        return self.streamer.algorithmic_latency(chunk) + self.max_delay

    def process(self, chunk: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Feed the next ``n >= 0`` samples; return the output samples that are now final.
        Shape: [n] or [1, n] -> [S, m] (as :meth:`Streamer.process`)."""
        outs = self.streamer._process_lanes(chunk)
        self._io_device = self.streamer._io_device if not self.streamer._numpy_io else None
        return self._output(self._gather(outs))

    def flush(self) -> torch.Tensor | np.ndarray:
        """End the stream and return the rest: ``samples_in`` samples came out in total. Shape: [S, rest]."""
        return self._output(self._gather(self.streamer._flush_lanes()))

    def _gather(self, outs: list[torch.Tensor]) -> np.ndarray:
        """Add each pass's new output to its queue; average what all passes have. Returns [S, m]."""
        for k, (y, (_, sign)) in enumerate(zip(outs, self.transforms, strict=True)):
            y = y.float().cpu().numpy()
            y = -y if sign < 0 else y
            self._held[k] = np.concatenate((self._held[k], y), axis=1) if self._held[k].shape[1] else y
        m = min(h.shape[1] for h in self._held)
        first = self._held[0][:, :m]
        total = first.astype(np.float32, copy=True)  # [S, m]
        for align, held in zip(self._aligns, self._held[1:], strict=True):
            total += align(first, held[:, :m])
        self._held = [h[:, m:] for h in self._held]
        self.samples_out += m
        return total / self.passes

    def _output(self, y: np.ndarray) -> torch.Tensor | np.ndarray:
        return y if self._io_device is None else torch.from_numpy(y).to(self._io_device)


class EqualizedStreamer:
    """A streamer (:class:`Streamer` or :class:`AveragedStreamer`) hearing its input through
    a :class:`~sepcli.inference.equalize_causal.CausalEqualizer`, its tracks filtered back:
    the streaming form of ``equalize`` for a causal model, equal to
    :func:`~sepcli.inference.equalize_causal.causal_equalized_fn` over the whole signal
    (:func:`offline` with ``equalize``). The equalizer looks at no later sample, so the
    latency is the inner streamer's. Same interface as :class:`Streamer`.
    """

    def __init__(self, inner: Streamer | AveragedStreamer, limit_db: float) -> None:
        self.inner = inner
        self.equalizer = CausalEqualizer(inner.sample_rate, limit_db)
        self.equalize: float = self.equalizer.limit_db
        self.model = inner.model
        self.n_src: int = inner.n_src
        self.sample_rate: int = inner.sample_rate
        self.L: int = inner.L
        self.hop: int = inner.hop
        self.chunk_size = inner.chunk_size
        self.backend: str = inner.backend
        self.passes: int = getattr(inner, "passes", 1)
        self._io_device: torch.device | None = None  # None: numpy in, numpy out

    samples_in = property(lambda self: self.inner.samples_in)
    samples_out = property(lambda self: self.inner.samples_out)
    receptive_field = property(lambda self: self.inner.receptive_field)

    def reset(self) -> None:
        """Forget the stream: the next :meth:`process` starts a new one."""
        self.inner.reset()
        self.equalizer.reset()

    def algorithmic_latency(self, chunk: int | None = None) -> int:
        """The inner streamer's: the equalizer adds none."""
        return self.inner.algorithmic_latency(chunk)

    def process(self, chunk: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Feed the next ``n >= 0`` samples; return the output samples that are now final.
        Shape: [n] or [1, n] -> [S, m] (as :meth:`Streamer.process`)."""
        if isinstance(chunk, torch.Tensor):
            self._io_device = chunk.device
            chunk = chunk.detach().cpu().numpy()
        x = np.asarray(chunk)
        if x.ndim == 2 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
            raise SepError(f"chunk must hold float samples of shape [n] or [1, n], got {x.dtype} {list(x.shape)}")
        if x.shape[0] and not math.isfinite(float(x.sum(dtype=np.float64))):
            raise SepError("chunk contains NaN or infinite samples")
        return self._output(self.inner.process(self.equalizer.filter(x)))

    def flush(self) -> torch.Tensor | np.ndarray:
        """End the stream and return the rest. Shape: [S, rest]."""
        return self._output(self.inner.flush())

    def _output(self, y: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        out = self.equalizer.unfilter(to_numpy(y))
        return out if self._io_device is None else torch.from_numpy(out).to(self._io_device)


def model_equalize(model: torch.nn.Module, equalize: float | None = None, quality: str = DEFAULT_QUALITY) -> float:
    """``equalize`` (dB), or the model's ``quality`` preset's when None, validated: what
    :func:`make_streamer`, ``sep stream`` and ``sep bench`` run."""
    if equalize is None:
        equalize = preset_settings(protocol.describe(model).presets, quality).equalize
    return check_limit(equalize)


def make_streamer(
    model: torch.nn.Module, chunk_size: int | None = None, passes: int | None = None, signs: bool | None = None,
    backend: str = "auto", quality: str = DEFAULT_QUALITY, equalize: float | None = None,
) -> Streamer | AveragedStreamer | EqualizedStreamer:
    """The streamer of ``passes`` averaged passes (None: the model's ``quality``
    preset's, as ``sep separate``; ``fast``: one): a plain :class:`Streamer` for one.
    ``equalize``: the causal equalizer's limit in dB (0: off; None: the preset's), an
    :class:`EqualizedStreamer` around the rest. ``backend``: see :class:`Streamer`."""
    passes, signs = engine.model_passes(model, passes, signs, quality=quality)
    equalize = model_equalize(model, equalize, quality)
    if passes == 1:
        streamer: Streamer | AveragedStreamer = Streamer(model, chunk_size=chunk_size, backend=backend)
    else:
        streamer = AveragedStreamer(model, chunk_size=chunk_size, passes=passes, signs=signs, backend=backend)
    return EqualizedStreamer(streamer, equalize) if equalize > 0 else streamer


def offline(
    model: torch.nn.Module, mix: torch.Tensor | np.ndarray, passes: int = 1, signs: bool = False,
    equalize: float = 0.0,
) -> np.ndarray:
    """The offline output a stream equals: the causal forward over the whole
    signal, or the causal average of ``passes`` passes, with the causal equalizer
    around it for ``equalize`` > 0 dB. Shape: [T] -> [S, T] float32."""
    x = mix.detach().cpu().numpy() if isinstance(mix, torch.Tensor) else np.asarray(mix)
    fn = engine.averaged_fn(engine.model_fn(model), engine.pass_transforms(passes, model.frame_hop, signs=signs),
                            causal=True)
    if check_limit(equalize) > 0:
        fn = causal_equalized_fn(fn, int(model.sample_rate), equalize)
    return fn(x.reshape(1, -1).astype(np.float32))[0]


def chunk_sizes(n_samples: int, chunk: int | Iterable[int]) -> Iterator[int]:
    """Split ``n_samples`` into chunks of ``chunk`` samples (the last one
    shorter), or cycle through the sizes of an iterable until all are used."""
    if isinstance(chunk, int):
        sizes: Iterable[int] = iter(lambda: chunk, None)
    else:
        sizes = list(chunk)
        if not sizes:
            raise SepError("chunk sizes are empty")
        sizes = itertools.cycle(sizes)
    done = 0
    for size in sizes:
        if size < 1:
            raise SepError(f"chunk sizes must be >= 1, got {size}")
        if done >= n_samples:
            return
        size = min(size, n_samples - done)
        yield size
        done += size


def stream_array(
    model: torch.nn.Module, mix: torch.Tensor | np.ndarray, chunk: int | Iterable[int], passes: int = 1,
    signs: bool = False, equalize: float = 0.0,
) -> torch.Tensor | np.ndarray:
    """Run a whole signal through a :class:`Streamer` (an :class:`AveragedStreamer`
    for ``passes > 1``, an :class:`EqualizedStreamer` for ``equalize`` > 0) chunk by chunk
    (for tests and benchmarks; equals :func:`offline`, for one pass without equalize
    ``model(mix[None])[0]``). Shape: [T] -> [S, T]."""
    n = int(mix.shape[-1])
    first = int(chunk) if isinstance(chunk, int) else None
    streamer = make_streamer(model, chunk_size=first, passes=passes, signs=signs, equalize=equalize)
    outs = []
    pos = 0
    for size in chunk_sizes(n, chunk):
        outs.append(streamer.process(mix[..., pos : pos + size]))
        pos += size
    outs.append(streamer.flush())
    if isinstance(outs[0], np.ndarray):
        return np.concatenate(outs, axis=1)
    return torch.cat(outs, 1)


__all__ = ["BACKENDS", "MAX_STEP_FRAMES", "AveragedStreamer", "EqualizedStreamer", "Streamer", "chunk_sizes",
           "make_streamer", "model_equalize", "offline", "stream_array", "streaming_layout"]
