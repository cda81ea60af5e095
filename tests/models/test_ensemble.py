"""The ensemble family: members' tracks scaled onto the mixture, aligned, averaged;
no weights of its own, members pinned by SHA-256, never trained, never the default."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sepcli import registry
from sepcli.api import Separator
from sepcli.errors import SepError
from sepcli.models.ensemble import align_to, fit_to_mix

TINY_TASNET = dict(N=16, L=16, B=8, H=16, Sc=8, X=2, R=1)
TINY_UPIT = dict(hidden=16, layers=1)


def _save(path: Path, family: str, seed: int, **config) -> Path:
    torch.manual_seed(seed)
    registry.save_model(registry.build(family, **config), path, force=True)
    return path


@pytest.fixture()
def members(tmp_path: Path) -> list[str]:
    return [str(_save(tmp_path / "a.safetensors", "convtasnet", 0, **TINY_TASNET)),
            str(_save(tmp_path / "b.safetensors", "upit-lstm", 1, **TINY_UPIT))]


def test_fit_to_mix_undoes_any_gain_and_sign_of_tracks_that_sum_to_the_mixture() -> None:
    rng = np.random.default_rng(0)
    tracks = torch.from_numpy(rng.standard_normal((2, 3, 4000))).float()  # [B, S, T]
    mix = tracks.sum(1)  # [B, T]
    gains = torch.tensor([[0.1, -3.0, 7.0], [-0.5, 2.0, 0.01]])[:, :, None]
    assert torch.allclose(fit_to_mix(tracks * gains, mix), tracks, atol=1e-4)


def test_fit_to_mix_stays_finite_on_a_silent_track() -> None:
    tracks = torch.randn(1, 2, 1000)
    tracks[:, 1] = 0
    out = fit_to_mix(tracks, tracks.sum(1))
    assert torch.isfinite(out).all() and torch.allclose(out[:, 0], tracks[:, 0], atol=1e-4)


def test_align_to_restores_the_reference_order_per_batch_item() -> None:
    torch.manual_seed(0)
    ref = torch.randn(3, 3, 2000)
    perms = [[2, 0, 1], [0, 1, 2], [1, 2, 0]]
    shuffled = torch.stack([ref[b, p] for b, p in enumerate(perms)]) + 0.3 * torch.randn(3, 3, 2000)
    out = align_to(shuffled, ref)
    for b, p in enumerate(perms):
        inverse = np.argsort(p)
        assert torch.equal(out[b], shuffled[b, inverse])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _expected(paths: list[str], weights: list[float], mix: torch.Tensor) -> np.ndarray:
    """The ensemble recomputed with numpy: least-squares gains, best order by correlation."""
    m = mix.numpy()[0].astype(np.float64)
    out, first = 0.0, None
    for path, w in zip(paths, np.asarray(weights) / sum(weights)):
        est = registry.load_file(path).separate(mix).numpy()[0].astype(np.float64)  # [S, T]
        gains = np.linalg.lstsq(est.T, m, rcond=None)[0]
        est = est * gains[:, None]
        if first is None:
            first = est
        else:
            corr = _unit(first) @ _unit(est).T
            if corr[0, 1] + corr[1, 0] > corr[0, 0] + corr[1, 1]:
                est = est[::-1]
        out = out + w * est
    return out


def test_separate_is_the_weighted_average_of_the_aligned_fitted_members(members: list[str]) -> None:
    model = registry.build("ensemble", members=members, weights=[3.0, 1.0])
    torch.manual_seed(2)
    mix = torch.randn(1, 6000)
    got = model.separate(mix).numpy()[0]
    np.testing.assert_allclose(got, _expected(members, [3.0, 1.0], mix), atol=2e-4 * np.abs(got).max())


def test_a_model_averaged_with_itself_is_that_model_scaled_onto_the_mixture(members: list[str]) -> None:
    model = registry.build("ensemble", members=[members[0], members[0]], weights=[0.2, 0.8])
    mix = torch.randn(2, 5000)
    alone = fit_to_mix(registry.load_file(members[0]).separate(mix), mix)
    assert torch.allclose(model.separate(mix), alone, atol=1e-5)


def test_file_holds_no_tensors_and_round_trips(members: list[str], tmp_path: Path) -> None:
    model = registry.build("ensemble", members=members)
    assert model.state_dict() == {}
    own = [registry.count_parameters(registry.load_file(p)) for p in members]
    assert registry.count_parameters(model) == sum(own) > 0
    path = tmp_path / "ens.safetensors"
    registry.save_model(model, path)
    loaded = registry.load_file(path)
    assert loaded.family == "ensemble" and loaded.config == model.config
    mix = torch.randn(1, 4000)
    assert torch.equal(loaded.separate(mix), model.separate(mix))


def test_moving_the_ensemble_moves_its_members(members: list[str]) -> None:
    model = registry.build("ensemble", members=members).double()
    assert all(p.dtype == torch.float64 for m in model.members for p in m.parameters())
    model.train()
    assert all(m.training for m in model.members)
    model.eval()
    assert not any(m.training for m in model.members)


def test_a_member_changed_since_the_ensemble_was_measured_is_refused(members: list[str]) -> None:
    pinned = [registry.file_sha256(p) for p in members]
    registry.build("ensemble", members=members, member_sha256=pinned)  # loads
    _save(Path(members[1]), "upit-lstm", 5, **TINY_UPIT)  # new weights under the same name
    with pytest.raises(SepError, match="SHA-256 changed"):
        registry.build("ensemble", members=members, member_sha256=pinned)


@pytest.mark.parametrize("config, match", [
    (dict(members=["x"]), "two or more"),
    (dict(members=["x", "y"], weights=[1.0]), "one per member"),
    (dict(members=["x", "y"], weights=[1.0, 0.0]), "positive"),
    (dict(members=["x", "y"], member_sha256=["0" * 64]), "one per member"),
])
def test_bad_configs_are_refused(config: dict, match: str) -> None:
    with pytest.raises(SepError, match=match):
        registry.make_config("ensemble", config)


def test_members_must_exist_agree_and_look_ahead(members: list[str], tmp_path: Path) -> None:
    with pytest.raises(SepError, match="no such file"):
        registry.build("ensemble", members=[members[0], str(tmp_path / "missing.safetensors")])
    three = str(_save(tmp_path / "c.safetensors", "upit-lstm", 3, n_src=3, **TINY_UPIT))
    with pytest.raises(SepError, match="separates 3 speakers"):
        registry.build("ensemble", members=[members[0], three])
    causal = str(_save(tmp_path / "d.safetensors", "convtasnet", 4, causal=True, norm="cLN", **TINY_TASNET))
    with pytest.raises(SepError, match="causal"):
        registry.build("ensemble", members=[members[0], causal])


def test_separator_runs_it_with_one_pass_and_refuses_another_speaker_count(members: list[str]) -> None:
    model = registry.build("ensemble", members=members)
    sep = Separator(model, device="cpu")
    assert (sep.settings.passes, sep.settings.segment, sep.settings.overlap) == (1, 30.0, 0.1)
    assert sep.separate(np.random.default_rng(0).standard_normal(8000).astype(np.float32), 8000).shape == (2, 8000)
    with pytest.raises(SepError, match="exactly 2 speakers"):
        model.separate(torch.randn(1, 800), n_src=3)
    with pytest.raises(SepError, match="cannot count them: --num-speakers auto needs a clustering model"):
        model.separate(torch.randn(1, 800), n_src="auto")


def _ship(models: Path, name: str, family_model: torch.nn.Module, si_snri: float) -> None:
    sha = registry.save_model(family_model, models / f"{name}.safetensors")
    card = {"name": name, "family": family_model.family, "config": dataclasses.asdict(family_model.config),
            "sha256": sha, "causal": False, "quality": {"si_snri": si_snri}}
    (models / f"{name}.json").write_text(json.dumps(card))


def test_never_the_default_nor_listed_as_a_family_to_train(members: list[str], tmp_path: Path,
                                                             monkeypatch) -> None:
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("SEP_MODELS_DIR", str(models))
    _ship(models, "single", registry.load_file(members[0]), 5.0)
    _ship(models, "both", registry.build("ensemble", members=["single", members[1]]), 9.0)
    assert registry.default_model_name() == "single"
    rows = {(r["name"], r["kind"]) for r in registry.list_models()}
    assert ("both", "shipped") in rows and ("ensemble", "family") not in rows
    assert registry.load_model("both").members[0].family == "convtasnet"


def test_training_an_ensemble_is_refused(members: list[str], tmp_path: Path) -> None:
    from sepcli.training.config import TrainConfig
    from sepcli.training.loop import train

    cfg = TrainConfig(family="ensemble", model={"members": members}, train="unused", max_epochs=1)
    with pytest.raises(SepError, match="not trained itself"):
        train(cfg, tmp_path / "run")


def test_an_ensemble_can_teach_a_waveform_student(members: list[str], tmp_path: Path) -> None:
    from sepcli.losses import distillation_loss
    from sepcli.training.teacher import _LossModule, load_teacher

    path = tmp_path / "ens.safetensors"
    registry.save_model(registry.build("ensemble", members=members), path)
    student = registry.build("convtasnet", **TINY_TASNET)
    teacher, sha = load_teacher(str(path), student, "convtasnet", torch.device("cpu"))
    assert sha == registry.file_sha256(path)
    mix, ref = torch.randn(2, 4000), torch.randn(2, 2, 4000)
    loss = _LossModule(student, teacher, 0.5)(mix, ref)
    assert torch.isclose(loss, distillation_loss(student(mix), ref, teacher.separate(mix), 0.5))
    with pytest.raises(SepError, match="student"):
        load_teacher(str(path), registry.load_file(path), "ensemble", torch.device("cpu"))
