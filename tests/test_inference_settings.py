"""Inference settings and quality presets (sepcli.inference): a checkpoint holds
architecture and weights; presets choose how a model is run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sepcli import api, engine, registry
from sepcli.api import Separator
from sepcli.errors import SepError
from sepcli.inference import InferenceSettings, protocol
from sepcli.inference.protocol import SeparationModel

TINY = dict(N=16, L=16, B=8, H=16, Sc=8, X=2, R=1)
MODELS = Path(__file__).resolve().parents[1] / "models"


class Plain(torch.nn.Module):
    """Follows only the training contract (config with sample_rate and n_src)."""

    class config:  # noqa: N801
        sample_rate = 8000
        n_src = 2

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return torch.stack([mix, 0 * mix], dim=1)


def test_fast_is_the_default_and_high_reproduces_the_tuned_settings() -> None:
    ctn = registry.build("convtasnet", **TINY)
    fast, high = Separator(ctn, device="cpu"), Separator(ctn, device="cpu", quality="high")
    assert (fast.passes, fast.pass_signs, fast.speeds, fast.segment) == (1, False, [1.0], 30.0)
    assert (high.passes, high.pass_signs, high.speeds) == (4, True, [1.0, 0.92, 0.88])
    assert high.equalize == fast.equalize == 12.0 and (high.overlap, fast.overlap) == (0.25, 0.1)
    causal = registry.build("convtasnet", **TINY, causal=True)
    assert Separator(causal, device="cpu").passes == 1
    high_causal = Separator(causal, device="cpu", quality="high")
    assert (high_causal.passes, high_causal.pass_signs, high_causal.speeds) == (2, False, [1.0])
    dpcl = registry.build("dpcl", hidden=8, layers=1, emb_dim=4)
    for quality in ("fast", "high"):
        sep = Separator(dpcl, device="cpu", quality=quality)
        assert (sep.passes, sep.segment, sep.segment_samples) == (1, 30.0, 30 * 8000)
    plain = Separator(Plain(), device="cpu", quality="high")  # no presets: the library defaults
    assert (plain.passes, plain.segment) == (1, api.DEFAULT_SEGMENT)
    with pytest.raises(SepError, match="quality"):
        Separator(ctn, device="cpu", quality="best")


def test_explicit_options_and_settings_override_the_preset() -> None:
    ctn = registry.build("convtasnet", **TINY)
    sep = Separator(ctn, device="cpu", quality="high", passes=2, speeds=[1], segment=2.5)
    assert (sep.passes, sep.pass_signs, sep.speeds, sep.segment) == (2, True, [1.0], 2.5)
    own = InferenceSettings(segment=1.0, passes=3, precision="float32")
    sep = Separator(ctn, device="cpu", settings=own)
    assert sep.settings == own and sep.precision == "float32" and sep.quality is None
    for bad in (0, 1.5, True):
        with pytest.raises(SepError, match="passes"):
            Separator(ctn, device="cpu", passes=bad)
    with pytest.raises(SepError, match="pass_signs"):
        Separator(ctn, device="cpu", pass_signs="yes")
    with pytest.raises(SepError, match="positive"):
        Separator(ctn, device="cpu", segment=0)
    with pytest.raises(SepError, match="speed"):
        InferenceSettings(speeds=(3.0,))
    with pytest.raises(dataclasses_frozen_error()):
        own.passes = 2  # type: ignore[misc]


def dataclasses_frozen_error() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_old_configs_with_inference_keys_still_load(tmp_path: Path) -> None:
    old = dict(TINY, segment=12.0, passes=4, pass_signs=True, speeds=[1.0, 0.9], mask_activation="sigmoid")
    config = registry.make_config("convtasnet", old)
    assert not hasattr(config, "passes") and not hasattr(config, "segment")
    model = registry.build("convtasnet", old)
    registry.save_model(model, tmp_path / "m.safetensors")
    sep = Separator(tmp_path / "m.safetensors", device="cpu")
    assert (sep.passes, sep.pass_signs, sep.speeds, sep.segment) == (1, False, [1.0], 30.0)  # ignored
    with pytest.raises(SepError, match="unknown convtasnet config"):
        registry.make_config("convtasnet", dict(TINY, pases=2))  # a typo still fails


def test_every_family_follows_the_protocol() -> None:
    ctn, dpcl = registry.build("convtasnet", **TINY), registry.build("dpcl", hidden=8, layers=1, emb_dim=4)
    assert isinstance(ctn, SeparationModel) and isinstance(dpcl, SeparationModel)
    assert not isinstance(Plain(), SeparationModel)
    assert ctn.receptive_field == 16 + 8 * 1 * 2 * 3 and dpcl.receptive_field is None
    assert ctn.frame_hop == 8 and dpcl.frame_hop == dpcl.config.hop
    assert ctn.streaming_layout() is None and dpcl.streaming_layout() is None
    causal = registry.build("convtasnet", **TINY, causal=True)
    assert causal.streaming_layout() is not None
    assert protocol.describe(Plain()).presets is None and protocol.describe(Plain()).frame_hop == 1
    assert engine.model_passes(ctn) == (1, False) and engine.model_passes(ctn, quality="high") == (4, True)
    assert engine.model_speeds(ctn, quality="high") == [1.0, 0.92, 0.88] and engine.model_speeds(Plain()) == [1.0]


def _measured_with(name: str) -> InferenceSettings:
    m = json.loads((MODELS / f"{name}.json").read_text())["measured_with"]
    # cards measured before equalize existed ran without it
    return InferenceSettings(segment=m["segment"], overlap=m["overlap"], passes=m["passes"],
                             pass_signs=m["pass_signs"], speeds=tuple(m["speeds"]),
                             equalize=m.get("equalize", 0.0))


CARDS = sorted(p.stem for p in MODELS.glob("*.json"))


@pytest.mark.parametrize("name", CARDS)
def test_cards_hold_architecture_only_and_their_preset_reproduces_the_measured_settings(name: str) -> None:
    card = json.loads((MODELS / f"{name}.json").read_text())
    assert not {"segment", "passes", "pass_signs", "speeds"} & set(card["config"])
    assert card["sha256"] == registry.file_sha256(MODELS / f"{name}.safetensors")
    sep = Separator(name, device="cpu", quality=card["measured_with"]["preset"], precision="float32")
    assert sep.settings.override(precision="auto") == _measured_with(name)


@pytest.mark.parametrize("name", CARDS)
def test_default_settings_equal_what_the_card_was_measured_with(name: str) -> None:
    sep = Separator(name, device="cpu", precision="float32")
    assert sep.settings.override(precision="auto") == _measured_with(name)


class NoConfig(torch.nn.Module):
    """Implements the protocol and has no ``config``: whatever Separator needs
    must come through the protocol."""

    sample_rate, n_src, causal, receptive_field, frame_hop = 8000, 3, False, 1, 1

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return torch.stack([mix, 0 * mix, 0 * mix], dim=1)  # [B, T] -> [B, 3, T]

    def separate(self, mix: torch.Tensor, n_src: int | str | None = None) -> torch.Tensor:
        return self.forward(mix)

    def inference_presets(self) -> dict[str, InferenceSettings]:
        return {"fast": InferenceSettings(segment=0.5), "high": InferenceSettings(segment=0.5, passes=2)}

    def set_products(self, dtype: torch.dtype) -> bool:
        return False

    def streaming_layout(self) -> None:
        return None


def test_separator_reads_the_model_through_the_protocol() -> None:
    model = NoConfig()
    assert isinstance(model, SeparationModel) and not hasattr(model, "config")
    sep = Separator(model, device="cpu", quality="high")
    assert (sep.expected_n_src, sep.sample_rate, sep.segment, sep.passes) == (3, 8000, 0.5, 2)
    mix = torch.randn(6000).numpy() * 0.1
    est = sep.separate(mix, 8000)
    assert est.shape == (3, 6000)
    assert abs(est.sum(axis=0) - mix).max() < 1e-4  # the tracks add up to the mixture
    plain = protocol.separate_method(Plain())  # no separate(): the forward, which takes no n_src
    assert plain(torch.ones(1, 4), n_src=2).shape == (1, 2, 4)
