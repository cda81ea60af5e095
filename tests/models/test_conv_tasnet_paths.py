"""One Conv-TasNet, four ways to run it: the module's forward, the folded
inference (gLN and cLN), the torch streaming step fed in blocks and the C kernel's
step (cLN). All start from the same weights and, for the last three, from
the one norm folding (``conv_tasnet_folded.fold_norms``); they must give the
same output to float32 rounding."""
from __future__ import annotations

import pytest
import torch

from sepcli import native, registry
from sepcli.models.conv_tasnet_folded import FoldedInference
from sepcli.inference.streaming import Streamer

TINY = dict(N=8, L=4, B=6, H=10, Sc=5, P=3, X=3, R=2)
TOL = 1e-5  # of the forward's peak
CHUNKS = [7, 1, 13, 2, 40]  # streamed in blocks of changing size, cycled


def perturbed(causal: bool, **kw) -> torch.nn.Module:
    """Random weights with norm gains/biases, PReLU slopes and biases far from
    their initial 1, 0, 0.25 and 0, which would hide a folding mistake."""
    torch.manual_seed(3)
    model = registry.build("convtasnet", {**TINY, "causal": causal, **kw}).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def run(path: str, model: torch.nn.Module, mix: torch.Tensor, chunks: list[int] = CHUNKS) -> torch.Tensor:
    """Shape: [T] -> [S, T]."""
    with torch.no_grad():
        if path == "forward":
            return model(mix[None])[0]
        if path == "separate":  # the inference route (the folded one)
            return model.separate(mix[None])[0]
        if path == "folded":
            return FoldedInference(model)(mix[None])[0]
    if path.startswith("stream-"):
        backend = path.removeprefix("stream-")
        if backend == "native" and not native.available():
            pytest.skip(f"native kernel unavailable: {native.why_not()}")
        streamer = Streamer(model, chunk_size=chunks[0], backend=backend)
        assert streamer.backend == backend
        outs, pos, k = [], 0, 0
        while pos < mix.shape[0]:
            outs.append(streamer.process(mix[pos : pos + chunks[k % len(chunks)]]))
            pos, k = pos + chunks[k % len(chunks)], k + 1
        outs.append(streamer.flush())
        return torch.cat(outs, 1)
    raise AssertionError(path)


@pytest.mark.parametrize("kw", [{}, dict(L=5, X=4, R=1), dict(P=2, n_src=3)])
@pytest.mark.parametrize("n_samples", [3, 37, 901])
@pytest.mark.parametrize(
    "causal,path",
    [(False, "separate"), (False, "folded"), (True, "separate"), (True, "folded"), (True, "stream-torch"),
     (True, "stream-native")],
)
def test_every_path_gives_the_forward(causal: bool, path: str, n_samples: int, kw: dict) -> None:
    model = perturbed(causal, **kw)
    mix = torch.randn(n_samples, generator=torch.Generator().manual_seed(n_samples))
    ref = run("forward", model, mix)
    est = run(path, model, mix)
    assert est.dtype == torch.float32 and est.shape == ref.shape == (model.n_src, n_samples)
    err = float((est - ref).abs().max())
    assert err <= TOL * float(ref.abs().max()), f"{path}: max |diff| {err:.3g}, peak {float(ref.abs().max()):.3g}"


@pytest.mark.parametrize("chunks", [CHUNKS, [150, 3, 90]])  # the second: steps of more than 32 frames too
@pytest.mark.parametrize("path", ["separate", "folded", "stream-torch", "stream-native"])
def test_every_path_forgets_as_the_forward(path: str, chunks: list[int]) -> None:
    """cLN with memory (``cln_memory``): a time constant of 16 frames (hop 2 at 8 kHz),
    so that over 450 frames the forgetting, not the start, sets the statistics."""
    model = perturbed(True, cln_memory=0.004)
    assert model.config.cln_decay < 0.95
    mix = torch.randn(901, generator=torch.Generator().manual_seed(5))
    ref = run("forward", model, mix)
    est = run(path, model, mix, chunks)
    err = float((est - ref).abs().max())
    assert err <= TOL * float(ref.abs().max()), f"{path}: max |diff| {err:.3g}, peak {float(ref.abs().max()):.3g}"
    plain = perturbed(True)  # same weights, the paper's cLN: far from it
    assert float((run("forward", plain, mix) - ref).abs().max()) > 100 * TOL * float(ref.abs().max())


def test_the_paths_differ_from_a_wrong_model() -> None:
    """The tolerance is tight enough to see a folding mistake: one norm's bias
    changed by 1e-3 moves the output far beyond it."""
    model = perturbed(True)
    mix = torch.randn(400, generator=torch.Generator().manual_seed(0))
    ref = run("forward", model, mix)
    with torch.no_grad():
        model.separator.blocks[2].norm1.bias[0] += 1e-3
    est = run("stream-torch", model, mix)
    assert float((est - ref).abs().max()) > 10 * TOL * float(ref.abs().max())
