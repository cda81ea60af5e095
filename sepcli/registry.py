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

Loading never executes code: safetensors holds only tensors and strings; a
pickled PyTorch file is refused with a clear message. ``save_model`` refuses to
replace an existing file unless ``force=True``.

``list_models()`` gives the rows ``sep models`` prints (shipped weights, presets,
families); ``load_model(name_or_path)`` is what ``--model`` resolves through.

Model contract (every registered class):

* ``__init__(self, config)`` takes its config dataclass; ``self.config`` keeps it.
  The config has ``sample_rate: int`` and ``n_src: int`` fields.
* ``forward(mix)``: ``[B, T]`` (or ``[B, 1, T]``) -> ``[B, S, T]``.
* ``separate(mix, n_src=None)``: inference entry point used by the engine, same
  shapes; ``n_src`` lets clustering models choose the number of speakers.
* ``compute_loss(mix, ref) -> torch.Tensor``: scalar training loss;
  mix ``[B, T]``, ref ``[B, S, T]``.
* ``accepts_silent_sources: bool``: whether ``compute_loss`` takes references
  with silent rows (recipes with ``speaker_counts`` need it).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sepcli import __version__
from sepcli.audio import NEW_FILE_MODE, AtomicFile
from sepcli.errors import SepError, check_keys

log = logging.getLogger(__name__)

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
    # Old checkpoints and cards carry inference settings in their config; a
    # checkpoint now holds architecture and weights only, so they are dropped.
    for key in getattr(fam.config_cls, "LEGACY_KEYS", ()):
        values.pop(key, None)
    check_keys(values, (f.name for f in dataclasses.fields(fam.config_cls)), f"{family} config key")
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
        # reshape(-1): a 0-dim tensor cannot be viewed as bytes directly
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model(
    model: torch.nn.Module,
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    extra: dict[str, str] | None = None,
    force: bool = False,
) -> str:
    """Write ``model`` to ``path`` atomically in the sep checkpoint format.

    ``dtype=torch.float16`` stores floating tensors at half size (they are cast
    back to float32 on load). An existing file is replaced only with
    ``force=True``. Returns the file's SHA-256.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not force:
        raise SepError(f"{path} exists; pass force=True (--force) to overwrite it")
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
        clash = sorted(set(map(str, extra)) & {*meta, "digest"})
        if clash:
            raise SepError(f"save_model: extra metadata may not replace {', '.join(clash)}")
        meta.update({str(k): str(v) for k, v in extra.items()})
    meta["digest"] = _digest(meta, tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    with AtomicFile(path) as tmp:
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, NEW_FILE_MODE)  # save_file recreates the file as 0600: weights are often shared
    return file_sha256(path)


def _unreadable(path: Path, exc: Exception) -> SepError:
    """The error for a file safetensors refused. Pickled PyTorch files get a
    clear message; only the first bytes are looked at, nothing is unpickled.
    (Checked after parsing fails: a valid header length can start with 0x80.)"""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    # torch.save writes a zip archive (PK..) or, in the legacy format, a raw pickle (0x80 proto)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return SepError(
            f"{path}: this is a pickled PyTorch file; sep loads only .safetensors model files "
            "(a pickle can run arbitrary code when loaded)"
        )
    return SepError(f"{path}: not a readable sep model (truncated, corrupt or not safetensors: {exc})")


def read_header(path: str | Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """Read only the metadata and tensor shapes of a checkpoint (no weights, no
    checksum verification; for listings). Returns (metadata, name -> shape)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SepError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for bad files
        raise _unreadable(path, exc) from None
    if meta.get("format") != FORMAT:
        raise SepError(f"{path}: not a sep model file (format {meta.get('format')!r})")
    return meta, shapes


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
        raise _unreadable(path, exc) from None
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
        family = meta["family"]
    except (KeyError, json.JSONDecodeError):
        raise SepError(f"{path}: checkpoint has no valid family/config") from None
    if not isinstance(config, dict):
        raise SepError(f"{path}: checkpoint config is not a JSON object")
    try:
        model = build(family, config)
    except SepError as exc:
        raise SepError(f"{path}: {exc} (written by sep {meta.get('sep_version', '?')})") from None
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
    """Folder of shipped weights.

    ``$SEP_MODELS_DIR`` if set; else the checkout's ``models/`` (a source tree
    or editable install: the folder beside ``sepcli/`` and ``pyproject.toml``);
    else ``{sys.prefix}/share/sep/models``, where a wheel (``pip install .``)
    puts them (``[tool.setuptools.data-files]`` in pyproject.toml).
    """
    env = os.environ.get("SEP_MODELS_DIR")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():
        return root / "models"
    return Path(sys.prefix) / "share" / "sep" / "models"


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
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("ignoring model card %s: %s", card_path, exc)
            continue
        if not isinstance(card, dict):
            log.warning("ignoring model card %s: not a JSON object", card_path)
            continue
        card["path"] = str(weights)
        out[card_path.stem] = card
    return out


