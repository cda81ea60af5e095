"""``sep mix`` (a fixed mixture set) and ``sep train`` (a run from a recipe).

``sep train`` keeps the everyday flags (--config, --out, --resume, --init, --lr,
--max-minutes, --device, --threads); every other setting goes through
``--set KEY=VALUE``, checked against :class:`~sepcli.training.config.TrainConfig`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import click

from sepcli.cli.app import main, setup_logging
from sepcli.cli.options import range_option

if TYPE_CHECKING:  # the training package loads torch: not at import, for a fast `sep --help`
    from sepcli.training.config import TrainResult


@main.command("mix")
@click.argument("corpus", nargs=-1, required=True)
@click.option("--out", "-o", required=True, metavar="DIR", help="Folder to create (mix/, s1/, s2/, metadata.csv).")
@click.option("--n-mixtures", "-n", type=click.IntRange(min=1), required=True, help="Number of mixtures to write.")
@click.option("--n-src", type=click.IntRange(1, 3), default=2, show_default=True, help="Speakers per mixture (2 or 3).")
@click.option("--sample-rate", type=click.IntRange(min=1), help="Output rate in Hz; default: the corpus's rate.")
@click.option("--mode", type=click.Choice(["min", "max"]), default="min", show_default=True,
              help="Whole utterances cut to the shortest (min) or padded to the longest (max), as in Libri2Mix.")
@click.option("--segment", type=click.FloatRange(min=0, min_open=True), metavar="SEC",
              help="Fixed-length mixtures of SEC seconds (random segments) instead of whole utterances.")
@click.option("--snr-range", default="0,5", show_default=True, metavar="LO,HI",
              help="The sources' levels differ by a random LO..HI dB (wsj0-2mix: 0,5).")
@click.option("--speed-perturb", default="none", show_default=True, metavar="LO,HI|none",
              help="Random speed factor per source (e.g. 0.95,1.05), or none.")
@click.option("--sampling", type=click.Choice(["duration", "speaker"]), default="duration", show_default=True,
              help="Draw sources so every second of audio (duration) or every speaker is equally likely.")
@click.option("--speakers-split", metavar="FILE", help="JSON speaker split (held-out 'valid'/'test' speakers).")
@click.option("--split", default="train", show_default=True,
              help="Use only this split's speakers ('train' = every speaker not held out).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same corpus: byte-identical set.")
@click.option("--subtype", type=click.Choice(["PCM_16", "PCM_24", "FLOAT"]), default="PCM_16", show_default=True,
              help="WAV sample format.")
@click.option("--force", is_flag=True, help="Replace an existing mixture set at --out.")
def mix_cmd(
    corpus: tuple[str, ...], out: str, n_mixtures: int, n_src: int, sample_rate: int | None, mode: str,
    segment: float | None, snr_range: str, speed_perturb: str, sampling: str, speakers_split: str | None,
    split: str, seed: int, subtype: str, force: bool,
) -> None:
    """Build a fixed set of mixtures (Libri2Mix layout) from a corpus of single speakers.

    CORPUS: folders (or quoted globs) holding one folder per speaker, e.g.
    librispeech-8k/*/SPEAKER/*.flac; the speaker is the name of the folder
    that holds the files. Each mixture takes distinct speakers. metadata.csv
    records every source file, offset, speed and gain. With --speakers-split,
    sets built for different --split values share no speaker.

    \b
    Example:
      sep mix ../shared/data/librispeech-8k/*/ --out data/valid -n 500 \\
          --speakers-split recipes/splits/librispeech-8k.json --split valid --segment 4
      sep mix corpus/ --out data/test3 -n 300 --n-src 3 --mode max --seed 7
    """
    from sepcli.training.data import build_mixture_set

    summary = build_mixture_set(
        list(corpus), out, n_mixtures, n_src=n_src, sample_rate=sample_rate, mode=mode, segment=segment,
        snr_range=range_option(snr_range, "--snr-range"),
        speed_range=range_option(speed_perturb, "--speed-perturb", allow_none=True),
        sampling=sampling, seed=seed, speakers_split=speakers_split, split=split, subtype=subtype,
        force=force,
    )
    click.echo(
        f"Wrote {summary.n_mixtures} {summary.n_src}-speaker mixtures ({summary.seconds / 3600:.2f} h at "
        f"{summary.sample_rate} Hz, {len(summary.speakers)} speakers) to {summary.out}"
    )



@main.command("train")
@click.option("--config", "recipe", metavar="RECIPE",
              help="TOML recipe (recipes/*.toml); --lr and --set override it.")
@click.option("--out", "-o", metavar="RUN_DIR", help="Run folder: last.pt, best.safetensors, log.jsonl.")
@click.option("--resume", metavar="RUN_DIR", help="Continue the run in RUN_DIR exactly where it stopped.")
@click.option("--init", metavar="MODEL", help="Fine-tune from these weights (.safetensors or shipped name).")
@click.option("--lr", type=float, help="Adam learning rate.")
@click.option("--max-minutes", type=click.FloatRange(min=0), help="Stop (with a checkpoint) after this many minutes.")
@click.option("--device", help="cpu, cuda or cuda:N (default: cuda if available).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for this process.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any other setting of the recipe, value in TOML (repeatable): --set family=dpcl, "
                   "--set max_epochs=4, --set model.X=4, --set augment.reverb=0.5, --set seed=3, "
                   "--set compile=true; --set max_steps=N stops this call after N steps in all.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display, warnings only.")
@click.option("--force", is_flag=True, help="Start over in a RUN_DIR that already holds a run.")
def train_cmd(
    recipe: str | None, out: str | None, resume: str | None, init: str | None, lr: float | None,
    max_minutes: float | None, device: str | None, threads: int | None, settings: tuple[str, ...],
    quiet: bool, force: bool,
) -> None:
    """Train a model; writes RUN_DIR/last.pt, best.safetensors, log.jsonl. See docs/training.md.

    Settings come from the recipe; --set KEY=VALUE changes any of them (the
    keys of the recipe's sections, model.KEY for the model's, augment.KEY).

    \b
    Example:
      sep train --config recipes/convtasnet.toml --out runs/convtasnet
      sep train --config recipes/tiny.toml --out runs/t --set max_epochs=4 --set model.X=4
      sep train --resume runs/convtasnet --set max_epochs=120
    """
    import os

    from sepcli.training import loop as training

    setup_logging(quiet)
    overrides = training.parse_set(settings)
    max_steps = overrides.pop("max_steps", None)
    if lr is not None:
        overrides["lr"] = lr
    common = dict(init=init, device=device, threads=threads, max_steps=max_steps,
                  max_minutes=max_minutes, progress=not quiet)
    if resume:
        if out and os.path.abspath(out) != os.path.abspath(resume):
            raise click.UsageError("--resume RUN_DIR continues in RUN_DIR; do not give another --out")
        if recipe or init:
            raise click.UsageError("--resume takes the recipe and weights from RUN_DIR/last.pt")
        result = training.train(None, resume, resume=True, overrides=overrides, **common)
    else:
        if not out:
            raise click.UsageError("give --out RUN_DIR (or --resume RUN_DIR)")
        if not recipe and "family" not in overrides:
            raise click.UsageError("give --config RECIPE or --set family=FAMILY")
        base, text = training.read_recipe(recipe) if recipe else ({}, "")
        config = training.make_config(base, **overrides)
        result = training.train(config, out, recipe_text=text, force=force, **common)
    if int(os.environ.get("RANK", "0")) == 0:
        _report(result)


def _report(result: TrainResult) -> None:
    """How the run ended, its best epoch, and how to continue it."""
    why = {
        "finished": "finished all epochs", "early_stop": "stopped early (no improvement)",
        "max_steps": "stopped at max_steps", "max_minutes": "stopped at --max-minutes",
        "interrupted": "interrupted",
    }.get(result.reason, result.reason)
    click.echo(f"Training {why} after {result.step} steps ({result.epoch} epochs, "
               f"{result.elapsed / 3600:.2f} h).")
    if result.best_path is not None:
        click.echo(f"Best validation SI-SNRi {result.best_si_snri:.2f} dB (epoch {result.best_epoch}): "
                   f"{result.best_path}")
    if result.reason in ("max_steps", "max_minutes", "interrupted"):
        click.echo(f"Continue with: sep train --resume {result.run_dir}")
