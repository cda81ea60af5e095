"""``sep train``: the training loop, checkpoints, exact resume and multi-process runs.

A run lives in one folder (``RUN_DIR``):

* ``last.pt``: the whole training state (a plain dict, read with
  ``torch.load(weights_only=True)``): model, optimizer, scheduler and AMP
  scaler states, torch/numpy/python RNG states, epoch, step within the epoch,
  best score, the resolved config and the recipe text. Written atomically
  every ``checkpoint_minutes`` and at the end of every epoch, so ``kill -9``
  loses at most that many minutes.
* ``best.safetensors``: the weights with the best validation SI-SNRi, in the
  registry's format (``sep separate --model RUN_DIR/best.safetensors``).
* ``log.jsonl``: one JSON line per ``log_every`` steps (``event: "train"``)
  and per validation (``event: "valid"``).
* ``config.json``: the resolved config, for people.

Exact resume: mixture ``i`` of epoch ``e`` depends only on ``(seed, e, i)``
(:mod:`sepcli.data`), the batch order of an epoch only on ``(seed, e)``
(:class:`torch.utils.data.DistributedSampler`), and the RNG states are
restored, so ``--resume`` continues with the very batches an uninterrupted
run would have seen. On CPU with the same thread count the losses match to
the bit.

Multi-process: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel` (gloo on CPU, nccl on
GPU), every epoch's items are sharded by the sampler, validation is sharded
and all-reduced, and only rank 0 writes files. ``batch_size`` is per process.

Shape legend: B batch, S sources, T samples.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from sepcli import __version__, registry
from sepcli.audio import temp_path_for
from sepcli.errors import SepError
from sepcli.losses import distillation_loss

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "sep-train-1"
LAST = "last.pt"
BEST = "best.safetensors"
LOG = "log.jsonl"
CONFIG = "config.json"
RECIPE = "recipe.toml"
MAX_BAD_STEPS = 20  # consecutive non-finite gradients before a run is declared diverged
NORM_MIXTURES = 200  # training mixtures used by models that fit input statistics
WAVEFORM_FAMILIES = ("convtasnet",)  # forward(mix) gives waveforms: they can teach or learn from one


# ----------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint).

    Recipes (TOML) group the fields in sections: ``[model]`` (``family``) with
    ``[model.config]`` (the family's config dataclass, see :mod:`sepcli.registry`),
    ``[data]``, ``[optim]`` and ``[run]``; see :data:`SECTIONS`.
    """

    # [model]
    family: str = "convtasnet"
    model: dict = field(default_factory=dict)  # the family's config (n_src, sample_rate, ...)
    # [data]
    train: str | None = None  # corpus folder/glob (dynamic mixing) or mixture set folder
    valid: str | None = None  # same kinds; None: the corpus's 'valid' speakers
    speakers_split: str | None = None  # JSON speaker split (see sepcli.data.load_split)
    segment: float = 4.0  # seconds per training mixture
    epoch_size: int = 2000  # dynamic mixing: mixtures per epoch (all processes together)
    valid_size: int = 200  # dynamic validation set: mixtures
    valid_segment: float = 4.0  # dynamic validation set: seconds per mixture
    valid_max_seconds: float | None = None  # pre-mixed validation set: cut longer files
    valid_seed: int = 0  # the validation set does not change with the training seed
    speed_perturb: list | None = field(default_factory=lambda: [0.95, 1.05])
    snr_range: list = field(default_factory=lambda: [0.0, 5.0])
    level_range: list = field(default_factory=lambda: [-30.0, -20.0])
    random_polarity: bool = False  # flip each training source's sign with probability 1/2
    sampling: str = "duration"  # "duration" or "speaker"
    mode: str = "min"  # pre-mixed sets: reconcile file lengths by cutting ("min") or padding
    # dynamic mixing: talking speakers per training mixture, e.g. [2, 3] (None: the model's
    # n_src); references get silent rows up to the largest, so only for models whose loss
    # takes silent references (dpcl). Validation keeps the model's n_src.
    speaker_counts: list | None = None
    workers: int = 0  # DataLoader worker processes
    # [optim]
    batch_size: int = 4  # per process
    valid_batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip: float = 5.0  # gradient-norm clipping; 0 disables
    patience: int = 3  # epochs without improvement before the LR halves
    lr_factor: float = 0.5
    early_stop: int = 10  # epochs without improvement before stopping; 0 disables
    max_epochs: int = 100
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    # bfloat16 autocast on CPUs that multiply it natively (AVX512-BF16, AMX):
    # the convolutions' products in bfloat16, weights, optimiser and validation
    # in float32. Faster with compile (docs/training.md, bench/train_throughput.py).
    amp_cpu: bool = False
    # Knowledge distillation: a trained waveform model (shipped name or .safetensors)
    # whose outputs are a second target. The loss is (1 - distill_weight) x PIT SI-SNR
    # against the references + distill_weight x PIT SI-SNR against the teacher's
    # estimates. Why: a causal student cannot see the future, so the references ask for
    # what it cannot do; a non-causal teacher's estimates are a reachable target
    # (docs/training.md, "Distillation").
    teacher: str | None = None
    distill_weight: float = 0.5
    # [run]
    seed: int = 0
    checkpoint_minutes: float = 10.0
    log_every: int = 20  # steps between log lines
    compile: bool = False  # torch.compile the training step (CPU: ~1.7x for Conv-TasNet)
    keep_epochs: bool = False  # also export every epoch's weights (epochN.safetensors), for recipes/average.py

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS: dict[str, tuple[str, ...]] = {
    "model": ("family", "config"),
    "data": (
        "train", "valid", "speakers_split", "segment", "epoch_size", "valid_size",
        "valid_segment", "valid_max_seconds", "valid_seed", "speed_perturb", "snr_range",
        "level_range", "random_polarity", "sampling", "mode", "workers", "speaker_counts",
    ),
    "optim": (
        "batch_size", "valid_batch_size", "lr", "weight_decay", "clip", "patience",
        "lr_factor", "early_stop", "max_epochs", "amp", "amp_cpu", "teacher", "distill_weight",
    ),
    "run": ("seed", "checkpoint_minutes", "log_every", "compile", "keep_epochs"),
}
"""Recipe sections and the :class:`TrainConfig` fields each may set."""

