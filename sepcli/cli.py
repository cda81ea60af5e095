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


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr``, not the one at creation: the
    handler outlives a command (tests run many through CliRunner, which swaps
    sys.stderr each time)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(quiet: bool = False) -> None:
    """Library modules log through ``logging.getLogger(__name__)``; the CLI shows
    their warnings as one line each on stderr."""
    logger = logging.getLogger("sepcli")
    if not any(getattr(h, "_sep", False) for h in logger.handlers):
        handler = _StderrHandler()
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
        return f"{float(value):.2f}"  # as the card gives it
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
    passes_col = console.width >= 90

    def new_table(title: str, *columns: str) -> Table:
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
        for col in columns:
            right = col in ("Rate", "Speakers", "Params", "Passes", "SI-SNRi", "SDRi")
            table.add_column(col, justify="right" if right else "left", no_wrap=True)
        return table

    shipped = [r for r in rows if r["kind"] == "shipped"]
    if shipped:
        columns = ["Name", "Rate", "Speakers", "Causal", "Params", *(["Passes"] if passes_col else []), "SI-SNRi", "SDRi"]
        table = new_table(f"Shipped models ({models_dir})", *columns, *(["Family"] if wide else []))
        for r in shipped:
            name = r["name"] + (" *" if r["default"] else "") + (" (unreadable)" if r.get("error") else "")
            passes = "-" if r.get("passes") is None else f"{r['passes']}{'±' if r.get('pass_signs') else ''}"
            if len(r.get("speeds") or [1.0]) > 1:
                passes += f" x{len(r['speeds'])}"
            table.add_row(
                name, _fmt_rate(r["sample_rate"]), str(r["n_src"]),
                "yes" if r["causal"] else "no", _fmt_params(r["params"]), *([passes] if passes_col else []),
                _fmt_db(r["quality"], "si_snri"), _fmt_db(r["quality"], "sdri"),
                *([str(r["family"])] if wide else []),
            )
        console.print(table)
        notes = ["SI-SNRi/SDRi: measured improvement in dB on the card's test set, with the model's "
                 "default passes (averaged forwards; ±: with sign flips; xN: at N speeds, --speeds; "
                 "--passes 1 --speeds 1 is the fastest)"]
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
    if v is None:
        return "-"
    text = f"{v:.2f}"
    return "0.00" if text == "-0.00" else text


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
    from sepcli.training.data import build_mixture_set

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
              help="A corpus folder/glob (dynamic mixing) or a mixture set (mix/, s1/, s2/).")
@click.option("--valid", "valid_data", metavar="DATA",
              help="Validation data; default: the corpus's 'valid' speakers.")
@click.option("--out", "-o", metavar="RUN_DIR", help="Run folder: last.pt, best.safetensors, log.jsonl.")
@click.option("--resume", metavar="RUN_DIR", help="Continue the run in RUN_DIR exactly where it stopped.")
@click.option("--init", metavar="MODEL", help="Fine-tune from these weights (.safetensors or shipped name).")
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
@click.option("--checkpoint-minutes", type=click.FloatRange(min=0, min_open=True), metavar="MIN",
              help="Minutes between checkpoints within an epoch.")
@click.option("--log-every", type=click.IntRange(min=1), help="Steps between log lines.")
@click.option("--amp/--no-amp", default=None, help="Mixed precision on CUDA (default on).")
@click.option("--amp-cpu/--no-amp-cpu", default=None,
              help="bfloat16 products on CPUs with native bfloat16 (default off; validation stays float32).")
@click.option("--compile/--no-compile", "compile_step", default=None,
              help="torch.compile the training step: slower start, faster steps.")
@click.option("--teacher", metavar="MODEL",
              help="Distil from this trained model (shipped name or .safetensors).")
@click.option("--distill-weight", type=click.FloatRange(0, 1),
              help="Loss share that targets the teacher's estimates (default 0.5).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any other setting, e.g. --set model.X=4 (repeatable).")
