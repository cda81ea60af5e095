"""``sep evaluate``: scores of one mixture or a whole set, as tables, JSON or CSV."""
from __future__ import annotations

import sys

import click

from sepcli.cli.app import main
from sepcli.errors import SepError


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

