"""Tests for sepcli.training: the loop, checkpoints, exact resume, schedules, recipes."""
from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sepcli import audio, registry
from sepcli.training import loop as training
from sepcli.training.data import build_mixture_set
from sepcli.errors import SepError
from sepcli.losses import distillation_loss
from sepcli.registry import register
from tests.test_data import make_corpus
from tests.test_losses import neg_pit_si_snr_reference

REPO = Path(__file__).resolve().parent.parent
TINY_CTN = {"N": 8, "L": 4, "B": 4, "H": 8, "Sc": 4, "X": 2, "R": 1}  # a Conv-TasNet that trains in ms


@dataclass
class ToyConfig:
    n_src: int = 2
    sample_rate: int = 8000
    channels: int = 16
    kernel: int = 16


@register("toy-train", ToyConfig)
class ToyNet(nn.Module):
    """A tiny TasNet: learned encoder, 1x1 mask layer, learned decoder."""

    accepts_silent_sources = False  # the registry's training contract

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.enc = nn.Conv1d(1, c.channels, c.kernel, stride=c.kernel // 2, padding=c.kernel // 2)
        self.mask = nn.Conv1d(c.channels, c.n_src * c.channels, 1)
        self.dec = nn.ConvTranspose1d(c.channels, 1, c.kernel, stride=c.kernel // 2, padding=c.kernel // 2)
        self.fit_calls = 0

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        b, t = mix.shape
        w = torch.relu(self.enc(mix[:, None]))  # [B, C, K]
        m = torch.sigmoid(self.mask(w)).view(b, self.config.n_src, self.config.channels, -1)  # [B, S, C, K]
        y = self.dec((m * w[:, None]).flatten(0, 1))  # [B*S, 1, T']
        y = y[..., :t]
        return nn.functional.pad(y, (0, t - y.shape[-1])).view(b, self.config.n_src, t)  # [B, S, T]

    @torch.no_grad()
    def separate(self, mix: torch.Tensor, n_src: int | None = None) -> torch.Tensor:
        return self(mix)

    def compute_loss(self, mix: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        from sepcli.metrics import pit_si_snr_torch

        values, _ = pit_si_snr_torch(self(mix), ref)
        return -values.mean()

    def fit_normalization(self, mixes) -> int:
        self.fit_calls += sum(1 for _ in mixes)
        return 0


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("train-data")
    make_corpus(root / "corpus", n_speakers=6, n_utts=3)
    split = root / "split.json"
    split.write_text(json.dumps({"valid": ["spk4", "spk5"], "test": []}))
    return {"corpus": str(root / "corpus"), "split": str(split), "root": root}


def toy_config(data: dict, **over) -> training.TrainConfig:
    base = dict(
        family="toy-train", model={}, train=data["corpus"], speakers_split=data["split"],
        segment=0.25, epoch_size=16, valid_size=4, valid_segment=0.25, batch_size=4,
        lr=3e-3, max_epochs=2, log_every=1, checkpoint_minutes=60.0,
    )
    base.update(over)
    return training.make_config(base)


def read_log(run: Path, event: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["event"] == event]


# ----------------------------------------------------------------------------- learning


def test_loss_falls_on_a_tiny_fixed_set(data, tmp_path):
    build_mixture_set(data["corpus"], tmp_path / "fixed", 8, segment=0.25, seed=0)
    cfg = toy_config(data, train=str(tmp_path / "fixed"), valid=str(tmp_path / "fixed"),
                     segment=0.25, batch_size=4, max_epochs=25, lr=1e-2, log_every=2)
    result = training.train(cfg, tmp_path / "run", progress=False)
    losses = [r["loss"] for r in read_log(tmp_path / "run")]
    assert result.reason == "finished" and result.epoch == 25 and result.step == 50
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 3.0  # at least 3 dB better SI-SNR
    valid = read_log(tmp_path / "run", "valid")
    assert len(valid) == 25
    assert valid[-1]["best"] > valid[0]["val_si_snri"]


def test_compiled_steps_follow_the_eager_ones(data, tmp_path, monkeypatch):
    # torch.compile changes how the step is computed, not what: the same
    # batches give the same losses up to float rounding, and the saved weights
    # are the plain model's (loadable without torch.compile). The graph goes
    # through capture and AOT autograd as in a real run, but not inductor's C++
    # code generation, which costs a minute here (bench/train_throughput.py
    # --compile measures the real thing).
    compiled_calls = []
    real_compile = torch.compile

    def compile_aot_eager(module, **kwargs):
        compiled_calls.append(module)
        return real_compile(module, backend="aot_eager")

    monkeypatch.setattr(training.torch, "compile", compile_aot_eager)
    eager = training.train(toy_config(data, max_epochs=1), tmp_path / "eager", progress=False)
    assert compiled_calls == []
    compiled = training.train(toy_config(data, max_epochs=1, compile=True), tmp_path / "compiled",
                              progress=False)
    assert len(compiled_calls) == 1 and eager.step == compiled.step == 4
    a = [r["loss"] for r in read_log(tmp_path / "eager")]
    b = [r["loss"] for r in read_log(tmp_path / "compiled")]
    assert b == pytest.approx(a, abs=1e-3)
    assert a[0] == pytest.approx(b[0], abs=1e-4)  # first step: same weights, same batch
    sa = torch.load(tmp_path / "eager" / "last.pt", weights_only=True)["model"]
    sb = torch.load(tmp_path / "compiled" / "last.pt", weights_only=True)["model"]
    assert sa.keys() == sb.keys()  # no "_orig_mod." prefixes
    for k in sa:
        assert torch.allclose(sa[k], sb[k], atol=1e-3), k
    registry.load_file(tmp_path / "compiled" / "best.safetensors")


def test_validation_score_is_si_snri_of_the_estimates(data):
    # Estimates = references (swapped: PIT must undo it) plus known noise; the
    # score must be the mean over mixtures of mean_s SI-SNR(est, ref) - SI-SNR(mix, ref).
    from sepcli.metrics import si_snr

    cfg = toy_config(data)
    _, valid_set, _ = training.build_datasets(cfg, 8000, 2)
    items = [valid_set[i] for i in range(len(valid_set))]
    noise = torch.randn(len(items), 2, items[0][0].shape[-1], generator=torch.Generator().manual_seed(0))
    est = torch.stack([r for _, r in items]) + 0.02 * noise  # [B, S, T]

    class Oracle(nn.Module):
        def separate(self, mix):
            return est[:, [1, 0]].to(mix.dtype)

    total, count = training.validate(Oracle(), valid_set, batch_size=len(items))
    want = []
    for (mix, ref), e in zip(items, est, strict=True):
        mix, ref, e = mix.double().numpy(), ref.double().numpy(), e.double().numpy()
        want.append(np.mean([si_snr(e[k], ref[k]) - si_snr(mix, ref[k]) for k in range(2)]))
    assert count == len(items)
    assert total / count == pytest.approx(float(np.mean(want)), abs=1e-3)


# ----------------------------------------------------------------------------- checkpoints and resume


def test_resume_gives_the_same_losses_and_weights(data, tmp_path):
    cfg = toy_config(data, max_epochs=2, speed_perturb=[0.9, 1.1])  # 8 steps, a validation between
    training.train(cfg, tmp_path / "straight", progress=False)
    training.train(toy_config(data, max_epochs=2, speed_perturb=[0.9, 1.1]), tmp_path / "split",
                   progress=False, max_steps=3)
    ck = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (0, 3, 3)
    result = training.train(None, tmp_path / "split", resume=True, progress=False)
    assert result.reason == "finished" and result.step == 8
    a, b = read_log(tmp_path / "straight"), read_log(tmp_path / "split")
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["val_si_snri"] for r in read_log(tmp_path / "straight", "valid")] == \
        [r["val_si_snri"] for r in read_log(tmp_path / "split", "valid")]
    sa = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    sb = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])


