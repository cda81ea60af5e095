"""Training losses (batched torch). Metrics themselves live in :mod:`sepcli.metrics`.

Shape legend: B batch, S sources, T samples, F bins, K frames, D embedding dim.
"""
from __future__ import annotations

import torch

# ---------------------------------------------------------------- waveform losses (PIT SI-SNR)

# ---------------------------------------------------------------- deep clustering loss
