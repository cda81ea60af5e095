"""The one device resolver (sepcli.inference.device) and the callers that keep their own rules."""
from __future__ import annotations

import pytest
import torch

from sepcli.bench import resolve_device as bench_device
from sepcli.errors import SepError
from sepcli.inference.device import resolve_device
from sepcli.training.distributed import _Dist, _pick_device


def test_kinds_restrict_what_a_caller_accepts() -> None:
    assert resolve_device("cpu", kinds=("cpu", "cuda")) == torch.device("cpu")
    with pytest.raises(SepError, match="unsupported device 'auto'; use cpu or cuda"):
        resolve_device("auto", kinds=("cpu", "cuda"))
    with pytest.raises(SepError, match="unsupported device 'auto'; use cpu or cuda"):
        bench_device("auto")  # timings name their device
    with pytest.raises(SepError, match="unknown device"):
        resolve_device("cuda:x")


def test_training_default_and_ranks() -> None:
    auto = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert _pick_device(None, _Dist()).type == auto.type
    assert _pick_device("cpu", _Dist(world=2, rank=1, local_rank=1)) == torch.device("cpu")  # ranks: GPUs only
    if torch.cuda.is_available():
        assert _pick_device("cuda", _Dist(world=2, rank=0, local_rank=0)) == torch.device("cuda", 0)
    else:
        with pytest.raises(SepError, match="CUDA is not available"):
            _pick_device("cuda", _Dist())
