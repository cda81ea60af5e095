"""Model functions and test-time averaging: a model as a chunk function
(:func:`model_fn`), averaged passes over delayed and sign-flipped inputs
(:func:`pass_transforms`, :func:`averaged_fn`), speed views (:func:`speed_fn`)
and their mean (:func:`ensemble_fn`).

Shape legend: B batch (chunks per call), S sources, T samples.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sepcli.audio import resample
from sepcli.errors import SepError
from sepcli.inference import protocol, settings
from sepcli.inference.alignment import CausalAlign
from sepcli.metrics import pit_permutation

SeparateFn = Callable[[np.ndarray], Any]
"""``fn(mix) -> est``: mix float32 numpy ``[B, T]``; est numpy or torch ``[B, S, T]``."""


def model_fn(
    model: torch.nn.Module, device: str | torch.device | None = None, n_src: int | str | None = None
) -> SeparateFn:
    """Wrap a model following the registry contract as an engine function.

    Calls ``model.separate(mix, n_src=n_src)`` (``model(mix)`` if the model has
    no ``separate``) without gradients on ``device`` (default: where the
    model's parameters are). Shape: ``[B, T]`` numpy -> ``[B, S, T]`` numpy float32.
    """
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    model.eval()
    separate = protocol.separate_method(model)

    def fn(mix: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(mix, dtype=np.float32)).to(device)
            y = separate(x, n_src=n_src)
            return y.detach().float().cpu().numpy()

    return fn


def model_passes(model: Any, passes: int | None = None, signs: bool | None = None,
                 quality: str = settings.DEFAULT_QUALITY) -> tuple[int, bool]:
    """``(passes, signs)`` with None filled in from the model's ``quality``
    preset (:meth:`SeparationModel.inference_presets`; default ``fast``: one
    pass), validated: what :class:`sepcli.api.Separator` and ``sep stream`` average."""
    preset = settings.preset_settings(protocol.describe(model).presets, quality)
    if passes is None:
        passes = preset.passes
    if signs is None:
        signs = preset.pass_signs
    settings.check_passes(passes)
    if not isinstance(signs, bool):
        raise SepError(f"pass_signs must be True, False or None, got {signs!r}")
    return passes, signs


def pass_transforms(passes: int, frame_hop: int = 1, signs: bool = True) -> list[tuple[int, int]]:
    """The input transforms of :func:`averaged_fn`: ``(delay, sign)`` per pass.

    Pass 0 is the input itself. Each further pass (each further pair with
    ``signs``) delays the input by a fraction of the model's frame hop (1/2,
    1/4, 3/4, 1/8, ...: the encoder's frames then fall between those of pass
    0). With ``signs``, passes also alternate the input's sign, in pairs of
    the same delay, so that with an even count the average is exactly odd,
    ``f(-x) = -f(x)``, as a separator should be. :class:`sepcli.api.Separator`
    asks for signs where the preset does (``high`` for convtasnet): they pay
    only for a model trained with random polarity (docs/experiments.md, "Passes"). Delays
    are whole samples; a hop too short to split repeats delay 0.
    """
    settings.check_passes(passes)
    if isinstance(frame_hop, bool) or not isinstance(frame_hop, int) or frame_hop < 1:
        raise SepError(f"frame_hop must be a positive integer, got {frame_hop!r}")

    def fraction(j: int) -> float:  # van der Corput: 0, 1/2, 1/4, 3/4, 1/8, ...
        f, base = 0.0, 0.5
        while j:
            f += base * (j & 1)
            j >>= 1
            base /= 2
        return f

    per_delay = 2 if signs else 1
    return [(int(round(frame_hop * fraction(k // per_delay))) % frame_hop,
             -1 if signs and k % 2 else 1) for k in range(passes)]


def averaged_fn(fn: SeparateFn, transforms: Sequence[tuple[int, int]], causal: bool = False) -> SeparateFn:
    """Average ``fn`` over transformed copies of its input (test-time augmentation).

    Each pass runs ``fn`` on the input delayed by ``delay`` samples (zeros in
    front) and multiplied by ``sign``, undoes both on the output, and reorders
    its sources to match pass 0 (:func:`ensemble_fn`: a permutation-invariant
    model may order them differently per pass). The mean of the passes is
    the output. For a model that is exactly odd and shift-equivariant every
    pass is the same and the mean changes nothing; a trained model's errors
    differ between passes and partly cancel (``pass_transforms``; docs/experiments.md:
    quality gains per model).

    A delay puts zeros in front, so a causal ``fn`` stays causal. With
    ``causal`` the reordering is causal too (:class:`CausalAlign`, decided
    per sample from the samples so far): the average of a causal model's
    passes can then be streamed, equal to this offline result.

    Shape: mix ``[B, T]`` -> ``[B, S, T]`` float32.
    """
    transforms = [(int(d), int(g)) for d, g in transforms]
    if not transforms or any(d < 0 or g not in (-1, 1) for d, g in transforms):
        raise SepError(f"transforms must be (delay >= 0, sign +-1) pairs, got {transforms!r}")
    if len(transforms) == 1 and transforms[0] == (0, 1):
        return fn

    def transformed(delay: int, sign: int) -> SeparateFn:
        def run(mix: np.ndarray) -> np.ndarray:
            x = np.asarray(mix, dtype=np.float32)
            n = x.shape[-1]
            xt = np.pad(x, ((0, 0), (delay, 0))) if delay else x  # [B, T + delay]
            y = to_numpy(fn(xt * sign if sign < 0 else xt)).astype(np.float32)  # [B, S, T + delay]
            return y[..., delay : delay + n] * sign  # [B, S, T]
        return run

    return ensemble_fn([transformed(d, g) for d, g in transforms], causal=causal, what="passes")


def ensemble_fn(fns: Sequence[SeparateFn], causal: bool = False, what: str = "views") -> SeparateFn:
    """The mean of several separators' outputs on the same input.

    Each output's sources are put in the order of the first's before they are
    added: the order with the largest summed inner products per item (as the
    chunk alignment decides), or with ``causal`` per sample from the samples
    so far (:class:`CausalAlign`). The outputs must have the same shape
    (a fixed number of speakers). ``what`` names them in errors.

    Shape: mix ``[B, T]`` -> ``[B, S, T]`` float32.
    """
    fns = list(fns)
    if not fns:
        raise SepError("ensemble_fn needs at least one function")
    if len(fns) == 1:
        return fns[0]

    def mean(mix: np.ndarray) -> np.ndarray:
        first = to_numpy(fns[0](mix)).astype(np.float32)  # [B, S, T]
        total = first.copy()
        for f in fns[1:]:
            y = to_numpy(f(mix)).astype(np.float32)  # [B, S, T]
            if y.shape != first.shape:
                raise SepError(f"{what} gave different shapes: {first.shape} and {y.shape}; "
                               "averaging needs a fixed number of speakers")
            if causal:
                for b in range(y.shape[0]):
                    total[b] += CausalAlign(y.shape[1])(first[b], y[b])
                continue
            score = np.einsum("bit,bjt->bij", first, y)  # [B, S_first, S_y]
            for b in range(y.shape[0]):
                total[b] += y[b, pit_permutation(score[b])]
        return total / len(fns)

    return mean


SPEED_RANGE = settings.SPEED_RANGE
check_speeds = settings.check_speeds


def model_speeds(model: Any, speeds: Sequence[float] | None = None,
                 quality: str = settings.DEFAULT_QUALITY) -> list[float]:
    """The speed views to average: ``speeds`` if given, else the model's
    ``quality`` preset's (default ``fast``: ``[1.0]``); validated (:func:`check_speeds`)."""
    if speeds is None:
        speeds = list(settings.preset_settings(protocol.describe(model).presets, quality).speeds)
    return check_speeds(speeds)