PATH_KEYS = ("train", "valid", "speakers_split")
# Fields a resumed run may change: they steer the session, not the result
# (amp_cpu changes rounding only, as moving a run to another device does).
RESUMABLE_KEYS = {"checkpoint_minutes", "log_every", "workers", "max_epochs", "early_stop",
                  "valid_batch_size", "compile", "keep_epochs", "amp_cpu"}


def _abs_path(value: str, base: str | os.PathLike | None = None) -> str:
    """Absolute form of a path or glob, relative to ``base`` (default: the working
    directory). A trailing slash is kept: in a glob it means folders only."""
    p = os.path.expanduser(value)
    if not os.path.isabs(p):
        p = os.path.join(os.fspath(base) if base is not None else os.getcwd(), p)
    out = os.path.normpath(p)
    return out + os.sep if value.endswith(("/", os.sep)) and not out.endswith(os.sep) else out


def _teacher_path(value: str, base: str | os.PathLike | None = None) -> str:
    """A teacher given as a shipped model name becomes that model's file, so a
    resumed run keeps the teacher it started with (its SHA-256 is checked)."""
    shipped = registry.shipped_models()
    if value in shipped and not os.path.exists(os.path.join(base or os.getcwd(), value)):
        return str(Path(shipped[value]["path"]).resolve())
    return _abs_path(value, base)


