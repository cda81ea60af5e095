"""Checks shared by the mask families' tests (uPIT-LSTM, LSTM-TasNet, SuDoRM-RF):
each returns what it measured or asserts itself. Tiny configs only."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import torch

from sepcli import registry
from sepcli.api import Separator
from sepcli.training import loop as training
from tests.sigtools import si_snr_reference
from tests.test_data import make_corpus


def build(family: str, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    return registry.build(family, config).eval()


def first_changed_sample(model: torch.nn.Module, length: int, t: int) -> int:
    """Earliest output sample that moves when the input from sample t on is replaced."""
    torch.manual_seed(1)
    mix = torch.randn(2, length, dtype=torch.float64)
    changed = mix.clone()
    changed[:, t:] = torch.randn(2, length - t, dtype=torch.float64) * 3
    model = model.double()
    with torch.no_grad():
        diff = (model(mix) - model(changed)).abs().amax(dim=(0, 1))  # [T]
    moved = (diff > 1e-9).nonzero().flatten()
    assert moved.numel() > 0, "the change must reach the output"
    return int(moved.min())


def last_input_used(model: torch.nn.Module, length: int, j: int) -> int:
    """Latest input sample with a non-zero gradient on output sample j (any source)."""
    model = model.double()
    mix = torch.randn(1, length, dtype=torch.float64, requires_grad=True)
    model(mix)[..., j].sum().backward()
    return int((mix.grad.abs()[0] > 0).nonzero().flatten().max())


def best_permutation_loss(est: torch.Tensor, ref: torch.Tensor) -> float:
    """Independent reference: minus the mean SI-SNR under each item's best
    assignment, every permutation tried. est, ref Shape: [B, S, T]."""
    total = 0.0
    for e, r in zip(est.double().numpy(), ref.double().numpy()):
        n = e.shape[0]
        total += max(
            sum(si_snr_reference(e[p[i]], r[i]) for i in range(n)) / n for p in itertools.permutations(range(n))
        )
    return -total / est.shape[0]


def check_pit(model: torch.nn.Module, n_src: int, length: int = 800) -> None:
    """The loss ignores the references' order and equals the best permutation's."""
    torch.manual_seed(3)
    mix = torch.randn(3, length)
    ref = torch.randn(3, n_src, length)
    with torch.no_grad():
        loss = float(model.compute_loss(mix, ref))
        est = model(mix)
        for perm in itertools.permutations(range(n_src)):
            assert abs(float(model.compute_loss(mix, ref[:, list(perm)])) - loss) < 1e-4
    assert abs(loss - best_permutation_loss(est, ref)) < 1e-3
    # and not just any permutation: the identity one differs for random estimates
    fixed = -np.mean([[si_snr_reference(e[i], r[i]) for i in range(n_src)]
                      for e, r in zip(est.double().numpy(), ref.double().numpy())])
    assert loss <= fixed + 1e-4


def check_round_trip(model: torch.nn.Module, path: Path) -> None:
    """save_model -> load_file gives the same family, config and outputs."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not the seed's init: the weights must really be read
    registry.save_model(model, path)
    loaded = registry.load_file(path)
    assert loaded.family == model.family and loaded.config == model.config
    mix = torch.randn(2, 1234)
    with torch.no_grad():
        torch.testing.assert_close(loaded(mix), model.float()(mix), rtol=0, atol=1e-6)


def check_separator(model: torch.nn.Module) -> None:
    """Separator runs the model through the chunking engine: exact length at
    another rate, and, with one chunk, the model's own output (up to the
    engine's per-source gain that fits the tracks' sum to the mixture)."""
    rng = np.random.default_rng(4)
    rate = model.sample_rate
    mix = (rng.standard_normal(int(2.3 * rate) + 7) * 0.1).astype(np.float32)
    chunked = Separator(model, device="cpu", segment=0.5, overlap=0.25).separate(mix, rate)
    assert chunked.shape == (model.n_src, mix.size) and np.isfinite(chunked).all()
    other = Separator(model, device="cpu", segment=0.5).separate(mix[:11025], 22050)
    assert other.shape == (model.n_src, 11025)
    # equalize off: the model's own output is the reference here (tests/test_inference_equalize.py
    # holds the equalizer around any separator)
    whole = Separator(model, device="cpu", segment=4.0, equalize=0.0).separate(mix, rate)
    direct = model.separate(torch.from_numpy(mix)[None])[0].numpy()
    gains = np.einsum("st,st->s", whole, direct) / np.einsum("st,st->s", direct, direct)  # [S]
    assert (np.abs(gains) > 0.1).all()  # untrained near-copies may get opposite gains; never none
    np.testing.assert_allclose(whole, gains[:, None] * direct, atol=1e-5)


REPO = Path(__file__).resolve().parents[2]


def fit_one_batch(model: torch.nn.Module, steps: int = 60, lr: float = 3e-3) -> tuple[float, float]:
    """Adam on one fixed batch (a modulated tone and noise, two orders): the
    first and the last loss (negative SI-SNR, dB)."""
    torch.manual_seed(0)
    t = torch.arange(2000) / 8000.0
    tone = torch.sin(2 * np.pi * 300 * t) * (1 + torch.sin(2 * np.pi * 3 * t))
    noise = 0.5 * torch.randn(2000)
    ref = torch.stack([torch.stack([tone, noise]), torch.stack([noise.roll(100), tone.roll(50)])])  # [2, 2, T]
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr)
    losses = []
    for _ in range(steps):
        loss = model.compute_loss(ref.sum(1), ref)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses[0], losses[-1]



def check_recipe(name: str, family: str, causal: bool, segment: float = 3.0) -> None:
    """A shipped recipe builds its family and mixes ``segment``-s examples from the
    shared corpus with the split."""
    flat, _ = training.read_recipe(REPO / "recipes" / f"{name}.toml")
    cfg = training.make_config(flat)
    model = registry.build(cfg.family, cfg.model)
    assert cfg.family == family and model.causal is causal
    assert model.config.sample_rate == 8000 and model.config.n_src == 2
    assert cfg.train == str(REPO.parent / "shared" / "data" / "librispeech-8k" / "*") + "/"
    assert Path(cfg.speakers_split) == REPO / "recipes" / "splits" / "librispeech-8k.json"
    assert cfg.augment and cfg.random_polarity and cfg.segment == segment


def train_two_steps(recipe: str, tiny: dict, root: Path) -> Path:
    """Two optimiser steps of ``sep train``'s loop with a shipped recipe, its model
    shrunk to ``tiny`` and its data pointed at a tiny tone corpus (as ``sep train
    --config recipes/NAME.toml --set ...`` would); the run's best weights
    (safetensors). Asserts the run finished with finite losses."""
    make_corpus(root / "corpus", n_speakers=5, n_utts=2)
    split = root / "split.json"
    split.write_text(json.dumps({"valid": ["spk3", "spk4"], "test": []}))
    flat, _ = training.read_recipe(REPO / "recipes" / f"{recipe}.toml")
    flat.update(
        model={**flat["model"], **tiny}, train=str(root / "corpus"), speakers_split=str(split),
        segment=0.25, epoch_size=8, valid_size=2, valid_segment=0.25, batch_size=4,
        max_epochs=1, log_every=1, checkpoint_minutes=60.0,
    )
    result = training.train(training.make_config(flat), root / "run", progress=False)
    log = [json.loads(line) for line in (root / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r["loss"] for r in log if r["event"] == "train"]
    assert result.reason == "finished" and result.step == 2 and len(steps) == 2
    assert np.isfinite(steps).all()
    return Path(result.best_path)
