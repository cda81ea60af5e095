"""Inference: how a trained model is run.

``settings`` (presets, :class:`InferenceSettings`), ``protocol`` (what a
model offers inference), ``device`` (device, threads, precision), ``passes``
(model functions, averaged passes, speed views), ``alignment`` (speaker order
between chunks and passes), ``chunking`` (chunked overlap-add of any length),
``outputs`` (output names, results, temp tracks), ``separator``
(:class:`Separator`, :func:`separate`) and ``batch`` (:func:`separate_files`).
:mod:`sepcli.api` and :mod:`sepcli.engine` re-export the public names;
:mod:`sepcli.streaming` builds on them."""
from sepcli.inference.settings import (
    DEFAULT_OVERLAP,
    DEFAULT_QUALITY,
    DEFAULT_SEGMENT,
    QUALITIES,
    InferenceSettings,
    preset_settings,
)

__all__ = ["DEFAULT_OVERLAP", "DEFAULT_QUALITY", "DEFAULT_SEGMENT", "QUALITIES", "InferenceSettings",
           "preset_settings"]
