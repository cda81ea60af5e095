"""``sep stream`` (a causal model chunk by chunk) and ``sep bench`` (its latency)."""
from __future__ import annotations

import math

import sys

import click

from sepcli.cli.app import main
from sepcli.cli.options import chunk_ms_list, fmt_params, streaming_options


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
@streaming_options(
    passes_help="Forward passes averaged (delayed copies; N times the compute). Default: the preset's.",
    quality_help="Inference preset: fast streams one pass; high the model's averaged passes.")
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
    passes: int | None, quality: str, equalize: float | None, backend: str, filename: str, stdin_rate: int | None,
    stdin_format: str, name: str,
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
            quality=quality, backend=backend, equalize=equalize,
        )
    else:
        if stdin_rate is not None:
            raise click.UsageError("--stdin-rate is only for INPUT '-' (stdin)")
        result = streaming.stream_file(
            input_path, out, model, chunk_ms=chunk_ms, device=device, force=force, filename=filename,
            subtype="FLOAT" if as_float else "PCM_16", passes=passes, quality=quality, backend=backend,
            equalize=equalize,
        )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif result.status == "skipped":
        click.echo(f"Skipped {result.input}: {result.message}", err=True)
    else:
        click.echo(
            f"Wrote {result.n_src} tracks ({result.duration:.1f} s at {result.sample_rate} Hz) to "
            f"{', '.join(result.outputs)}\n{result.chunks} chunks of {result.chunk_ms:g} ms"
            f" ({f'{result.passes} passes, ' if result.passes > 1 else ''}"
            f"{f'equalize {result.equalize:g} dB, ' if result.equalize else ''}{result.backend} step): compute "
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
        f"Streaming {result.model}{weights}, {fmt_params(result.params)} params, "
        f"{f'{result.passes} passes averaged, ' if result.passes > 1 else ''}"
        f"{f'equalize {result.equalize:g} dB, ' if result.equalize else ''}"
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
        + (f". Naive: network re-run over its receptive field ({result.receptive_field_ms:.0f} ms) + chunk "
           "for every chunk" + (" and pass." if result.passes > 1 else ".")
           if math.isfinite(result.receptive_field_ms) else ". Naive: none (recurrent: unbounded receptive field)."),
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
@streaming_options(
    passes_help="Forward passes averaged per chunk, as sep stream --passes. Default: the preset's.",
    quality_help="Inference preset, as sep stream: fast times one pass; high the averaged passes.")
@click.option("--offline-model", metavar="NAME|PATH",
              help="Non-causal model whose offline RTF is reported. Default: shipped convtasnet, "
                   "else convtasnet-paper with random weights.")
@click.option("--no-offline", is_flag=True, help="Skip the offline non-causal measurement.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of a table.")
def bench_cmd(
    model: str | None, device: str, chunk_ms: str, threads: int, duration: float, naive_chunks: int,
    passes: int | None, quality: str, equalize: float | None, backend: str, offline_model: str | None,
    no_offline: bool, as_json: bool,
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

    chunks = chunk_ms_list(chunk_ms)
    console = Console(stderr=True)
    with console.status("benchmarking", spinner="dots") as status:
        result = bench.run_bench(
            model, device=device, chunk_ms=chunks, threads=threads, duration=duration,
            naive_chunks=naive_chunks, offline_model=False if no_offline else offline_model, passes=passes,
            quality=quality, equalize=equalize, backend=backend,
            progress=lambda msg: status.update(msg) if not as_json else None,
        )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        _print_bench(result)
