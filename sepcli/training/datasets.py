"""The training and validation datasets a :class:`~sepcli.training.config.TrainConfig` asks for."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch

from sepcli.errors import SepError
from sepcli.training.config import TrainConfig

log = logging.getLogger(__name__)

def _mixing(cfg: TrainConfig, n_src: int, segment: float, speed: list | None,
            n_active: list | None = None, polarity: bool = False, augment: dict | None = None):
    from sepcli.training.augment import AugmentConfig
    from sepcli.training.data import MixingConfig

    return MixingConfig(
        n_src=n_src, segment=segment, snr_range=tuple(cfg.snr_range),
        speed_range=None if speed is None else tuple(speed),
        level_range=tuple(cfg.level_range), sampling=cfg.sampling,
        n_active=None if n_active is None else tuple(n_active), random_polarity=polarity,
        augment=AugmentConfig.from_dict(augment),
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
    from sepcli.training.corpus import Corpus, find_speakers, select_split
    from sepcli.training.data import DynamicMixDataset, MixtureSetDataset, is_mixture_set

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
        if cfg.augment:
            raise SepError("augment needs dynamic mixing (a corpus of speaker folders), not a pre-mixed training set")
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
            c, _mixing(cfg, n_train, cfg.segment, cfg.speed_perturb, cfg.speaker_counts, cfg.random_polarity,
                       cfg.augment),
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

