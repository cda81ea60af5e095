"""recipes/grow.py: a deeper Conv-TasNet that computes what the trained one did."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from sepcli import registry
from sepcli.errors import SepError

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("recipes_grow", REPO / "recipes" / "grow.py")
grow_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grow_mod)

TINY = dict(N=8, L=4, B=4, H=8, Sc=4, X=2, R=1)


@pytest.mark.parametrize("causal", [False, True])
def test_grown_model_gives_the_same_output_and_then_trains(causal: bool) -> None:
    torch.manual_seed(0)
    small = registry.build("convtasnet", **TINY, causal=causal)
    for p in small.parameters():  # a "trained" model: no block is zero by accident
        p.data.add_(0.1 * torch.randn_like(p))
    grown = grow_mod.grow_repeats(small, 3)
    assert grown.config.R == 3 and len(grown.separator.blocks) == 3 * TINY["X"]
    assert registry.count_parameters(grown) > registry.count_parameters(small)
    mix = torch.randn(2, 800)
    with torch.no_grad():
        want, got = small(mix), grown(mix)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    # the added blocks are not dead: one step moves their zero convolutions and then the output
    ref = torch.randn(2, 2, 800)
    grown.compute_loss(mix, ref).backward()
    assert grown.separator.blocks[-1].skip_out.weight.grad.abs().sum() > 0


def test_grow_refuses_a_smaller_depth_and_other_families(tmp_path: Path) -> None:
    small = registry.build("convtasnet", **TINY)
    with pytest.raises(SepError, match="must exceed"):
        grow_mod.grow_repeats(small, 1)
    with pytest.raises(SepError, match="convtasnet model is needed"):
        grow_mod.grow_repeats(registry.build("dpcl", hidden=8, layers=1, emb_dim=4, n_fft=64, hop=16), 2)
