"""Streaming causal Conv-TasNet: chunk-by-chunk output equals the offline causal forward."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sepcli import native, registry
from sepcli.errors import SepError
from sepcli.inference import streaming
from sepcli.streaming import Streamer, stream_array

TINY = dict(N=8, L=4, B=6, H=10, Sc=5, P=3, X=3, R=2)
TOL = 1e-5  # of the offline output's peak


@pytest.fixture(autouse=True, params=["native", "torch"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with each implementation of the streaming step:
    the compiled kernel (what ``auto`` picks for float32 on the CPU) and torch."""
    if request.param == "native" and not native.available():
        pytest.skip(f"native kernel unavailable: {native.why_not()}")
    pick = streaming._pick_backend

    def forced(backend: str, device: torch.device, dtype: torch.dtype) -> str:
        return pick("torch" if backend == "auto" and request.param == "torch" else backend, device, dtype)

    monkeypatch.setattr(streaming, "_pick_backend", forced)
    return request.param


def tiny_causal(seed: int = 0, **kw) -> nn.Module:
    """A tiny causal model whose norms and PReLUs are far from their initial
    values, so that folding their gains and biases is really exercised."""
    torch.manual_seed(seed)
    model = registry.build("convtasnet", {**TINY, "causal": True, **kw}).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "prelu" in name:
                p.add_(0.5 * torch.randn_like(p))
    return model


