"""The shipped weights (and an older checkpoint whose config still holds inference
settings) give the outputs they gave before the redesign of issue 31, to 1e-4.

``tests/data/golden-outputs.npz`` was written by ``python tests/test_golden_outputs.py
--write`` at commit 6b09100, before the code moved. Regenerate it only for a deliberate
change of behaviour, and say so in the commit. Changed since: the two ``convtasnet-causal``
outputs, on 2026-12-06, when its config gained ``cln_memory = 5`` (docs/long-recordings.md); the
``dpcl`` output, on 2026-12-06, when its config gained ``mask_temperature = 0.5`` (soft masks,
docs/experiments.md); the ``convtasnet-fast``, ``convtasnet-16k``, ``dpcl-fast`` and
``old-checkpoint`` outputs, on 2026-12-06, when those presets gained ``equalize = 12``
(sepcli/inference/equalize.py); the ``dpcl-fast`` output again, on 2026-12-06, when ``dpcl``
shipped stage D1's weights (models/dpcl.md); the two ``convtasnet-causal`` outputs again, on
2026-12-07, when both its presets gained ``equalize = 12`` in the causal form
(sepcli/inference/equalize_causal.py); the ``dpcl-fast`` output again, on 2026-12-07, when
``dpcl`` shipped stage D1's mean of epochs 9-11 (models/dpcl.md); the ``convtasnet-high``
output, on 2026-12-07, when that preset gained ``equalize = 12`` (docs/experiments.md); the
``dpcl-fast`` output again, on 2026-12-07, when ``dpcl`` shipped stage D2's epoch 3 (models/dpcl.md), and
again when it shipped stage D3's mean of its last epochs (models/dpcl.md).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "data" / "golden-outputs.npz"
CLIP = REPO / "examples" / "mix.wav"
SECONDS = 3.0

# (key, model, Separator options): the defaults of each shipped model, the averaged
# preset, an input at another rate, and an old-format checkpoint.
CASES = [
    ("convtasnet-fast", "convtasnet", {}),
    ("convtasnet-high", "convtasnet", {"quality": "high"}),
    ("convtasnet-16k", "convtasnet", {"_rate": 16000}),
    ("convtasnet-causal-fast", "convtasnet-causal", {}),
    ("convtasnet-causal-high", "convtasnet-causal", {"quality": "high"}),
    ("dpcl-fast", "dpcl", {}),
    ("old-checkpoint", str(REPO / "checkpoints" / "convtasnet" / "mean34-40.safetensors"), {}),
]


def _clip(rate: int) -> np.ndarray:
    import soxr

    x, sr = sf.read(CLIP, dtype="float32")
    x = x[: int(SECONDS * sr)]
    return x if rate == sr else soxr.resample(x, sr, rate, quality="VHQ").astype(np.float32)


def _run(model: str, options: dict) -> np.ndarray:
    from sepcli import api

    options = dict(options)
    rate = options.pop("_rate", 8000)
    # float32 products: bfloat16 ones depend on the CPU and its thread count
    return api.Separator(model, device="cpu", precision="float32", **options).separate(_clip(rate), rate)  # [S, T]


@pytest.mark.parametrize("key,model,options", CASES, ids=[c[0] for c in CASES])
def test_outputs_equal_the_recorded_ones(key: str, model: str, options: dict) -> None:
    want = np.load(GOLDEN)[key]
    got = _run(model, options)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()
    assert np.abs(want).max() > 0.01  # a real output, not silence


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/test_golden_outputs.py --write")
    sys.path.insert(0, str(REPO))
    np.savez_compressed(GOLDEN, **{key: _run(model, options) for key, model, options in CASES})
    print(f"wrote {GOLDEN}")
