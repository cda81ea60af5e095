"""uPIT-LSTM: shapes, causal framing, the oracle mask check, PIT, paper size,
checkpoints, Separator and training. Tiny configs only."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sepcli import registry
from sepcli.errors import SepError
from sepcli.inference.streaming import Streamer, offline, stream_array, streaming_layout
from sepcli.models.upit_lstm import UPITLSTM
from tests.models import mask_family_checks as checks
from tests.sigtools import si_snr_reference

FAMILY = "upit-lstm"
TINY = dict(n_fft=32, hop=8, hidden=8, layers=2)


def tiny(**overrides) -> UPITLSTM:
    return checks.build(FAMILY, **{**TINY, **overrides})


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_src", [2, 3])
@pytest.mark.parametrize("length", [1, 7, 33, 1001])
def test_output_shape_is_exactly_b_s_t(causal, n_src, length):
    model = tiny(causal=causal, n_src=n_src)
    out = model(torch.randn(2, length))
    assert out.shape == (2, n_src, length) and torch.isfinite(out).all()
    assert model(torch.randn(2, 1, length)).shape == (2, n_src, length)  # [B, 1, T] accepted


def test_stft_frames_end_one_hop_after_their_time():
    """Frame k covers input [k*hop - (n_fft - hop), k*hop + hop): an impulse at
    sample t shows in frames floor(t/hop) .. floor(t/hop) + n_fft/hop - 1 only."""
    model = tiny(n_fft=32, hop=8).double()
    t = 37
    x = torch.zeros(1, 200, dtype=torch.float64)
    x[0, t] = 1.0
    active = (model.stft(x).abs()[0].amax(dim=0) > 1e-12).nonzero().flatten().tolist()
    first = t // 8
    assert active == list(range(first, first + 32 // 8))


def test_stft_istft_is_the_identity_for_odd_lengths():
    model = tiny().double()
    for length in (1, 9, 250, 1003):
        x = torch.randn(3, length, dtype=torch.float64)
        torch.testing.assert_close(model.istft(model.stft(x), length), x, rtol=0, atol=1e-10)


def test_causal_output_ignores_later_input_within_one_window():
    model = tiny(causal=True)
    t, n_fft = 400, TINY["n_fft"]
    first = checks.first_changed_sample(model, 900, t)
    assert t - n_fft < first <= t  # never earlier than one window (the latency), and it does reach t
    assert model.latency == n_fft
    j = 300
    assert checks.last_input_used(tiny(causal=True), 700, j) <= j + n_fft - 1


def test_non_causal_output_sees_later_input():
    """The honest counterpart: the BLSTM carries the change back further than
    any causal model's window (as far as its tiny random weights remember)."""
    assert checks.first_changed_sample(tiny(causal=False), 900, 600) < 600 - 4 * TINY["n_fft"]


def test_oracle_ideal_ratio_masks_reconstruct_the_sources():
    """With the masks forced to the ideal ratio masks of two sources that do not
    share frequencies, forward() returns the sources (checks the framing and
    the mask/iSTFT plumbing); all-ones masks return the mixture exactly."""
    model = registry.build(FAMILY, n_fft=256, hop=64, hidden=4, layers=1).double().eval()
    rate, length = 8000, 8001
    t = torch.arange(length, dtype=torch.float64) / rate
    ref = torch.stack([torch.sin(2 * math.pi * 440 * t) * (1 + 0.5 * torch.sin(2 * math.pi * 3 * t)),
                       0.7 * torch.sin(2 * math.pi * 2500 * t + 1.0)])[None]  # [1, 2, T]
    mix = ref.sum(1)  # [1, T]
    mags = torch.stack([model.stft(ref[:, i]).abs() for i in range(2)], 1)  # [1, S, F, K]
    irm = mags / mags.sum(1, keepdim=True).clamp_min(1e-12)
    model.masks = lambda spec: irm
    est = model(mix)
    assert est.shape == (1, 2, length)
    for i in range(2):
        assert si_snr_reference(est[0, i].numpy(), ref[0, i].numpy()) > 30
    torch.testing.assert_close(est.sum(1), mix, rtol=0, atol=1e-9)  # the IRMs sum to one
    model.masks = lambda spec: torch.ones(1, 2, *spec.shape[1:], dtype=spec.real.dtype)
    torch.testing.assert_close(model(mix)[:, 0], mix, rtol=0, atol=1e-10)


@pytest.mark.parametrize("n_src", [2, 3])
def test_loss_is_permutation_invariant_and_the_best_permutation(n_src):
    checks.check_pit(tiny(n_src=n_src), n_src)


def test_paper_preset_matches_the_conv_tasnet_tables_46_3m():
    with torch.device("meta"):
        model = registry.build("upit-lstm-paper")
    params = registry.count_parameters(model)
    assert abs(params - 46.3e6) / 46.3e6 < 0.05
    assert model.causal and not model.lstm.bidirectional and model.lstm.num_layers == 3
    # formula: LSTM 4H(in + H) + 8H per layer (two biases), LayerNorm 2F, mask layer H*S*F + S*F
    F_, H = 129, 1500
    expected = 4 * H * (F_ + H) + 8 * H + 2 * (4 * H * 2 * H + 8 * H) + 2 * F_ + H * 2 * F_ + 2 * F_
    assert params == expected


