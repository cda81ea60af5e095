"""Ensemble: several trained models' tracks, put in one order and averaged.

Registered as family ``ensemble``. Its file holds no weights of its own: the
config names its *members* (shipped model names or checkpoint paths), their
share of the average, and the SHA-256 of each member's file when the
ensemble's figures were measured. Loading loads the members (each checked as
``--model`` checks it) and refuses a member whose file has changed since, so
a card's figures never describe other weights than the ones that run.

Per chunk, every member separates the same mixture; each member's tracks are
scaled onto the mixture by least squares (members trained with a
scale-invariant loss and random polarity return any scale and sign), put in
the first member's order (the permutation with the highest summed
correlation), and averaged with the config's ``weights``. Models that fail
differently gain most: the shipped ``convtasnet+dpcl`` averages a learned-basis
network that is ahead on clean speech and a clustering one that is ahead on
shifted channels (docs/experiments.md, "Two families averaged").

An ensemble is not trained (``sep train`` refuses it: train its members) and
is never the default model of ``sep separate`` (it runs every member, so it
misses the speed bar that the default meets; :func:`sepcli.registry.default_model_name`).

Shape legend: B batch, S sources, T samples, M members.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sepcli import registry
from sepcli.errors import SepError
from sepcli.inference import protocol
from sepcli.inference.equalize import preset_limit
from sepcli.inference.settings import InferenceSettings
from sepcli.models.common import ConfigMembers, check_mix, check_n_src

# Ridge of the least-squares gains, relative to the tracks' mean energy: keeps the
# solve finite when a member returns two nearly equal tracks or a silent one.
_RIDGE = 1e-9


@dataclass
class EnsembleConfig:
    """The members and their shares. ``sample_rate`` and ``n_src`` must be every member's."""

    members: list[str] = field(default_factory=list)  # shipped model names or .safetensors paths
    weights: list[float] = field(default_factory=list)  # share of each member's tracks; [] -> equal
    member_sha256: list[str] = field(default_factory=list)  # each member file's SHA-256; [] -> not checked
    n_src: int = 2
    sample_rate: int = 8000

    def __post_init__(self) -> None:
        if len(self.members) < 2 or not all(isinstance(m, str) and m for m in self.members):
            raise ValueError(f"an ensemble needs two or more member names or paths, got {self.members!r}")
        if self.weights:
            if len(self.weights) != len(self.members):
                raise ValueError(f"weights: one per member ({len(self.members)}), got {len(self.weights)}")
            if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0 for w in self.weights):
                raise ValueError(f"weights must be positive numbers, got {self.weights!r}")
        if self.member_sha256 and len(self.member_sha256) != len(self.members):
            raise ValueError(f"member_sha256: one per member ({len(self.members)}), got {len(self.member_sha256)}")

    @property
    def shares(self) -> list[float]:
        """The weights normalised to sum to 1 (equal shares when none are given)."""
        w = [float(v) for v in self.weights] if self.weights else [1.0] * len(self.members)
        return [v / sum(w) for v in w]


def member_file(member: str) -> Path:
    """The file a member name or path loads from (SepError if there is none)."""
    path = registry.model_file(member)
    if not path.is_file():
        raise SepError(f"ensemble member {member!r}: no shipped model of that name and no such file")
    return path


def member_sha256(member: str) -> str:
    """The SHA-256 of a member's file: a shipped model's card value (which
    :func:`sepcli.registry.load_model` checks against the file), else the file's own."""
    card = registry.shipped_models().get(member)
    return card["sha256"] if card and card.get("sha256") else registry.file_sha256(member_file(member))


def fit_to_mix(est: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """Each track scaled by the gain that makes the tracks' sum closest to the mixture
    (least squares, per batch item). Shape: est [B, S, T], mix [B, T] -> [B, S, T]."""
    e64 = est.double()  # tracks can differ in scale by orders of magnitude
    gram = e64 @ e64.transpose(1, 2)  # [B, S, S]
    ridge = _RIDGE * gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)  # [B]
    eye = torch.eye(est.shape[1], dtype=gram.dtype, device=est.device)
    rhs = e64 @ mix.double().unsqueeze(-1)  # [B, S, 1]
    gains = torch.linalg.solve(gram + ridge[:, None, None] * eye, rhs)  # [B, S, 1]
    return est * gains.to(est.dtype)


