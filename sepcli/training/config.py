"""Training settings: :class:`TrainConfig`, recipes (TOML), ``--set KEY=VALUE`` and their checks."""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

from sepcli import registry
from sepcli.errors import SepError, check_keys

log = logging.getLogger(__name__)

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
    speakers_split: str | None = None  # JSON speaker split (see sepcli.training.corpus.load_split)
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
    # dynamic mixing: rooms, channel filters, VTLP, noise (sepcli.training.augment.AugmentConfig's fields),
    # e.g. {reverb = 0.5, eq = 0.5}; None: clean mixtures. Validation stays clean.
    augment: dict | None = None
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
        "level_range", "random_polarity", "augment", "sampling", "mode", "workers", "speaker_counts",
    ),
    "optim": (
        "batch_size", "valid_batch_size", "lr", "weight_decay", "clip", "patience",
        "lr_factor", "early_stop", "max_epochs", "amp", "amp_cpu", "teacher", "distill_weight",
    ),
    "run": ("seed", "checkpoint_minutes", "log_every", "compile", "keep_epochs"),
}
"""Recipe sections and the :class:`TrainConfig` fields each may set."""

SESSION_KEYS = ("max_steps",)
"""``--set`` keys that steer one call of :func:`~sepcli.training.loop.train`, not the run,
so they are not saved with it: ``max_steps`` stops (with a checkpoint) once that many
optimizer steps are done in total."""

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
    if value in registry.shipped_models():
        return str(registry.model_file(value).resolve())
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

    ``model`` overrides are merged key by key into the recipe's model config,
    ``augment.KEY`` ones into its ``augment`` table; ``augment`` replaces the table.
    """
    values = dict(base or {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "model":
            values["model"] = {**values.get("model", {}), **value}
        elif key.startswith("augment."):  # one augmentation setting (parse_set's augment.KEY)
            values["augment"] = {**(values.get("augment") or {}), key[len("augment."):]: value}
        else:
            values[key] = value
    check_keys(values, (f.name for f in dataclasses.fields(TrainConfig)), "training setting")
    cfg = TrainConfig(**values)
    _check_config(cfg)
    return cfg


def resumed_config(ckpt: dict, overrides: dict) -> TrainConfig:
    """The checkpoint's config with ``overrides``, which may change only
    :data:`RESUMABLE_KEYS` (others must equal the saved values) and never the model."""
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
    return make_config(saved)


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
    if cfg.speed_perturb is False or (
            isinstance(cfg.speed_perturb, str) and cfg.speed_perturb.lower() in ("none", "off", "false")):
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
    from sepcli.training.augment import AugmentConfig

    AugmentConfig.from_dict(cfg.augment)  # SepError on unknown keys or bad values, before any data loads
    if cfg.mode not in ("min", "max"):
        raise SepError(f"mode must be 'min' or 'max', got {cfg.mode!r}")


def parse_set(items: list[str] | tuple[str, ...]) -> dict:
    """``["lr=5e-4", "model.X=4", "augment.reverb=0.5"]`` -> overrides for :func:`make_config`.

    Values are parsed as TOML (bare words are strings). Keys are :class:`TrainConfig`
    fields (optionally behind their recipe section, ``optim.lr``), ``model.KEY`` and
    ``augment.KEY`` (merged into those tables by :func:`make_config`; ``augment={...}``
    replaces the table) or :data:`SESSION_KEYS`. Unknown keys
    are one :class:`SepError` with the closest spelling; the model's own keys are
    checked when the model is built, against its family's config.
    """
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
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
        head, dot, rest = key.partition(".")
        if dot and head == "augment" and rest:
            from sepcli.training.augment import AugmentConfig

            check_keys([rest], (f.name for f in dataclasses.fields(AugmentConfig)), "augment setting")
            out[key] = value  # merged into the recipe's table by make_config
            continue
        if dot and head == "model" and rest:
            table = out.setdefault("model", {})
            if not isinstance(table, dict):
                raise SepError(f"--set {key}: model is already set as a whole")
            table[rest] = value
            continue
        if dot and head in SECTIONS and head != "model":
            check_keys([rest], SECTIONS[head], f"[{head}] setting")
            key = rest
        check_keys([key], [*fields, *SESSION_KEYS], "training setting")
        out[key] = value
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

