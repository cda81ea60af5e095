"""Training: settings and recipes (:mod:`.config`), corpora and mixing (:mod:`.corpus`,
:mod:`.data`, :mod:`.augment`), datasets of a run (:mod:`.datasets`), the run folder
(:mod:`.checkpoint`), multi-process runs (:mod:`.distributed`) and the loop (:mod:`.loop`)."""
from sepcli.training.config import TrainConfig, TrainResult, make_config, parse_set, read_recipe
from sepcli.training.loop import train, validate

__all__ = ["TrainConfig", "TrainResult", "make_config", "parse_set", "read_recipe", "train", "validate"]
