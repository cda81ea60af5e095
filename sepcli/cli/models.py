"""``sep models``: the shipped weights, presets and families as a table or JSON."""
from __future__ import annotations

import click

from sepcli.cli.app import main
from sepcli.cli.options import fmt_params


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
        columns = ["Name", "Rate", "Speakers", "Causal", "Params", *(["Passes"] if passes_col else []),
                   "SI-SNRi", "SDRi"]
        table = new_table(f"Shipped models ({models_dir})", *columns, *(["Family"] if wide else []))
        for r in shipped:
            name = r["name"] + (" *" if r["default"] else "") + (" (unreadable)" if r.get("error") else "")
            passes = "-" if r.get("passes") is None else f"{r['passes']}{'±' if r.get('pass_signs') else ''}"
            if len(r.get("speeds") or [1.0]) > 1:
                passes += f" x{len(r['speeds'])}"
            table.add_row(
                name, _fmt_rate(r["sample_rate"]), str(r["n_src"]),
                "yes" if r["causal"] else "no", fmt_params(r["params"]), *([passes] if passes_col else []),
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
                "yes" if r["causal"] else "no", fmt_params(r["params"]),
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
