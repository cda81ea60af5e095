"""Conv-TasNet: shapes, paper size, receptive field, causality, norms, framing."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from sepcli import registry
from sepcli.errors import SepError
from sepcli.models.conv_tasnet import (
    ConvTasNet,
    ConvTasNetConfig,
    CumulativeLayerNorm,
    GlobalLayerNorm,
    cln_counts,
    decayed_cumsum,
)
from sepcli.models.conv_tasnet_folded import FoldedInference

TINY = dict(N=8, L=4, B=6, H=10, Sc=5, P=3, X=3, R=2)


def tiny(**kw) -> ConvTasNet:
    torch.manual_seed(0)
    return registry.build("convtasnet", {**TINY, **kw})


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_src", [2, 3])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape_odd_lengths(causal, n_src, batch):
    model = tiny(n_src=n_src, causal=causal)
    for n_samples in (1, 3, 37, 101):
        mix = torch.randn(batch, n_samples)
        assert model(mix).shape == (batch, n_src, n_samples)
        assert model(mix[:, None]).shape == (batch, n_src, n_samples)
        assert model.separate(mix).shape == (batch, n_src, n_samples)


@pytest.mark.parametrize("L", [2, 5, 16])
def test_frame_padding_tiles_the_signal(L):
    model = tiny(L=L)
    stride = L // 2
    for n_samples in range(1, 40):
        left, right = model.frame_padding(n_samples)
        total = left + n_samples + right
        assert (total - L) % stride == 0  # the frames end exactly at the padded end
        # every real sample lies under as many frames as an interior sample
        assert left >= L - stride and right >= L - stride


def test_identity_filters_reconstruct_the_mix_exactly():
    """With identity encoder/decoder and all-one masks the model must give back the
    input sample for sample: any misaligned padding or crop breaks this."""
    model = tiny(L=4, N=4)
    with torch.no_grad():
        model.encoder.weight.copy_(torch.eye(4)[:, None, :])  # frame k, channel i = x[2k + i]
        model.decoder.weight.copy_(torch.eye(4)[:, None, :] / 2)  # every sample lies under 2 frames
        model.separator.mask_conv.weight.zero_()
        model.separator.mask_conv.bias.fill_(60.0)  # sigmoid(60) == 1 in float32
    mix = torch.rand(2, 23) + 0.1  # positive, so the encoder's ReLU keeps it
    out = model(mix)
    torch.testing.assert_close(out, mix[:, None].expand(-1, 2, -1), rtol=0, atol=1e-6)


def test_bad_input_raises_seperror():
    model = tiny()
    with pytest.raises(SepError):
        model(torch.randn(2, 2, 10))
    with pytest.raises(SepError):
        model(torch.randn(10))
    with pytest.raises(SepError):
        model(torch.randn(1, 0))
    with pytest.raises(SepError, match="exactly 2"):
        model.separate(torch.randn(1, 50), n_src=3)
    assert model.separate(torch.randn(1, 50), n_src=2).shape == (1, 2, 50)


def test_separate_has_no_grad_and_casts_dtype():
    model = tiny()
    out = model.separate(torch.randn(1, 50, dtype=torch.float64))
    assert out.dtype == torch.float32 and not out.requires_grad


# ----------------------------------------------------------------------------- paper config


def test_paper_config_size_and_receptive_field():
    for preset in ("convtasnet-paper", "convtasnet-paper-causal"):
        with torch.device("meta"):
            model = registry.build(preset)
        c = model.config
        assert (c.N, c.L, c.B, c.H, c.Sc, c.P, c.X, c.R) == (512, 16, 128, 512, 128, 3, 8, 3)
        assert 5.0e6 <= registry.count_parameters(model) <= 5.2e6
        # 1 + R*(P-1)*(2^X - 1) = 1531 frames of hop 8, plus the last frame's 16 samples
        frames = 1 + 3 * 2 * sum(2**x for x in range(8))
        assert model.receptive_field == (frames - 1) * 8 + 16 == 12256
        assert round(model.receptive_field_seconds, 2) == 1.53


def test_presets_use_the_right_norms_everywhere():
    with torch.device("meta"):
        plain = registry.build("convtasnet-paper")
        causal = registry.build("convtasnet-paper-causal")
    # the default config is the paper's
    assert dataclasses.replace(plain.config, norm="auto") == ConvTasNetConfig()
    assert plain.config.norm_type == "gLN" and causal.config.norm_type == "cLN"

    def norms(m):
        return [mod for mod in m.modules() if isinstance(mod, (GlobalLayerNorm, CumulativeLayerNorm))]

    assert len(norms(plain)) == 1 + 2 * 24
    assert all(isinstance(n, GlobalLayerNorm) for n in norms(plain))
    assert all(isinstance(n, CumulativeLayerNorm) for n in norms(causal))
    assert isinstance(causal.separator.norm, CumulativeLayerNorm)  # the first norm too
    dil = [b.dconv.dilation[0] for b in causal.separator.blocks]
    assert dil == [1, 2, 4, 8, 16, 32, 64, 128] * 3
    assert all(b.dconv.groups == 512 for b in causal.separator.blocks)
    assert all(b.pad_left == 2 * d and b.pad_right == 0 for b, d in zip(causal.separator.blocks, dil, strict=True))
    assert all(b.pad_left == b.pad_right == d for b, d in zip(plain.separator.blocks, dil, strict=True))


def test_config_validation():
    with pytest.raises(SepError, match="gLN"):
        registry.make_config("convtasnet", causal=True, norm="gLN")
    with pytest.raises(SepError, match="mask_activation"):
        registry.make_config("convtasnet", mask_activation="tanh")
    with pytest.raises(SepError, match="N must"):
        registry.make_config("convtasnet", N=0)
    with pytest.raises(SepError, match="unknown convtasnet config key"):
        registry.make_config("convtasnet", n_srcs=2)
    with pytest.raises(SepError, match="cLN only"):
        registry.make_config("convtasnet", causal=False, cln_memory=10.0)
    for bad in (0.0, -1.0, float("inf"), True, "10"):
        with pytest.raises(SepError, match="cln_memory"):
            registry.make_config("convtasnet", causal=True, cln_memory=bad)
    cfg = registry.make_config("convtasnet", causal=True, L=32, sample_rate=8000, cln_memory=10.0)
    assert cfg.cln_decay == pytest.approx(math.exp(-16 / 80000))  # one hop of 16 samples out of 10 s
    assert registry.make_config("convtasnet", causal=True).cln_decay == 1.0


# ----------------------------------------------------------------------------- receptive field, causality


@pytest.mark.parametrize("causal", [False, True])
def test_tcn_receptive_field_matches_formula(causal):
    """With the (time-mixing) norms replaced by identities, the mask at frame k
    depends on exactly the frames the dilation pattern predicts."""
    model = tiny(causal=causal).double()
    for name, mod in list(model.named_modules()):
        if isinstance(mod, (GlobalLayerNorm, CumulativeLayerNorm)):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, nn.Identity())
    frames = model.receptive_field_frames
    assert frames == 1 + 2 * 2 * 7
    n_frames, k = 80, 40
    w = torch.randn(1, TINY["N"], n_frames, dtype=torch.float64, requires_grad=True)
    model.separator(w)[..., k].sum().backward()
    used = (w.grad.abs().sum(dim=(0, 1)) > 0).nonzero().flatten().tolist()
    if causal:
        assert used == list(range(k - frames + 1, k + 1))
    else:
        half = (frames - 1) // 2
        assert used == list(range(k - half, k + half + 1))


def test_causality():
    L = TINY["L"]
    causal, plain = tiny(causal=True), tiny(causal=False)
    torch.manual_seed(1)
    mix = torch.randn(2, 300)
    t = 150
    changed = mix.clone()
    changed[:, t:] = torch.randn(2, 300 - t) * 3
    for model in (causal, plain):
        model.eval()
    a, b = causal(mix), causal(changed)
    torch.testing.assert_close(a[..., : t - L], b[..., : t - L], rtol=0, atol=1e-6)
    assert (a[..., t:] - b[..., t:]).abs().max() > 1e-3  # the change does reach the output
    pa, pb = plain(mix), plain(changed)
    assert (pa[..., : t - L] - pb[..., : t - L]).abs().max() > 1e-4


def test_causal_lookahead_is_under_one_frame():
    """Output sample j depends on input up to j + L - 1, no further."""
    L = TINY["L"]
    model = tiny(causal=True).double()
    mix = torch.randn(1, 120, dtype=torch.float64, requires_grad=True)
    j = 60
    model(mix)[..., j].sum().backward()
    used = (mix.grad.abs()[0] > 0).nonzero().flatten()
    assert used.max().item() <= j + L - 1


# ----------------------------------------------------------------------------- norms


def _random_affine(norm: nn.Module, channels: int) -> None:
    with torch.no_grad():
        norm.weight.copy_(torch.randn(channels))
        norm.bias.copy_(torch.randn(channels))


def test_global_layer_norm_matches_formula():
    torch.manual_seed(0)
    x = torch.randn(3, 7, 11, dtype=torch.float64) * 4 + 2
    norm = GlobalLayerNorm(7).double()
    _random_affine(norm, 7)
    out = norm(x)
    for b in range(3):
        vals = x[b].flatten().tolist()
        mean = sum(vals) / len(vals)
        var = sum((v - mean) ** 2 for v in vals) / len(vals)
        want = (x[b] - mean) / (var + norm.eps) ** 0.5 * norm.weight[:, None] + norm.bias[:, None]
        torch.testing.assert_close(out[b], want)


def test_cumulative_layer_norm_matches_formula():
    """At frame k: mean/var over all channels and frames 0..k (not one frame)."""
    torch.manual_seed(0)
    # a drifting offset makes per-frame and cumulative statistics clearly differ
    x = torch.randn(2, 5, 9, dtype=torch.float64) + torch.linspace(0, 6, 9, dtype=torch.float64)
    norm = CumulativeLayerNorm(5).double()
    _random_affine(norm, 5)
    out = norm(x)
    for b in range(2):
        for k in range(9):
            vals = x[b, :, : k + 1].flatten().tolist()
            assert len(vals) == 5 * (k + 1)
            mean = sum(vals) / len(vals)
            var = sum((v - mean) ** 2 for v in vals) / len(vals)
            want = (x[b, :, k] - mean) / (var + norm.eps) ** 0.5 * norm.weight + norm.bias
            torch.testing.assert_close(out[b, :, k], want)
    # and it is not the per-frame channel norm
    per_frame = nn.functional.layer_norm(x.transpose(1, 2), (5,), eps=norm.eps).transpose(1, 2)
    per_frame = per_frame * norm.weight[:, None] + norm.bias[:, None]
    assert (out[..., 1:] - per_frame[..., 1:]).abs().max() > 0.1


@pytest.mark.parametrize("decay,K", [(1.0, 7), (0.9, 40), (0.5, 200), (0.999, 5000)])
def test_decayed_cumsum_matches_the_dense_sum(decay: float, K: int):
    """Against sum over j <= k of decay**(k-j) x_j written out as a matrix product;
    decay 0.5 over 200 frames spans seven of the blocks the fast form rescales in."""
    x = torch.randn(3, K, dtype=torch.float64, generator=torch.Generator().manual_seed(K))
    k = torch.arange(K, dtype=torch.float64)
    weights = torch.where(k[:, None] >= k[None, :], decay ** (k[:, None] - k[None, :]), 0.0)  # [K, K]
    torch.testing.assert_close(decayed_cumsum(x, decay), x @ weights.T, rtol=1e-12, atol=1e-12)
    ones = torch.ones(K, dtype=torch.float64)
    torch.testing.assert_close(cln_counts(K, 5, decay), 5 * decayed_cumsum(ones, decay), rtol=1e-12, atol=0)
    torch.testing.assert_close(cln_counts(K - 3, 5, decay, start=3), 5 * decayed_cumsum(ones, decay)[3:])


def test_cumulative_layer_norm_with_memory_matches_formula():
    """With decay d, frame j weighs d**(k-j) in frame k's mean and variance."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 30, dtype=torch.float64) + torch.linspace(0, 6, 30, dtype=torch.float64)
    d = 0.8
    norm = CumulativeLayerNorm(5, decay=d).double()
    _random_affine(norm, 5)
    out = norm(x)
    for b in range(2):
        for k in (0, 1, 13, 29):
            w = torch.tensor([d ** (k - j) for j in range(k + 1)], dtype=torch.float64)  # [k+1]
            frames = x[b, :, : k + 1]  # [C, k+1]
            mean = (frames * w).sum() / (5 * w.sum())
            var = ((frames - mean) ** 2 * w).sum() / (5 * w.sum())
            want = (x[b, :, k] - mean) / (var + norm.eps) ** 0.5 * norm.weight + norm.bias
            torch.testing.assert_close(out[b, :, k], want)
    # and it differs from the plain cLN once the early frames have faded
    plain = CumulativeLayerNorm(5).double()
    plain.load_state_dict(norm.state_dict())
    assert (out[..., 20:] - plain(x)[..., 20:]).abs().max() > 0.1


