"""bench/seed_table.py: the Conv-TasNet paper's comparison table over shipped models,
on a tiny made-up set with tiny shipped models (nothing read from ../shared)."""
from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sepcli import registry
from sepcli.api import Separator
from tests.sigtools import si_snr_reference

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("seed_table", REPO / "bench" / "seed_table.py")
seed_table = importlib.util.module_from_spec(spec)
sys.modules["seed_table"] = seed_table  # dataclasses look their module up there
spec.loader.exec_module(seed_table)


def make_set(root: Path, n: int = 3, seconds: float = 0.6, rate: int = 8000) -> Path:
    """A Libri2Mix-layout set: mix/, s1/, s2/ with one file per mixture name."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    for i in range(n):
        s1 = 0.2 * np.sin(2 * np.pi * (300 + 50 * i) * t)
        s2 = 0.05 * rng.standard_normal(t.size)
        for folder, x in (("s1", s1), ("s2", s2), ("mix", s1 + s2)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            sf.write(root / folder / f"{i:04d}.wav", x.astype(np.float32), rate, subtype="FLOAT")
    return root


def ship(folder: Path, name: str, family: str, **config) -> None:
    torch.manual_seed(0)
    sha = registry.save_model(registry.build(family, config), folder / f"{name}.safetensors")
    (folder / f"{name}.json").write_text(json.dumps({"name": name, "sha256": sha, "training": {"hours": 1.5}}))


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    ship(models, "tasnet-tiny", "lstm-tasnet", N=8, L=8, hidden=8, layers=2, causal=True)
    ship(models, "upit-tiny", "upit-lstm", n_fft=32, hop=8, hidden=8, layers=1)
    monkeypatch.setenv("SEP_MODELS_DIR", str(models))
    return models


def pit_si_snri(model: str, mix_path: Path, refs: list[Path]) -> float:
    """Independent check of one mixture's SI-SNRi: Separator, then the best order."""
    mix, rate = sf.read(mix_path, dtype="float32")
    est = Separator(model, device="cpu").separate(mix, rate)
    ref = [sf.read(p, dtype="float64")[0] for p in refs]
    best = max(np.mean([si_snr_reference(est[p[i]], ref[i]) for i in range(2)])
               for p in itertools.permutations(range(2)))
    return best - np.mean([si_snr_reference(mix, r) for r in ref])


def test_table_rows_and_paper_figures(tmp_path, shipped, capsys):
    test_set = make_set(tmp_path / "set")
    assert seed_table.main([str(test_set), "--limit", "1", "--markdown", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "(1 mixtures, 1 threads)" in out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in out.splitlines() if line.startswith("| ") and "---" not in line}
    tasnet, upit = rows["tasnet-tiny"], rows["upit-tiny"]
    params = registry.count_parameters(registry.load_model("tasnet-tiny"))
    assert tasnet[1:4] == ["LSTM-TasNet (causal)", f"{params / 1e6:.2f}M", "yes"]
    assert tasnet[7:] == ["1.5", "LSTM-TasNet", "32.0M", "10.8", "11.2"]
    assert upit[1] == "uPIT-LSTM" and upit[3] == "no" and upit[8:] == ["uPIT-BLSTM-ST", "92.7M", "–", "10.0"]
    # the causal uPIT-LSTM and both Conv-TasNets are not shipped here: paper figures only
    assert rows["not shipped"][1] in {"Conv-TasNet-gLN", "Conv-TasNet-cLN", "uPIT-LSTM"}
    assert "| uPIT-LSTM | 46.3M | – | 7.0 |" in out and "| Conv-TasNet-gLN | 5.1M | 15.3 | 15.6 |" in out
    # the scores are the mixture's measured SI-SNRi (only the first mixture: --limit 1)
    expected = pit_si_snri("tasnet-tiny", test_set / "mix" / "0000.wav",
                           [test_set / "s1" / "0000.wav", test_set / "s2" / "0000.wav"])
    assert float(tasnet[4]) == pytest.approx(expected, abs=0.06)
    assert float(tasnet[6]) > 0  # RTF


def test_rich_table_and_errors(tmp_path, shipped, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # a wide terminal: rich shows every column
    test_set = make_set(tmp_path / "set", n=2)
    assert seed_table.main([str(test_set), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "tasnet-tiny" in out and "Paper SI-SNRi" in out and "(2 mixtures" in out
    assert seed_table.main([str(tmp_path / "nowhere")]) == 1
    assert "not a mixture set" in capsys.readouterr().err