def speed_fn(fn: SeparateFn, sample_rate: int, speed: float) -> SeparateFn:
    """``fn`` hearing its input played ``speed`` times as fast (tempo and pitch
    together, as speed perturbation in training), its output played back at
    the input's speed.

    The input is resampled from ``sample_rate`` to ``round(sample_rate /
    speed)`` Hz (soxr) and handed to ``fn`` as if at ``sample_rate``; the
    output is resampled back and cut or zero-padded to the input's length.
    A speed below 1 spreads speech over more of the model's frames, which
    helped the shipped ``convtasnet`` (docs/experiments.md, "Speeds"): as an extra view for
    :func:`ensemble_fn`, a view of the input that differs more from the plain
    one than a delay does. Not causal (the resampler looks ahead): offline only.

    Shape: mix ``[B, T]`` -> ``[B, S, T]`` float32.
    """
    speed = check_speeds([speed])[0]
    rate = int(round(sample_rate / speed))
    if rate == sample_rate:
        return fn

    def run(mix: np.ndarray) -> np.ndarray:
        x = np.asarray(mix, dtype=np.float32)
        n_batch, n = x.shape
        y = to_numpy(fn(resample(x, sample_rate, rate))).astype(np.float32)  # [B, S, T']
        n_src, m = y.shape[1], y.shape[2]
        back = resample(y.reshape(n_batch * n_src, m), rate, sample_rate)  # [B*S, ~T]
        out = np.zeros((n_batch * n_src, n), dtype=np.float32)
        k = min(n, back.shape[1])
        out[:, :k] = back[:, :k]
        return out.reshape(n_batch, n_src, n)  # [B, S, T]

    return run


def as_fn(fn: SeparateFn | torch.nn.Module, n_src: int | str | None) -> SeparateFn:
    """``fn`` as a chunk function: a module through :func:`model_fn`, a callable as it is."""
    if isinstance(fn, torch.nn.Module):
        return model_fn(fn, n_src=n_src)
    if not callable(fn):
        raise SepError(f"expected a model or a callable, got {type(fn).__name__}")
    return fn


def to_numpy(y: Any) -> np.ndarray:
    """A model function's output (numpy or torch) as numpy."""
    if isinstance(y, torch.Tensor):
        y = y.detach().float().cpu().numpy()
    return np.asarray(y)


__all__ = ["SPEED_RANGE", "SeparateFn", "as_fn", "averaged_fn", "check_speeds", "ensemble_fn", "model_fn",
           "model_passes", "model_speeds", "pass_transforms", "speed_fn", "to_numpy"]
