"""Separate recordings: the public library interface.

    >>> from sepcli.api import Separator
    >>> sep = Separator("convtasnet")              # shipped name or a .safetensors path
    >>> est = sep.separate(mix, sample_rate=44100)  # [T] -> [S, T], same rate and length
    >>> sep.separate_file("meeting.flac", "out/")   # out/meeting/s1.wav, s2.wav, ...

:class:`Separator` and :func:`separate` live in :mod:`sepcli.inference.separator`
(levels, outputs and the two passes over a file: its docstring),
:func:`separate_files` and :func:`find_audio_files` (what ``sep separate``
runs) in :mod:`sepcli.inference.batch`, output names and results in
:mod:`sepcli.inference.outputs`; this module gathers their public names.

Shape legend: S sources, T samples, C channels.
"""
from __future__ import annotations

from typing import Any

from sepcli.audio import AUDIO_EXTENSIONS
from sepcli.inference.batch import BatchEvents, BatchResult, InputFile, find_audio_files, separate_files
from sepcli.inference.outputs import (
    DEFAULT_FILENAME,
    PEAK_TARGET,
    TEMPLATE_FIELDS,
    SeparationResult,
    check_template,
    render_filename,
)
from sepcli.inference.separator import (
    PRECISIONS,
    BlocksFn,
    ProgressFn,
    Separator,
    _fit_length,  # noqa: F401  (used by tests and scripts)
    separate,
)
from sepcli.inference.settings import DEFAULT_OVERLAP, DEFAULT_QUALITY, DEFAULT_SEGMENT, QUALITIES, InferenceSettings


def __getattr__(name: str) -> Any:
    # ConsoleReport (progress bars, per-file lines) is CLI code now; the old
    # import path keeps working for scripts.
    if name == "ConsoleReport":
        from sepcli.cli.console import ConsoleReport

        return ConsoleReport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AUDIO_EXTENSIONS", "BatchEvents", "BatchResult", "BlocksFn", "DEFAULT_FILENAME", "DEFAULT_OVERLAP",
    "DEFAULT_QUALITY", "DEFAULT_SEGMENT", "InferenceSettings", "InputFile", "PEAK_TARGET", "PRECISIONS",
    "ProgressFn", "QUALITIES", "SeparationResult", "Separator", "TEMPLATE_FIELDS", "check_template",
    "find_audio_files", "render_filename", "separate", "separate_files",
]
