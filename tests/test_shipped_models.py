"""The weights in models/: every card is complete, every file loads (checksum
checked), and each model still separates the shipped example as well as the
README says (a regression guard for the weights, the card and the pipeline)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from sepcli import registry
from sepcli.audio import read_audio
from sepcli.evaluate import evaluate_files

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

# SI-SNRi (dB) each shipped model gives on examples/mix.wav through
# `sep separate` defaults (8.73 dB for dpcl, 10.96 for convtasnet as the README shows; 8.37 for
# convtasnet-causal with its 2 passes, 8.14 with one; 9.35 for upit-lstm, 5.74 for lstm-tasnet;
# 11.67 for the convtasnet+dpcl average), less 0.4-0.6 dB of slack.
EXAMPLE_FLOOR_DB = {"dpcl": 8.2, "convtasnet": 10.5, "convtasnet-causal": 7.9, "upit-lstm": 8.8, "lstm-tasnet": 5.2,
                    "convtasnet+dpcl": 11.1}


def _shipped() -> dict[str, dict]:
    if registry.models_dir() != REPO / "models":
        return {}
    return registry.shipped_models()


SHIPPED = _shipped()
needs_weights = pytest.mark.skipif(not SHIPPED, reason="no weights in models/")


@needs_weights
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_card_is_complete_and_weights_verify(name):
    card = SHIPPED[name]
    for key in ("family", "config", "params", "sha256", "quality", "training", "held_out_speakers", "date"):
        assert card.get(key) is not None, key
    for key in ("recipe", "command", "hardware", "hours", "data"):
        assert card["training"].get(key) is not None, key
    assert card["sha256"] == registry.file_sha256(card["path"])
    model = registry.load_model(name)
    assert registry.count_parameters(model) == card["params"]
    assert model.family == card["family"]
    # the card shows the configuration the weights load with, not a stale one
    assert card["config"] == json.loads(json.dumps(dataclasses.asdict(model.config)))
    q = card["quality"]
    assert q["n"] >= 100 and not q["missing"]
    assert np.isfinite([q["si_snri"], q["sdri"]]).all()
    # the card's held-out speakers are the split the recipes hold out
    split = json.loads((REPO / "recipes" / "splits" / "librispeech-8k.json").read_text())
    assert card["held_out_speakers"]["test"] == split["test"]
    assert (REPO / "models" / f"{name}.md").is_file()


@needs_weights
@pytest.mark.parametrize("name", sorted(set(SHIPPED) & set(EXAMPLE_FLOOR_DB)))
def test_separates_the_example(name, tmp_path):
    from sepcli.api import Separator

    sep = Separator(name, device="cpu")
    result = sep.separate_file(EXAMPLES / "mix.wav", tmp_path)
    mix, rate = read_audio(EXAMPLES / "mix.wav")
    assert result.sample_rate == rate and result.frames == mix.shape[-1]
    score = evaluate_files([EXAMPLES / "s1.wav", EXAMPLES / "s2.wav"], result.outputs, mix=EXAMPLES / "mix.wav")
    assert float(np.mean(score.si_snri)) >= EXAMPLE_FLOOR_DB[name]