def combines_members(family: str | None) -> bool:
    """Whether ``family`` averages other models (``ensemble``): it has no training of
    its own and is never the default, whose one network meets the speed bar."""
    _ensure_loaded()
    fam = _FAMILIES.get(family) if family else None
    return bool(getattr(fam.model_cls, "combines_members", False)) if fam else False


def default_model_name() -> str | None:
    """Best shipped non-causal model of one network, by measured SI-SNRi on the card
    (an ensemble runs several, over ``sep separate``'s speed bar: never the default)."""
    best = None
    for name, card in shipped_models().items():
        info = _shipped_info(card)
        if info.get("error") or info["causal"] is not False or combines_members(info["family"]):
            continue
        try:
            score = float((info["quality"] or {}).get("si_snri", float("-inf")))
        except (TypeError, ValueError, AttributeError):
            score = float("-inf")
        if best is None or score > best[0]:
            best = (score, name)
    return best[1] if best else None


def model_file(name_or_path: str | Path) -> Path:
    """The file a shipped model name or a path refers to. A shipped name wins over a
    file of the same name in the working folder, as in :func:`load_model`, so that
    ``--model``, ``--init``, a teacher and an ensemble member read the same file."""
    ship = shipped_models()
    name = str(name_or_path)
    return Path(ship[name]["path"]) if name in ship else Path(name_or_path)


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
        if not want:
            log.warning("shipped model %r has no sha256 on its card; only its internal digest is checked", name)
        elif file_sha256(card["path"]) != want:
            raise SepError(
                f"shipped model {name!r} fails its checksum ({card['path']}); the file is "
                "corrupt or was modified: reinstall it"
            )
        return load_file(card["path"], device)
    if p.suffix == WEIGHTS_SUFFIX or p.exists() or os.sep in name or "/" in name:
        return load_file(p, device)
    valid = sorted(ship)
    fams = sorted(families())
    hint = f"shipped models: {', '.join(valid) or 'none'}"
    if name in fams or name in presets():
        raise SepError(
            f"{name!r} is a model family without shipped weights; {hint}; or pass a checkpoint path"
        )
    close = difflib.get_close_matches(name, valid, n=1)
    did_you_mean = f" (did you mean {close[0]!r}?)" if close else ""
    raise SepError(
        f"unknown model {name!r}{did_you_mean}; {hint}; families: {', '.join(fams)}; "
        "or pass a .safetensors path"
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _shipped_info(card: dict) -> dict:
    """A shipped model's listing fields: the card's values, with any missing
    family, sample_rate, n_src, causal or params read from the file's header."""
    info = {
        "family": card.get("family"),
        "sample_rate": card.get("sample_rate"),
        "n_src": card.get("n_src"),
        "causal": card.get("causal"),
        "params": card.get("params"),
        "quality": card.get("quality") or None,
        "description": card.get("description", ""),
        "path": card["path"],
        "sha256": card.get("sha256"),
    }
    def set_passes(config: dict) -> None:  # the inference defaults the card's scores were measured with
        info["passes"] = config.get("passes") or 1
        info["pass_signs"] = bool(config.get("pass_signs", False))
        info["speeds"] = config.get("speeds") or [1.0]

    if isinstance(card.get("measured_with"), dict):  # the settings the scores were measured with
        set_passes(card["measured_with"])
        info["preset"] = card["measured_with"].get("preset")
    elif isinstance(card.get("config"), dict):  # older cards: inference settings in the config
        set_passes(card["config"])
    if "passes" in info and all(info[k] is not None for k in ("family", "sample_rate", "n_src", "causal", "params")):
        return info
    try:
        meta, shapes = read_header(card["path"])
        config = json.loads(meta.get("config", "{}"))
        if not isinstance(config, dict):
            raise SepError(f"{card['path']}: checkpoint config is not a JSON object")
    except (SepError, json.JSONDecodeError) as exc:
        info["error"] = str(exc)
        return info
    if "passes" not in info:
        set_passes(config)
    info["family"] = info["family"] or meta.get("family")
    for key in ("sample_rate", "n_src"):
        if info[key] is None:
            info[key] = config.get(key)
    if info["causal"] is None:
        info["causal"] = bool(config.get("causal", False))
    if info["params"] is None:
        info["params"] = sum(math.prod(shape) for shape in shapes.values())
    return info


def _param_count(name: str) -> int | None:
    """Parameter count of an untrained family/preset without allocating weights."""
    try:
        with torch.device("meta"):
            return count_parameters(build(name))
    except Exception:  # a model whose __init__ cannot run on the meta device
        try:
            return count_parameters(build(name))
        except Exception as exc:
            log.warning("cannot build %s to count its parameters: %s", name, exc)
            return None


def can_stream(family: str | None, causal: bool | None) -> bool:
    """Whether a model of ``family`` can be streamed statefully (``sep stream``).

    A family class may say so with a ``streamable`` attribute (False for the
    recurrent families, whose causal models run offline only); without it a
    causal model streams (Conv-TasNet)."""
    fam = _FAMILIES.get(family) if family else None
    flag = getattr(fam.model_cls, "streamable", None) if fam else None
    return bool(causal) and (flag is None or bool(flag))


def _config_row(name: str, kind: str, family: str, config: Any, description: str) -> dict:
    causal = bool(getattr(config, "causal", False))
    return {
        "name": name,
        "kind": kind,
        "family": family,
        "sample_rate": getattr(config, "sample_rate", None),
        "n_src": getattr(config, "n_src", None),
        "causal": causal,
        "streams": can_stream(family, causal),
        "params": _param_count(name),
        "quality": None,
        "default": False,
        "description": description,
        "path": None,
    }


def list_models() -> list[dict]:
    """Everything ``sep models`` shows: shipped weights first, then presets and families.

    Each row: ``name``, ``kind`` (``"shipped"``, ``"preset"`` or ``"family"``),
    ``family``, ``sample_rate``, ``n_src``, ``causal``, ``streams`` (``sep stream``
    takes it: causal, of a family that streams; :func:`can_stream`), ``params``, ``quality``
    (the card's measured scores, e.g. ``{"si_snri": 15.2, "sdri": 15.5}``, or
    None), ``default`` (the model ``sep separate`` uses), ``description``,
    ``path``; shipped rows also carry ``sha256``, ``passes``, ``pass_signs`` and ``speeds``
    (the inference defaults ``sep separate`` uses and the scores were measured
    with) and, if the file cannot be read, ``error``. Values missing from a card are taken from the file's header.
    """
    rows: list[dict] = []
    default = default_model_name()
    _ensure_loaded()
    for name, card in shipped_models().items():
        info = _shipped_info(card)
        rows.append({"name": name, "kind": "shipped", **info, "streams": can_stream(info["family"], info["causal"]),
                     "default": name == default})
    for name, preset in sorted(_PRESETS.items()):
        config = make_config(preset.family, preset.overrides)
        rows.append(_config_row(name, "preset", preset.family, config, preset.description))
    for name, fam in sorted(_FAMILIES.items()):
        if combines_members(name):
            continue  # nothing to build untrained: an ensemble is made of shipped models
        doc = (fam.model_cls.__doc__ or "").strip().splitlines()
        rows.append(_config_row(name, "family", name, make_config(name), doc[0] if doc else ""))
    return rows