def test_cpu_presets_and_family_defaults():
    assert registry.build(FAMILY).causal is False and registry.build(FAMILY).lstm.bidirectional
    causal = registry.build("upit-lstm-causal")
    assert causal.causal and not causal.lstm.bidirectional
    assert causal.frame_hop == causal.config.hop and causal.receptive_field is None


def test_save_load_round_trip(tmp_path):
    checks.check_round_trip(tiny(causal=True), tmp_path / "m.safetensors")


@pytest.mark.parametrize("causal", [False, True])
def test_separator_chunks_a_mixture_to_its_exact_length(causal):
    checks.check_separator(tiny(causal=causal))


def test_protocol_and_listing():
    model = tiny(causal=True)
    assert model.set_products(torch.bfloat16) is False and model.inference_presets()["fast"].segment == 30.0
    assert tiny(causal=False).streaming_layout() is None  # the BLSTM looks ahead
    with pytest.raises(SepError, match="non-causal"):
        streaming_layout(tiny(causal=False))
    rows = {r["name"]: r for r in registry.list_models()}
    assert rows["upit-lstm-causal"]["causal"] is True and rows["upit-lstm-causal"]["streams"] is True
    assert rows[FAMILY]["kind"] == "family" and rows[FAMILY]["causal"] is False and rows[FAMILY]["streams"] is False


@pytest.mark.parametrize(("n_fft", "hop"), [(32, 8), (32, 16), (30, 7)])
@pytest.mark.parametrize("chunk", [1, 5, 37, 1003])
def test_causal_stream_equals_the_offline_forward(n_fft, hop, chunk):
    """LSTM state and the overlap-add tail carried between steps, each emitted
    sample divided by the full window sum, give the offline output whatever the
    chunking, also for a hop that does not divide the window."""
    model = tiny(causal=True, n_fft=n_fft, hop=hop)
    for length in (5, 1003):
        mix = torch.randn(length)
        with torch.no_grad():
            ref = model(mix[None])[0]  # [S, T]
        streamer = Streamer(model, chunk_size=chunk)
        parts = [streamer.process(mix[i : i + chunk]) for i in range(0, length, chunk)]
        est = torch.cat([*parts, streamer.flush()], 1)
        assert est.shape == ref.shape
        torch.testing.assert_close(est, ref, rtol=0, atol=1e-6)
    assert streamer.backend == "torch"  # no compiled kernel for this family


def test_averaged_passes_stream_as_offline():
    """Lanes of different delays run different numbers of all-zero frames at the
    end: the output must not depend on them."""
    model = tiny(causal=True, n_fft=32, hop=16)
    mix = np.random.default_rng(2).standard_normal(777).astype(np.float32)
    np.testing.assert_allclose(stream_array(model, mix, 50, passes=2), offline(model, mix, passes=2), atol=1e-5)


def test_bad_input_and_config_raise_sep_error():
    model = tiny()
    with pytest.raises(SepError, match="exactly 2 speakers"):
        model.separate(torch.randn(1, 100), n_src=3)
    with pytest.raises(SepError, match="shape"):
        model(torch.randn(100))
    with pytest.raises(SepError, match="ref must have shape"):
        model.compute_loss(torch.randn(2, 100), torch.randn(2, 3, 100))
    with pytest.raises(SepError, match="hop"):
        registry.make_config(FAMILY, n_fft=32, hop=20)
    with pytest.raises(SepError, match="n_fft"):
        registry.make_config(FAMILY, n_fft=33)


def test_two_training_steps_give_a_checkpoint_that_separates(tmp_path):
    best = checks.train_two_steps("upit-lstm-causal", TINY, tmp_path)
    model = registry.load_model(best)
    assert model.family == FAMILY and model.causal
    out = checks.Separator(str(best), device="cpu", segment=0.5).separate(np.zeros(3001, np.float32) + 0.01, 8000)
    assert out.shape == (2, 3001)


@pytest.mark.parametrize("causal", [False, True])
def test_recipes_are_valid(causal):
    checks.check_recipe("upit-lstm" + ("-causal" if causal else ""), FAMILY, causal)


def test_loss_falls_when_fitting_one_batch():
    first, last = checks.fit_one_batch(checks.build(FAMILY, n_fft=64, hop=16, hidden=32, layers=2, causal=True))
    assert last < min(first - 10.0, -2.0)  # at least 10 dB better, and better than the mixture's halves


def test_sep_bench_times_the_stream_of_a_recurrent_model():
    """sep bench takes the framing from the streaming layout (an STFT has no L or
    stride) and skips the naive re-run: a recurrent model has no finite context."""
    from sepcli import bench

    model = tiny(causal=True)
    result = bench.run_bench(model, chunk_ms=[2, 5], duration=0.3, naive_chunks=3, offline_model=False)
    assert (result.L, result.hop) == (TINY["n_fft"], TINY["hop"]) and result.backend == "torch"
    for r in result.results:
        assert r.naive_rtf is None and r.rtf > 0 and r.max_rel_diff < 1e-5
        assert r.algorithmic_latency_ms == pytest.approx(1000 * (TINY["n_fft"] + r.chunk_samples) / 8000)