def test_a_model_with_memory_forgets_the_start():
    """Two inputs that differ only in their first 0.5 s: with cln_memory = 0.01 s the
    outputs agree half a second later (the statistics have forgotten the difference);
    the plain cLN still carries it."""
    gen = torch.Generator().manual_seed(0)
    tail = torch.randn(8000, generator=gen)
    a = torch.cat((10 * torch.randn(4000, generator=gen), tail))
    b = torch.cat((0.1 * torch.randn(4000, generator=gen), tail))
    for memory, agree in ((0.01, True), (None, False)):
        torch.manual_seed(1)
        model = registry.build("convtasnet", {**TINY, "causal": True, "cln_memory": memory}).eval()
        with torch.no_grad():
            ya, yb = model.separate(torch.stack((a, b)))  # [S, T] each
        late = (ya[:, -4000:] - yb[:, -4000:]).abs().max() / ya[:, -4000:].abs().max()
        assert (late < 1e-4) == agree, (memory, float(late))


def test_cumulative_layer_norm_float32_long_input_is_accurate():
    torch.manual_seed(0)
    # an offset of 30 std over 20000 frames: plain float32 running sums of x and
    # x**2 are off by ~4e-4 here (cancellation and rounding)
    x = torch.randn(1, 64, 20000) + 30.0
    out = CumulativeLayerNorm(64)(x)
    ref = CumulativeLayerNorm(64).double()(x.double())
    torch.testing.assert_close(out, ref.float(), rtol=0, atol=2e-4)