@click.option("--device", help="cpu, cuda or cuda:N (default: cuda if available).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for this process.")
@click.option("--max-steps", type=click.IntRange(min=0), help="Stop (with a checkpoint) after this many steps.")
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
    amp: bool | None, amp_cpu: bool | None, compile_step: bool | None, teacher: str | None,
    distill_weight: float | None, settings: tuple[str, ...], device: str | None, threads: int | None,
    max_steps: int | None, max_minutes: float | None, quiet: bool, force: bool,
) -> None:
    """Train a model; writes RUN_DIR/last.pt, best.safetensors, log.jsonl. See docs/training.md.

    \b
    Example: sep train --config recipes/convtasnet.toml --out runs/convtasnet
    """
    import os

    from sepcli.training import loop as training

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
        amp_cpu=amp_cpu, compile=compile_step, teacher=teacher, distill_weight=distill_weight,
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


# ----------------------------------------------------------------------------- sep separate
# Defaults mirror sepcli.api (not imported here: it loads torch, which would
# slow down every `sep --help`); tests/test_cli_separate.py checks they agree.


@main.command("separate")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--model", "-m", metavar="NAME|PATH",
              help="Shipped model name or .safetensors checkpoint. Default: see `sep models`.")
@click.option("--out", "-o", default="separated", show_default=True, metavar="DIR",
              help="Output folder.")
@click.option("--num-speakers", "-n", metavar="K|auto",
              help="Number of speakers; another count or 'auto' for dpcl only.")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
              help="Where the model runs; auto uses CUDA when present.")
@click.option("--quality", type=click.Choice(["fast", "high"]), default="fast", show_default=True,
              help="Inference preset. fast: one forward pass per chunk. high: the averaged passes "
                   "and speeds of each model (several times the compute), like Demucs' --shifts. "
                   "--passes, --pass-signs, --speeds and --segment override it.")
@click.option("--segment", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SEC",
              help="Chunk length in seconds. Default: the --quality preset's.")
@click.option("--overlap", type=click.FloatRange(0, 1, max_open=True), default=0.25, show_default=True,
              metavar="F", help="Fraction of each chunk shared with the next (0: no alignment).")
@click.option("--precision", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto",
              show_default=True,
              help="Conv-TasNet's matrix products; auto: bfloat16 on CPUs with native bfloat16.")
@click.option("--passes", type=click.IntRange(min=1), default=None, metavar="N",
              help="Forward passes averaged per chunk (sign-flipped and delayed copies); each costs one "
                   "forward. Default: the --quality preset's.")
@click.option("--pass-signs/--no-pass-signs", default=None,
              help="Alternate the input's sign between passes (polarity-independent output with even "
                   "--passes). Default: the --quality preset's.")
@click.option("--speeds", default=None, metavar="F,F,...",
              help="Speed factors (0.92: resampled slower) the model also hears, tracks averaged; each "
                   "costs about 1/F. Default: the --quality preset's. Non-causal models only.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Files separated at once, each with (CPU cores / N) threads.")
@click.option("--threads", type=click.IntRange(min=1), metavar="N",
              help="Torch threads per job (default: CPU cores / --jobs).")
@click.option("--filename", default="{stem}/s{i}.wav", show_default=True, metavar="TEMPLATE",
              help="Output path under --out; fields {stem}, {i} speaker, {n} speakers, {parent}.")
@click.option("--float", "as_float", is_flag=True, help="Write 32-bit float WAV instead of 16-bit PCM.")
@click.option("--plot", is_flag=True,
              help="Also write STEM.spectrogram.png; needs matplotlib ('.[plot]').")