def align_to(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``est``'s tracks in the order that best matches ``ref``'s (highest summed
    correlation), per batch item. Shape: est, ref [B, S, T] -> [B, S, T]."""
    unit = est / est.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    ref_unit = ref / ref.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    corr = ref_unit @ unit.transpose(1, 2)  # [B, S_ref, S_est]
    n_src = est.shape[1]
    perms = torch.tensor(list(itertools.permutations(range(n_src))), device=est.device)  # [P, S]
    rows = torch.arange(n_src, device=est.device)
    score = corr[:, rows, perms].sum(-1)  # [B, P]
    best = perms[score.argmax(-1)]  # [B, S]: for each ref track, the est track that goes there
    return torch.gather(est, 1, best[:, :, None].expand_as(est))


@registry.register("ensemble", EnsembleConfig)
class Ensemble(ConfigMembers, nn.Module):
    """Averages shipped models' aligned tracks (a family without weights of its own)."""

    combines_members = True  # registry: not trainable, not a candidate for the default model

    def __init__(self, config: EnsembleConfig) -> None:
        super().__init__()
        self.config = config
        models = []
        for i, member in enumerate(config.members):
            path = member_file(member)
            model = registry.load_model(member)  # a shipped member's file is checked against its card here
            if config.member_sha256 and member_sha256(member) != config.member_sha256[i]:
                raise SepError(
                    f"ensemble member {member!r} ({path}) is not the file this ensemble was measured with "
                    "(its SHA-256 changed): score the ensemble again (recipes/ship.py --ensemble) or run "
                    "the member on its own")
            info = protocol.describe(model)
            if (info.sample_rate, info.n_src) != (config.sample_rate, config.n_src):
                raise SepError(f"ensemble member {member!r} separates {info.n_src} speakers at "
                               f"{info.sample_rate} Hz; the ensemble is for {config.n_src} at {config.sample_rate} Hz")
            if info.causal:
                raise SepError(f"ensemble member {member!r} is causal; an ensemble aligns whole chunks, "
                               "so it takes non-causal members")
            models.append(model)
        # A plain list, not an nn.ModuleList: the members' weights live in their own files,
        # so the ensemble's state_dict (what its file stores) stays empty.
        self._members: list[nn.Module] = models

    # -- nn.Module plumbing: the members move, switch mode and count with the ensemble

    def _apply(self, fn: Any, recurse: bool = True) -> Ensemble:
        for m in self._members:
            m._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> Ensemble:
        for m in self._members:
            m.train(mode)
        return super().train(mode)

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        for m in self._members:
            yield from m.parameters(recurse)

    @property
    def members(self) -> list[nn.Module]:
        return list(self._members)

    # -- the SeparationModel protocol

    @property
    def causal(self) -> bool:
        return False  # members are non-causal, and the alignment reads whole chunks

    @property
    def receptive_field(self) -> int | None:
        return None

    @property
    def frame_hop(self) -> int:
        """The first member's: the unit of the averaged passes' delays."""
        return protocol.describe(self._members[0]).frame_hop

    def inference_presets(self) -> dict[str, InferenceSettings]:
        """One pass at every quality (each member's averaged passes would run every
        member again), over 30-s chunks sharing 10 % (`convtasnet`'s ``fast``), each
        chunk equalized as the members' presets do, once for all of them."""
        settings = InferenceSettings(segment=30.0, overlap=0.1, equalize=preset_limit(causal=False))
        return {"fast": settings, "high": settings}

    def set_products(self, dtype: torch.dtype) -> bool:
        return any([protocol.set_products(m, dtype) for m in self._members])  # a list: every member is set

    def streaming_layout(self) -> None:
        return None  # the alignment looks at whole chunks

    @torch.no_grad()
    def separate(self, mix: torch.Tensor, n_src: int | str | None = None) -> torch.Tensor:
        """Every member's tracks, scaled onto the mixture, in the first member's order,
        averaged. Shape: [B, T] or [B, 1, T] -> [B, S, T]."""
        check_n_src(n_src, self.n_src, "ensemble")
        mix = check_mix(mix).float()
        out: torch.Tensor | None = None
        first: torch.Tensor | None = None
        for share, model in zip(self.config.shares, self._members, strict=True):
            est = protocol.separate_method(model)(mix, n_src=None).float()  # [B, S, T]
            est = fit_to_mix(est.to(mix.device), mix)
            if first is None:
                first = est
            else:
                est = align_to(est, first)
            out = share * est if out is None else out + share * est
        assert out is not None
        return out

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """The same as :meth:`separate` (an ensemble has no training forward). Shape: [B, T] -> [B, S, T]."""
        return self.separate(mix)

    def compute_loss(self, mix: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        raise SepError("an ensemble is not trained: train its members")

    accepts_silent_sources = False


__all__ = ["Ensemble", "EnsembleConfig", "align_to", "fit_to_mix", "member_file", "member_sha256"]
