"""SuDoRM-RF: shapes and framing, the U-ConvBlock's resolutions and residual, masks,
PIT, the paper preset's size, compute against Conv-TasNet, checkpoints, Separator,
`sep separate`, recipe and training. Tiny configs only."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from sepcli import registry
from sepcli.cli import main
from sepcli.errors import SepError
from sepcli.inference.streaming import streaming_layout
from sepcli.models.sudormrf import SuDORMRF, UConvBlock
from tests.models import mask_family_checks as checks

FAMILY = "sudormrf"
TINY = dict(N=8, L=5, B=4, C=8, Q=3, R=2)  # stride 2; K padded to a multiple of 4


def tiny(**overrides) -> SuDORMRF:
    return checks.build(FAMILY, **{**TINY, **overrides})


def conv_macs(name: str, n_samples: int = 8000) -> int:
    """Multiply-adds of every convolution of ``name``'s untrained model on one
    mixture of ``n_samples`` samples, counted from shapes on the meta device."""
    total = 0

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.ConvTranspose1d):  # every input value meets out/groups x kernel weights
            total += inputs[0].numel() * module.out_channels // module.groups * module.kernel_size[0]
        else:  # every output value sums in/groups x kernel products
            total += output.numel() * module.in_channels // module.groups * module.kernel_size[0]

    with torch.device("meta"), torch.no_grad():
        model = registry.build(name)
        for module in model.modules():
            if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
                module.register_forward_hook(count)
        model(torch.empty(1, n_samples))
    return total


@pytest.mark.parametrize("mask", ["softmax", "relu"])
@pytest.mark.parametrize("n_src", [2, 3])
@pytest.mark.parametrize("length", [1, 2, 7, 33, 1001])
def test_output_shape_is_exactly_b_s_t(mask, n_src, length):
    model = tiny(mask=mask, n_src=n_src)
    out = model(torch.randn(2, length))
    assert out.shape == (2, n_src, length) and torch.isfinite(out).all()
    assert model(torch.randn(2, 1, length)).shape == (2, n_src, length)


@pytest.mark.parametrize("L", [4, 5, 21])
@pytest.mark.parametrize("length", [1, 9, 100, 1001])
def test_frames_cover_the_signal_twice_and_halve_exactly(L, length):
    model = tiny(L=L, Q=4)
    left, right = model.frame_padding(length)
    stride, padded = L // 2, left + length + right
    frames = (padded - L) // stride + 1
    assert (frames - 1) * stride + L == padded  # the frames tile the padded signal
    assert frames % 8 == 0  # Q=4: three halvings
    assert left == L - stride and right >= L - stride  # the first and last samples get a full overlap
    assert frames - 8 < 1 + max(1, -(-(2 * left + length - L) // stride))  # no more frames than the rounding needs


def test_u_conv_block_resolutions_and_residual():
    torch.manual_seed(0)
    block = UConvBlock(B=4, C=6, Q=4).double()
    assert [conv.stride[0] for conv in block.levels] == [1, 2, 2, 2]
    assert all(conv.groups == 6 and conv.kernel_size == (5,) for conv in block.levels)  # depthwise
    x = torch.randn(2, 4, 64, dtype=torch.float64)
    with torch.no_grad():
        out = block(x)
        assert out.shape == x.shape and (out - x).abs().max() > 1e-3
        # Without the (global) norms the block is local, and its reach is that of the
        # coarsest level: frame 0 moves level 0's frames 0-2, so frames 0-2 of the
        # three halved levels, and level 3's frame 2 is repeated up to full-rate frame
        # 23. Four width-5 convolutions at the full rate would reach frame 8 only.
        block.expand_norm = block.out_norm = nn.Identity()
        block.level_norms = nn.ModuleList(nn.Identity() for _ in range(4))
        moved = x.clone()
        moved[..., 0] += 1.0
        reach = (block(moved) - block(x)).abs().amax(dim=(0, 1)) > 1e-12  # [K]
        assert reach.nonzero().flatten().tolist() == list(range(24))
        block.project.weight.zero_()
        block.project.bias.zero_()
        torch.testing.assert_close(block(x), x)  # what the block adds goes through project only


def test_softmax_masks_split_the_mixture_encoding():
    """Softmax masks sum to one over the speakers and every speaker shares the
    decoder, so the estimates add up to the decoder's reconstruction of the
    unmasked encoding; ReLU masks do not."""
    model = tiny(n_src=3).double()
    x = torch.randn(2, 301, dtype=torch.float64)
    left, right = model.frame_padding(301)
    with torch.no_grad():
        w = torch.relu(model.encoder(F.pad(x, (left, right))[:, None]))  # [B, N, K]
        masks = model.separator(w)  # [B, S, N, K]
        torch.testing.assert_close(masks.sum(1), torch.ones_like(w))
        whole = model.decoder(w)[:, 0, left : left + 301]  # [B, T]
        torch.testing.assert_close(model(x).sum(1), whole)
        relu = tiny(n_src=3, mask="relu").double()
        masks = relu.separator(w)
        assert masks.min() >= 0 and (masks.sum(1) - 1).abs().max() > 1e-3
        assert (relu(x).sum(1) - relu.decoder(w)[:, 0, left : left + 301]).abs().max() > 1e-6


def test_non_causal_output_sees_later_input():
    assert checks.first_changed_sample(tiny(), 900, 600) < 100  # gLN and the blocks look ahead


@pytest.mark.parametrize("n_src", [2, 3])
def test_loss_is_permutation_invariant_and_the_best_permutation(n_src):
    checks.check_pit(tiny(n_src=n_src), n_src)


def test_paper_preset_is_the_papers_1_0x_size():
    with torch.device("meta"):
        model = registry.build("sudormrf-paper")
    c = model.config
    assert (c.N, c.L, c.B, c.C, c.Q, c.R, c.mask) == (512, 21, 128, 512, 4, 16, "softmax")
    params = registry.count_parameters(model)
    # the authors' released 1.0x models count 2.58M (MLSP) and 2.65M (journal): about 2.6M
    assert abs(params - 2.6e6) / 2.6e6 < 0.05
    # formula: encoder N*L; gLN 2N; bottleneck N*B + B; per block: expand B*C + C, gLN 2C,
    # PReLU 1, Q depthwise convs 5C + C and gLN 2C each, gLN 2C, PReLU 1, project C*B + B;
    # PReLU 1; masks B*S*N + S*N; decoder N*L
    N, L, B, C, Q, R, S = 512, 21, 128, 512, 4, 16, 2
    block = B * C + C + 2 * C + 1 + Q * 8 * C + 2 * C + 1 + C * B + B
    assert params == N * L + 2 * N + N * B + B + R * block + 1 + B * S * N + S * N + N * L == 2_622_625


def test_defaults_are_cpu_sized_and_a_fraction_of_conv_tasnets_compute():
    model = registry.build(FAMILY)
    assert registry.count_parameters(model) == 1_317_009 and not model.causal
    assert model.frame_hop == 16 and model.receptive_field is None
    ours, paper, conv_tasnet = conv_macs(FAMILY), conv_macs("sudormrf-paper"), conv_macs("convtasnet")
    assert ours < 0.15 * conv_tasnet and paper < 0.4 * conv_tasnet  # per second at 8 kHz: 0.61, 1.94, 4.94 G


def test_save_load_round_trip(tmp_path):
    checks.check_round_trip(tiny(), tmp_path / "m.safetensors")


def test_separator_chunks_a_mixture_to_its_exact_length():
    checks.check_separator(tiny())


def test_sep_separate_writes_one_file_per_speaker(tmp_path):
    path = tmp_path / "tiny.safetensors"
    registry.save_model(tiny(), path)
    mix = tmp_path / "talk.wav"
    sf.write(str(mix), (0.1 * np.random.default_rng(0).standard_normal(3001)).astype(np.float32), 8000)
    result = CliRunner().invoke(main, ["separate", str(mix), "--model", str(path), "--out", str(tmp_path / "out"),
                                       "--device", "cpu", "--threads", "1", "--segment", "0.2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    tracks = sorted((tmp_path / "out").rglob("*.wav"))
    assert len(tracks) == 2
    for track in tracks:
        data, rate = sf.read(str(track))
        assert rate == 8000 and data.shape == (3001,) and np.abs(data).max() > 0


def test_protocol_and_listing():
    model = tiny()
    assert model.set_products(torch.bfloat16) is False and model.inference_presets()["high"].segment == 30.0
    assert model.streaming_layout() is None
    with pytest.raises(SepError, match="non-causal"):
        streaming_layout(model)
    rows = {r["name"]: r for r in registry.list_models()}
    assert rows[FAMILY]["kind"] == "family" and rows["sudormrf-paper"]["kind"] == "preset"
    assert rows[FAMILY]["causal"] is False and rows[FAMILY]["streams"] is False
    assert rows[FAMILY]["params"] == 1_317_009 and rows["sudormrf-paper"]["params"] == 2_622_625


def test_bad_input_and_config_raise_sep_error():
    model = tiny()
    with pytest.raises(SepError, match="exactly 2 speakers"):
        model.separate(torch.randn(1, 100), n_src=3)
    with pytest.raises(SepError, match="ref must have shape"):
        model.compute_loss(torch.randn(2, 100), torch.randn(2, 2, 99))
    with pytest.raises(SepError, match="mix is empty"):
        model(torch.randn(1, 0))
    with pytest.raises(SepError, match="L must be"):
        registry.make_config(FAMILY, L=1)
    with pytest.raises(SepError, match="Q must be"):
        registry.make_config(FAMILY, Q=0)
    with pytest.raises(SepError, match="mask must be"):
        registry.make_config(FAMILY, mask="sigmoid")
    with pytest.raises(SepError, match="config key"):
        registry.make_config(FAMILY, causal=True)  # non-causal only: no such key


def test_recipe_is_valid():
    checks.check_recipe(FAMILY, FAMILY, False, segment=4.0)


def test_two_training_steps_give_a_checkpoint_that_separates(tmp_path):
    best = checks.train_two_steps(FAMILY, TINY, tmp_path)
    model = registry.load_model(best)
    assert model.family == FAMILY and model.config.R == TINY["R"]
    out = checks.Separator(str(best), device="cpu", segment=0.5).separate(np.zeros(3001, np.float32) + 0.01, 8000)
    assert out.shape == (2, 3001)


def test_can_teach_by_distillation(tmp_path):
    from sepcli.training import loop as training

    teacher_path = tmp_path / "teacher.safetensors"
    registry.save_model(tiny(), teacher_path)
    student = checks.build("lstm-tasnet", N=8, L=8, hidden=8, layers=1)
    teacher, sha = training.load_teacher(str(teacher_path), student, "lstm-tasnet", torch.device("cpu"))
    assert teacher.family == FAMILY and sha == registry.file_sha256(teacher_path)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_loss_falls_when_fitting_one_batch():
    first, last = checks.fit_one_batch(checks.build(FAMILY, N=32, L=16, B=16, C=32, Q=3, R=2))
    assert last < min(first - 10.0, -2.0)  # at least 10 dB better, and better than the mixture's halves