@click.option("--force", "-f", is_flag=True, help="Redo inputs whose outputs exist, overwriting them.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout (messages go to stderr).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or per-file lines; only errors.")
def separate_cmd(
    inputs: tuple[str, ...], model: str | None, out: str, num_speakers: str | None, device: str, quality: str,
    segment: float | None, overlap: float, precision: str, passes: int | None, pass_signs: bool | None,
    speeds: str | None, jobs: int, threads: int | None, filename: str, as_float: bool, plot: bool, force: bool,
    as_json: bool, quiet: bool,
) -> None:
    """Separate recordings into one track per speaker: OUT/<stem>/s1.wav, s2.wav, ...

    INPUT: audio files, folders or glob patterns. Outputs have the input's
    rate and length; inputs whose outputs exist are skipped.

    \b
    Example:
      sep separate meeting.flac --model convtasnet
      sep separate recordings/ "more/*.wav" --out separated/ --jobs 2
      sep separate interview.wav --model runs/x/best.safetensors --plot --float
      sep separate talk.wav --model dpcl --num-speakers auto --json
    """
    import json

    from sepcli import api, engine

    _setup_logging(quiet)
    if jobs == 1 and threads is None:
        engine.set_threads(1)
    from sepcli.cli_console import ConsoleReport

    with ConsoleReport(quiet=quiet, lines_to_stderr=as_json) as report:
        batch = api.separate_files(
            inputs, out, model=model, device=device, segment=segment, overlap=overlap,
            n_src=num_speakers, jobs=jobs, threads=threads, force=force, filename=filename,
            subtype="FLOAT" if as_float else "PCM_16", plot=plot, events=report, precision=precision,
            passes=passes, pass_signs=pass_signs, speeds=None if speeds is None else _speeds_list(speeds),
            quality=quality,
        )
    report.summary(batch)
    if as_json:
        click.echo(json.dumps(batch.to_dict(), indent=2))
    if batch.failed:
        sys.exit(1)


# ----------------------------------------------------------------------------- sep stream / sep bench


def _float_list(value: str, expected: str, hint: str | None = None) -> list[float]:
    """Comma-separated numbers; BadParameter "expected comma-separated <expected>" if one is not."""
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated {expected}, got {value!r}", param_hint=hint) from None


def _chunk_ms_list(value: str) -> list[float]:
    out = _float_list(value, "milliseconds like 2,4,8")
    if not out or any(not (v > 0) for v in out):
        raise click.BadParameter(f"expected positive milliseconds like 2,4,8, got {value!r}")
    return out


def _speeds_list(value: str) -> list[float]:
    expected, hint = "speed factors like 1,0.92", "'--speeds'"
    out = _float_list(value, expected, hint)
    if not out:
        raise click.BadParameter(f"expected comma-separated {expected}, got {value!r}", param_hint=hint)
    return out


# sep stream and sep bench: which implementation runs the streaming step
_backend_option = click.option(
    "--backend", type=click.Choice(["auto", "native", "torch"]), default="auto", show_default=True,
    help="Streaming step: the compiled kernel (native: built on first use with the system C compiler, "
         "cached in ~/.cache/sep), torch, or native when it can be built (auto). The output is the same.")


@main.command("stream")
@click.argument("input_path", metavar="INPUT|-")
@click.option("--model", "-m", metavar="NAME|PATH",
              help="A causal Conv-TasNet: shipped name or .safetensors checkpoint. "
                   "Default: the shipped convtasnet-causal.")
@click.option("--out", "-o", default="separated", show_default=True, metavar="DIR", help="Output folder.")
@click.option("--chunk-ms", type=click.FloatRange(min=0, min_open=True), default=8.0, show_default=True,
              metavar="MS", help="Chunk length in milliseconds: how much input arrives at a time.")
@click.option("--device", default="cpu", show_default=True, metavar="cpu|cuda[:N]",
              help="Where the model runs (small chunks are usually fastest on the CPU).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads (one is fastest for chunks of a few ms).")
@click.option("--passes", type=click.IntRange(min=1), default=None, metavar="N",
              help="Forward passes averaged (delayed copies; N times the compute). Default: the preset's.")
@click.option("--quality", type=click.Choice(["fast", "high"]), default="fast", show_default=True,
              help="Inference preset: fast streams one pass; high the model's averaged passes.")
@_backend_option
@click.option("--filename", default="{stem}/s{i}.wav", show_default=True, metavar="TEMPLATE",
              help="Output path under --out; fields {stem} (input name, or --name for stdin), {i}, {n}.")
@click.option("--stdin-rate", type=click.IntRange(min=1), metavar="HZ",
              help="With INPUT '-': sample rate of the raw mono PCM read from stdin (required).")
@click.option("--stdin-format", type=click.Choice(["s16le", "f32le"]), default="s16le", show_default=True,
              help="With INPUT '-': raw sample format, 16-bit integer or 32-bit float, little-endian.")
@click.option("--name", default="stdin", show_default=True,
              help="With INPUT '-': the {stem} of the output files.")
@click.option("--float", "as_float", is_flag=True,
              help="Write 32-bit float WAV (always the case for stdin, whose peak is unknown in advance).")
