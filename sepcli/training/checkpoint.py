"""A run folder's files: the resumable state ``last.pt``, the log, atomic writes, RNG states."""
from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sepcli.audio import atomic_write
from sepcli.errors import SepError
from sepcli.training.distributed import _broadcast, _Dist

CHECKPOINT_FORMAT = "sep-train-1"
LAST = "last.pt"
BEST = "best.safetensors"
LOG = "log.jsonl"
CONFIG = "config.json"
RECIPE = "recipe.toml"


def _atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    # fsync: the rename must not land before the data (a run resumes from these files)
    atomic_write(path, write, fsync=True)


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


def open_run_dir(out: Path, resume: bool, force: bool, d: _Dist) -> dict | None:
    """Rank 0 checks the folder and reads the checkpoint (None: a new run);
    every rank gets the verdict, so all raise the same SepError or none does."""
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
    return payload[1]