def offline(model: nn.Module, mix: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(mix[None])[0]  # [S, T]


def assert_close(est, ref: torch.Tensor) -> None:
    est = torch.as_tensor(est)
    assert est.shape == ref.shape
    err = float((est - ref).abs().max())
    assert err <= TOL * float(ref.abs().max()), f"max |diff| {err:.3g}, peak {float(ref.abs().max()):.3g}"


def run_chunks(model: nn.Module, mix: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Stream with explicit chunk sizes (they must add up to T); return all outputs."""
    assert sum(sizes) == mix.shape[0]
    streamer = Streamer(model)
    outs, pos = [], 0
    for n in sizes:
        outs.append(streamer.process(mix[pos : pos + n]))
        pos += n
    outs.append(streamer.flush())
    assert streamer.samples_out == streamer.samples_in == mix.shape[0]
    return torch.cat(outs, 1)


# ----------------------------------------------------------------------------- equality with offline


@pytest.mark.parametrize("chunk", ["hop", "hop*3+1", 1, 7, "all"])
def test_chunk_sizes_match_offline(chunk):
    model = tiny_causal()
    hop = model.config.stride
    mix = torch.randn(1003)
    size = {"hop": hop, "hop*3+1": 3 * hop + 1, "all": mix.shape[0]}.get(chunk, chunk)
    assert_close(stream_array(model, mix, size), offline(model, mix))


def test_random_chunk_sizes_match_offline():
    model = tiny_causal(seed=1)
    rng = np.random.default_rng(0)
    mix = torch.randn(1500)
    sizes = []
    while sum(sizes) < mix.shape[0]:
        sizes.append(int(rng.integers(0, 90)))  # zero-length chunks are allowed too
    sizes[-1] -= sum(sizes) - mix.shape[0]
    assert_close(run_chunks(model, mix, sizes), offline(model, mix))


@pytest.mark.parametrize(
    "config",
    [
        dict(L=5),  # odd window: three frames overlap each output hop
        dict(L=2, P=2),
        dict(n_src=3),
        dict(X=4, R=1, P=4),
    ],
)
def test_other_configurations(config):
    model = tiny_causal(seed=2, **config)
    mix = torch.randn(777)
    for size in (1, model.config.stride, 29, 200):
        assert_close(stream_array(model, mix, size), offline(model, mix))


@pytest.mark.parametrize("n_samples", [1, 2, 3, 5, 17])
def test_very_short_inputs(n_samples):
    model = tiny_causal()
    mix = torch.randn(n_samples)
    for size in (1, 2, 100):
        assert_close(stream_array(model, mix, size), offline(model, mix))


def test_every_statistics_path(monkeypatch):
    """Gram (small steps), reductions (medium), vectorised (large), and the
    accelerator path (running sums kept as a tensor) all agree with offline."""
    model = tiny_causal(seed=3)
    mix = torch.randn(2400)
    ref = offline(model, mix)
    hop = model.config.stride
    for frames in (4, 24, 100):  # <= GRAM_MAX_FRAMES, <= SCALAR_STATS_MAX_FRAMES, above
        assert_close(stream_array(model, mix, frames * hop), ref)
    streamer = Streamer(model, chunk_size=3 * hop)
    for norm in [streamer.network.norm0] + [n for b in streamer.network.blocks for n in (b.norm1, b.norm2)]:
        norm.host = False
    outs = [streamer.process(mix[i : i + 3 * hop]) for i in range(0, mix.shape[0], 3 * hop)]
    assert_close(torch.cat(outs + [streamer.flush()], 1), ref)
    # several internal steps per call (a long array passed at once)
    monkeypatch.setattr(streaming, "MAX_STEP_FRAMES", 37)
    assert_close(stream_array(model, mix, mix.shape[0]), ref)


def test_per_channel_prelu():
    model = tiny_causal(seed=4)
    with torch.no_grad():
        for block in model.separator.blocks:
            block.prelu1 = nn.PReLU(model.config.H, init=0.0)
            block.prelu1.weight.uniform_(-0.5, 1.5)
    mix = torch.randn(500)
    assert_close(stream_array(model, mix, 9), offline(model, mix))


def test_float64_model():
    model = tiny_causal(seed=5).double()
    mix = torch.randn(600, dtype=torch.float64)
    ref = offline(model, mix)
    est = stream_array(model, mix, 6)
    assert est.dtype == torch.float64
    assert float((est - ref).abs().max()) <= 1e-10 * float(ref.abs().max())


def test_backend_in_use(backend: str) -> None:
    assert Streamer(tiny_causal()).backend == backend
    assert streaming.AveragedStreamer(tiny_causal(), passes=2).backend == backend
    assert Streamer(tiny_causal().double()).backend == "torch"  # the kernel is float32 only


def test_paper_configuration():
    """The paper's causal system (5.05M parameters) on 0.25 s at 8 kHz: one-hop chunks and 8 ms chunks."""
    torch.manual_seed(0)
    model = registry.build("convtasnet-paper-causal").eval()
    mix = torch.randn(2000) * 0.1
    ref = offline(model, mix)
    assert_close(stream_array(model, mix, 64), ref)
    short = mix[:600]
    assert_close(stream_array(model, short, model.config.stride), offline(model, short))


# ----------------------------------------------------------------------------- stream behaviour


def test_output_is_released_as_soon_as_it_is_final():
    """After n whole hops, all but the first L - L//2 samples' worth are out:
    the streamer holds back nothing it could already emit."""
    model = tiny_causal()
    hop, left = model.config.stride, model.config.L - model.config.stride
    streamer = Streamer(model, chunk_size=hop)
    total = 0
    for _ in range(20):
        y = streamer.process(torch.randn(hop))
        total += y.shape[1]
        assert total == max(0, streamer.samples_in - left)
    assert streamer.algorithmic_latency() == model.config.L + hop
    assert streamer.algorithmic_latency(64) == model.config.L + 64


def test_reset_starts_a_new_stream():
    model = tiny_causal()
    first, second = torch.randn(300), torch.randn(410)
    streamer = Streamer(model, chunk_size=16)
    streamer.process(first[:100])  # abandoned mid-stream
    streamer.reset()
    outs = [streamer.process(first[i : i + 16]) for i in range(0, 300, 16)] + [streamer.flush()]
    assert_close(torch.cat(outs, 1), offline(model, first))
    streamer.reset()
    outs = [streamer.process(second[i : i + 16]) for i in range(0, 410, 16)] + [streamer.flush()]
    assert_close(torch.cat(outs, 1), offline(model, second))


def test_numpy_in_numpy_out_and_shapes():
    model = tiny_causal()
    mix = np.random.default_rng(0).standard_normal(250).astype(np.float32)
    streamer = Streamer(model)
    a = streamer.process(mix[None, :100])  # [1, n] is accepted
    b = streamer.process(mix[100:].astype(np.float64))
    c = streamer.flush()
    assert all(isinstance(y, np.ndarray) and y.dtype == np.float32 for y in (a, b, c))
    est = np.concatenate([a, b, c], axis=1)
    assert_close(torch.from_numpy(est), offline(model, torch.from_numpy(mix)))


def test_flush_ends_the_stream():
    model = tiny_causal()
    streamer = Streamer(model)
    assert streamer.flush().shape == (2, 0)  # nothing in, nothing out
    with pytest.raises(SepError, match="flushed"):
        streamer.process(torch.randn(10))
    with pytest.raises(SepError, match="already flushed"):
        streamer.flush()
    streamer.reset()
    assert streamer.process(torch.randn(10)).shape[0] == 2


def test_bad_input_is_rejected():
    model = tiny_causal()
    streamer = Streamer(model)
    with pytest.raises(SepError, match=r"\[n\] or \[1, n\]"):
        streamer.process(torch.randn(2, 10))
    with pytest.raises(SepError, match="float"):
        streamer.process(np.zeros(10, dtype=np.int16))
    with pytest.raises(SepError, match="NaN or infinite"):
        streamer.process(torch.tensor([0.0, float("nan")]))
    with pytest.raises(SepError, match="Tensor or numpy"):
        streamer.process([0.0, 1.0])
    streamer.process(torch.zeros(4))
    with pytest.raises(SepError, match="do not mix"):
        streamer.process(np.zeros(4, dtype=np.float32))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(SepError, match="chunk_size"):
            Streamer(model, chunk_size=bad)


def test_non_causal_and_other_models_are_rejected():
    torch.manual_seed(0)
    with pytest.raises(SepError, match="this convtasnet model is non-causal"):
        Streamer(registry.build("convtasnet", {**TINY, "causal": False}))
    # the refusal names the family it got, not Conv-TasNet's options
    with pytest.raises(SepError, match="this dpcl model is non-causal") as err:
        Streamer(registry.build("dpcl", hidden=8, layers=1, emb_dim=4))
    assert "cLN" not in str(err.value)
    with pytest.raises(SepError, match="causal Conv-TasNet"):
        Streamer(nn.Linear(3, 3))


def test_silence_gives_finite_output():
    model = tiny_causal()
    mix = torch.zeros(300)
    est = stream_array(model, mix, 8)
    assert torch.isfinite(est).all()
    assert_close(est, offline(model, mix))


# ----------------------------------------------------------------------------- averaged passes


def _passes_reference(model: nn.Module, mix: torch.Tensor, delays: list[int], signs: list[int]) -> np.ndarray:
    """The average of delayed, sign-flipped forwards, each pass put in pass 0's
    order per sample by brute force over the running inner products (an
    independent form of engine.averaged_fn(causal=True))."""
    n = mix.shape[0]
    outs = []
    with torch.no_grad():
        for d, g in zip(delays, signs, strict=True):
            y = model(torch.nn.functional.pad(g * mix, (d, 0))[None])[0, :, d : d + n].double().numpy() * g
            outs.append(y)  # [S, T]
    first = outs[0]
    total = first.copy()
    for y in outs[1:]:
        keep = np.cumsum((first * y).sum(0))  # running score of the order as it came
        swap = np.cumsum((first * y[::-1]).sum(0))  # and of the other order (two sources)
        total += np.where(swap > keep, y[::-1], y)
    return total / len(outs)


@pytest.mark.parametrize("passes,signs", [(2, False), (4, False), (4, True), (3, True)])
@pytest.mark.parametrize("chunk", ["hop", 1, 7, "hop*3+1", "all"])
def test_averaged_passes_stream_equal_offline(passes: int, signs: bool, chunk) -> None:
    model = tiny_causal(seed=2, L=8)  # hop 4: delays 0, 2, 1, 3
    hop = model.config.stride
    mix = torch.randn(1003)
    size = {"hop": hop, "hop*3+1": 3 * hop + 1, "all": mix.shape[0]}.get(chunk, chunk)
    ref = torch.from_numpy(streaming.offline(model, mix, passes=passes, signs=signs))
    assert_close(stream_array(model, mix, size, passes=passes, signs=signs), ref)
    assert float((ref - offline(model, mix)).abs().max()) > 1e-3  # the passes do differ from one


def test_offline_average_matches_a_brute_force_reference() -> None:
    model = tiny_causal(seed=3, L=8)
    mix = torch.randn(700)
    ref = _passes_reference(model, mix, [0, 0, 2, 2], [1, -1, 1, -1])
    assert_close(torch.from_numpy(streaming.offline(model, mix, passes=4, signs=True)), torch.from_numpy(ref).float())
    ref2 = _passes_reference(model, mix, [0, 2], [1, 1])
    assert_close(torch.from_numpy(streaming.offline(model, mix, passes=2)), torch.from_numpy(ref2).float())
    np.testing.assert_allclose(streaming.offline(model, mix), offline(model, mix).numpy(), rtol=0, atol=1e-6)


def test_averaged_passes_stay_causal() -> None:
    """Changing the input from sample t on changes no output before t - L + 1
    (the encoder window reaches L - 1 samples ahead): neither the delays nor
    the alignment look further."""
    model = tiny_causal(seed=4, L=8)
    mix = torch.randn(900)
    other = mix.clone()
    other[500:] = torch.randn(400)
    a = streaming.offline(model, mix, passes=4, signs=True)
    b = streaming.offline(model, other, passes=4, signs=True)
    t = 500 - model.config.L + 1
    assert np.array_equal(a[:, :t], b[:, :t])
    assert np.abs(a[:, t : t + 8] - b[:, t : t + 8]).max() > 1e-3


def test_averaged_streamer_interface() -> None:
    model = tiny_causal(seed=5, L=8)
    hop = model.config.stride
    streamer = streaming.make_streamer(model, chunk_size=hop, passes=2, equalize=0.0)
    assert isinstance(streamer, streaming.AveragedStreamer) and streamer.max_delay == hop // 2
    assert isinstance(streaming.make_streamer(model, equalize=0.0), Streamer)  # the model's default: one pass
    assert streamer.algorithmic_latency() == model.config.L + hop + hop // 2
    assert streamer.receptive_field == model.receptive_field + hop // 2
    # released as soon as the most delayed pass has it: a hold-back of L - L/2 + delay
    total = 0
    for _ in range(12):
        total += streamer.process(torch.randn(hop)).shape[1]
        assert total == max(0, streamer.samples_in - (model.config.L - hop) - hop // 2)
    streamer.reset()
    # numpy in, numpy out; [1, n] accepted; abandoned streams reset cleanly
    mix = np.random.default_rng(0).standard_normal(333).astype(np.float32)
    streamer.process(mix[:50])
    streamer.reset()
    outs = [streamer.process(mix[None, :100]), streamer.process(mix[100:])]
    outs.append(streamer.flush())
    assert all(isinstance(y, np.ndarray) and y.dtype == np.float32 for y in outs)
    assert streamer.samples_in == streamer.samples_out == 333
    est = np.concatenate(outs, axis=1)
    assert_close(torch.from_numpy(est), torch.from_numpy(streaming.offline(model, mix, passes=2)))
    # torch in, torch out
    streamer.reset()
    y = streamer.process(torch.from_numpy(mix))
    assert isinstance(y, torch.Tensor)
    with pytest.raises(SepError, match="NaN"):
        streamer.process(torch.tensor([float("nan")]))
    streamer.flush()
    with pytest.raises(SepError, match="flushed"):
        streamer.process(torch.zeros(4))
    with pytest.raises(SepError, match="passes"):
        streaming.make_streamer(model, passes=0)


def test_averaged_passes_every_statistics_path(monkeypatch):
    """Lanes share each step's rows: the Gram, reduction, vectorised and
    accelerator statistics paths keep each lane's running sums apart."""
    model = tiny_causal(seed=6, L=8)
    hop = model.config.stride
    mix = torch.randn(2400)
    ref = torch.from_numpy(streaming.offline(model, mix, passes=2))
    for frames in (4, 12, 100):  # 2 lanes: 8 rows (Gram), 24 (reductions), 200 (vectorised)
        assert_close(stream_array(model, mix, frames * hop, passes=2), ref)
    streamer = streaming.AveragedStreamer(model, chunk_size=3 * hop, passes=2)
    inner = streamer.streamer
    for norm in [inner.network.norm0] + [n for b in inner.network.blocks for n in (b.norm1, b.norm2)]:
        norm.host = False
    outs = [streamer.process(mix[i : i + 3 * hop]) for i in range(0, mix.shape[0], 3 * hop)]
    assert_close(torch.cat(outs + [streamer.flush()], 1), ref)
    monkeypatch.setattr(streaming, "MAX_STEP_FRAMES", 37)
    assert_close(stream_array(model, mix, mix.shape[0], passes=4, signs=True),
                 torch.from_numpy(streaming.offline(model, mix, passes=4, signs=True)))


# ----------------------------------------------------------------------------- the causal equalizer


@pytest.mark.parametrize("passes", [1, 2])
def test_equalized_stream_matches_the_offline_equalized_forward(passes):
    """EqualizedStreamer in chunks of any size gives causal_equalized_fn over the whole signal."""
    model = tiny_causal(seed=5)
    t = np.arange(6000) / 8000
    mix = (np.sin(2 * np.pi * 300 * t) + 0.3 * np.random.default_rng(1).standard_normal(6000)).astype(np.float32)
    want = streaming.offline(model, mix, passes=passes, equalize=12.0)  # [S, T]
    plain = streaming.offline(model, mix, passes=passes)
    assert np.abs(want - plain).max() > 0.01 * np.abs(plain).max()  # the equalizer did something
    for chunk in (1, 37, [5, 300, 64, 1]):
        got = stream_array(model, mix, chunk, passes=passes, equalize=12.0)
        assert_close(got, torch.from_numpy(want))
    # torch in, torch out
    got = stream_array(model, torch.from_numpy(mix), 64, passes=passes, equalize=12.0)
    assert isinstance(got, torch.Tensor)
    assert_close(got, torch.from_numpy(want))


def test_make_streamer_takes_equalize_from_the_preset(monkeypatch):
    from sepcli.inference.settings import InferenceSettings

    model = tiny_causal(seed=6)
    default = streaming.make_streamer(model)  # causal Conv-TasNet's presets equalize at 12 dB
    assert isinstance(default, streaming.EqualizedStreamer) and default.equalize == 12.0
    assert isinstance(default.inner, Streamer)
    monkeypatch.setattr(type(model), "inference_presets",
                        lambda self: {"fast": InferenceSettings(equalize=9.0), "high": InferenceSettings(passes=2)})
    streamer = streaming.make_streamer(model, chunk_size=16)
    assert isinstance(streamer, streaming.EqualizedStreamer) and streamer.equalize == 9.0
    assert streamer.algorithmic_latency(16) == streamer.inner.algorithmic_latency(16)
    assert not isinstance(streaming.make_streamer(model, equalize=0.0), streaming.EqualizedStreamer)
    assert not isinstance(streaming.make_streamer(model, quality="high"), streaming.EqualizedStreamer)
    with pytest.raises(SepError):
        streamer.process(np.array([np.nan], dtype=np.float32))
