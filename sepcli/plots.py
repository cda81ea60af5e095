"""Spectrogram plots of a separation (``sep separate --plot``): UI, not
separation. Needs the optional matplotlib (``pip install 'sepcli[plot]'``).

Shape legend: F frequency bins, T samples.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from sepcli.audio import AtomicFile, AudioInfo
from sepcli.errors import SepError

_IO_BLOCK = 1 << 16  # mixture samples read per block


def require_matplotlib() -> None:
    """SepError unless matplotlib can be imported (checked before any work)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SepError("--plot needs matplotlib: pip install 'sepcli[plot]'") from None


class Spectrogram:
    """Streaming, bounded-memory log-power spectrogram for display.

    Each of at most ``max_cols`` columns is the mean power spectrum (Hann frames
    of ``n_fft``) over ``col_len`` consecutive samples."""

    def __init__(self, sample_rate: int, total: int, max_cols: int = 1200) -> None:
        self.sample_rate = sample_rate
        self.n_fft = 1 << max(7, int(np.ceil(np.log2(0.032 * sample_rate))))  # ~32 ms
        self.col_len = max(self.n_fft, -(-total // max_cols))
        self.window = np.hanning(self.n_fft).astype(np.float32)
        self.cols: list[np.ndarray] = []
        self.buf = np.zeros(0, dtype=np.float32)

    def feed(self, x: np.ndarray) -> None:
        self.buf = np.concatenate([self.buf, x])
        while self.buf.shape[0] >= self.col_len:
            self._column(self.buf[: self.col_len])
            self.buf = self.buf[self.col_len :]

    def _column(self, seg: np.ndarray) -> None:
        if seg.shape[0] < self.n_fft:
            seg = np.pad(seg, (0, self.n_fft - seg.shape[0]))
        n_frames = max(1, (seg.shape[0] - self.n_fft) // (self.n_fft // 2) + 1)
        idx = np.arange(self.n_fft)[None, :] + (self.n_fft // 2) * np.arange(n_frames)[:, None]
        frames = seg[idx] * self.window  # [frames, n_fft]
        power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [frames, F]
        self.cols.append(power.mean(axis=0).astype(np.float32))

    def finish(self) -> np.ndarray:
        """Shape: ``[F, columns]`` power."""
        if self.buf.shape[0] or not self.cols:
            self._column(self.buf)
            self.buf = np.zeros(0, dtype=np.float32)
        return np.stack(self.cols, axis=1)


def save_plot(path: Path, specs: list[np.ndarray], titles: list[str], sample_rate: int,
               duration: float, force: bool, fmax: float) -> None:
    """Spectrograms (``[F, columns]`` power each, one panel per title) as a PNG, atomically."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SepError("--plot needs matplotlib: pip install 'sepcli[plot]'") from None
    n_bins = specs[0].shape[0]
    keep = min(n_bins, int(np.floor(fmax / (sample_rate / 2) * (n_bins - 1))) + 1)
    fmax = (keep - 1) / (n_bins - 1) * sample_rate / 2
    db = [10 * np.log10(np.maximum(s[:keep], 1e-20)) for s in specs]  # [F', columns]
    top = max(float(d.max()) for d in db)
    fig = Figure(figsize=(10, 1.8 * len(specs) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(specs), 1, sharex=True, squeeze=False)[:, 0]
    for ax, d, title in zip(axes, db, titles, strict=True):
        im = ax.imshow(
            d, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
            extent=(0.0, duration, 0.0, fmax / 1000),
        )
        ax.set_title(title, loc="left", fontsize=9)
        ax.set_ylabel("kHz")
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(im, ax=list(axes), label="dB", shrink=0.8)
    with AtomicFile(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
        if path.exists() and not force:
            raise SepError(f"{path} exists; use --force to overwrite")


class FilePlot:
    """The ``--plot`` PNG of one separated file: the mixture's spectrogram and
    each track's, the tracks' fed block by block as they are written."""

    def __init__(self, path: Path, info: AudioInfo, model_rate: int) -> None:
        self.path = path
        self.info = info
        # Speech lives below 8 kHz, and the tracks stop at the model's Nyquist
        # frequency; a 48 kHz plot would be mostly empty.
        self.fmax = min(info.sample_rate / 2, max(8000.0, model_rate / 2))
        self.specs: list[np.ndarray] = []

    def add_mixture(self, audio_path: Path) -> None:
        spec = self.track()
        # Straight from soundfile: BlockReader would log the downmix warning a second time.
        for block in sf.blocks(str(audio_path), blocksize=_IO_BLOCK, dtype="float32", always_2d=True):
            spec.feed(block.mean(axis=1, dtype=np.float32))  # [n, C] -> [n]
        self.add(spec)

    def track(self) -> Spectrogram:
        """A new spectrogram at the file's rate, to :meth:`add` when fed."""
        return Spectrogram(self.info.sample_rate, self.info.frames)

    def add(self, spec: Spectrogram) -> None:
        self.specs.append(spec.finish())

    def save(self, force: bool) -> None:
        """Write the PNG (mixture first, then the speakers), atomically."""
        titles = ["mixture"] + [f"speaker {i}" for i in range(1, len(self.specs))]
        save_plot(self.path, self.specs, titles, self.info.sample_rate, self.info.duration, force, self.fmax)


__all__ = ["FilePlot", "Spectrogram", "require_matplotlib", "save_plot"]