@click.option("--force", "-f", is_flag=True, help="Overwrite existing outputs.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def stream_cmd(
    input_path: str, model: str | None, out: str, chunk_ms: float, device: str, threads: int,
    passes: int | None, quality: str, backend: str, filename: str, stdin_rate: int | None, stdin_format: str, name: str,
    as_float: bool, force: bool, as_json: bool,
) -> None:
    """Separate with a causal model chunk by chunk, as live audio would arrive.

    Writes the same files as sep separate (OUT/<stem>/s1.wav, s2.wav, ...,
    the input's rate and length). Each chunk's output is final as soon as
    the chunk is processed: the model keeps its state between chunks, so the
    result is identical to running the causal model over the whole file
    (with --passes, to averaging its passes over the whole file).
    INPUT '-' reads raw mono PCM from stdin until it closes (--stdin-rate).

    \b
    Example:
      sep stream meeting.wav --model convtasnet-causal --chunk-ms 8
      arecord -f S16_LE -r 16000 -c 1 -t raw | sep stream - --stdin-rate 16000 --out live/
    """
    import json

    import torch

    from sepcli import streaming

    torch.set_num_threads(threads)
    if input_path == "-":
        if stdin_rate is None:
            raise click.UsageError("reading stdin ('-') needs --stdin-rate HZ")
        result = streaming.stream_pcm(
            sys.stdin.buffer, stdin_rate, out, model, name=name, sample_format=stdin_format,
            chunk_ms=chunk_ms, device=device, force=force, filename=filename, subtype="FLOAT", passes=passes,
            quality=quality, backend=backend,
        )
    else:
        if stdin_rate is not None:
            raise click.UsageError("--stdin-rate is only for INPUT '-' (stdin)")
        result = streaming.stream_file(
            input_path, out, model, chunk_ms=chunk_ms, device=device, force=force, filename=filename,
            subtype="FLOAT" if as_float else "PCM_16", passes=passes, quality=quality, backend=backend,
        )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif result.status == "skipped":
        click.echo(f"Skipped {result.input}: {result.message}", err=True)
    else:
        click.echo(
            f"Wrote {result.n_src} tracks ({result.duration:.1f} s at {result.sample_rate} Hz) to "
            f"{', '.join(result.outputs)}\n{result.chunks} chunks of {result.chunk_ms:g} ms"
            f" ({f'{result.passes} passes, ' if result.passes > 1 else ''}{result.backend} step): compute "
            f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, max {result.max_ms:.2f} ms; "
            f"real-time factor {result.compute_rtf:.3f}"
        )
    if result.status == "ok" and result.compute_rtf > 1.0:
        hint = "--passes 1, " if result.passes > 1 else ""
        click.echo(
            f"Warning: slower than real time (compute {result.compute_rtf:.2f}x the audio's duration): "
            f"live input would fall behind; try {hint}a larger --chunk-ms or more --threads.", err=True,
        )


