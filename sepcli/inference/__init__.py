"""Inference: how a trained model is run (settings and presets, the model
protocol). :class:`sepcli.api.Separator` and :mod:`sepcli.streaming` build on it."""
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
