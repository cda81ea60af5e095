"""Model registry and the safe checkpoint format.

A *family* is a model class plus its config dataclass (``convtasnet``, ``dpcl``).
A *preset* is a named config of a family (``convtasnet-paper``).
A *shipped model* is a weights file in the top-level ``models/`` folder with a
JSON model card beside it (``models/convtasnet.safetensors`` + ``models/convtasnet.json``).

Checkpoint format (``.safetensors``): the tensors of ``model.state_dict()`` plus
string metadata:

* ``format``: ``"sep-model-1"``
* ``family``: registered family name
* ``config``: JSON of the config dataclass (includes ``sample_rate`` and ``n_src``)
* ``sep_version``: version that wrote it
* ``digest``: SHA-256 over the metadata above and every tensor's name, dtype,
  shape and bytes. Verified on every load, so a tampered or corrupt file is
  refused. A shipped model's card also carries the SHA-256 of the whole file.

Loading never executes code: safetensors holds only tensors and strings.

Model contract (every registered class):

* ``__init__(self, config)`` takes its config dataclass; ``self.config`` keeps it.
  The config has ``sample_rate: int`` and ``n_src: int`` fields.
* ``forward(mix)``: ``[B, T]`` (or ``[B, 1, T]``) -> ``[B, S, T]``.
* ``separate(mix, n_src=None)``: inference entry point used by the engine, same
  shapes; ``n_src`` lets clustering models choose the number of speakers.
* ``compute_loss(mix, ref) -> torch.Tensor``: scalar training loss;
  mix ``[B, T]``, ref ``[B, S, T]``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from sepcli import __version__
from sepcli.errors import SepError

FORMAT = "sep-model-1"
WEIGHTS_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class Family:
    name: str
    model_cls: type
    config_cls: type


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    overrides: dict
    description: str = ""


_FAMILIES: dict[str, Family] = {}
_PRESETS: dict[str, Preset] = {}


def register(name: str, config_cls: type) -> Callable[[type], type]:
    """Class decorator: ``@register("convtasnet", ConvTasNetConfig)``."""

    def deco(cls: type) -> type:
        _FAMILIES[name] = Family(name, cls, config_cls)
        cls.family = name
        return cls

    return deco


def register_preset(name: str, family: str, description: str = "", **overrides: Any) -> None:
    """Name a configuration of a family, e.g. the paper's hyper-parameters."""
    _PRESETS[name] = Preset(name, family, dict(overrides), description)


def _ensure_loaded() -> None:
    # Importing the model modules runs their @register decorators.
    import sepcli.models  # noqa: F401


def families() -> dict[str, Family]:
    _ensure_loaded()
    return dict(_FAMILIES)


def presets() -> dict[str, Preset]:
    _ensure_loaded()
    return dict(_PRESETS)


