"""LSTM-TasNet: shapes, causality, the gated encoder, segment norm, masks,
skips, PIT, paper size, checkpoints, Separator and training. Tiny configs only."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sepcli import registry
from sepcli.errors import SepError
from sepcli.inference.streaming import Streamer, offline, stream_array, streaming_layout
from sepcli.models.lstm_tasnet import LSTMTasNet
from tests.models import mask_family_checks as checks

FAMILY = "lstm-tasnet"
TINY = dict(N=8, L=8, hidden=8, layers=3)  # 3 layers: a block of two, then one with a skip


def tiny(**overrides) -> LSTMTasNet:
    return checks.build(FAMILY, **{**TINY, **overrides})


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_src", [2, 3])
@pytest.mark.parametrize("length", [1, 7, 33, 1001])
def test_output_shape_is_exactly_b_s_t(causal, n_src, length):
    model = tiny(causal=causal, n_src=n_src)
    out = model(torch.randn(2, length))
    assert out.shape == (2, n_src, length) and torch.isfinite(out).all()
    assert model(torch.randn(2, 1, length)).shape == (2, n_src, length)


def test_causal_output_ignores_later_input_within_one_frame():
    model = tiny(causal=True)
    t, L = 400, TINY["L"]
    first = checks.first_changed_sample(model, 900, t)
    assert t - L < first <= t
    assert model.latency == L
    j = 300
    assert checks.last_input_used(tiny(causal=True), 700, j) <= j + L - 1


def test_non_causal_output_sees_later_input():
    assert checks.first_changed_sample(tiny(causal=False), 900, 600) < 600 - 8 * TINY["L"]


def test_gated_encoder_matches_the_paper_formula():
    model = tiny().double()
    frames = torch.randn(2, 5, TINY["L"], dtype=torch.float64)
    U, V = model.encoder.U.weight, model.encoder.V.weight  # [N, L]
    expected = torch.relu(frames @ U.T) * torch.sigmoid(frames @ V.T)  # [B, K, N]
    torch.testing.assert_close(model.encoder(frames), expected)
    assert model.encoder.U.bias is None and model.decoder.bias is None


def test_segment_norm_makes_the_output_scale_with_the_input():
    """Each frame is encoded level-free and its norm multiplied back after the
    linear decoder, so f(a x) = a f(x) for a > 0; without it the masks change."""
    x = torch.randn(1, 500, dtype=torch.float64)
    model = tiny().double()
    with torch.no_grad():
        torch.testing.assert_close(model(7.0 * x), 7.0 * model(x))
        plain = tiny(segment_norm=False).double()
        assert (plain(7.0 * x) - 7.0 * plain(x)).abs().max() > 1e-3


def test_softmax_masks_split_the_mixture_encoding():
    """Softmax masks sum to one over the speakers, so the estimates add up to
    the decoder's reconstruction of the unmasked encoding."""
    model = tiny(n_src=3).double()
    x = torch.randn(2, 301, dtype=torch.float64)
    left, right = model.frame_padding(301)
    frames = F.pad(x, (left, right)).unfold(-1, TINY["L"], TINY["L"] // 2)  # [B, K, L]
    gain = frames.norm(dim=-1, keepdim=True) + 1e-8
    w = model.encoder(frames / gain)  # [B, K, N]
    masks = model.separator(w)  # [B, S, K, N]
    torch.testing.assert_close(masks.sum(1), torch.ones_like(w))
    whole = model.decoder((w * gain).transpose(1, 2))[:, 0, left:left + 301]  # [B, T]
    with torch.no_grad():
        torch.testing.assert_close(model(x).sum(1), whole)
    sig = tiny(mask="sigmoid").double().separator(w)
    assert (sig.sum(1) - 1).abs().max() > 1e-3 and sig.min() >= 0 and sig.max() <= 1


def test_lstm_blocks_and_skip():
    model = tiny(layers=4, hidden=6)
    sizes = [b.num_layers for b in model.separator.blocks]
    assert sizes == [2, 2] and model.separator.blocks[1].input_size == 12  # BLSTM: 2 x 6
    # the skip: with the second block's weights zeroed (an all-zero LSTM outputs
    # exactly 0) the masks come from the first block's output alone; without
    # the skip they would be the mask layer's bias only
    with torch.no_grad():
        for p in model.separator.blocks[1].parameters():
            p.zero_()
        w = torch.rand(1, 5, TINY["N"])
        h0, _ = model.separator.blocks[0](model.separator.norm(w))  # [1, K, 2H]
        scores = model.separator.fc(h0).view(1, 5, 2, TINY["N"]).transpose(1, 2)  # [1, S, K, N]
        torch.testing.assert_close(model.separator(w), torch.softmax(scores, dim=1))
        assert (scores[:, 0] - scores[:, 0, :1]).abs().max() > 1e-4  # the frames differ: not the bias alone


@pytest.mark.parametrize("n_src", [2, 3])
def test_loss_is_permutation_invariant_and_the_best_permutation(n_src):
    checks.check_pit(tiny(n_src=n_src), n_src)


def test_paper_preset_matches_the_conv_tasnet_tables_32_0m():
    with torch.device("meta"):
        model = registry.build("lstm-tasnet-paper")
    params = registry.count_parameters(model)
    assert abs(params - 32.0e6) / 32.0e6 < 0.05
    c = model.config
    assert model.causal and (c.N, c.L, c.hidden, c.layers, c.mask) == (500, 40, 1000, 4, "softmax")
    # formula: U, V [N, L]; LayerNorm 2N; LSTM 4H(in + H) + 8H per layer; mask layer H*S*N + S*N; decoder N*L
    N, L, H = 500, 40, 1000
    lstm = 4 * H * (N + H) + 8 * H + 3 * (4 * H * 2 * H + 8 * H)
    assert params == 2 * N * L + 2 * N + lstm + H * 2 * N + 2 * N + N * L


def test_cpu_presets_and_family_defaults():
    model = registry.build(FAMILY)
    assert not model.causal and model.separator.blocks[0].bidirectional
    causal = registry.build("lstm-tasnet-causal")
    assert causal.causal and not causal.separator.blocks[0].bidirectional
    assert causal.frame_hop == causal.config.L // 2 and causal.receptive_field is None


def test_save_load_round_trip(tmp_path):
    checks.check_round_trip(tiny(causal=True), tmp_path / "m.safetensors")


@pytest.mark.parametrize("causal", [False, True])
def test_separator_chunks_a_mixture_to_its_exact_length(causal):
    checks.check_separator(tiny(causal=causal))


def test_protocol_and_listing():
    model = tiny(causal=True)
    assert model.set_products(torch.bfloat16) is False and model.inference_presets()["high"].segment == 30.0
    assert tiny(causal=False).streaming_layout() is None  # BLSTMs look ahead
    with pytest.raises(SepError, match="non-causal"):
        streaming_layout(tiny(causal=False))
    rows = {r["name"]: r for r in registry.list_models()}
    assert rows["lstm-tasnet-causal"]["causal"] is True and rows["lstm-tasnet-causal"]["streams"] is True
    assert rows["lstm-tasnet-paper"]["streams"] is True and rows[FAMILY]["streams"] is False
    assert rows["convtasnet-paper-causal"]["streams"] is True and rows["convtasnet-paper"]["streams"] is False
    assert rows[FAMILY]["kind"] == "family" and rows["lstm-tasnet-paper"]["params"] == 31_094_000
    # a family can say its causal models do not stream (registry.can_stream)
    assert registry.can_stream(FAMILY, True) and not registry.can_stream(FAMILY, False)
    LSTMTasNet.streamable = False
    try:
        assert not registry.can_stream(FAMILY, True)
    finally:
        del LSTMTasNet.streamable


@pytest.mark.parametrize("chunk", [1, 3, 4, 37, 1003])
def test_causal_stream_equals_the_offline_forward(chunk):
    """LSTM states and half a frame of overlap-add carried between steps give
    the offline output, whatever the chunking (in steps of 1 to all frames)."""
    model = tiny(causal=True)
    mix = torch.randn(1003)
    with torch.no_grad():
        ref = model(mix[None])[0]  # [S, T]
    streamer = Streamer(model, chunk_size=chunk)
    parts = [streamer.process(mix[i : i + chunk]) for i in range(0, 1003, chunk)]
    est = torch.cat([*parts, streamer.flush()], 1)
    assert est.shape == ref.shape
    torch.testing.assert_close(est, ref, rtol=0, atol=1e-6)
    assert sum(p.shape[1] for p in parts) >= 1003 - TINY["L"] - chunk  # output keeps up: no more held back
    streamer.reset()  # a new stream starts from zero states
    again = torch.cat([streamer.process(mix[:500]), streamer.flush()], 1)
    with torch.no_grad():
        torch.testing.assert_close(again, model(mix[None, :500])[0], rtol=0, atol=1e-6)


def test_averaged_passes_stream_as_offline():
    model = tiny(causal=True)
    mix = np.random.default_rng(2).standard_normal(777).astype(np.float32)
    np.testing.assert_allclose(stream_array(model, mix, 50, passes=2), offline(model, mix, passes=2), atol=1e-5)


def test_bad_input_and_config_raise_sep_error():
    model = tiny()
    with pytest.raises(SepError, match="exactly 2 speakers"):
        model.separate(torch.randn(1, 100), n_src=3)
    with pytest.raises(SepError, match="ref must have shape"):
        model.compute_loss(torch.randn(2, 100), torch.randn(2, 2, 99))
    with pytest.raises(SepError, match="L must be"):
        registry.make_config(FAMILY, L=7)
    with pytest.raises(SepError, match="mask must be"):
        registry.make_config(FAMILY, mask="relu")


def test_two_training_steps_give_a_checkpoint_that_separates(tmp_path):
    best = checks.train_two_steps("lstm-tasnet", TINY, tmp_path)
    model = registry.load_model(best)
    assert model.family == FAMILY and not model.causal
    out = checks.Separator(str(best), device="cpu", segment=0.5).separate(np.zeros(3001, np.float32) + 0.01, 8000)
    assert out.shape == (2, 3001)


@pytest.mark.parametrize("causal", [False, True])
def test_recipes_are_valid(causal):
    checks.check_recipe("lstm-tasnet" + ("-causal" if causal else ""), FAMILY, causal)


def test_both_families_can_teach_and_learn_by_distillation(tmp_path):
    """They map mixtures to waveforms, so sep train --teacher takes them either way."""
    from sepcli.training import loop as training

    teacher_path = tmp_path / "teacher.safetensors"
    registry.save_model(checks.build("upit-lstm", n_fft=32, hop=8, hidden=8, layers=1), teacher_path)
    teacher, sha = training.load_teacher(str(teacher_path), tiny(), FAMILY, torch.device("cpu"))
    assert teacher.family == "upit-lstm" and sha == registry.file_sha256(teacher_path)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_loss_falls_when_fitting_one_batch():
    first, last = checks.fit_one_batch(checks.build(FAMILY, N=32, L=16, hidden=32, layers=2, causal=True))
    assert last < min(first - 10.0, -2.0)  # at least 10 dB better, and better than the mixture's halves


def test_stream_runs_torch_steps_only():
    model = tiny(causal=True)
    assert Streamer(model).backend == "torch"  # "auto": no compiled kernel for this family
    with pytest.raises(SepError, match="Conv-TasNet only"):
        Streamer(model, backend="native")