def test_resume_at_an_epoch_boundary(data, tmp_path):
    training.train(toy_config(data), tmp_path / "a", progress=False)
    training.train(toy_config(data), tmp_path / "b", progress=False, max_steps=4)
    ck = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"]) == (1, 0)  # validated before stopping
    assert len(read_log(tmp_path / "b", "valid")) == 1
    training.train(None, tmp_path / "b", resume=True, progress=False)
    assert [r["loss"] for r in read_log(tmp_path / "a")] == [r["loss"] for r in read_log(tmp_path / "b")]


def test_log_lines_after_the_checkpoint_are_dropped_on_resume(data, tmp_path):
    run = tmp_path / "run"
    training.train(toy_config(data), run, progress=False, max_steps=2)
    with open(run / "log.jsonl", "a") as f:  # as if killed after logging steps 3-4
        f.write(json.dumps({"event": "train", "step": 3, "loss": 1.0}) + "\n")
        f.write('{"event": "train", "st')  # a line cut in half
    training.train(None, run, resume=True, progress=False, max_steps=4)
    assert [r["step"] for r in read_log(run)] == [1, 2, 3, 4]
    assert read_log(run)[2]["loss"] != 1.0


def test_checkpoint_is_a_plain_dict_loadable_without_code(data, tmp_path):
    training.train(toy_config(data), tmp_path / "run", progress=False, max_steps=2)
    ck = training.load_checkpoint(tmp_path / "run")
    for key in ("model", "optimizer", "scheduler", "rng", "epoch", "step_in_epoch", "global_step",
                "best", "config", "recipe", "elapsed"):
        assert key in ck
    assert ck["config"]["family"] == "toy-train" and ck["config"]["model"]["channels"] == 16
    assert not list((tmp_path / "run").glob("*.tmp"))
    assert stat.S_IMODE((tmp_path / "run" / "last.pt").stat().st_mode) == audio.NEW_FILE_MODE


