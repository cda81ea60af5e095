"""recipes/dpcl_counter.py: fitting the speaker counter and updating a shipped model in place."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sepcli import registry
from tests.test_data import make_corpus

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("recipes_dpcl_counter", REPO / "recipes" / "dpcl_counter.py")
counter = importlib.util.module_from_spec(spec)
spec.loader.exec_module(counter)

TINY = dict(layers=1, hidden=8, emb_dim=4)


@pytest.fixture()
def shipped(tmp_path: Path, monkeypatch) -> Path:
    """A models/ folder with a tiny dpcl, its JSON card and a markdown card with extra sections."""
    models = tmp_path / "models"
    monkeypatch.setenv("SEP_MODELS_DIR", str(models))
    torch.manual_seed(0)
    model = registry.build("dpcl", TINY)
    sha = registry.save_model(model, models / "tiny.safetensors", dtype=torch.float16)
    config = dataclasses.asdict(model.config)
    card = {"name": "tiny", "family": "dpcl", "config": config, "sha256": sha, "causal": False,
            "quality": {"si_snri": 1.0}}
    (models / "tiny.json").write_text(json.dumps(card))
    (models / "tiny.md").write_text(
        "# Model card: `tiny`\n\n"
        f"- **Configuration:** `{json.dumps(config, sort_keys=True)}`\n"
        f"- **Weights:** `models/tiny.safetensors` (float16 storage), SHA-256 `{sha}` (checked on load)\n\n"
        "## Speaker counting\n\nhand-written section that must survive\n"
    )
    return models


def test_update_shipped_changes_only_the_settings_and_keeps_the_card_in_step(shipped: Path) -> None:
    before = registry.load_model("tiny")
    coef = np.arange(2 * 5, dtype=float).reshape(2, 5).tolist()
    sha = counter.update_shipped("tiny", {"auto_method": "logistic", "auto_power": 2.0, "auto_logistic": coef})
    after = registry.load_model("tiny")  # verifies the card's SHA-256 against the file
    assert after.config.auto_method == "logistic" and after.config.auto_logistic == coef
    assert dataclasses.replace(after.config, auto_method="eigen", auto_power=0.0, auto_logistic=None) == before.config
    for (key, a), b in zip(before.state_dict().items(), after.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    card = json.loads((shipped / "tiny.json").read_text())
    assert card["sha256"] == sha == registry.file_sha256(shipped / "tiny.safetensors")
    assert card["config"] == dataclasses.asdict(after.config) and card["quality"] == {"si_snri": 1.0}
    md = (shipped / "tiny.md").read_text()
    assert f"SHA-256 `{sha}`" in md and '"auto_method": "logistic"' in md
    assert "hand-written section that must survive" in md


def test_main_fits_on_train_speakers_scores_valid_ones_and_writes(shipped: Path, tmp_path: Path) -> None:
    root = make_corpus(tmp_path / "corpus", n_speakers=8, n_utts=3, seconds=(1.0, 1.5))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"test": ["spk7"], "valid": ["spk4", "spk5", "spk6"]}))
    corpus = counter.Corpus.from_path(root, 8000, split, "train", min_speakers=3)
    assert sorted(corpus.speakers) == ["spk0", "spk1", "spk2", "spk3"]
    model = registry.load_model("tiny")
    shares, counts = counter.share_set(model, corpus, [1, 2, 3], 4, [0.5, 1.0], [2.0], seed=0)
    assert shares.shape == (12, TINY["emb_dim"]) and counts.tolist() == [1] * 4 + [2] * 4 + [3] * 4
    np.testing.assert_allclose(shares.sum(1), 1.0)
    assert (np.diff(shares, axis=1) <= 1e-12).all()  # descending
    # two powers: the same mixtures, the unweighted shares beside the weighted ones
    both, _ = counter.share_set(model, corpus, [1, 2, 3], 4, [0.5, 1.0], [2.0, 0.0], seed=0)
    dim = TINY["emb_dim"]
    np.testing.assert_array_equal(both[:, :dim], shares)
    np.testing.assert_allclose(both[:, dim:].sum(1), 1.0)
    assert not np.allclose(both[:, dim:], shares)

    out = tmp_path / "result.json"
    rc = counter.main(["tiny", "--data", str(root), "--speakers-split", str(split), "--train-per-count", "6",
                       "--valid-per-count", "3", "--segments", "0.5", "1.0", "--c", "1", "10",
                       "--threads", "1", "--write", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert set(result["by_c"]) == {"1", "10"}
    assert result["valid_accuracy"] == max(r["valid_accuracy"] for r in result["by_c"].values())
    for r in result["by_c"].values():  # per count: 3 mixtures each, so the mean of the three is the total
        assert set(r["by_count"]) == {"1", "2", "3"}
        assert np.isclose(np.mean(list(r["by_count"].values())), r["valid_accuracy"])
    assert result["equalize"] == registry.load_model("tiny").inference_presets()["fast"].equalize > 0
    assert "own" not in result  # the tiny model counted by eigen shares: no counter of its own to score
    assert np.asarray(result["confusion"]).sum() == 9  # 3 valid mixtures per count
    # the same shares again (--cache), with a prior for two speakers: only that intercept moves
    cache = tmp_path / "shares.npz"
    runs = []
    for extra in ([], ["--offset", "2=1.5"]):
        out2 = tmp_path / f"offset{len(extra)}.json"
        assert counter.main(["tiny", "--data", str(root), "--speakers-split", str(split), "--train-per-count", "6",
                             "--valid-per-count", "3", "--segments", "0.5", "1.0", "--c", "10", "--threads", "1",
                             "--cache", str(cache), "--json", str(out2), *extra]) == 0
        runs.append(np.asarray(json.loads(out2.read_text())["changes"]["auto_logistic"]))
    shift = runs[1] - runs[0]
    np.testing.assert_allclose(shift[1, -1], 1.5, rtol=1e-3)
    shift[1, -1] = 0.0
    np.testing.assert_allclose(shift, 0.0, atol=1e-3)
    with pytest.raises(SystemExit, match="COUNT"):
        counter.main(["tiny", "--data", str(root), "--speakers-split", str(split), "--offset", "5=1"])
    written = registry.load_model("tiny")
    assert written.config.auto_method == "logistic" and written.config.auto_power == 2.0
    assert written.config.auto_logistic == result["changes"]["auto_logistic"]
    assert np.asarray(written.config.auto_logistic).shape == (3, TINY["emb_dim"] + 1)
    # a counter on two powers, fitted from the cache's weighted shares and newly computed
    # unweighted ones; the counter written before is scored on the same valid mixtures first
    out3 = tmp_path / "two.json"
    assert counter.main(["tiny", "--data", str(root), "--speakers-split", str(split), "--train-per-count", "6",
                         "--valid-per-count", "3", "--segments", "0.5", "1.0", "--c", "10", "--threads", "1",
                         "--power", "2", "0", "--cache", str(cache), "--json", str(out3), "--write"]) == 0
    two = json.loads(out3.read_text())
    assert two["own"]["valid_accuracy"] == json.loads((tmp_path / "offset0.json").read_text())["valid_accuracy"]
    written = registry.load_model("tiny")
    assert written.config.auto_power == [2.0, 0.0]
    assert np.asarray(written.config.auto_logistic).shape == (3, 2 * TINY["emb_dim"] + 1)
    with pytest.raises(SystemExit, match="equalize"):
        counter.main(["tiny", "--data", str(root), "--speakers-split", str(split), "--cache", str(cache),
                      "--equalize", "0"])


def test_the_counter_hears_the_chunk_the_separator_hears() -> None:
    from sepcli.inference.equalize import equalized_fn

    rng = np.random.default_rng(0)
    mix = (rng.standard_normal(8000) * np.linspace(0.1, 1.0, 8000)).astype(np.float32)
    mix = np.convolve(mix, [1.0, 0.9, 0.5], mode="same").astype(np.float32)  # a tilted channel to undo
    heard = []

    def fn(x: np.ndarray) -> np.ndarray:  # records its input, as a separator would receive it
        heard.append(x.copy())
        return np.zeros((x.shape[0], 2, x.shape[1]), dtype=np.float32)

    equalized_fn(fn, 8000, 12.0)(mix[None])
    np.testing.assert_array_equal(counter.as_inference_sees(mix, 8000, 12.0), heard[0][0])
    assert np.abs(heard[0][0] - mix).max() > 1e-3 * np.abs(mix).max()  # the equalizer did change it
    assert counter.as_inference_sees(mix, 8000, 0.0) is mix
