"""The ``sep`` command line. Thin: each command parses its options, makes one
library call and prints. Library errors (:class:`SepError`) become a one-line
``Error: ...`` message with exit status 1.

Adding a command: decorate with ``@main.command()``, give every option a
``help=`` and put an ``Example:`` block in the docstring (shown by ``-h``).
"""
from __future__ import annotations

import logging
import sys

import click

from sepcli import __version__
from sepcli.errors import SepError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _SepGroup(click.Group):
    """Turns SepError (and Ctrl-C) into a one-line message instead of a traceback."""

    def invoke(self, ctx: click.Context):  # noqa: D401
        try:
            return super().invoke(ctx)
        except SepError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


def _setup_logging(quiet: bool = False) -> None:
    """Library modules log through ``logging.getLogger(__name__)``; the CLI shows
    their warnings as one line each on stderr."""
    logger = logging.getLogger("sepcli")
    if not any(getattr(h, "_sep", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        handler._sep = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else logging.INFO)
    logger.propagate = False


@click.group(cls=_SepGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="sep")
def main() -> None:
    """Separate a recording of several people talking at once into one track per speaker.

    \b
    Examples:
      sep separate mix.wav --out separated/
      sep evaluate --refs s1.wav s2.wav --est e1.wav e2.wav --mix mix.wav
      sep models
    """
    _setup_logging()


# ----------------------------------------------------------------------------- sep models


def _fmt_params(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def _fmt_db(quality: dict | None, key: str) -> str:
    value = (quality or {}).get(key)
    try:
        return f"{float(value):.1f}"
    except (TypeError, ValueError):
        return "-"


def _fmt_rate(sample_rate: int | None) -> str:
    return "?" if sample_rate is None else f"{sample_rate / 1000:g} kHz"


def _print_models_table(rows: list[dict], models_dir: str) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    # extra columns only where they fit; --json always has every field
    wide = console.width >= 110

    def new_table(title: str, *columns: str) -> Table:
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
        for col in columns:
            right = col in ("Rate", "Speakers", "Params", "SI-SNRi", "SDRi")
            table.add_column(col, justify="right" if right else "left", no_wrap=True)
        return table

    shipped = [r for r in rows if r["kind"] == "shipped"]
    if shipped:
        columns = ["Name", "Rate", "Speakers", "Causal", "Params", "SI-SNRi", "SDRi"]
        table = new_table(f"Shipped models ({models_dir})", *columns, *(["Family"] if wide else []))
        for r in shipped:
            name = r["name"] + (" *" if r["default"] else "") + (" (unreadable)" if r.get("error") else "")
            table.add_row(
                name, _fmt_rate(r["sample_rate"]), str(r["n_src"]),
                "yes" if r["causal"] else "no", _fmt_params(r["params"]),
                _fmt_db(r["quality"], "si_snri"), _fmt_db(r["quality"], "sdri"),
                *([str(r["family"])] if wide else []),
            )
        console.print(table)
        notes = ["SI-SNRi/SDRi: measured improvement in dB on the card's test set"]
        if any(r["default"] for r in shipped):
            notes.insert(0, "* default model of sep separate")
        console.print("\n".join(notes))
    else:
        console.print(f"No shipped weights in {models_dir}.")
    columns = ["Name", "Kind", "Rate", "Speakers", "Causal", "Params"]
    table = new_table("Families and presets (untrained: build with sep train)", *columns)
    if wide:
        table.add_column("Description", overflow="fold", ratio=1)
    for r in rows:
        if r["kind"] != "shipped":
            cells = [
                r["name"], r["kind"], _fmt_rate(r["sample_rate"]), str(r["n_src"]),
                "yes" if r["causal"] else "no", _fmt_params(r["params"]),
            ]
            table.add_row(*cells, *([r["description"]] if wide else []))
    console.print(table)


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON instead of a table.")
def models_cmd(as_json: bool) -> None:
    """List shipped weights, model presets and model families.

    Shipped weights are models/NAME.safetensors files with a model card
    models/NAME.json ($SEP_MODELS_DIR overrides the folder). Quality is the
    card's measured SI-SNR and SDR improvement on held-out test speakers.

    \b
    Example:
      sep models
      sep models --json
    """
    import json

    from sepcli import registry

    rows = registry.list_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        _print_models_table(rows, str(registry.models_dir()))


# ----------------------------------------------------------------------------- sep evaluate


class _ManyValuesCommand(click.Command):
    """Lets ``--refs a.wav b.wav`` take several values. Click options take one
    value each, so the words after such an option (up to the next ``-...``) are
    rewritten to ``--refs a.wav --refs b.wav`` before click parses them."""

    many_values = ("--refs", "--est")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        current, taken = None, 0
        for arg in args:
            if current is not None and not arg.startswith("-"):
                if taken:
                    out.append(current)
                out.append(arg)
                taken += 1
                continue
            current = None
            for opt in self.many_values:
                if arg == opt or arg.startswith(opt + "="):
                    current, taken = opt, int(arg != opt)
            out.append(arg)
        return super().parse_args(ctx, out)


def _db(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _print_mixture_score(score) -> None:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    has_mix = score.si_snri is not None
    table = Table(title=f"Scores in dB ({score.sample_rate} Hz)", title_justify="left")
    table.add_column("Reference", no_wrap=True)
    table.add_column("Estimate", no_wrap=True)
    for label in ("SI-SNR", "SI-SNRi", "SDR", "SDRi") if has_mix else ("SI-SNR", "SDR"):
        table.add_column(label, justify="right")
    metrics = ("si_snr", "si_snri", "sdr", "sdri") if has_mix else ("si_snr", "sdr")
    for i in range(score.n_src):
        table.add_row(
            Path(score.refs[i]).name, Path(score.est[score.perm[i]]).name,
            *(_db(getattr(score, m)[i]) for m in metrics),
        )
    table.add_section()
    table.add_row("mean", "", *(_db(score.mean(m)) for m in metrics), style="bold")
    console = Console()
    console.print(table)
    pairs = ", ".join(f"ref {i + 1} <- est {p + 1}" for i, p in enumerate(score.perm))
    console.print(f"Permutation: {pairs}", highlight=False)


def _print_set_result(result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{result.n} mixtures scored, {len(result.missing)} missing (dB)", title_justify="left"
    )
    for label, justify in (("Metric", "left"), ("mean", "right"), ("median", "right"), ("10th pct", "right")):
        table.add_column(label, justify=justify)
    for key, label in (("si_snr", "SI-SNR"), ("si_snri", "SI-SNRi"), ("sdr", "SDR"), ("sdri", "SDRi")):
        st = result.stats[key]
        table.add_row(label, _db(st.mean), _db(st.median), _db(st.p10))
    console = Console()
    console.print(table)
    if result.missing:
        shown = ", ".join(result.missing[:10]) + (" ..." if len(result.missing) > 10 else "")
        console.print(f"Missing estimates ({len(result.missing)}): {shown}", highlight=False)


@main.command("evaluate", cls=_ManyValuesCommand)
@click.option("--refs", multiple=True, metavar="FILE...",
              help="Reference tracks of one mixture, one per speaker.")
@click.option("--est", multiple=True, metavar="FILE...",
              help="Separated tracks to score, one per reference, in any order.")
@click.option("--mix", metavar="FILE", help="The mixture: adds SI-SNRi and SDRi (improvement over it).")
@click.option("--set", "set_dir", metavar="DIR",
              help="A whole set in wsj0-2mix/Libri2Mix layout: DIR/mix/NAME.wav (or mix_clean/), "
                   "DIR/s1/NAME.wav, DIR/s2/NAME.wav [, DIR/s3/...].")
@click.option("--est-dir", metavar="DIR",
              help="Estimates for --set: EST_DIR/NAME/s1.wav, s2.wav ... (the layout sep separate writes).")
@click.option("--csv", "csv_path", metavar="FILE", help="Also write one row per mixture to FILE (CSV).")
@click.option("--json", "as_json", is_flag=True,
              help="Print machine-readable JSON on stdout instead of tables.")
@click.option("--strict", is_flag=True, help="With --set: fail (exit 1) if any estimate is missing.")
@click.option("--force", is_flag=True, help="Overwrite an existing --csv file.")
def evaluate_cmd(
    refs: tuple[str, ...], est: tuple[str, ...], mix: str | None, set_dir: str | None,
    est_dir: str | None, csv_path: str | None, as_json: bool, strict: bool, force: bool,
) -> None:
    """Score separated tracks against references: SI-SNR, SDR and their improvements.

    One mixture (--refs, --est, optionally --mix) or a whole set (--set,
    --est-dir). Estimates may come in any order: each is matched to a
    reference by the permutation with the best total SI-SNR, and the table
    shows that pairing. Estimates at another sample rate are resampled to the
    references' rate; a length difference up to 1% is trimmed or padded with a
    warning, more is an error. SDR is BSS-eval's (512-tap filter). For a set,
    mean, median and 10th percentile are over per-mixture means; mixtures
    without estimates are counted and listed.

    \b
    Example:
      sep evaluate --refs s1.wav s2.wav --est e1.wav e2.wav --mix mix.wav
      sep evaluate --set Libri2Mix/wav8k/min/test --est-dir separated/ --csv scores.csv
      sep evaluate --set Libri2Mix/wav8k/min/test --est-dir separated/ --json > scores.json
    """
    import json

    from sepcli import evaluate

    single = bool(refs or est or mix)
    whole = bool(set_dir or est_dir)
    if single and whole:
        raise click.UsageError("use either --refs/--est (one mixture) or --set/--est-dir (a set), not both")
    if not single and not whole:
        raise click.UsageError("give --refs and --est (one mixture) or --set and --est-dir (a whole set)")
    if single and not (refs and est):
        raise click.UsageError("one mixture needs both --refs and --est")
    if whole and not (set_dir and est_dir):
        raise click.UsageError("a whole set needs both --set and --est-dir")
    if csv_path:
        evaluate.check_output(csv_path, force)

    if single:
        score = evaluate.evaluate_files(refs, est, mix)
        if csv_path:
            evaluate.write_csv(csv_path, [score], force=force)
        if as_json:
            click.echo(json.dumps(score.to_dict(), indent=2))
        else:
            _print_mixture_score(score)
        return

    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("Scoring", total=None)
            result = evaluate.evaluate_set(
                set_dir, est_dir, progress=lambda done, total: bar.update(task, completed=done, total=total)
            )
    else:
        result = evaluate.evaluate_set(set_dir, est_dir)
    if csv_path:
        evaluate.write_csv(csv_path, result.scores, result.missing, force=force)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        _print_set_result(result)
    if strict and result.missing:
        raise SepError(f"{len(result.missing)} mixture(s) have no estimates (--strict)")


# ----------------------------------------------------------------------------- sep mix / sep train


def _range_option(value: str | None, name: str, allow_none: bool = False) -> list[float] | None:
    """'LO,HI' -> [LO, HI]; 'none' -> None where allowed."""
    if value is None:
        return None
    if allow_none and value.strip().lower() in ("none", "off", "no"):
        return None
    parts = value.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"expected LOW,HIGH (e.g. 0,5), got {value!r}", param_hint=name) from None
    if low > high:
        raise click.BadParameter(f"LOW must not exceed HIGH, got {value!r}", param_hint=name)
    return [low, high]


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
    from sepcli.data import build_mixture_set

    summary = build_mixture_set(
        list(corpus), out, n_mixtures, n_src=n_src, sample_rate=sample_rate, mode=mode, segment=segment,
        snr_range=_range_option(snr_range, "--snr-range"),
        speed_range=_range_option(speed_perturb, "--speed-perturb", allow_none=True),
        sampling=sampling, seed=seed, speakers_split=speakers_split, split=split, subtype=subtype,
        force=force,
    )
    click.echo(
        f"Wrote {summary.n_mixtures} {summary.n_src}-speaker mixtures ({summary.seconds / 3600:.2f} h at "
        f"{summary.sample_rate} Hz, {len(summary.speakers)} speakers) to {summary.out}"
    )


@main.command("train")
@click.option("--config", "recipe", metavar="RECIPE", help="TOML recipe (recipes/*.toml); options below override it.")
@click.option("--model", "family", metavar="FAMILY", help="Model family to train (convtasnet, dpcl).")
@click.option("--train", "train_data", metavar="DATA",
              help="Training data: a corpus folder/glob (dynamic mixing) or a mixture set (mix/, s1/, s2/).")
@click.option("--valid", "valid_data", metavar="DATA",
              help="Validation data (mixture set or corpus); default: the corpus's 'valid' speakers.")
@click.option("--out", "-o", metavar="RUN_DIR", help="Run folder: last.pt, best.safetensors, log.jsonl.")
@click.option("--resume", metavar="RUN_DIR", help="Continue the run in RUN_DIR exactly where it stopped.")
@click.option("--init", metavar="MODEL", help="Start from these weights (.safetensors or shipped name) to fine-tune.")
@click.option("--speakers-split", metavar="FILE", help="JSON speaker split: train on speakers not held out.")
@click.option("--n-src", type=click.IntRange(min=1), help="Speakers per mixture (model setting).")
@click.option("--sample-rate", type=click.IntRange(min=1), help="Model sample rate in Hz (data is resampled).")
@click.option("--segment", type=float, metavar="SEC", help="Seconds per training mixture.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Mixtures per step and process.")
@click.option("--epoch-size", type=click.IntRange(min=1), help="Dynamic mixing: mixtures per epoch.")
@click.option("--valid-size", type=click.IntRange(min=1), help="Dynamic validation: number of mixtures.")
@click.option("--lr", type=float, help="Adam learning rate.")
@click.option("--epochs", "max_epochs", type=click.IntRange(min=1), help="Maximum number of epochs.")
@click.option("--patience", type=click.IntRange(min=0), help="Epochs without improvement before the LR halves.")
@click.option("--early-stop", type=click.IntRange(min=0), help="Epochs without improvement before stopping (0: never).")
@click.option("--clip", type=click.FloatRange(min=0), help="Gradient-norm clipping (0: off).")
@click.option("--speed-perturb", metavar="LO,HI|none", help="Dynamic mixing speed factor range, or none.")
@click.option("--seed", type=int, help="Random seed (data, initialisation).")
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader worker processes.")
@click.option("--checkpoint-minutes", type=click.FloatRange(min=0, min_open=True),
              help="Minutes between checkpoints within an epoch.")
@click.option("--log-every", type=click.IntRange(min=1), help="Steps between log lines.")
@click.option("--amp/--no-amp", default=None, help="Mixed precision on CUDA (default on).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any other setting, e.g. --set model.X=4 --set valid_segment=3 (repeatable).")
@click.option("--device", help="cpu, cuda or cuda:N (default: cuda if available).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for this process.")
@click.option("--max-steps", type=click.IntRange(min=0), help="Stop (with a checkpoint) after this many steps in total.")
@click.option("--max-minutes", type=click.FloatRange(min=0), help="Stop (with a checkpoint) after this many minutes.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display, warnings only.")
@click.option("--force", is_flag=True, help="Start over in a RUN_DIR that already holds a run.")
def train_cmd(
    recipe: str | None, family: str | None, train_data: str | None, valid_data: str | None,
    out: str | None, resume: str | None, init: str | None, speakers_split: str | None,
    n_src: int | None, sample_rate: int | None, segment: float | None, batch_size: int | None,
    epoch_size: int | None, valid_size: int | None, lr: float | None, max_epochs: int | None,
    patience: int | None, early_stop: int | None, clip: float | None, speed_perturb: str | None,
    seed: int | None, workers: int | None, checkpoint_minutes: float | None, log_every: int | None,
    amp: bool | None, settings: tuple[str, ...], device: str | None, threads: int | None,
    max_steps: int | None, max_minutes: float | None, quiet: bool, force: bool,
) -> None:
    """Train a separation model: Adam, LR halving on plateau, early stopping, exact resume.

    Writes RUN_DIR/last.pt (atomically, every --checkpoint-minutes and each
    epoch), RUN_DIR/best.safetensors (best validation SI-SNRi, ready for
    sep separate --model) and RUN_DIR/log.jsonl. Relative paths inside a
    recipe are relative to the recipe file. Ctrl-C (or SIGTERM) checkpoints
    and stops; --resume continues with the same batches as an uninterrupted
    run. Under torchrun every process trains a shard (DDP: gloo on CPU, nccl
    on GPU); only rank 0 writes.

    \b
    Example:
      sep train --config recipes/convtasnet.toml --out runs/convtasnet
      sep train --resume runs/convtasnet --max-minutes 60
      sep train --model convtasnet --train "corpus/*/" --speakers-split split.json --out runs/x
      torchrun --nproc_per_node 4 -m sepcli train --config recipes/convtasnet.toml --out runs/ddp
    """
    import os

    from sepcli import train as training

    _setup_logging(quiet)
    overrides = training.parse_set(settings)
    model_over = dict(overrides.pop("model", {}))
    if n_src is not None:
        model_over["n_src"] = n_src
    if sample_rate is not None:
        model_over["sample_rate"] = sample_rate
    options = dict(
        family=family, train=train_data, valid=valid_data, speakers_split=speakers_split,
        segment=segment, batch_size=batch_size, epoch_size=epoch_size, valid_size=valid_size, lr=lr,
        max_epochs=max_epochs, patience=patience, early_stop=early_stop, clip=clip,
        speed_perturb=_range_option(speed_perturb, "--speed-perturb", allow_none=True)
        if speed_perturb is not None else None,
        seed=seed, workers=workers, checkpoint_minutes=checkpoint_minutes, log_every=log_every, amp=amp,
    )
    if speed_perturb is not None and options["speed_perturb"] is None:
        options["speed_perturb"] = "none"  # an explicit "none" must override the recipe
    options.update(overrides)
    if model_over:
        options["model"] = model_over
    common = dict(init=init, device=device, threads=threads, max_steps=max_steps,
                  max_minutes=max_minutes, progress=not quiet)
    if resume:
        if out and os.path.abspath(out) != os.path.abspath(resume):
            raise click.UsageError("--resume RUN_DIR continues in RUN_DIR; do not give another --out")
        if recipe or init:
            raise click.UsageError("--resume takes the recipe and weights from RUN_DIR/last.pt")
        given = {k: v for k, v in options.items() if v is not None}
        result = training.train(None, resume, resume=True, overrides=given, **common)
    else:
        if not out:
            raise click.UsageError("give --out RUN_DIR (or --resume RUN_DIR)")
        base, text = training.read_recipe(recipe) if recipe else ({}, "")
        if not recipe and not family:
            raise click.UsageError("give --config RECIPE or --model FAMILY")
        config = training.make_config(base, **options)
        result = training.train(config, out, recipe_text=text, force=force, **common)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    why = {
        "finished": "finished all epochs", "early_stop": "stopped early (no improvement)",
        "max_steps": "stopped at --max-steps", "max_minutes": "stopped at --max-minutes",
        "interrupted": "interrupted",
    }.get(result.reason, result.reason)
    click.echo(f"Training {why} after {result.step} steps ({result.epoch} epochs, "
               f"{result.elapsed / 3600:.2f} h).")
    if result.best_path is not None:
        click.echo(f"Best validation SI-SNRi {result.best_si_snri:.2f} dB (epoch {result.best_epoch}): "
                   f"{result.best_path}")
    if result.reason in ("max_steps", "max_minutes", "interrupted"):
        click.echo(f"Continue with: sep train --resume {result.run_dir}")