def test_timed_checkpoints_are_written_mid_epoch(data, tmp_path, monkeypatch):
    saved_steps = []
    real = training.torch.save

    def spy(obj, f, *a, **k):
        saved_steps.append(obj["global_step"])
        return real(obj, f, *a, **k)

    monkeypatch.setattr(training.torch, "save", spy)
    training.train(toy_config(data, checkpoint_minutes=1e-9, max_epochs=1), tmp_path / "run", progress=False)
    assert saved_steps[:4] == [1, 2, 3, 4]


def test_best_model_is_exported_for_sep_separate(data, tmp_path):
    result = training.train(toy_config(data, max_epochs=3), tmp_path / "run", progress=False)
    model = registry.load_model(result.best_path)
    meta, _ = registry.read_checkpoint(result.best_path)
    assert model.family == "toy-train"
    valid = read_log(tmp_path / "run", "valid")
    best = max(valid, key=lambda r: r["val_si_snri"])
    assert float(meta["val_si_snri"]) == pytest.approx(best["val_si_snri"], abs=1e-3)
    assert int(meta["epoch"]) == best["epoch"] == result.best_epoch
    # the exported weights score what the log says
    _, valid_set, _ = training.build_datasets(toy_config(data), 8000, 2)
    total, n = training.validate(model, valid_set)
    assert total / n == pytest.approx(best["val_si_snri"], abs=1e-3)


def test_lr_halves_on_plateau_and_training_stops_early(data, tmp_path, monkeypatch):
    scores = iter([5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0])
    monkeypatch.setattr(training, "validate", lambda *a, **k: (next(scores), 1))
    cfg = toy_config(data, patience=1, early_stop=3, max_epochs=10, lr=1e-3)
    result = training.train(cfg, tmp_path / "run", progress=False)
    valid = read_log(tmp_path / "run", "valid")
    assert result.reason == "early_stop" and result.epoch == 4 and result.best_epoch == 0
    assert [r["lr"] for r in valid] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4])
    # resuming a run that stopped early does not train on; a longer early_stop does
    again = training.train(None, tmp_path / "run", resume=True, progress=False)
    assert again.reason == "early_stop" and again.step == result.step
    longer = training.train(None, tmp_path / "run", resume=True, overrides={"early_stop": 5}, progress=False)
    assert longer.reason == "early_stop" and longer.epoch == 6


