"""`sep models`: table and JSON listing of shipped weights, presets and families."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from sepcli import registry
from sepcli.cli import main


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SEP_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "80")  # rich's width outside a terminal; keep tests deterministic
    torch.manual_seed(0)
    model = registry.build("convtasnet", N=8, L=4, B=6, H=10, Sc=5, P=3, X=3, R=2)
    sha = registry.save_model(model, tmp_path / "tiny-tasnet.safetensors")
    card = {
        "name": "tiny-tasnet", "family": "convtasnet", "sample_rate": 8000, "n_src": 2,
        "causal": False, "params": registry.count_parameters(model),
        "quality": {"si_snri": 11.27, "sdri": 11.84}, "sha256": sha,
    }
    (tmp_path / "tiny-tasnet.json").write_text(json.dumps(card))
    return tmp_path


def test_models_json(models_dir):
    result = CliRunner().invoke(main, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    tiny = rows["tiny-tasnet"]
    assert tiny["kind"] == "shipped" and tiny["default"] and tiny["causal"] is False
    assert tiny["params"] == 1869 and tiny["quality"]["si_snri"] == 11.27
    assert tiny["path"] == str(models_dir / "tiny-tasnet.safetensors")
    assert rows["convtasnet-paper-causal"]["causal"] is True
    assert rows["convtasnet-paper"]["params"] == 5050545


def test_models_table(models_dir):
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "tiny-tasnet *" in out  # default marker
    assert "11.27" in out and "11.84" in out  # measured quality, as the card gives it
    assert "1.9k" in out and "5.05M" in out
    assert "convtasnet-paper-causal" in out and "8 kHz" in out
    assert "…" not in out  # everything fits in 80 columns


def test_models_table_wide(models_dir, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    out = CliRunner().invoke(main, ["models"]).output
    assert "Family" in out and "Description" in out and "cLN" in out


def test_models_table_without_shipped(tmp_path, monkeypatch):
    monkeypatch.setenv("SEP_MODELS_DIR", str(tmp_path / "empty"))
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    assert "No shipped weights" in result.output and "convtasnet-paper" in result.output


def test_models_help():
    result = CliRunner().invoke(main, ["models", "-h"])
    assert result.exit_code == 0
    assert "Example:" in result.output and "--json" in result.output
    assert "Print the list as JSON" in result.output


def test_models_show_the_default_passes(models_dir, monkeypatch):
    """The scores are measured with the model's default passes: the listing says
    how many (from the card's config, else the file's header)."""
    rows = {r["name"]: r for r in json.loads(CliRunner().invoke(main, ["models", "--json"]).output)}
    assert (rows["tiny-tasnet"]["passes"], rows["tiny-tasnet"]["pass_signs"]) == (1, False)  # header: none set
    assert rows["tiny-tasnet"]["speeds"] == [1.0]
    card = json.loads((models_dir / "tiny-tasnet.json").read_text())
    card["config"] = {"passes": 4, "pass_signs": True}
    (models_dir / "tiny-tasnet.json").write_text(json.dumps(card))
    rows = {r["name"]: r for r in json.loads(CliRunner().invoke(main, ["models", "--json"]).output)}
    assert (rows["tiny-tasnet"]["passes"], rows["tiny-tasnet"]["pass_signs"]) == (4, True)
    assert "Passes" not in CliRunner().invoke(main, ["models"]).output  # 80 columns: no room
    monkeypatch.setenv("COLUMNS", "100")
    out = CliRunner().invoke(main, ["models"]).output
    assert "Passes" in out and "4±" in out and "4± x" not in out
    card["config"] = {"passes": 2, "pass_signs": True, "speeds": [1.0, 0.92, 0.88]}
    (models_dir / "tiny-tasnet.json").write_text(json.dumps(card))
    rows = {r["name"]: r for r in json.loads(CliRunner().invoke(main, ["models", "--json"]).output)}
    assert rows["tiny-tasnet"]["speeds"] == [1.0, 0.92, 0.88]
    assert "2± x3" in CliRunner().invoke(main, ["models"]).output