# ----------------------------------------------------------------------------- loss


def test_compute_loss_is_permutation_invariant_and_trains():
    losses = pytest.importorskip("sepcli.losses")
    if not hasattr(losses, "pit_si_snr_loss"):
        pytest.skip("sepcli.losses.pit_si_snr_loss not written yet")
    model = tiny()
    torch.manual_seed(2)
    ref = torch.randn(2, 2, 80)
    mix = ref.sum(1)
    loss = model.compute_loss(mix, ref)
    assert loss.dim() == 0
    torch.testing.assert_close(loss, model.compute_loss(mix, ref.flip(1)))
    loss.backward()
    assert model.encoder.weight.grad is not None and model.encoder.weight.grad.abs().sum() > 0
    with pytest.raises(SepError):
        model.compute_loss(mix, ref[:, :1])


def test_masks_are_sigmoid_only():
    # relu and softmax masks were removed; configs that name sigmoid still load.
    assert dataclasses.asdict(tiny(mask_activation="sigmoid").config)["mask_activation"] == "sigmoid"
    for kind in ("relu", "softmax"):
        with pytest.raises(SepError, match="mask_activation"):
            registry.make_config("convtasnet", mask_activation=kind)


@pytest.mark.parametrize("dilation,taps", [(1, 3), (4, 3), (2, 5)])
def test_depthwise_conv_fast_form_matches_conv1d(dilation, taps):
    """The shifted multiply-add form equals PyTorch's grouped Conv1d, values and gradients."""
    from sepcli.models.conv_tasnet import depthwise_conv

    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, taps, dilation=dilation, groups=6)
    x = torch.randn(2, 6, 40 + (taps - 1) * dilation, requires_grad=True)
    y_ref = conv(x)
    g = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad((y_ref * g).sum(), (x, conv.weight, conv.bias))
    y = depthwise_conv(conv, x)
    grads = torch.autograd.grad((y * g).sum(), (x, conv.weight, conv.bias))
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- folded inference