def test_fit_normalization_runs_on_fresh_runs_only(data, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ToyNet, "fit_normalization", lambda self, mixes: calls.append(len(list(mixes))) or 0)
    training.train(toy_config(data), tmp_path / "run", progress=False, max_steps=1)
    assert calls == [16]  # min(NORM_MIXTURES, epoch size)
    training.train(None, tmp_path / "run", resume=True, progress=False, max_steps=2)
    assert calls == [16]


def test_init_starts_from_given_weights_and_config(data, tmp_path):
    torch.manual_seed(123)
    src = registry.build("toy-train", {"channels": 8})
    registry.save_model(src, tmp_path / "init.safetensors")
    # no model settings given: the file's config (channels=8) is used
    training.train(toy_config(data, lr=1e-9), tmp_path / "run", progress=False, max_steps=1,
                   init=tmp_path / "init.safetensors")
    ck = training.load_checkpoint(tmp_path / "run")
    assert ck["config"]["model"]["channels"] == 8
    for k, v in src.state_dict().items():
        torch.testing.assert_close(ck["model"][k], v, atol=1e-6, rtol=0)
    with pytest.raises(SepError, match="do not fit"):
        training.train(toy_config(data, model={"channels": 16}), tmp_path / "run2", progress=False,
                       init=tmp_path / "init.safetensors")
    other = registry.build("convtasnet", {"N": 8, "L": 4, "B": 4, "H": 8, "Sc": 4, "X": 1, "R": 1})
    registry.save_model(other, tmp_path / "other.safetensors")
    with pytest.raises(SepError, match="convtasnet"):
        training.train(toy_config(data), tmp_path / "run3", progress=False, init=tmp_path / "other.safetensors")


def test_a_non_causal_conv_tasnet_initialises_a_causal_run(data, tmp_path):
    # The route to convtasnet-causal: fine-tune it from the non-causal weights
    # (gLN and cLN hold the same per-channel gains and biases; only padding and
    # statistics differ). The recipe's model settings override the file's.
    torch.manual_seed(7)
    src = registry.build("convtasnet", {**TINY_CTN, "causal": False, "norm": "gLN"})
    registry.save_model(src, tmp_path / "noncausal.safetensors")
    cfg = toy_config(data, family="convtasnet", model={"causal": True, "norm": "cLN"}, lr=1e-9)
    training.train(cfg, tmp_path / "run", progress=False, max_steps=1, init=tmp_path / "noncausal.safetensors")
    ck = training.load_checkpoint(tmp_path / "run")
    assert ck["config"]["model"]["causal"] is True and ck["config"]["model"]["norm"] == "cLN"
    assert ck["config"]["model"]["H"] == 8  # the rest comes from the file
    for k, v in src.state_dict().items():
        torch.testing.assert_close(ck["model"][k], v, atol=1e-6, rtol=0)
    causal = registry.build("convtasnet", ck["config"]["model"])
    causal.load_state_dict(ck["model"])
    x = torch.randn(1, 400)
    y = causal(x)
    x2 = x.clone()
    x2[:, 300:] = 0  # a causal model's output before sample ~300 cannot depend on later input
    torch.testing.assert_close(causal(x2)[..., :290], y[..., :290])


def test_relative_data_paths_survive_a_resume_from_elsewhere(data, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(data["corpus"]).parent)
    cfg = toy_config(data, train="corpus/", speakers_split="split.json")
    assert cfg.train == data["corpus"] + "/"
    training.train(cfg, tmp_path / "run", progress=False, max_steps=1)
    monkeypatch.chdir(tmp_path)
    r = training.train(None, tmp_path / "run", resume=True, progress=False, max_steps=2)
    assert r.step == 2


# ----------------------------------------------------------------------------- errors