def get_family(name: str) -> Family:
    _ensure_loaded()
    if name not in _FAMILIES:
        raise SepError(f"unknown model family {name!r}; valid: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def make_config(family: str, config: Any = None, **overrides: Any) -> Any:
    """Build a family's config dataclass from a dict, a dataclass or keywords.
    Unknown keys are an error (a typo in a recipe must not pass silently)."""
    fam = get_family(family)
    if config is None:
        values: dict = {}
    elif dataclasses.is_dataclass(config):
        values = dataclasses.asdict(config)
    else:
        values = dict(config)
    values.update(overrides)
    known = {f.name for f in dataclasses.fields(fam.config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SepError(
            f"unknown {family} config key(s): {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
        )
    try:
        return fam.config_cls(**values)
    except (TypeError, ValueError) as exc:
        raise SepError(f"bad {family} config: {exc}") from None


def build(name: str, config: Any = None, **overrides: Any) -> torch.nn.Module:
    """Build an untrained model from a family or preset name."""
    _ensure_loaded()
    if name in _PRESETS:
        preset = _PRESETS[name]
        base = dict(preset.overrides)
        if config is not None:
            base.update(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config))
        return build(preset.family, base, **overrides)
    fam = get_family(name)
    return fam.model_cls(make_config(name, config, **overrides))


# ----------------------------------------------------------------------------- files


def _digest(meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(k for k in meta if k != "digest"):
        h.update(f"{key}={meta[key]}\n".encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_replace(tmp: str | Path, dest: str | Path) -> None:
    os.replace(tmp, dest)


def save_model(
    model: torch.nn.Module,
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    extra: dict[str, str] | None = None,
) -> str:
    """Write ``model`` to ``path`` atomically in the sep checkpoint format.

    ``dtype=torch.float16`` stores floating tensors at half size (they are cast
    back to float32 on load). Returns the file's SHA-256.
    """
    from safetensors.torch import save_file

    path = Path(path)
    family = getattr(model, "family", None)
    if family is None or not dataclasses.is_dataclass(getattr(model, "config", None)):
        raise SepError("save_model needs a registered model with a dataclass .config")
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.clone()
    meta = {
        "format": FORMAT,
        "family": family,
        "config": json.dumps(dataclasses.asdict(model.config), sort_keys=True),
        "sep_version": __version__,
    }
    if extra:
        meta.update({str(k): str(v) for k, v in extra.items()})
    meta["digest"] = _digest(meta, tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        atomic_replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return file_sha256(path)


def read_checkpoint(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Read and verify a checkpoint file. Returns (metadata, tensors)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SepError(f"model file not found: {path}")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except Exception as exc:  # safetensors raises several types for bad files
        raise SepError(
            f"{path}: not a readable sep model (truncated, corrupt or not safetensors: {exc})"
        ) from None
    if meta.get("format") != FORMAT:
        raise SepError(f"{path}: not a sep model file (format {meta.get('format')!r})")
    if meta.get("digest") != _digest(meta, tensors):
        raise SepError(f"{path}: checksum mismatch; the file is corrupt or was modified")
    return meta, tensors


def load_file(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a model from a sep checkpoint file (verified, no code execution)."""
    meta, tensors = read_checkpoint(path)
    try:
        config = json.loads(meta["config"])
    except (KeyError, json.JSONDecodeError):
        raise SepError(f"{path}: checkpoint has no valid config") from None
    model = build(meta["family"], config)
    state = {}
    own = model.state_dict()
    for k, v in tensors.items():
        if k in own and own[k].is_floating_point():
            v = v.to(own[k].dtype)
        state[k] = v
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SepError(f"{path}: weights do not match the config: {exc}") from None
    model.eval()
    return model.to(device)


# ----------------------------------------------------------------------------- shipped models


def models_dir() -> Path:
    """Folder of shipped weights: $SEP_MODELS_DIR, else the repository's ``models/``."""
    env = os.environ.get("SEP_MODELS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "models"


def shipped_models() -> dict[str, dict]:
    """Shipped models: name -> model card (dict) with ``path`` added.

    Only models whose weights file and card JSON both exist are listed.
    """
    out: dict[str, dict] = {}
    d = models_dir()
    if not d.is_dir():
        return out
    for card_path in sorted(d.glob("*.json")):
        weights = card_path.with_suffix(WEIGHTS_SUFFIX)
        if not weights.is_file():
            continue
        try:
            card = json.loads(card_path.read_text())
        except json.JSONDecodeError:
            continue
        card["path"] = str(weights)
        out[card_path.stem] = card
    return out


def default_model_name() -> str | None:
    """Best shipped non-causal model, by measured SI-SNRi on the card."""
    ship = shipped_models()
    best = None
    for name, card in ship.items():
        if card.get("causal"):
            continue
        score = float(card.get("quality", {}).get("si_snri", float("-inf")))
        if best is None or score > best[0]:
            best = (score, name)
    return best[1] if best else None


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load trained weights from a shipped model name or a checkpoint path.

    Shipped files are also checked against the SHA-256 on their card.
    """
    p = Path(name_or_path)
    ship = shipped_models()
    name = str(name_or_path)
    if name in ship:
        card = ship[name]
        want = card.get("sha256")
        if want and file_sha256(card["path"]) != want:
            raise SepError(f"shipped model {name!r} fails its checksum; reinstall it")
        return load_file(card["path"], device)
    if p.suffix == WEIGHTS_SUFFIX or p.exists():
        return load_file(p, device)
    valid = sorted(ship)
    fams = sorted(families())
    hint = f"shipped models: {', '.join(valid) or 'none'}"
    if name in fams or name in presets():
        raise SepError(
            f"{name!r} is a model family without shipped weights; {hint}; or pass a checkpoint path"
        )
    raise SepError(f"unknown model {name!r}; {hint}; families: {', '.join(fams)}")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