def perturbed(causal: bool = False, **kw) -> ConvTasNet:
    """A tiny model (non-causal gLN, or causal cLN) with non-trivial norm gains/biases, PReLU
    slopes and biases (fresh ones are 1, 0 and 0.25, which would hide folding mistakes)."""
    model = tiny(causal=causal, norm="cLN" if causal else "gLN", **kw).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_samples", [1, 7, 37, 400, 2001])
@pytest.mark.parametrize("kw", [{}, dict(L=5, X=4, R=1), dict(P=2), dict(n_src=3)])
def test_folded_inference_matches_forward(n_samples, kw, causal):
    # Edge frames where the depthwise taps read padding are the delicate part:
    # lengths shorter than the padding of the largest dilation are included.
    model = perturbed(causal, **kw)
    mix = torch.randn(2, n_samples)
    with torch.no_grad():
        ref = model(mix)
        fast = FoldedInference(model)(mix)
    assert fast.shape == ref.shape
    assert torch.allclose(fast, ref, atol=1e-5 * float(ref.abs().max()), rtol=0)


def test_folded_bfloat16_is_close_to_float32():
    from sepcli.metrics import si_snr

    model = perturbed()
    mix = torch.randn(1, 3000)
    with torch.no_grad():
        ref = model(mix)[0].numpy()
        half = FoldedInference(model, torch.bfloat16)(mix)[0].numpy()
    assert min(si_snr(half[s], ref[s]) for s in range(2)) > 30.0


