"""``sep separate``: files, folders and globs to one track per speaker."""
from __future__ import annotations

import sys

import click

from sepcli.cli.app import main, setup_logging
from sepcli.cli.options import speeds_list

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
              help="Inference preset. fast: one forward pass per chunk. high: each model's averaged "
                   "passes and speeds (several times the compute), like Demucs' --shifts.")
@click.option("--segment", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SEC",
              help="Chunk length in seconds. Default: the --quality preset's.")
@click.option("--overlap", type=click.FloatRange(0, 1, max_open=True), default=None, metavar="F",
              help="Fraction of each chunk shared with the next (0: no alignment). Default: the "
                   "--quality preset's.")
@click.option("--precision", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto",
              show_default=True,
              help="Conv-TasNet's matrix products; auto: bfloat16 on CPUs with native bfloat16.")
@click.option("--passes", type=click.IntRange(min=1), default=None, metavar="N",
              help="Forward passes averaged per chunk (sign-flipped, delayed copies). Default: the "
                   "--quality preset's.")
@click.option("--pass-signs/--no-pass-signs", default=None,
              help="Alternate the input's sign between passes (polarity-independent output with even "
                   "--passes). Default: the --quality preset's.")
@click.option("--speeds", default=None, metavar="F,F,...",
              help="Speed factors (0.92: resampled slower) the model also hears, tracks averaged; each "
                   "costs about 1/F. Default: the --quality preset's. Non-causal models only.")
@click.option("--equalize", type=click.FloatRange(0, 40), default=None, metavar="DB",
              help="EQ each chunk toward training speech's spectrum (at most DB per band; 0: off), "
                   "its tracks back. Default: the --quality preset's.")
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
    segment: float | None, overlap: float | None, precision: str, passes: int | None, pass_signs: bool | None,
    speeds: str | None, equalize: float | None, jobs: int, threads: int | None, filename: str, as_float: bool,
    plot: bool, force: bool, as_json: bool, quiet: bool,
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

    setup_logging(quiet)
    if jobs == 1 and threads is None:
        engine.set_threads(1)
    from sepcli.cli.console import ConsoleReport

    with ConsoleReport(quiet=quiet, lines_to_stderr=as_json) as report:
        batch = api.separate_files(
            inputs, out, model=model, device=device, segment=segment, overlap=overlap,
            n_src=num_speakers, jobs=jobs, threads=threads, force=force, filename=filename,
            subtype="FLOAT" if as_float else "PCM_16", plot=plot, events=report, precision=precision,
            passes=passes, pass_signs=pass_signs, speeds=None if speeds is None else speeds_list(speeds),
            quality=quality, equalize=equalize,
        )
    report.summary(batch)
    if as_json:
        click.echo(json.dumps(batch.to_dict(), indent=2))
    if batch.failed:
        sys.exit(1)

