"""Inference settings and the quality presets that choose them.

A checkpoint holds architecture and weights only; *how* a model is run
(chunk length, averaged passes, sign flips, speed views, precision, channel
normalisation) is an
:class:`InferenceSettings`, owned by :class:`sepcli.api.Separator` and chosen
by a quality preset:

* ``fast`` (the default): one forward pass at speed 1, no sign flips.
* ``high``: the averaged settings the shipped models were tuned with
  (Conv-TasNet: 4 passes with sign flips at speeds 1, 0.92, 0.88; causal
  Conv-TasNet: 2 passes, aligned causally; dpcl: one pass), equalized as
  ``fast`` is.

Each family says what its presets are (``inference_presets()``, see
:class:`sepcli.inference.protocol.SeparationModel`); explicit options
(``--passes``, ``--speeds``, ``--segment``) override the preset's values.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sepcli.errors import SepError
from sepcli.inference.equalize import check_limit

QUALITIES = ("fast", "high")
"""Preset names (``sep separate --quality``)."""
DEFAULT_QUALITY = "fast"
DEFAULT_SEGMENT = 4.0
"""Chunk length in seconds for models whose presets name none."""
DEFAULT_OVERLAP = 0.25
"""Fraction of each chunk shared with the next (cross-fade and alignment region)."""
PRECISIONS = ("auto", "float32", "bfloat16")
"""``precision`` choices (see :func:`sepcli.engine.set_precision`)."""
SPEED_RANGE = (0.5, 2.0)


def check_passes(passes: Any) -> int:
    """``passes`` as a positive int (SepError otherwise): the one place passes are validated."""
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise SepError(f"passes must be a positive integer, got {passes!r}")
    return passes


def check_speeds(speeds: Any) -> list[float]:
    """``speeds`` as a non-empty list of floats in :data:`SPEED_RANGE` (SepError otherwise)."""
    lo, hi = SPEED_RANGE
    if isinstance(speeds, (str, bytes)) or not isinstance(speeds, Sequence) or not speeds:
        raise SepError(f"speeds must be a non-empty list of speed factors, got {speeds!r}")
    out = []
    for v in speeds:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise SepError(f"each speed must be a number from {lo} to {hi}, got {v!r}")
        out.append(float(v))
    return out


def check_segment(segment: Any) -> float:
    """``segment`` (seconds) as a positive finite float (SepError otherwise)."""
    try:
        segment = float(segment)
    except (TypeError, ValueError):
        raise SepError(f"segment must be a number of seconds, got {segment!r}") from None
    if not (segment > 0 and math.isfinite(segment)):
        raise SepError(f"segment must be a positive number of seconds, got {segment}")
    return segment


@dataclass(frozen=True)
class InferenceSettings:
    """How a model is run; validated on construction (SepError).

    segment: chunk seconds. overlap: fraction of a chunk shared with the next.
    passes: forwards averaged per chunk (the input delayed by fractions of the
    model's frame hop). pass_signs: alternate the input's sign between passes
    (the average is then odd, ``f(-x) = -f(x)``). speeds: speed views averaged
    (non-causal models only). precision: of the matrix products (:data:`PRECISIONS`).
    equalize: channel normalisation, the most dB per band that each chunk's long-term
    spectrum is pulled toward training speech's and its tracks back (0: off;
    :mod:`sepcli.inference.equalize`).
    """

    segment: float = DEFAULT_SEGMENT
    overlap: float = DEFAULT_OVERLAP
    passes: int = 1
    pass_signs: bool = False
    speeds: tuple[float, ...] = (1.0,)
    precision: str = "auto"
    equalize: float = 0.0

    def __post_init__(self) -> None:
        # frozen: normalised values go in through object.__setattr__
        object.__setattr__(self, "segment", check_segment(self.segment))
        check_passes(self.passes)
        if not isinstance(self.pass_signs, bool):
            raise SepError(f"pass_signs must be True or False, got {self.pass_signs!r}")
        object.__setattr__(self, "speeds", tuple(check_speeds(list(self.speeds) if isinstance(
            self.speeds, tuple) else self.speeds)))
        try:
            overlap = float(self.overlap)
        except (TypeError, ValueError):
            raise SepError(f"overlap must be a number in [0, 1), got {self.overlap!r}") from None
        if not 0 <= overlap < 1:
            raise SepError(f"overlap must be in [0, 1), got {self.overlap!r}")
        object.__setattr__(self, "overlap", overlap)
        if self.precision not in PRECISIONS:
            raise SepError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        object.__setattr__(self, "equalize", check_limit(self.equalize))

    def override(self, **values: Any) -> InferenceSettings:
        """A copy with the given fields replaced; ``None`` values keep this one's."""
        given = {k: v for k, v in values.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["speeds"] = list(self.speeds)
        return d


def check_quality(quality: Any) -> str:
    if quality not in QUALITIES:
        raise SepError(f"quality must be one of {', '.join(QUALITIES)}, got {quality!r}")
    return quality


def preset_settings(presets: Mapping[str, InferenceSettings] | None, quality: str = DEFAULT_QUALITY
                    ) -> InferenceSettings:
    """The settings of preset ``quality`` among a model's ``presets`` (None: a
    model without presets, which runs the library defaults at every quality)."""
    check_quality(quality)
    if not presets:
        return InferenceSettings()
    if quality not in presets:
        raise SepError(f"this model has no {quality!r} preset; it has {', '.join(sorted(presets))}")
    return presets[quality]


__all__ = [
    "DEFAULT_OVERLAP", "DEFAULT_QUALITY", "DEFAULT_SEGMENT", "InferenceSettings", "PRECISIONS", "QUALITIES",
    "SPEED_RANGE", "check_passes", "check_quality", "check_segment", "check_speeds", "preset_settings",
]