def test_folded_inference_reuses_buffers_across_lengths_and_batches():
    # One instance, lengths changing back and forth: the kept buffers must
    # never leak one call's numbers into the next, nor one batch item into another.
    model = perturbed()
    fold = FoldedInference(model)
    with torch.no_grad():
        for n in [400, 37, 400, 2001, 400]:
            mix = torch.randn(3, n)
            ref = model(mix)
            assert torch.allclose(fold(mix), ref, atol=1e-5 * float(ref.abs().max()), rtol=0)
    with pytest.raises(SepError, match="products"):
        FoldedInference(model, torch.float16)


def test_separate_uses_folded_weights_and_follows_weight_changes():
    model = perturbed()
    mix = torch.randn(1, 500)
    with torch.no_grad():
        first = model.separate(mix)
        assert torch.allclose(first, model(mix), atol=1e-5 * float(first.abs().max()), rtol=0)
        model.separator.blocks[0].norm2.weight.mul_(3.0)  # an in-place change, like an optimiser step
        second = model.separate(mix)
        assert torch.allclose(second, model(mix), atol=1e-5 * float(second.abs().max()), rtol=0)
    assert not torch.allclose(first, second)
    # cLN models fold too, in float32 only.
    with pytest.raises(SepError, match="gLN"):
        FoldedInference(tiny(causal=True), torch.bfloat16)


def test_cumulative_norm_is_causal_in_the_folded_route():
    """A later input leaves earlier output alone: the cLN statistics are running ones."""
    model = perturbed(True)
    mix = torch.randn(1, 800)
    later = mix.clone()
    later[:, 500:] += torch.randn(1, 300)
    with torch.no_grad():
        a, b = model.separate(mix), model.separate(later)
    assert torch.equal(a[..., :450], b[..., :450]) and not torch.allclose(a[..., 520:], b[..., 520:])
