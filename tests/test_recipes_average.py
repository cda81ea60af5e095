"""recipes/average.py: checkpoint averaging."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from sepcli import registry
from sepcli.errors import SepError

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("recipes_average", REPO / "recipes" / "average.py")
average_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(average_mod)

TINY = dict(N=8, L=4, B=4, H=8, Sc=4, X=2, R=1)


def test_average_is_the_mean_of_every_tensor_from_either_file_kind(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a, b = registry.build("convtasnet", **TINY), registry.build("convtasnet", **TINY)
    registry.save_model(a, tmp_path / "a.safetensors")
    # a training checkpoint dict, as runs/*/last.pt holds (model state + the run's config)
    torch.save({"model": b.state_dict(), "config": {"family": "convtasnet", "model": TINY}}, tmp_path / "b.pt")
    got = average_mod.average([average_mod.load_any(tmp_path / "a.safetensors"), average_mod.load_any(tmp_path / "b.pt")])
    for key, value in got.state_dict().items():
        want = (a.state_dict()[key].double() + b.state_dict()[key].double()) / 2
        assert torch.allclose(value.double(), want, atol=1e-7), key
    assert not torch.equal(a.state_dict()["encoder.weight"], b.state_dict()["encoder.weight"])


def test_average_refuses_different_architectures_and_bad_files(tmp_path: Path) -> None:
    small, other = registry.build("convtasnet", **TINY), registry.build("convtasnet", **{**TINY, "X": 3})
    with pytest.raises(SepError, match="same tensors"):
        average_mod.average([small, other])
    torch.save({"weights": {}}, tmp_path / "x.pt")
    with pytest.raises(SepError, match="'model' and 'config'"):
        average_mod.load_any(tmp_path / "x.pt")


def test_config_set_changes_inference_settings_of_the_averaged_model(tmp_path: Path, monkeypatch) -> None:
    torch.manual_seed(0)
    tiny = dict(layers=1, hidden=8, emb_dim=4)
    registry.save_model(registry.build("dpcl", **tiny), tmp_path / "a.safetensors")
    registry.save_model(registry.build("dpcl", **tiny), tmp_path / "b.safetensors")
    out = tmp_path / "avg.safetensors"
    monkeypatch.setattr("sys.argv", ["average.py", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                                     "--out", str(out), "--config-set", "kmeans_power=2.0",
                                     "--config-set", 'auto_threshold=0.2'])
    average_mod.main()
    got = registry.load_file(out)
    assert got.config.kmeans_power == 2.0 and got.config.auto_threshold == 0.2
    assert got.config.hidden == 8  # the rest is the checkpoints' own


@pytest.mark.parametrize("item, error", [("no_such_field=1", SystemExit), ("kmeans_power", SystemExit),
                                         ("auto_method=eigen", SystemExit), ("kmeans_power=-1", SepError)])
def test_config_set_refuses_unknown_fields_bad_json_and_bad_values(item: str, error: type) -> None:
    from ship import set_config

    model = registry.build("dpcl", layers=1, hidden=8, emb_dim=4)
    with pytest.raises(error):
        set_config(model, [item])
    assert model.config.kmeans_power == 0.0
