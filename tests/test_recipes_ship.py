"""recipes/ship.py: scoring a shipped model again in place after an inference-setting change."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sepcli import registry
from sepcli.api import Separator
from sepcli.errors import SepError
from sepcli.metrics import pit_si_snr, si_snr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "recipes"))
spec = importlib.util.spec_from_file_location("recipes_ship", REPO / "recipes" / "ship.py")
ship = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ship)

TINY = dict(N=16, L=16, B=8, H=16, Sc=8, X=2, R=1)
TINY_DPCL = dict(layers=1, hidden=16, emb_dim=8)


def _mixtures(folder: Path, n_src: int) -> Path:
    """Two n_src-talker noise mixtures in the layout of `sep mix` (mix/, s1/, s2/, ...)."""
    rng = np.random.default_rng(n_src)
    for name in ("a", "b"):
        ref = 0.1 * rng.standard_normal((n_src, 8000)).astype(np.float32)
        for sub, x in [("mix", ref.sum(0))] + [(f"s{i + 1}", ref[i]) for i in range(n_src)]:
            (folder / sub).mkdir(parents=True, exist_ok=True)
            sf.write(folder / sub / f"{name}.wav", x, 8000, subtype="FLOAT")
    return folder


def _ship_tiny_and_test_set(tmp_path: Path, monkeypatch, family: str = "convtasnet",
                            extra_md: str = "") -> Path:
    """A tiny shipped model with a stale card, and a 2-mixture test set; returns the set."""
    models = tmp_path / "models"
    monkeypatch.setenv("SEP_MODELS_DIR", str(models))
    torch.manual_seed(0)
    model = registry.build(family, **(TINY if family == "convtasnet" else TINY_DPCL))
    sha = registry.save_model(model, models / "tiny.safetensors", dtype=torch.float16)
    card = {"name": "tiny", "config": dataclasses.asdict(model.config), "sha256": sha,
            "quality": {"si_snri": 99.0}, "notes": "kept"}
    (models / "tiny.json").write_text(json.dumps(card))
    (models / "tiny.md").write_text(
        "# Model card: `tiny`\n\n## Quality (held-out speakers, never trained or tuned on)\n\n"
        "Measured with `sep separate` + `sep evaluate --set old` on 9 mixtures:\n\n"
        "| metric | mean | median | 10th percentile |\n|---|---|---|---|\n"
        "| SI-SNRi | 99.00 dB | 99.00 dB | 99.00 dB |\n| SDR | 99.00 dB | 99.00 dB | 99.00 dB |\n\n"
        + extra_md + "## Training\n\nhand-written section that must survive\n"
    )
    return _mixtures(tmp_path / "test2", 2)


def _independent_si_snri(sep: Separator, test: Path) -> float:
    """Mean SI-SNRi of ``sep`` on the two mixtures of ``test``, scored here without recipes/ship.py."""
    expect = []
    for name in ("a", "b"):
        mix = sf.read(test / "mix" / f"{name}.wav", dtype="float32")[0]
        ref = np.stack([sf.read(test / s / f"{name}.wav", dtype="float32")[0] for s in ("s1", "s2")])
        values, _ = pit_si_snr(sep.separate(mix, 8000), ref)
        expect.append(np.mean(values - si_snr(np.stack([mix, mix]), ref)))
    return round(float(np.mean(expect)), 2)


def test_rescore_replaces_only_the_quality_and_matches_an_independent_score(tmp_path: Path, monkeypatch) -> None:
    test = _ship_tiny_and_test_set(tmp_path, monkeypatch)
    models = tmp_path / "models"
    quality = ship.rescore_shipped("tiny", test, threads=1, quality="high")

    sep = Separator("tiny", device="cpu", quality="high")
    assert sep.passes == 4  # scored with the preset it names
    assert quality["n"] == 2 and abs(quality["si_snri"] - _independent_si_snri(sep, test)) <= 0.011
    saved = json.loads((models / "tiny.json").read_text())
    assert saved["quality"] == quality and saved["notes"] == "kept"
    assert saved["measured_with"] == {"preset": "high", **{k: v for k, v in sep.settings.to_dict().items()
                                                           if k != "precision"}}
    md = (models / "tiny.md").read_text()
    assert "99.00" not in md and f"| SI-SNRi | {quality['stats']['si_snri']['mean']:.2f} dB" in md
    assert "| SDR |" in md and "hand-written section that must survive" in md
    assert md.count("## Training") == 1


def _card(**training) -> dict:
    """The smallest card render_markdown takes; TRAINING adds to or replaces its training fields."""
    stats = {k: {"mean": 1.0, "median": 1.0, "p10": 1.0} for k in ("si_snri", "sdri", "si_snr", "sdr")}
    return {"name": "tiny", "family": "upit-lstm", "causal": False, "n_src": 2, "sample_rate": 8000,
            "params": 10, "config": {}, "sha256": "0" * 64, "date": "2026-12-06", "sep_version": "0",
            "quality": {"test_set": "data/test2", "n": 3, "stats": stats},
            "held_out_speakers": {"test": ["1"], "valid": ["2"]},
            "training": {"data": "d", "recipe": "r", "command": "c", "steps": 1, "epochs": 1, "hours": 0.1,
                         "hardware": "h", "best_valid_si_snri": 1.0, **training}}


def test_card_markdown_gives_the_shifted_figures_only_when_scored() -> None:
    card = _card()
    assert "Shifted test" not in ship.render_markdown(card)
    card["quality_shifted"] = {"test_set": "data/test2-shifted", "si_snri": 4.25, "sdri": 4.821}
    md = ship.render_markdown(card)
    assert "`data/test2-shifted`" in md and "**4.25 dB SI-SNRi / 4.82 dB SDRi**" in md
    assert md.index("Shifted test") < md.index("## Training")


def test_rescore_with_a_shifted_set_writes_its_paragraph_once_and_keeps_it_current(
        tmp_path: Path, monkeypatch) -> None:
    test = _ship_tiny_and_test_set(tmp_path, monkeypatch)
    models = tmp_path / "models"
    ship.rescore_shipped("tiny", test, threads=1, shifted=test)  # the card had no shifted figure
    card = json.loads((models / "tiny.json").read_text())
    md = (models / "tiny.md").read_text()
    assert md.count("Shifted test (") == 1 and ship.shifted_paragraph(card["quality_shifted"]) in md
    assert md.index("| SDR |") < md.index("Shifted test (") < md.index("## Training")
    # a stale figure in the paragraph is replaced, not kept beside the new one
    (models / "tiny.md").write_text(md.replace(ship.shifted_paragraph(card["quality_shifted"]),
                                               "Shifted test (`old`): **99.00 dB SI-SNRi / 99.00 dB SDRi**."))
    ship.rescore_shipped("tiny", test, threads=1, shifted=test)
    md = (models / "tiny.md").read_text()
    assert md.count("Shifted test (") == 1 and "99.00" not in md
    assert ship.shifted_paragraph(card["quality_shifted"]) in md
    assert "hand-written section that must survive" in md


def _fake_run(folder: Path, steps: int, epochs: int, seconds: float, best: float) -> Path:
    folder.mkdir(parents=True)
    recs = [{"event": "train", "step": steps // 2, "epoch": 0, "elapsed": seconds / 2}]
    recs += [{"event": "valid", "step": steps * (e + 1) // epochs, "epoch": e, "elapsed": seconds * (e + 1) / epochs,
              "val_si_snri": best - (epochs - 1 - e)} for e in range(epochs)]
    (folder / "log.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n{torn")
    return folder


def test_training_summary_adds_up_the_stages_of_a_warm_restart(tmp_path: Path) -> None:
    first = _fake_run(tmp_path / "scratch", steps=1000, epochs=4, seconds=7200, best=3.0)
    second = _fake_run(tmp_path / "kd", steps=300, epochs=2, seconds=1800, best=3.5)
    alone = ship.training_summary(second)
    assert alone == {"steps": 300, "epochs": 2, "hours": 0.5, "best_valid_si_snri": 3.5}
    both = ship.training_summary(second, [first])
    assert (both["steps"], both["epochs"], both["hours"]) == (1300, 6, 2.5)
    assert both["best_valid_si_snri"] == 3.5  # the last stage's, not the best of all stages
    assert [st["run"] for st in both["stages"]] == [str(first), str(second)]
    assert [st["hours"] for st in both["stages"]] == [2.0, 0.5]
    md = ship.render_markdown(_card(**both))
    assert "1300 steps, 6 epochs, 2.5 h on h" in md
    assert f"stage 1: 2.0 h, 1000 steps, 4 epochs (`{first}`)" in md
    assert md.index("stage 1:") < md.index("stage 2:") < md.index("Best validation")


def test_rescore_with_a_three_speaker_set_replaces_that_figure(tmp_path: Path, monkeypatch) -> None:
    stale = "Three-speaker mixtures (`--num-speakers 3`, 9 mixtures, `old`): SI-SNRi 99.00 dB, SDRi 99.00 dB.\n\n"
    test = _ship_tiny_and_test_set(tmp_path, monkeypatch, family="dpcl", extra_md=stale)
    test3 = _mixtures(tmp_path / "test3", 3)
    ship.rescore_shipped("tiny", test, threads=1, test3=test3)
    card = json.loads((tmp_path / "models" / "tiny.json").read_text())
    q3 = card["quality_3spk"]
    assert q3["n"] == 2 and q3 == ship._score(tmp_path / "models" / "tiny.safetensors", test3, 3, 1, "fast")
    md = (tmp_path / "models" / "tiny.md").read_text()
    assert "99.00" not in md and md.count("Three-speaker mixtures (") == 1
    assert ship.three_speaker_line(q3) in md and "hand-written section that must survive" in md


def test_replace_weights_keeps_the_shipped_config_and_takes_the_new_tensors(tmp_path: Path, monkeypatch) -> None:
    _ship_tiny_and_test_set(tmp_path, monkeypatch, family="dpcl")
    models = tmp_path / "models"
    # the shipped model has an inference setting the checkpoint (a training run's config) lacks
    ship.update_shipped("tiny", {"mask_temperature": 0.5})
    torch.manual_seed(1)
    trained = registry.build("dpcl", **TINY_DPCL)
    assert trained.config.mask_temperature == 0.0
    registry.save_model(trained, tmp_path / "epoch.safetensors")
    sha = ship.replace_weights("tiny", tmp_path / "epoch.safetensors")
    after = registry.load_model("tiny")  # checks the card's SHA-256 against the file
    assert after.config.mask_temperature == 0.5
    for (key, a), b in zip(trained.state_dict().items(), after.state_dict().values(), strict=True):
        assert torch.equal(a.half().float(), b), key
    card = json.loads((models / "tiny.json").read_text())
    assert card["sha256"] == sha and card["notes"] == "kept" and card["quality"] == {"si_snri": 99.0}
    assert "hand-written section that must survive" in (models / "tiny.md").read_text()
    other = registry.build("convtasnet", **TINY)
    registry.save_model(other, tmp_path / "other.safetensors")
    with pytest.raises(SepError, match="convtasnet checkpoint"):
        ship.replace_weights("tiny", tmp_path / "other.safetensors")


def test_ship_ensemble_pins_its_members_and_scores_what_separate_gives(tmp_path: Path, monkeypatch) -> None:
    test = _ship_tiny_and_test_set(tmp_path, monkeypatch)  # shipped "tiny" (convtasnet)
    models = tmp_path / "models"
    torch.manual_seed(1)
    other = registry.build("upit-lstm", hidden=16, layers=1)
    sha = registry.save_model(other, models / "other.safetensors")
    training = {"recipe": "r.toml", "hardware": "h", "hours": 1.5, "data": "d"}
    for name, model_sha in (("tiny", None), ("other", sha)):
        card = json.loads((models / f"{name}.json").read_text()) if model_sha is None else {
            "name": name, "config": dataclasses.asdict(other.config), "sha256": model_sha}
        (models / f"{name}.json").write_text(json.dumps({**card, "training": training}))
    card = ship.ship_ensemble("both", ["tiny", "other"], [0.5, 0.5], test, threads=1, shifted=test)
    saved = json.loads((models / "both.json").read_text())
    assert saved == card and card["family"] == "ensemble" and card["training"]["hours"] == 3.0
    assert card["config"]["member_sha256"] == [registry.file_sha256(models / f"{m}.safetensors")
                                               for m in ("tiny", "other")]
    assert card["sha256"] == registry.file_sha256(models / "both.safetensors")
    assert abs(card["quality"]["si_snri"] - _independent_si_snri(Separator("both", device="cpu"), test)) <= 0.011
    assert card["quality_shifted"]["si_snri"] == card["quality"]["si_snri"]  # the same set given twice
    md = (models / "both.md").read_text()
    assert "no tensors" in md and "nothing of its own" in md and "Best validation" not in md
    assert card["training"]["command"].endswith(f"--name both --shifted {test}")
    # shipped again without notes, the card keeps the ones written by hand
    (models / "both.json").write_text(json.dumps({**card, "notes": "by hand"}))
    assert ship.ship_ensemble("both", ["tiny", "other"], [1, 1], test, threads=1)["notes"] == "by hand"
    with pytest.raises(SepError, match="not shipped: nope"):
        ship.ship_ensemble("bad", ["tiny", "nope"], [], test, threads=1)
