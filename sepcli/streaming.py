"""Stateful streaming inference: the public names, kept here for old imports
(``sepcli.streaming.Streamer``, ``sep stream``).

The generic streamer is :mod:`sepcli.inference.streaming` (:class:`Streamer`,
:class:`AveragedStreamer`, :func:`make_streamer`); files and pipes are
:mod:`sepcli.inference.stream_files`; a family's incremental step lives with
the family (Conv-TasNet: :mod:`sepcli.models.conv_tasnet_stream`, reached only
through ``streaming_layout()``).
"""
from sepcli.inference.stream_files import (
    DEFAULT_CHUNK_MS,
    PCM_FORMATS,
    ChunkTimes,
    StreamResult,
    stream_file,
    stream_pcm,
)
from sepcli.inference.streaming import (
    BACKENDS,
    MAX_STEP_FRAMES,
    AveragedStreamer,
    EqualizedStreamer,
    Streamer,
    chunk_sizes,
    make_streamer,
    model_equalize,
    offline,
    stream_array,
    streaming_layout,
)

__all__ = ["BACKENDS", "DEFAULT_CHUNK_MS", "MAX_STEP_FRAMES", "PCM_FORMATS", "AveragedStreamer", "ChunkTimes",
           "EqualizedStreamer", "StreamResult", "Streamer", "chunk_sizes", "make_streamer", "model_equalize",
           "offline", "stream_array", "stream_file", "stream_pcm", "streaming_layout"]
