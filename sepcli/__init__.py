"""sep: separate a recording of overlapping talkers into one track per speaker.

Library first: everything the ``sep`` command does is a function or class here::

    from sepcli import Separator, separate
    est = separate(mix, sample_rate, model="convtasnet")   # [T] -> [S, T]
"""
from __future__ import annotations

from typing import Any

from sepcli.errors import SepError

__version__ = "0.1.0"

__all__ = ["SepError", "Separator", "separate", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so `sep --version` and `import sepcli` don't pay for importing torch.
    if name in ("Separator", "separate"):
        from sepcli import api

        return getattr(api, name)
    raise AttributeError(f"module 'sepcli' has no attribute {name!r}")
