"""Chunked separation of inputs of any length, model-agnostic: the public
names of :mod:`sepcli.inference.chunking` (chunk plan, overlap-add,
:func:`separate_stream`, :func:`separate_array`), :mod:`sepcli.inference.alignment`
(speaker alignment between chunks and passes), :mod:`sepcli.inference.passes`
(averaged passes and speed views) and :mod:`sepcli.inference.device` (device
and precision), kept here so that ``from sepcli.engine import ...`` works.
"""
from __future__ import annotations

from sepcli.inference.alignment import (
    QUIET_OVERLAP,
    SIGNATURE_BANDS,
    SIGNATURE_FFT,
    SIGNATURE_MEMORY,
    SIGNATURE_WEIGHT,
    CausalAlign,
    ChunkAligner,
    voice_signatures,
)
from sepcli.inference.chunking import (
    GAIN_COND,
    ChunkedSeparator,
    EngineStats,
    chunk_plan,
    chunk_starts,
    mixture_gains,
    segment_window,
    separate_array,
    separate_stream,
)
from sepcli.inference.device import (
    PRECISIONS,
    available_cpus,
    native_bfloat16,
    resolve_device,
    set_precision,
    set_threads,
)
from sepcli.inference.passes import (
    SPEED_RANGE,
    SeparateFn,
    averaged_fn,
    check_speeds,
    ensemble_fn,
    model_fn,
    model_passes,
    model_speeds,
    pass_transforms,
    speed_fn,
)
from sepcli.metrics import EXHAUSTIVE_MAX_SRC

__all__ = [
    "EXHAUSTIVE_MAX_SRC", "GAIN_COND", "PRECISIONS", "QUIET_OVERLAP", "SIGNATURE_BANDS", "SIGNATURE_FFT",
    "SIGNATURE_MEMORY", "SIGNATURE_WEIGHT", "SPEED_RANGE", "CausalAlign", "ChunkAligner", "ChunkedSeparator",
    "EngineStats", "SeparateFn", "available_cpus", "averaged_fn", "check_speeds", "chunk_plan", "chunk_starts",
    "ensemble_fn", "mixture_gains", "model_fn", "model_passes", "model_speeds", "native_bfloat16",
    "pass_transforms", "resolve_device", "segment_window", "separate_array", "separate_stream", "set_precision",
    "set_threads", "speed_fn", "voice_signatures",
]