def _print_bench(result) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    weights = " (random weights)" if result.random_weights else ""
    title = (
        f"Streaming {result.model}{weights}, {_fmt_params(result.params)} params, "
        f"{f'{result.passes} passes averaged, ' if result.passes > 1 else ''}"
        f"{result.device} ({result.device_name}), {result.threads} thread(s), {result.backend} step, "
        f"{result.duration_s:g} s at {result.sample_rate / 1000:g} kHz"
    )
    console = Console()
    wide = console.width >= 100  # p90 and max only where they fit; --json has everything
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, caption="times in ms",
                  caption_justify="left")
    columns = ["Chunk", "RTF", *(["CPU\nRTF"] if wide else []), "p50", *(["p90"] if wide else []), "p99",
               *(["max"] if wide else []),
               "Alg.\nlat.", "Total\nlat.", "Max\n|diff|", "Naive\nRTF", "Speed\n-up"]
    for col in columns:
        table.add_column(col, justify="right", no_wrap=True)
    for r in result.results:
        table.add_row(
            f"{r.chunk_ms:g}", f"{r.rtf:.3f}",
            *(["-" if r.cpu_rtf is None else f"{r.cpu_rtf:.3f}"] if wide else []),
            f"{r.p50_ms:.2f}", *([f"{r.p90_ms:.2f}"] if wide else []),
            f"{r.p99_ms:.2f}", *([f"{r.max_ms:.2f}"] if wide else []), f"{r.algorithmic_latency_ms:.1f}",
            f"{r.total_latency_ms:.1f}", f"{r.max_abs_diff:.1e}",
            "-" if r.naive_rtf is None else f"{r.naive_rtf:.2f}",
            "-" if r.speedup is None else f"{r.speedup:.0f}x",
        )
    console.print(table)
    notes = [
        "RTF: compute time / audio time (CPU RTF: with the process's CPU time). "
        "Alg. lat.: window L + chunk" + (" + the largest pass delay" if result.passes > 1 else "")
        + ". Total: alg. + p99 compute.",
        "Max |diff|: streamed vs offline causal output" + (" (the passes' average)" if result.passes > 1 else "")
        + f". Naive: network re-run over its receptive field ({result.receptive_field_ms:.0f} ms) + chunk "
        "for every chunk" + (" and pass." if result.passes > 1 else "."),
    ]
    if result.offline_rtf is not None:
        off_weights = " (random weights)" if result.offline_random_weights else ""
        notes.append(f"Offline non-causal {result.offline_model}{off_weights}: RTF {result.offline_rtf:.3f} "
                     f"(one forward over the whole signal, {result.offline_precision} matrix products "
                     "as `sep separate` uses here).")
    console.print("\n".join(notes), highlight=False)


@main.command("bench")
@click.option("--model", "-m", metavar="NAME|PATH",
              help="Causal Conv-TasNet to stream: shipped name, checkpoint, or preset (random weights). "
                   "Default: shipped convtasnet-causal, else convtasnet-paper-causal with random weights.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where to run; CUDA timings use synchronised events.")
@click.option("--chunk-ms", "chunk_ms", default="2,4,8,16,32", show_default=True, metavar="MS,MS,...",
              help="Chunk sizes to measure, in milliseconds (each at least one hop, L/2 samples).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="CPU threads for torch.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              metavar="SEC", help="Seconds of audio streamed per chunk size.")
@click.option("--naive-chunks", type=click.IntRange(min=0), default=5, show_default=True,
              help="Chunks timed for the naive re-run-everything baseline (0 skips it).")
@click.option("--passes", type=click.IntRange(min=1), default=None, metavar="N",
              help="Forward passes averaged per chunk, as sep stream --passes. Default: the preset's.")
@click.option("--quality", type=click.Choice(["fast", "high"]), default="fast", show_default=True,
              help="Inference preset, as sep stream: fast times one pass; high the averaged passes.")
@_backend_option
@click.option("--offline-model", metavar="NAME|PATH",
              help="Non-causal model whose offline RTF is reported. Default: shipped convtasnet, "
                   "else convtasnet-paper with random weights.")
@click.option("--no-offline", is_flag=True, help="Skip the offline non-causal measurement.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of a table.")
def bench_cmd(
    model: str | None, device: str, chunk_ms: str, threads: int, duration: float, naive_chunks: int,
    passes: int | None, quality: str, backend: str, offline_model: str | None, no_offline: bool, as_json: bool,
) -> None:
    """Measure streaming latency and real-time factor of a causal Conv-TasNet.

    For each chunk size, after a warm-up: compute time per chunk (p50, p90,
    p99, max), real-time factor, algorithmic latency (window + chunk), total
    latency (algorithmic + p99), the largest deviation from the offline causal
    output, and the naive baseline that re-runs the whole receptive field for
    every chunk. Close other programs first: timings are wall-clock.

    \b
    Example:
      sep bench
      sep bench --threads 1 --chunk-ms 8 --duration 30
      sep bench --device cuda --json > bench.json
    """
    import json

    from rich.console import Console

    from sepcli import bench

    chunks = _chunk_ms_list(chunk_ms)
    console = Console(stderr=True)
    with console.status("benchmarking", spinner="dots") as status:
        result = bench.run_bench(
            model, device=device, chunk_ms=chunks, threads=threads, duration=duration,
            naive_chunks=naive_chunks, offline_model=False if no_offline else offline_model, passes=passes,
            quality=quality, backend=backend, progress=lambda msg: status.update(msg) if not as_json else None,
        )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        _print_bench(result)