def read_recipe(path: str | os.PathLike) -> tuple[dict, str]:
    """Read a TOML recipe into flat :class:`TrainConfig` keys, plus its text.

    Relative paths in a recipe are relative to the recipe file's folder, so a
    recipe works from any working directory. Unknown sections or keys are errors.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SepError(f"recipe not found: {path}") from None
    except OSError as exc:
        raise SepError(f"cannot read recipe {path}: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SepError(f"{path}: not valid TOML ({exc})") from None
    flat: dict[str, Any] = {}
    for section, values in raw.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise SepError(f"{path}: unknown section [{section}]; valid: {', '.join(SECTIONS)}")
        for key, value in values.items():
            if key not in SECTIONS[section]:
                raise SepError(
                    f"{path}: unknown key {key!r} in [{section}]; valid: {', '.join(SECTIONS[section])}"
                )
            if section == "model" and key == "config":
                if not isinstance(value, dict):
                    raise SepError(f"{path}: [model.config] must be a table")
                flat["model"] = dict(value)
            else:
                flat[key] = value
    base = path.resolve().parent
    for key in PATH_KEYS:
        if isinstance(flat.get(key), str):
            flat[key] = _abs_path(flat[key], base)
    if isinstance(flat.get("teacher"), str):
        flat["teacher"] = _teacher_path(flat["teacher"], base)
    return flat, text


def make_config(base: dict | None = None, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from recipe values and overrides (None = not given).

    ``model`` overrides are merged key by key into the recipe's model config.
    """
    values = dict(base or {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "model":
            values["model"] = {**values.get("model", {}), **value}
        else:
            values[key] = value
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SepError(f"unknown training setting(s): {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    cfg = TrainConfig(**values)
    _check_config(cfg)
    return cfg


def _check_config(cfg: TrainConfig) -> None:
    def positive(name: str, integer: bool = False, allow_zero: bool = False) -> None:
        v = getattr(cfg, name)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0)
        if integer:
            ok = ok and float(v).is_integer()
        if not ok:
            kind = "integer" if integer else "number"
            raise SepError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {v!r}")

    for name in ("segment", "valid_segment", "lr", "checkpoint_minutes"):
        positive(name)
    for name in ("epoch_size", "valid_size", "batch_size", "valid_batch_size", "max_epochs", "log_every"):
        positive(name, integer=True)
    for name in ("patience", "early_stop", "workers"):
        positive(name, integer=True, allow_zero=True)
    for name in ("clip", "weight_decay"):
        positive(name, allow_zero=True)
    if not 0 < cfg.lr_factor < 1:
        raise SepError(f"lr_factor must be between 0 and 1, got {cfg.lr_factor!r}")
    if not isinstance(cfg.model, dict):
        raise SepError("model config must be a table of the family's settings")
    if not isinstance(cfg.random_polarity, bool):
        raise SepError(f"random_polarity must be true or false, got {cfg.random_polarity!r}")
    if isinstance(cfg.speed_perturb, str) and cfg.speed_perturb.lower() in ("none", "off", "false"):
        cfg.speed_perturb = None
    for name in ("speed_perturb", "snr_range", "level_range"):
        v = getattr(cfg, name)
        if v is None and name == "speed_perturb":
            continue
        if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(isinstance(x, (int, float)) for x in v):
            raise SepError(f"{name} must be [low, high], got {v!r}")
        setattr(cfg, name, [float(v[0]), float(v[1])])
    for name in PATH_KEYS:
        v = getattr(cfg, name)
        if isinstance(v, str):
            # Absolute, so a resumed run finds its data from any working directory.
            setattr(cfg, name, _abs_path(v))
    if cfg.teacher is not None:
        if not isinstance(cfg.teacher, str) or not cfg.teacher:
            raise SepError(f"teacher must be a model name or path, got {cfg.teacher!r}")
        cfg.teacher = _teacher_path(cfg.teacher)
    w = cfg.distill_weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
        raise SepError(f"distill_weight must be between 0 and 1, got {w!r}")
    if cfg.sampling not in ("duration", "speaker"):
        raise SepError(f"sampling must be 'duration' or 'speaker', got {cfg.sampling!r}")
    if cfg.mode not in ("min", "max"):
        raise SepError(f"mode must be 'min' or 'max', got {cfg.mode!r}")


def parse_set(items: list[str] | tuple[str, ...]) -> dict:
    """``["lr=5e-4", "model.X=4"]`` -> overrides for :func:`make_config` (values parsed as TOML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SepError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # bare words are strings
        if key.startswith("model."):
            out.setdefault("model", {})[key[len("model."):]] = value
        else:
            out[key.split(".")[-1] if key.split(".")[0] in SECTIONS else key] = value
    return out


# ----------------------------------------------------------------------------- results


@dataclass
class TrainResult:
    """How a call to :func:`train` ended."""

    run_dir: Path
    reason: str  # "finished", "early_stop", "max_steps", "max_minutes", "interrupted"
    epoch: int  # epochs completed
    step: int  # optimizer steps taken in total
    best_si_snri: float | None
    best_epoch: int | None
    best_path: Path | None
    elapsed: float  # seconds of training, all sessions


# ----------------------------------------------------------------------------- distributed


@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    owned: bool = False  # we initialised the process group, so we tear it down

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str | None) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    owned = False
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owned = True
    return _Dist(world, rank, local_rank, owned)


def _broadcast(obj: Any, d: _Dist) -> Any:
    """Send rank 0's ``obj`` to every rank (pickled by torch; our own processes only)."""
    if d.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _any_rank(flag: bool, d: _Dist, device: torch.device) -> bool:
    if d.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _pick_device(device: str | None, d: _Dist) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SepError(f"unknown device {device!r} (e.g. cpu, cuda, cuda:1)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SepError("--device cuda: no CUDA GPU is available")
        if d.world > 1:
            dev = torch.device("cuda", d.local_rank)
    return dev


# ----------------------------------------------------------------------------- files


def _atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the rename must not land before the data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_cached_gauss": float(np_state[4]),
        "python": [int(v) for v in random.getstate()[1]],
        "python_version": int(random.getstate()[0]),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state((
        "MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
        state["numpy_has_gauss"], state["numpy_cached_gauss"],
    ))
    random.setstate((state["python_version"], tuple(state["python"]), None))


def load_checkpoint(run_dir: str | os.PathLike) -> dict:
    """Read ``RUN_DIR/last.pt`` (no code execution: ``weights_only=True``)."""
    path = Path(run_dir) / LAST
    if not path.is_file():
        raise SepError(f"no checkpoint to resume: {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise SepError(f"{path}: not a readable training checkpoint ({exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise SepError(f"{path}: not a sep training checkpoint")
    return ckpt


def _trim_log(path: Path, step: int, epoch: int) -> None:
    """Drop log lines written after the checkpoint we resume from, so a resumed
    run's log reads as if it had never stopped."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by kill -9
        if rec.get("event") == "valid" and rec.get("epoch", 0) >= epoch:
            continue
        if rec.get("event") == "train" and rec.get("step", 0) > step:
            continue
        keep.append(line)
    _atomic_write_bytes(path, lambda f: f.write("".join(k + "\n" for k in keep).encode()))


# ----------------------------------------------------------------------------- data


def _mixing(cfg: TrainConfig, n_src: int, segment: float, speed: list | None,
            n_active: list | None = None, polarity: bool = False):
    from sepcli.data import MixingConfig

    return MixingConfig(
        n_src=n_src, segment=segment, snr_range=tuple(cfg.snr_range),
        speed_range=None if speed is None else tuple(speed),
        level_range=tuple(cfg.level_range), sampling=cfg.sampling,
        n_active=None if n_active is None else tuple(n_active), random_polarity=polarity,
    )


def _train_n_src(cfg: TrainConfig, n_src: int) -> int:
    """Reference rows of a training mixture: the largest of ``speaker_counts``, else ``n_src``."""
    counts = cfg.speaker_counts
    if counts is None:
        return n_src
    if not isinstance(counts, list) or not counts or any(
        isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in counts
    ):
        raise SepError(f"speaker_counts must be a list of positive integers like [2, 3], got {counts!r}")
    return max(counts)


def build_datasets(cfg: TrainConfig, sample_rate: int, n_src: int) -> tuple[Any, Any, bool]:
    """Training and validation datasets for ``cfg``.

    Returns ``(train_set, valid_set, valid_fixed_length)``. A folder with
    ``mix/`` and ``s1/`` is a pre-mixed set; anything else is a corpus for
    dynamic mixing (``train`` speakers of the split file for training; the
    ``valid`` speakers, or the whole ``valid`` corpus, for validation).
    """
    from sepcli.data import (
        Corpus,
        DynamicMixDataset,
        MixtureSetDataset,
        find_speakers,
        is_mixture_set,
        select_split,
    )

    if not cfg.train:
        raise SepError("no training data: give --train (a corpus folder or mixture set) or a recipe")
    scanned: dict[str, dict] = {}

    def corpus(path: str, split: str, use_split: bool, min_speakers: int = n_src) -> Corpus:
        if path not in scanned:
            scanned[path] = find_speakers(path)
        spk = select_split(scanned[path], cfg.speakers_split if use_split else None,
                           split if use_split else "train")
        return Corpus(spk, sample_rate, min_speakers=min_speakers)

    n_train = _train_n_src(cfg, n_src)
    if is_mixture_set(cfg.train):
        if cfg.speaker_counts is not None:
            raise SepError("speaker_counts applies to dynamic mixing; the training data is a pre-mixed set")
        if cfg.random_polarity:
            raise SepError("random_polarity needs dynamic mixing (a corpus of speaker folders), "
                           "not a pre-mixed training set")
        train_set = MixtureSetDataset(
            cfg.train, sample_rate, n_src, mode=cfg.mode, segment=cfg.segment, seed=cfg.seed
        )
        train_speakers: set[str] = set()
    else:
        c = corpus(cfg.train, "train", cfg.speakers_split is not None, n_train)
        train_speakers = set(c.speakers)
        train_set = DynamicMixDataset(
            c, _mixing(cfg, n_train, cfg.segment, cfg.speed_perturb, cfg.speaker_counts, cfg.random_polarity),
            cfg.epoch_size,
            cfg.seed,
        )
    valid = cfg.valid
    if valid is None:
        if cfg.speakers_split is None or is_mixture_set(cfg.train):
            raise SepError(
                "no validation data: give --valid (a mixture set or corpus), or --speakers-split "
                "to validate on the corpus's 'valid' speakers"
            )
        valid = cfg.train
    if is_mixture_set(valid):
        valid_set = MixtureSetDataset(
            valid, sample_rate, n_src, mode=cfg.mode, segment=None, max_seconds=cfg.valid_max_seconds
        )
        fixed = False
    else:
        vc = corpus(valid, "valid", cfg.speakers_split is not None)
        shared = train_speakers & set(vc.speakers)
        if shared:
            log.warning(
                "%d validation speaker(s) also train (%s): validation will flatter the model",
                len(shared), ", ".join(sorted(shared)[:5]),
            )
        valid_set = DynamicMixDataset(
            vc, _mixing(cfg, n_src, cfg.valid_segment, None), cfg.valid_size, cfg.valid_seed
        )
        fixed = True
    return train_set, valid_set, fixed


class _ListSampler(torch.utils.data.Sampler):
    def __init__(self, indices: list[int]) -> None:
        self.indices = indices

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def epoch_indices(n_items: int, epoch: int, seed: int, world: int, rank: int, shuffle: bool = True) -> list[int]:
    """This rank's items of an epoch, in order: a function of (seed, epoch) only."""
    sampler = torch.utils.data.DistributedSampler(
        range(n_items), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    return list(sampler)


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    indices: list[int] | None = None,
) -> tuple[float, int]:
    """Sum of per-mixture SI-SNRi (dB) over ``dataset`` (or ``indices`` of it), and the count.

    Estimates come from ``model.separate(mix)``; SI-SNRi is the best-permutation
    SI-SNR minus the mixture's SI-SNR, averaged over sources.
    """
    from sepcli.metrics import pit_si_snr_torch, si_snr_torch

    device = torch.device(device)
    indices = list(range(len(dataset))) if indices is None else indices
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(indices), batch_size):
            items = [dataset[i] for i in indices[start : start + batch_size]]
            mix = torch.stack([m for m, _ in items]).to(device)  # [B, T]
            ref = torch.stack([r for _, r in items]).to(device)  # [B, S, T]
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                est = model.separate(mix)  # [B, S, T]
            est, ref, mix = est.double(), ref.double(), mix.double()
            if est.shape != ref.shape:
                raise SepError(f"model returned {tuple(est.shape)} for references {tuple(ref.shape)}")
            values, _ = pit_si_snr_torch(est, ref)  # [B, S]
            base = si_snr_torch(mix[:, None, :].expand_as(ref), ref)  # [B, S]
            total += float((values - base).mean(1).sum())
            count += len(items)
    finally:
        model.train(was_training)
    return total, count


# ----------------------------------------------------------------------------- progress


class _Progress:
    """Rich live display on a terminal, plain log lines otherwise (rank 0 only)."""

    def __init__(self, enabled: bool, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.rich = None
        self.val = "-"
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.rich = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("loss {task.fields[loss]}  val SI-SNRi {task.fields[val]}  "
                           "{task.fields[speed]} s/s"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.task = self.rich.add_task("train", total=steps_per_epoch, epoch=0, loss="-",
                                           val="-", speed="-")
            self.rich.start()
        self.enabled = enabled

    def epoch(self, epoch: int, done: int) -> None:
        if self.rich is not None:
            fields = dict(self.rich.tasks[0].fields, epoch=epoch)  # reset() replaces all fields
            self.rich.reset(self.task, total=self.steps_per_epoch, completed=done, **fields)

    def step(self, done: int, loss: float | None = None, speed: float | None = None,
             line: str | None = None) -> None:
        if self.rich is not None:
            fields = {}
            if loss is not None:
                fields["loss"] = f"{loss:.3f}"
            if speed is not None:
                fields["speed"] = f"{speed:.1f}"
            self.rich.update(self.task, completed=done, **fields)
        elif self.enabled and line:
            log.info("%s", line)

    def valid(self, score: float, line: str) -> None:
        self.val = f"{score:.2f} dB"
        if self.rich is not None:
            self.rich.update(self.task, val=self.val)
            self.rich.console.print(line)
        elif self.enabled:
            log.info("%s", line)

    def close(self) -> None:
        if self.rich is not None:
            self.rich.stop()


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# ----------------------------------------------------------------------------- training


class _LossModule(nn.Module):
    """DDP only synchronises gradients through ``forward``; this routes
    ``compute_loss`` through it, and adds the distillation term when a teacher
    is given (see :func:`sepcli.losses.distillation_loss`)."""

    def __init__(self, model: nn.Module, teacher: nn.Module | None = None, weight: float = 0.5) -> None:
        super().__init__()
        self.model = model
        # Not a submodule: DDP, state_dict and the optimiser must not see it.
        self._teacher = [teacher] if teacher is not None else []
        self.weight = float(weight)

    def forward(self, mix: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        if not self._teacher:
            return self.model.compute_loss(mix, ref)
        with torch.no_grad():
            target = self._teacher[0](mix)  # [B, S, T]
        return distillation_loss(self.model(mix), ref, target, self.weight)


def load_teacher(path: str, model: nn.Module, family: str, device: torch.device) -> tuple[nn.Module, str]:
    """The frozen teacher for distillation, and its file's SHA-256.

    Both models must map a mixture to waveforms ([B, T] -> [B, S, T]) with the
    same number of speakers and sample rate.
    """
    teacher = registry.load_model(path, device)
    for who, fam in (("student", family), ("teacher", teacher.family)):
        if fam not in WAVEFORM_FAMILIES:
            raise SepError(f"distillation needs waveform models ({', '.join(WAVEFORM_FAMILIES)}); "
                           f"the {who} is {fam!r}")
    for key in ("n_src", "sample_rate"):
        a, b = getattr(model.config, key), getattr(teacher.config, key)
        if a != b:
            raise SepError(f"teacher {path}: {key} is {b}, but the model being trained has {a}")
    teacher.eval().requires_grad_(False)
    return teacher, registry.file_sha256(path)


class _StopSignal:
    """First SIGINT/SIGTERM: finish the step, checkpoint, stop. Second: stop now."""

    def __init__(self) -> None:
        self.flag = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        log.warning("stopping after this step (signal %d); send it again to stop at once", signum)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _prepare_run_dir(out: Path, resume: bool, force: bool) -> dict | None:
    """Rank 0: check or clean RUN_DIR; returns the checkpoint when resuming."""
    if resume:
        ckpt = load_checkpoint(out)
        for stale in out.glob(f".{LAST}.*.tmp"):
            stale.unlink(missing_ok=True)  # a save cut short by kill -9
        return ckpt
    if out.exists() and not out.is_dir():
        raise SepError(f"{out} exists and is not a folder")
    if (out / LAST).exists() or (out / LOG).exists():
        if not force:
            raise SepError(
                f"{out} already holds a run; use --resume {out} to continue it, --force to "
                "start over, or another --out"
            )
        for name in (LAST, BEST, LOG, CONFIG, RECIPE):
            (out / name).unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SepError(f"cannot create run folder {out}: {exc.strerror}") from None
    return None


def train(
    config: TrainConfig | None,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overrides: dict | None = None,
    recipe_text: str = "",
    init: str | os.PathLike | None = None,
    device: str | None = None,
    threads: int | None = None,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    force: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a model; the library behind ``sep train``.

    Args:
        config: the run's settings (None when resuming).
        out: the run folder (see the module docstring for what it holds).
        resume: continue the run in ``out`` from ``last.pt``; ``config`` must be
            None and ``overrides`` may only change :data:`RESUMABLE_KEYS`.
        overrides: settings to change on resume.
        recipe_text: the recipe's TOML, stored with the checkpoints.
        init: start from the weights of a ``.safetensors`` model (fine-tuning).
        device: ``cpu``, ``cuda``, ``cuda:1``...; default CUDA when available.
        threads: torch intra-op threads for this process.
        max_steps: stop (with a checkpoint) once this many optimizer steps are done in total.
        max_minutes: stop (with a checkpoint) after this many minutes of this call.
        force: start over in a folder that already holds a run.
        progress: show progress on stderr (rich on a terminal, log lines otherwise).
    """
    t_call = time.monotonic()
    out = Path(out)
    d = _init_distributed(device)
    pkg_log = logging.getLogger("sepcli")
    level = pkg_log.level
    if not d.main:
        pkg_log.setLevel(max(level, logging.WARNING))  # one copy of the progress lines, from rank 0
    finished = False
    try:
        result = _train(config, out, d, t_call, resume=resume, overrides=overrides or {},
                        recipe_text=recipe_text, init=init, device=device, threads=threads,
                        max_steps=max_steps, max_minutes=max_minutes, force=force, progress=progress)
        finished = True
        return result
    finally:
        pkg_log.setLevel(level)
        if d.owned and dist.is_initialized():
            if finished:
                # Rank 0 still writes the last checkpoint after the others are done; a rank that
                # tears its gloo connections down meanwhile can abort rank 0 (SIGABRT seen in CI).
                # After an error the peers may never arrive, so only a clean finish waits.
                dist.barrier()
            dist.destroy_process_group()


def _train(config, out, d: _Dist, t_call: float, *, resume, overrides, recipe_text, init, device,
           threads, max_steps, max_minutes, force, progress) -> TrainResult:
    if threads is not None:
        if threads < 1:
            raise SepError(f"threads must be positive, got {threads}")
        torch.set_num_threads(int(threads))
    dev = _pick_device(device, d)

    # Rank 0 checks the folder and reads the checkpoint; every rank gets the verdict.
    payload: tuple[str | None, dict | None]
    if d.main:
        try:
            payload = (None, _prepare_run_dir(out, resume, force))
        except SepError as exc:
            payload = (str(exc), None)
    else:
        payload = (None, None)
    payload = _broadcast(payload, d)
    if payload[0] is not None:
        raise SepError(payload[0])
    ckpt = payload[1]

    if resume:
        assert ckpt is not None
        if config is not None:
            raise SepError("resume takes its settings from the checkpoint; do not pass a config")
        saved = dict(ckpt["config"])
        for key, value in overrides.items():
            if key in PATH_KEYS and isinstance(value, str):
                value = _abs_path(value)
            if key == "model" and isinstance(value, dict):
                changed = {k: v for k, v in value.items() if saved["model"].get(k) != v}
                if changed:
                    raise SepError(f"cannot change the model ({', '.join(changed)}) when resuming")
            elif key in RESUMABLE_KEYS:
                saved[key] = value
            elif saved.get(key) != value:
                raise SepError(
                    f"cannot change {key!r} when resuming (checkpoint has {saved.get(key)!r}); "
                    f"settings you may change: {', '.join(sorted(RESUMABLE_KEYS))}"
                )
        cfg = make_config(saved)
        recipe_text = ckpt.get("recipe", "")
        if ckpt.get("world_size", 1) != d.world:
            log.warning(
                "resuming a %d-process run with %d processes: batches will differ from an "
                "uninterrupted run", ckpt.get("world_size", 1), d.world,
            )
    else:
        if config is None:
            raise SepError("no training config given")
        cfg = dataclasses.replace(config, model=dict(config.model))  # the caller's stays as it was
        _check_config(cfg)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)

    # Model. With --init the file's config is the base, so fine-tuning needs no model settings.
    init_tensors = None
    if init is not None and ckpt is None:
        shipped = registry.shipped_models()
        if str(init) in shipped and not Path(init).exists():
            init = shipped[str(init)]["path"]
        meta, init_tensors = registry.read_checkpoint(init)
        if meta.get("family") != cfg.family:
            raise SepError(f"--init {init}: a {meta.get('family')!r} model, but this run trains {cfg.family!r}")
        cfg.model = {**json.loads(meta["config"]), **cfg.model}
    model = registry.build(cfg.family, cfg.model)
    cfg.model = dataclasses.asdict(model.config)  # every default spelled out in the checkpoint
    if init_tensors is not None:
        try:
            model.load_state_dict(init_tensors, strict=True)
        except RuntimeError as exc:
            raise SepError(f"--init {init}: weights do not fit this run's model config: {exc}") from None
        log.info("initialised from %s", init)
    model.to(dev)
    sample_rate, n_src = int(model.config.sample_rate), int(model.config.n_src)
    if cfg.speaker_counts is not None and not getattr(model, "accepts_silent_sources", False):
        raise SepError(
            f"speaker_counts needs a model whose loss takes silent references (dpcl); {cfg.family} does not"
        )

    teacher, teacher_sha = None, None
    if cfg.teacher is not None:
        teacher, teacher_sha = load_teacher(cfg.teacher, model, cfg.family, dev)
        if ckpt is not None and ckpt.get("teacher_sha256") not in (None, teacher_sha):
            raise SepError(f"teacher {cfg.teacher} changed since the run started (SHA-256 differs); "
                           "restore it to resume")
        log.info("distilling from %s (weight %g)", cfg.teacher, cfg.distill_weight)

    train_set, valid_set, valid_fixed = build_datasets(cfg, sample_rate, n_src)

    if ckpt is None and init is None and hasattr(model, "fit_normalization"):
        # Models with input statistics (deep clustering's feature mean/std) learn
        # them once from training mixtures; a fixed slice keeps it reproducible.
        n_fit = min(NORM_MIXTURES, len(train_set))
        train_set.set_epoch(0)
        frames = model.fit_normalization(train_set[i][0].to(dev) for i in range(n_fit))
        log.info("input normalisation fitted on %d mixtures (%d frames)", n_fit, frames)

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.lr_factor, patience=cfg.patience,
        threshold=0.0, threshold_mode="abs",  # "improved" means the same as for best.safetensors
    )
    use_amp = bool(cfg.amp) and dev.type == "cuda"
    amp_dtype = None
    valid_amp_dtype = None  # validation on CPU stays float32, so scores compare across a run
    if use_amp:
        amp_dtype = valid_amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif cfg.amp_cpu and dev.type == "cpu":
        from sepcli.engine import native_bfloat16

        if native_bfloat16():
            use_amp, amp_dtype = True, torch.bfloat16
        else:
            log.warning("amp_cpu: this CPU has no native bfloat16 products (AVX512-BF16/AMX); "
                        "training in float32")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    epoch, step_in_epoch, global_step = 0, 0, 0
    best, best_epoch, bad_epochs, elapsed = None, None, 0, 0.0
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise SepError(f"{out / LAST}: checkpoint does not fit its own config: {exc}") from None
        epoch, step_in_epoch = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
        global_step = int(ckpt["global_step"])
        best = ckpt.get("best")
        best_epoch = ckpt.get("best_epoch")
        bad_epochs = int(ckpt.get("bad_epochs", 0))
        elapsed = float(ckpt.get("elapsed", 0.0))
        _set_rng_state(ckpt["rng"])
        if d.main:
            _trim_log(out / LOG, global_step, epoch)
        log.info("resuming %s at epoch %d, step %d (global step %d)", out, epoch, step_in_epoch, global_step)

    if d.main and ckpt is None:
        _write_json(out / CONFIG, {"sep_version": __version__, **cfg.to_dict()})
        if recipe_text:
            _atomic_write_bytes(out / RECIPE, lambda f: f.write(recipe_text.encode()))

    wrapped: nn.Module = _LossModule(model, teacher, cfg.distill_weight)
    if d.world > 1:
        # static_graph: some weights never get gradients (Conv-TasNet's last
        # residual output feeds nothing); the graph is the same every step.
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[dev.index] if dev.type == "cuda" else None, static_graph=True
        )
    if cfg.compile:
        # Fuses the element-wise work around the convolutions (norms, PReLU,
        # masks) into generated kernels: faster Conv-TasNet training steps
        # on CPU (docs/training.md), after a minute or two of compiling. The saved state is the
        # plain model's, so checkpoints do not depend on it.
        wrapped = torch.compile(wrapped)
    model.train()

    per_step = cfg.batch_size * d.world
    steps_per_epoch = len(train_set) // per_step
    if steps_per_epoch < 1:
        raise SepError(
            f"an epoch of {len(train_set)} mixtures is smaller than one step "
            f"({cfg.batch_size} per process x {d.world} process(es))"
        )
    step_seconds = cfg.segment * per_step  # audio seconds consumed by one step, all ranks
    loader_gen = torch.Generator()  # keeps DataLoader from drawing on the global RNG
    log_file = (out / LOG).open("a") if d.main else None
    display = _Progress(progress and d.main, steps_per_epoch)
    last_ckpt = time.monotonic()
    reason = "finished"
    bad_steps = 0

    def write_log(rec: dict) -> None:
        if log_file is not None:
            log_file.write(json.dumps(rec) + "\n")
            log_file.flush()

    def save_last() -> None:
        nonlocal last_ckpt
        last_ckpt = time.monotonic()
        if not d.main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "sep_version": __version__,
            "config": cfg.to_dict(),
            "recipe": recipe_text,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "rng": _rng_state(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "best": best,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "elapsed": elapsed + (time.monotonic() - t_session),
            "world_size": d.world,
            "teacher_sha256": teacher_sha,
        }
        _atomic_write_bytes(out / LAST, lambda f: torch.save(state, f))

    def should_stop() -> str | None:
        if stop.flag:
            return "interrupted"
        if max_steps is not None and global_step >= max_steps:
            return "max_steps"
        if max_minutes is not None and time.monotonic() - t_call >= max_minutes * 60:
            return "max_minutes"
        return None

    def synced_stop() -> str | None:
        why = should_stop()
        if _any_rank(why is not None, d, dev):
            return why or "interrupted"
        return None

    t_session = time.monotonic()
    try:
        with _StopSignal() as stop:
            stopped = synced_stop()
            if cfg.early_stop and bad_epochs >= cfg.early_stop:
                reason, stopped = "early_stop", None  # resuming a run that had stopped early
            while reason == "finished" and stopped is None and epoch < cfg.max_epochs:
                train_set.set_epoch(epoch)
                indices = epoch_indices(len(train_set), epoch, cfg.seed, d.world, d.rank)
                indices = indices[: steps_per_epoch * cfg.batch_size][step_in_epoch * cfg.batch_size :]
                loader = torch.utils.data.DataLoader(
                    train_set, batch_size=cfg.batch_size, sampler=_ListSampler(indices),
                    num_workers=cfg.workers, drop_last=True, generator=loader_gen,
                    pin_memory=dev.type == "cuda",
                )
                display.epoch(epoch, step_in_epoch)
                win_loss, win_n, win_t = 0.0, 0, time.monotonic()
                for mix, ref in loader:
                    stopped = synced_stop()
                    if stopped:
                        break
                    mix = mix.to(dev, non_blocking=True)  # [B, T]
                    ref = ref.to(dev, non_blocking=True)  # [B, S, T]
                    optimizer.zero_grad(set_to_none=True)
                    with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
                        loss = wrapped(mix, ref)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    norm = nn.utils.clip_grad_norm_(
                        model.parameters(), cfg.clip if cfg.clip > 0 else float("inf")
                    )
                    if torch.isfinite(norm) or scaler.is_enabled():
                        scaler.step(optimizer)  # the scaler itself skips non-finite steps
                        bad_steps = 0
                    else:
                        # Identical on every rank: gradients are already all-reduced.
                        bad_steps += 1
                        log.warning("step %d: non-finite gradient, update skipped", global_step + 1)
                        if bad_steps >= MAX_BAD_STEPS:
                            raise SepError(
                                f"training diverged: {bad_steps} steps in a row with non-finite gradients; "
                                f"start a new run from {out / BEST} (--init) with a lower --lr"
                            )
                    scaler.update()
                    step_in_epoch += 1
                    global_step += 1
                    win_loss += float(loss.detach())
                    win_n += 1
                    if step_in_epoch % cfg.log_every == 0 or step_in_epoch == steps_per_epoch:
                        now = time.monotonic()
                        speed = step_seconds * win_n / max(now - win_t, 1e-9)
                        mean_loss = win_loss / win_n
                        lr = optimizer.param_groups[0]["lr"]
                        total = elapsed + (now - t_session)
                        eta = (steps_per_epoch - step_in_epoch) * step_seconds / speed
                        write_log({
                            "event": "train", "step": global_step, "epoch": epoch,
                            "step_in_epoch": step_in_epoch, "loss": mean_loss, "lr": lr,
                            "audio_sec_per_sec": speed, "elapsed": total,
                        })
                        display.step(
                            step_in_epoch, mean_loss, speed,
                            f"epoch {epoch} step {step_in_epoch}/{steps_per_epoch} loss {mean_loss:.4f} "
                            f"lr {lr:.2e} val {display.val} audio {speed:.1f} s/s "
                            f"elapsed {_hms(total)} epoch ETA {_hms(eta)}",
                        )
                        win_loss, win_n, win_t = 0.0, 0, now
                    else:
                        display.step(step_in_epoch)
                    if time.monotonic() - last_ckpt >= cfg.checkpoint_minutes * 60:
                        save_last()
                if stopped:
                    break

                # End of epoch: validate (sharded over ranks), schedule, checkpoint.
                shard = list(range(d.rank, len(valid_set), d.world))
                total_db, count = validate(
                    model, valid_set, batch_size=cfg.valid_batch_size if valid_fixed else 1,
                    device=dev, amp_dtype=valid_amp_dtype, indices=shard,
                )
                if d.world > 1:
                    t = torch.tensor([total_db, float(count)], dtype=torch.float64, device=dev)
                    dist.all_reduce(t)
                    total_db, count = float(t[0]), int(t[1])
                score = total_db / max(count, 1)
                scheduler.step(score)
                improved = best is None or score > best
                if improved:
                    best, best_epoch, bad_epochs = score, epoch, 0
                    if d.main:
                        # force: this run's own best model, replaced as it improves.
                        registry.save_model(model, out / BEST, force=True, extra={
                            "val_si_snri": f"{score:.4f}", "epoch": str(epoch),
                            "step": str(global_step), "train_config": json.dumps(cfg.to_dict()),
                        })
                else:
                    bad_epochs += 1
                if cfg.keep_epochs and d.main:
                    registry.save_model(model, out / f"epoch{epoch}.safetensors", force=True, extra={
                        "val_si_snri": f"{score:.4f}", "epoch": str(epoch), "step": str(global_step),
                    })
                now = time.monotonic()
                write_log({
                    "event": "valid", "step": global_step, "epoch": epoch, "val_si_snri": score,
                    "best": best, "lr": optimizer.param_groups[0]["lr"],
                    "elapsed": elapsed + (now - t_session),
                })
                display.valid(score, f"epoch {epoch}: validation SI-SNRi {score:.2f} dB "
                                     f"(best {best:.2f} dB at epoch {best_epoch})")
                epoch += 1
                step_in_epoch = 0
                save_last()
                if cfg.early_stop and bad_epochs >= cfg.early_stop:
                    reason = "early_stop"
                    log.info("early stop: no improvement for %d epochs", bad_epochs)
                    break
                stopped = synced_stop()
            if stopped:
                reason = stopped
                save_last()
    finally:
        display.close()
        if log_file is not None:
            log_file.close()
    total_elapsed = elapsed + (time.monotonic() - t_session)
    return TrainResult(
        run_dir=out, reason=reason, epoch=epoch, step=global_step,
        best_si_snri=best, best_epoch=best_epoch,
        best_path=(out / BEST) if best is not None else None, elapsed=total_elapsed,
    )
