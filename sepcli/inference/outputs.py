"""What separating a file produces: output names (the ``--filename``
template), the per-file result, and the model-rate temp tracks between the
two passes of :meth:`sepcli.api.Separator.separate_file`.

Shape legend: S sources, T samples.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sepcli.errors import SepError

DEFAULT_FILENAME = "{stem}/s{i}.wav"
PEAK_TARGET = 0.999
"""Peak level (linear) that tracks are scaled down to when they would pass full scale."""
TEMPLATE_FIELDS = ("stem", "i", "n", "parent")
IO_BLOCK = 1 << 16
"""Model-rate samples per block of a temp track."""


@dataclass
class SeparationResult:
    """What happened to one input file."""

    input: str
    status: str  # "ok", "skipped" or "failed"
    outputs: list[str] = field(default_factory=list)
    n_src: int = 0
    sample_rate: int = 0
    frames: int = 0
    duration: float = 0.0  # seconds of audio
    seconds: float = 0.0  # wall-clock processing time
    rtf: float = 0.0  # seconds / duration
    peak: float = 0.0  # largest |sample| of the tracks before any scaling
    gain_db: float = 0.0  # applied to all tracks to avoid clipping (0 or negative)
    reordered_chunks: int = 0  # chunks whose speaker order was corrected
    chunks: int = 0
    plot: str | None = None
    error: str | None = None
    message: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def render_filename(template: str, *, stem: str, i: int, n: int, parent: str = "") -> Path:
    """Relative output path from a filename template (see the module docstring)."""
    try:
        text = template.format(stem=stem, i=i, n=n, parent=parent)
    except (KeyError, IndexError, ValueError) as exc:
        raise SepError(
            f"bad --filename template {template!r} ({exc}); fields: "
            + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
        ) from None
    return Path(text.lstrip("/"))


def check_template(template: str) -> None:
    """SepError unless the template names one distinct WAV file per speaker."""
    a = render_filename(template, stem="x", i=1, n=2)
    b = render_filename(template, stem="x", i=2, n=2)
    if a == b:
        raise SepError(f"--filename template {template!r} must contain {{i}} (the speaker number)")
    if render_filename(template, stem="x", i=1, n=2) == render_filename(template, stem="y", i=1, n=2):
        raise SepError(f"--filename template {template!r} must contain {{stem}}")
    if a.suffix.lower() != ".wav":
        raise SepError(f"--filename template {template!r} must end in .wav (outputs are WAV files)")


class TrackTemp:
    """One model-rate float32 track in a temp file next to the outputs."""

    def __init__(self, folder: Path, stem: str, prefix_zeros: int) -> None:
        fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=".sep.f32", dir=folder)
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")
        self.frames = 0
        zeros = np.zeros(IO_BLOCK, dtype=np.float32)
        while self.frames < prefix_zeros:  # a track that appears late is silent before
            self.write(zeros[: min(IO_BLOCK, prefix_zeros - self.frames)])

    def write(self, x: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(x, dtype=np.float32).tobytes())
        self.frames += x.shape[0]

    def blocks(self) -> Iterator[np.ndarray]:
        self.file.flush()
        with open(self.path, "rb") as f:
            while True:
                data = np.fromfile(f, dtype=np.float32, count=IO_BLOCK)
                if data.size == 0:
                    return
                yield data

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.path.unlink(missing_ok=True)


__all__ = ["DEFAULT_FILENAME", "IO_BLOCK", "PEAK_TARGET", "TEMPLATE_FIELDS", "SeparationResult", "TrackTemp",
           "check_template", "render_filename"]