def test_run_dir_is_never_reused_silently(data, tmp_path):
    training.train(toy_config(data), tmp_path / "run", progress=False, max_steps=1)
    with pytest.raises(SepError, match="--resume"):
        training.train(toy_config(data), tmp_path / "run", progress=False, max_steps=1)
    training.train(toy_config(data), tmp_path / "run", progress=False, max_steps=1, force=True)
    assert [r["step"] for r in read_log(tmp_path / "run")] == [1]
    with pytest.raises(SepError, match="no checkpoint"):
        training.train(None, tmp_path / "nothing", resume=True, progress=False)


def test_resume_refuses_to_change_the_result_defining_settings(data, tmp_path):
    training.train(toy_config(data), tmp_path / "run", progress=False, max_steps=1)
    with pytest.raises(SepError, match="cannot change 'lr'"):
        training.train(None, tmp_path / "run", resume=True, overrides={"lr": 1.0}, progress=False)
    r = training.train(None, tmp_path / "run", resume=True, overrides={"log_every": 3, "max_epochs": 1},
                       progress=False)
    assert r.epoch == 1


def test_missing_validation_data_is_explained(data, tmp_path):
    cfg = toy_config(data, speakers_split=None)
    with pytest.raises(SepError, match="no validation data"):
        training.train(cfg, tmp_path / "run", progress=False)


def test_unreadable_checkpoint(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"garbage")
    with pytest.raises(SepError, match="not a readable"):
        training.load_checkpoint(tmp_path / "run")


# ----------------------------------------------------------------------------- config and recipes


def test_recipe_paths_are_relative_to_the_recipe(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "x.toml").write_text(
        '[model]\nfamily = "toy-train"\n[model.config]\nchannels = 8\n'
        '[data]\ntrain = "../corpus/*/"\nspeakers_split = "split.json"\n[optim]\nlr = 0.01\n'
    )
    flat, text = training.read_recipe(tmp_path / "r" / "x.toml")
    assert flat["train"] == str(tmp_path / "corpus" / "*") + "/"
    assert flat["speakers_split"] == str(tmp_path / "r" / "split.json")
    cfg = training.make_config(flat, lr=0.5, model={"kernel": 8})
    assert cfg.lr == 0.5 and cfg.model == {"channels": 8, "kernel": 8}
    assert "toy-train" in text


