"""Where and how precisely a model runs: the one device resolver, CPU thread
shares, and the precision of the matrix products."""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from sepcli.errors import SepError
from sepcli.inference import protocol, settings

DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")
"""What :func:`resolve_device` accepts by default (``cuda`` also as ``cuda:N``)."""


def resolve_device(device: str | torch.device = "auto", *, kinds: Sequence[str] = DEVICE_KINDS,
                   local_rank: int | None = None) -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU. SepError (one line) if the
    requested device is unknown, not one of ``kinds`` (a caller that names its
    device in timings leaves out ``auto``) or not available here.
    ``local_rank``: under torchrun, a CUDA device is that rank's GPU."""
    name = str(device).strip().lower()
    kind = name.split(":", 1)[0]
    if kind not in kinds:
        shown = [k for k in kinds if k != "mps"]
        raise SepError(f"unsupported device {device!r}; use {', '.join(shown[:-1])} or {shown[-1]}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise SepError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU found"
            raise SepError(f"device {device!r} requested but CUDA is not available ({why}); use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SepError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        if local_rank is not None:
            dev = torch.device("cuda", local_rank)
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SepError(f"device {device!r} requested but MPS is not available; use --device cpu")
    return dev


def available_cpus() -> int:
    """CPU cores this process may run on (respects affinity / container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_threads(jobs: int = 1) -> int:
    """Give torch an equal share of the cores when ``jobs`` files run at once.
    Returns the thread count set."""
    n = max(1, available_cpus() // max(1, int(jobs)))
    torch.set_num_threads(n)
    return n


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), so
    that bfloat16 matrix products are faster than float32 ones; elsewhere
    oneDNN emulates them and they are slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


PRECISIONS = settings.PRECISIONS
"""``precision`` choices (:func:`set_precision`)."""


def set_precision(
    model: torch.nn.Module, precision: str = "auto", device: str | torch.device = "cpu", name: str = "this model"
) -> str:
    """Set the dtype of the matrix products of a model that has that choice
    (:meth:`SeparationModel.set_products`; Conv-TasNet with gLN).
    ``auto``: bfloat16 on CPUs that multiply it natively (AVX512-BF16 / AMX),
    float32 elsewhere and on CUDA. Other models run float32; asking them for
    ``"bfloat16"`` raises SepError. Returns the resolved name."""
    if precision not in PRECISIONS:
        raise SepError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    resolved = precision
    if precision == "auto":
        resolved = "bfloat16" if torch.device(device).type == "cpu" and native_bfloat16() else "float32"
    if not protocol.set_products(model, torch.bfloat16 if resolved == "bfloat16" else torch.float32):
        if precision == "bfloat16":
            raise SepError(f"{name} has no bfloat16 path; use --precision float32 or auto")
        return "float32"
    return resolved


__all__ = ["DEVICE_KINDS", "PRECISIONS", "available_cpus", "native_bfloat16", "resolve_device", "set_precision",
           "set_threads"]