def test_recipe_typos_are_errors(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("[optim]\nlearning_rate = 1\n")
    with pytest.raises(SepError, match="unknown key 'learning_rate'"):
        training.read_recipe(p)
    p.write_text("[optimizer]\nlr = 1\n")
    with pytest.raises(SepError, match="unknown section"):
        training.read_recipe(p)
    p.write_text("[optim\n")
    with pytest.raises(SepError, match="TOML"):
        training.read_recipe(p)
    with pytest.raises(SepError, match="batch_size"):
        training.make_config({}, batch_size=0)


def test_set_overrides_parse_toml_values():
    assert training.parse_set(["lr=5e-4", "model.X=4", "optim.patience=2", "speed_perturb=[0.9, 1.1]",
                               "sampling=speaker"]) == {
        "lr": 5e-4, "model": {"X": 4}, "patience": 2, "speed_perturb": [0.9, 1.1], "sampling": "speaker"}
    with pytest.raises(SepError):
        training.parse_set(["novalue"])


def test_set_checks_keys_with_the_closest_spelling_and_merges_tables():
    over = training.parse_set(["augment.reverb=0.5", "augment.eq=0.25", "max_steps=3", "data.segment=2.0",
                               "speed_perturb=none"])
    assert over == {"augment.reverb": 0.5, "augment.eq": 0.25, "max_steps": 3, "segment": 2.0,
                    "speed_perturb": "none"}
    recipe = {"augment": {"reverb": 1.0, "noise": 0.5}, "family": "toy-train"}
    over.pop("max_steps")  # a session limit, not a setting of the run
    cfg = training.make_config(recipe, **over)
    assert cfg.augment == {"reverb": 0.5, "noise": 0.5, "eq": 0.25} and cfg.speed_perturb is None
    assert training.make_config(recipe, **training.parse_set(["augment={}"])).augment == {}  # replaced
    for item, message in [("batch_sze=2", r"unknown training setting\(s\): batch_sze \(did you mean batch_size\?\)"),
                          ("augment.rever=1", r"unknown augment setting\(s\): rever \(did you mean reverb\?\)"),
                          ("optim.segment=1", r"unknown \[optim\] setting\(s\): segment"),
                          ("zzz=1", r"unknown training setting\(s\): zzz; valid: ")]:
        with pytest.raises(SepError, match=message):
            training.parse_set([item])
    with pytest.raises(SepError, match=r"unknown training setting\(s\): max_epoch \(did you mean max_epochs\?\)"):
        training.make_config({}, max_epoch=1)  # a recipe's keys, checked the same way


@pytest.mark.parametrize("name", ["convtasnet", "convtasnet-causal", "dpcl", "dpcl-mixed"])
def test_shipped_recipes_are_valid(name):
    flat, _ = training.read_recipe(REPO / "recipes" / f"{name}.toml")
    cfg = training.make_config(flat)
    model = registry.build(cfg.family, cfg.model)
    assert model.config.sample_rate == 8000 and model.config.n_src == 2
    assert cfg.speakers_split and Path(cfg.speakers_split).is_file()
    assert cfg.train == str(REPO.parent / "shared" / "data" / "librispeech-8k" / "*") + "/"
    # stage 5 of convtasnet widened the speed range and added augmentation (sepcli/training/augment.py)
    assert cfg.speed_perturb == ([0.85, 1.15] if name == "convtasnet" else [0.95, 1.05])
    assert bool(cfg.augment) == (name == "convtasnet")
    if name.startswith("convtasnet"):
        assert model.config.causal == (name == "convtasnet-causal")
    assert cfg.speaker_counts == ([2, 3] if name == "dpcl-mixed" else None)


def test_epoch_indices_shard_without_overlap():
    full = training.epoch_indices(20, epoch=3, seed=1, world=1, rank=0)
    parts = [training.epoch_indices(20, epoch=3, seed=1, world=2, rank=r) for r in (0, 1)]
    assert sorted(parts[0] + parts[1]) == list(range(20))
    assert parts[0] == full[0::2] and parts[1] == full[1::2]
    assert training.epoch_indices(20, epoch=4, seed=1, world=1, rank=0) != full


def test_rich_progress_on_a_terminal(data, tmp_path, monkeypatch):
    import io
    import sys

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    fake = Tty()
    monkeypatch.setattr(sys, "stderr", fake)
    training.train(toy_config(data), tmp_path / "run", max_steps=6)
    shown = fake.getvalue()
    assert "epoch" in shown and "loss" in shown and "val SI-SNRi" in shown and "s/s" in shown
    assert "validation SI-SNRi" in shown  # the per-epoch line


def test_speaker_counts_train_dpcl_on_mixed_counts_and_refuse_others(data, tmp_path):
    cfg = toy_config(data, family="dpcl", model=dict(hidden=8, layers=1, emb_dim=4, n_fft=64, hop=16),
                     speaker_counts=[2, 3], max_epochs=1)
    train_set, valid_set, _ = training.build_datasets(cfg, 8000, 2)
    counts = {int((train_set[i][1].abs().amax(dim=1) > 0).sum()) for i in range(16)}
    assert counts == {2, 3} and train_set[0][1].shape[0] == 3
    assert valid_set[0][1].shape[0] == 2  # validation keeps the model's count
    result = training.train(cfg, tmp_path / "run", progress=False)
    assert result.reason == "finished" and np.isfinite([r["loss"] for r in read_log(tmp_path / "run")]).all()
    with pytest.raises(SepError, match="silent references"):
        training.train(toy_config(data, speaker_counts=[2, 3]), tmp_path / "run2", progress=False)
    with pytest.raises(SepError, match="speaker_counts must be"):
        training.build_datasets(toy_config(data, family="dpcl", speaker_counts=[0]), 8000, 2)


def test_keep_epochs_exports_every_epochs_weights(data, tmp_path):
    from safetensors.torch import load_file

    result = training.train(toy_config(data, keep_epochs=True), tmp_path / "run", progress=False)
    assert result.reason == "finished"
    files = sorted(p.name for p in (tmp_path / "run").glob("epoch*.safetensors"))
    assert files == ["epoch0.safetensors", "epoch1.safetensors"]
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    kept = load_file(tmp_path / "run" / "epoch1.safetensors")
    assert last.keys() <= kept.keys()
    assert all(torch.equal(kept[k].float(), v.float()) for k, v in last.items())
    assert "keep_epochs" in training.RESUMABLE_KEYS  # may be switched on when resuming


# ----------------------------------------------------------------------------- bfloat16 on CPU


@register("toy-amp", ToyConfig)
class AmpProbeNet(ToyNet):
    """ToyNet that records, on every forward, whether it ran in training mode
    and under which CPU autocast dtype (None: no autocast)."""

    calls: list = []

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        enabled = torch.is_autocast_enabled("cpu")
        type(self).calls.append((self.training, torch.get_autocast_dtype("cpu") if enabled else None))
        return super().forward(mix)


@pytest.mark.parametrize("native", [True, False])
def test_amp_cpu_trains_in_bfloat16_where_native_and_validates_in_float32(data, tmp_path, monkeypatch, native):
    import sepcli.engine

    monkeypatch.setattr(sepcli.engine, "native_bfloat16", lambda: native)
    # recorded directly: other tests' CLI runs reconfigure the package loggers, which hides them from caplog
    warned: list[str] = []
    real_warning = training.log.warning
    monkeypatch.setattr(training.log, "warning", lambda msg, *a: warned.append(msg % a) or real_warning(msg, *a))
    AmpProbeNet.calls.clear()
    cfg = toy_config(data, family="toy-amp", amp_cpu=True, max_epochs=1)
    result = training.train(cfg, tmp_path / "run", progress=False, device="cpu")
    assert result.reason == "finished" and np.isfinite(result.best_si_snri)
    train_calls = {dtype for is_training, dtype in AmpProbeNet.calls if is_training}
    valid_calls = {dtype for is_training, dtype in AmpProbeNet.calls if not is_training}
    assert train_calls == ({torch.bfloat16} if native else {None})
    assert valid_calls == {None}
    assert native == (not any("no native bfloat16" in w for w in warned))
    AmpProbeNet.calls.clear()
    training.train(toy_config(data, family="toy-amp", max_epochs=1), tmp_path / "off", progress=False, device="cpu")
    assert {dtype for _t, dtype in AmpProbeNet.calls} == {None}  # default: off


def test_random_polarity_is_for_dynamic_mixing_only(data, tmp_path):
    with pytest.raises(SepError, match="random_polarity"):
        toy_config(data, random_polarity="yes")
    build_mixture_set(data["corpus"], tmp_path / "fixed", 4, segment=0.25, seed=0)
    with pytest.raises(SepError, match="dynamic mixing"):
        training.train(toy_config(data, train=str(tmp_path / "fixed"), valid=str(tmp_path / "fixed"),
                                  random_polarity=True), tmp_path / "run", progress=False)
    result = training.train(toy_config(data, random_polarity=True), tmp_path / "run2", progress=False, max_steps=2)
    assert result.step == 2
    assert training.load_checkpoint(tmp_path / "run2")["config"]["random_polarity"] is True


# ----------------------------------------------------------------------------- distillation


def test_teacher_is_frozen_and_not_part_of_the_trained_module():
    torch.manual_seed(0)
    student = registry.build("convtasnet", {**TINY_CTN, "causal": True, "norm": "cLN"})
    teacher = registry.build("convtasnet", TINY_CTN).eval().requires_grad_(False)
    wrapped = training._LossModule(student, teacher, 0.5)
    assert set(wrapped.state_dict()) == {f"model.{k}" for k in student.state_dict()}
    mix, ref = torch.randn(2, 400), torch.randn(2, 2, 400)
    loss = wrapped(mix, ref)
    with torch.no_grad():
        target = teacher(mix)
    expected = distillation_loss(student(mix), ref, target, 0.5)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.encoder.weight.grad is not None and student.encoder.weight.grad.abs().sum() > 0


def test_distilled_student_moves_towards_its_teacher(data, tmp_path):
    # With distill_weight=1 the references play no part: the student must come
    # closer to the teacher's outputs on the mixtures it trains on.
    build_mixture_set(data["corpus"], tmp_path / "fixed", 8, segment=0.25, seed=0)
    torch.manual_seed(5)
    teacher = registry.build("convtasnet", TINY_CTN)
    registry.save_model(teacher, tmp_path / "teacher.safetensors")
    torch.manual_seed(6)
    start = registry.build("convtasnet", {**TINY_CTN, "causal": True, "norm": "cLN"})
    registry.save_model(start, tmp_path / "student.safetensors")
    cfg = toy_config(data, family="convtasnet", model={}, train=str(tmp_path / "fixed"),
                     valid=str(tmp_path / "fixed"), max_epochs=15, lr=1e-2, log_every=2,
                     teacher=str(tmp_path / "teacher.safetensors"), distill_weight=1.0)
    training.train(cfg, tmp_path / "run", progress=False, init=tmp_path / "student.safetensors")
    ck = training.load_checkpoint(tmp_path / "run")
    assert ck["config"]["teacher"] == str(tmp_path / "teacher.safetensors")
    assert ck["teacher_sha256"] == registry.file_sha256(tmp_path / "teacher.safetensors")
    end = registry.build("convtasnet", ck["config"]["model"])
    end.load_state_dict(ck["model"])
    mixes = torch.stack([torch.from_numpy(audio.read_audio(p)[0]).float()
                         for p in sorted((tmp_path / "fixed" / "mix").glob("*.wav"))])
    with torch.no_grad():
        target = teacher(mixes)
        before, after = neg_pit_si_snr_reference(start(mixes), target), neg_pit_si_snr_reference(end(mixes), target)
    assert after < before - 3.0  # at least 3 dB closer to the teacher


def test_distillation_settings_are_checked(data, tmp_path):
    with pytest.raises(SepError, match="distill_weight"):
        toy_config(data, distill_weight=1.5)
    torch.manual_seed(0)
    registry.save_model(registry.build("convtasnet", TINY_CTN), tmp_path / "t2.safetensors")
    registry.save_model(registry.build("convtasnet", {**TINY_CTN, "n_src": 3}), tmp_path / "t3.safetensors")
    with pytest.raises(SepError, match="waveform models.*student is 'toy-train'"):
        training.train(toy_config(data, teacher=str(tmp_path / "t2.safetensors")), tmp_path / "a",
                       progress=False, max_steps=1)
    ctn = dict(family="convtasnet", model=TINY_CTN)
    with pytest.raises(SepError, match="n_src is 3"):
        training.train(toy_config(data, **ctn, teacher=str(tmp_path / "t3.safetensors")), tmp_path / "b",
                       progress=False, max_steps=1)
    with pytest.raises(SepError, match="not found"):
        training.train(toy_config(data, **ctn, teacher=str(tmp_path / "none.safetensors")), tmp_path / "c",
                       progress=False, max_steps=1)
    # a resumed run must distil from the same teacher it started with
    training.train(toy_config(data, **ctn, teacher=str(tmp_path / "t2.safetensors")), tmp_path / "d",
                   progress=False, max_steps=1)
    torch.manual_seed(1)
    registry.save_model(registry.build("convtasnet", TINY_CTN), tmp_path / "t2.safetensors", force=True)
    with pytest.raises(SepError, match="teacher .* changed"):
        training.train(None, tmp_path / "d", resume=True, progress=False, max_steps=2)


def test_a_shipped_teacher_name_is_recorded_as_its_file(data):
    shipped = registry.shipped_models()
    if "convtasnet" not in shipped:
        pytest.skip("no shipped convtasnet")
    cfg = toy_config(data, teacher="convtasnet")
    assert cfg.teacher == str(Path(shipped["convtasnet"]["path"]).resolve())
