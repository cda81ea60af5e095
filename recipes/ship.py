"""Ship a trained model: copy its best weights into models/, score it on the
held-out test set with the same code as `sep separate` + `sep evaluate`, and
write its model card (models/NAME.json, read by `sep models`, and models/NAME.md).

Run by hand after training (it needs the test sets, which `sep mix` builds from
../shared; see the card for the exact commands):

    sep mix ../shared/data/librispeech-8k/*/ --out data/test2 -n 300 \
        --speakers-split recipes/splits/librispeech-8k.json --split test --seed 1
    sep mix ../shared/data/librispeech-8k/*/ --out data/test3 -n 100 --n-src 3 \
        --speakers-split recipes/splits/librispeech-8k.json --split test --seed 2
    python recipes/ship.py runs/convtasnet --name convtasnet --recipe recipes/convtasnet.toml
    python recipes/ship.py runs/dpcl --name dpcl --recipe recipes/dpcl.toml --test3 data/test3

After changing a config setting of a shipped model (``update_shipped``),
score it again in place: ``python recipes/ship.py --rescore convtasnet``. To ship
further-trained weights under the shipped config (inference settings kept), add
``--weights runs/X/epochN.safetensors`` to ``--rescore``, then bring the card's
training history up to date by hand.

An ensemble of shipped models (family ``ensemble``: their aligned tracks averaged;
its file names the members and their SHA-256, and holds no weights) ships with
``--ensemble``, scored like any model:

    python recipes/ship.py --ensemble convtasnet dpcl --member-weights 0.5 0.5 \
        --name convtasnet+dpcl --shifted data/test2-shifted

Shipping new weights for a member makes the ensemble refuse to load until it is
shipped again with the same command (its figures would otherwise describe other
weights).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import tempfile
from pathlib import Path

import torch

from sepcli import __version__, registry
from sepcli.api import Separator, separate_files
from sepcli.bench import cpu_name
from sepcli.errors import SepError
from sepcli.evaluate import evaluate_set

ROOT = Path(__file__).resolve().parent.parent
SPLIT = ROOT / "recipes" / "splits" / "librispeech-8k.json"


def _score(model_path: Path, test_set: Path, n_src: int | None, threads: int, quality: str = "fast") -> dict:
    """Separate every mixture of a Libri2Mix-layout set and score it."""
    torch.set_num_threads(threads)
    mixes = sorted((test_set / "mix").glob("*.wav"))
    with tempfile.TemporaryDirectory(prefix="sep-ship-") as tmp:
        batch = separate_files(mixes, tmp, model=str(model_path), device="cpu", n_src=n_src, quality=quality)
        if batch.failed:
            raise SystemExit(f"{batch.failed} mixtures failed to separate")
        result = evaluate_set(test_set, tmp)
    stats = {k: dataclasses.asdict(v) for k, v in result.stats.items()}
    return {
        "test_set": _rel(test_set),
        "n": result.n,
        "missing": result.missing,
        "si_snri": round(stats["si_snri"]["mean"], 2),
        "sdri": round(stats["sdri"]["mean"], 2),
        "si_snr": round(stats["si_snr"]["mean"], 2),
        "sdr": round(stats["sdr"]["mean"], 2),
        "stats": stats,
    }


def _run_summary(run: Path) -> dict:
    """Steps, epochs, hours and best validation score of one run folder, from its log.jsonl."""
    steps = epochs = 0
    elapsed = 0.0
    best = None
    log = run / "log.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            steps = max(steps, int(rec.get("step", 0)))
            elapsed = max(elapsed, float(rec.get("elapsed", 0.0)))
            if rec.get("event") == "valid":
                epochs = max(epochs, int(rec.get("epoch", 0)) + 1)
                score = rec.get("val_si_snri")
                if score is not None and (best is None or score > best):
                    best = score
    return {"steps": steps, "epochs": epochs, "hours": round(elapsed / 3600, 2),
            "best_valid_si_snri": None if best is None else round(best, 2)}


def training_summary(run: Path, prior_runs: list[Path] = ()) -> dict:
    """The whole training of the shipped weights: RUN after each of PRIOR_RUNS in turn.

    A warm restart (``--init``) starts a new run folder whose log counts from
    zero, so a card made from the last folder alone would under-report the
    cost; the stages are summed here and listed one by one. The best
    validation score is the last stage's, the only one measured on weights
    that lead to the shipped ones.
    """
    stages = [{"run": str(r), **_run_summary(r)} for r in [*prior_runs, run]]
    summary = {k: sum(st[k] for st in stages) for k in ("steps", "epochs")}
    summary["hours"] = round(sum(st["hours"] for st in stages), 2)
    summary["best_valid_si_snri"] = stages[-1]["best_valid_si_snri"]
    if len(stages) > 1:
        summary["stages"] = [{k: st[k] for k in ("run", "steps", "epochs", "hours")} for st in stages]
    return summary


def set_config(model: torch.nn.Module, items: list[str]) -> None:
    """Apply ``KEY=VALUE`` changes (JSON values) to an inference setting of
    ``model.config``; the config's own checks run again on the result."""
    if not items:
        return
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not hasattr(model.config, key):
            raise SystemExit(f"--config-set {item!r}: not KEY=VALUE with a field of {type(model.config).__name__}")
        try:
            changes[key] = json.loads(value)
        except json.JSONDecodeError:
            raise SystemExit(f"--config-set {item!r}: the value is not JSON (strings need quotes)") from None
    model.config = dataclasses.replace(model.config, **changes)


def write_atomic(path: Path, text: str) -> None:
    """Write a card file via a temporary file and a rename: never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def update_shipped(name: str, changes: dict) -> str:
    """Apply inference-setting ``changes`` to shipped model ``name``: rewrite its
    weights file (same tensors, new config; atomic) and its card's config and
    SHA-256. Returns the new SHA-256."""
    model = registry.load_file(registry.models_dir() / f"{name}.safetensors")
    model.config = dataclasses.replace(model.config, **changes)
    return _rewrite_shipped(name, model)


def replace_weights(name: str, weights: Path) -> str:
    """Put the tensors of ``weights`` (a checkpoint of the same architecture, e.g. a
    training run's epoch) into shipped model ``name``, keeping its shipped config
    (inference settings such as dpcl's masks and speaker counter); rewrite its card's
    SHA-256. The quality figures are then stale: score it again (``--rescore``).
    Returns the new SHA-256."""
    model = registry.load_file(registry.models_dir() / f"{name}.safetensors")
    new = registry.load_file(weights)
    if new.family != model.family:
        raise SepError(f"{weights}: a {new.family} checkpoint, not {model.family} as {name} is")
    model.load_state_dict(new.state_dict(), strict=True)
    return _rewrite_shipped(name, model)


def _rewrite_shipped(name: str, model: torch.nn.Module) -> str:
    """Save ``model`` as shipped model ``name`` (float16 storage, atomic), check that
    the stored tensors are the model's, and put its config and SHA-256 in both cards."""
    path = registry.models_dir() / f"{name}.safetensors"
    # float16 storage, as shipped: the float32 copy holds exactly the stored values
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    sha = registry.save_model(model, path, dtype=torch.float16, force=True)
    reloaded = registry.load_file(path)
    if any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values(),
                                                  strict=True)):
        raise SepError(f"{path}: the weights changed on rewrite")
    config = dataclasses.asdict(model.config)
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["config"], card["sha256"] = config, sha
    write_atomic(card_path, json.dumps(card, indent=2) + "\n")
    md_path = path.with_suffix(".md")
    md = md_path.read_text()
    config_line = f"- **Configuration:** `{json.dumps(config, sort_keys=True)}`"
    md = re.sub(r"^- \*\*Configuration:\*\* `.*`$", lambda _m: config_line, md, count=1, flags=re.M)
    md = re.sub(r"SHA-256 `[0-9a-f]{64}`", f"SHA-256 `{sha}`", md, count=1)
    write_atomic(md_path, md)
    return sha


def quality_table(q: dict) -> list[str]:
    """The card's quality paragraph and table (Markdown lines) for a ``_score`` result."""
    lines = [
        f"Measured with `sep separate` + `sep evaluate --set {q['test_set']}` on {q['n']} "
        "two-speaker mixtures at 8 kHz built wsj0-2mix-style (0-5 dB relative level, cut to "
        "the shorter source) from the test speakers below:",
        "",
        "| metric | mean | median | 10th percentile |",
        "|---|---|---|---|",
    ]
    for key in ("si_snri", "sdri", "si_snr", "sdr"):
        s = q["stats"][key]
        label = {"si_snri": "SI-SNRi", "sdri": "SDRi", "si_snr": "SI-SNR", "sdr": "SDR"}[key]
        lines.append(f"| {label} | {s['mean']:.2f} dB | {s['median']:.2f} dB | {s['p10']:.2f} dB |")
    return lines


def shifted_paragraph(qs: dict) -> str:
    """The card's one-paragraph shifted-test figure for a ``_score`` result."""
    return (f"Shifted test (`{qs['test_set']}`: the same mixtures through channels no training "
            "used in that form, `recipes/shifted.py`: speed 0.9/1.1, a room, a telephone band, "
            f"an EQ tilt): **{qs['si_snri']:.2f} dB SI-SNRi / {qs['sdri']:.2f} dB SDRi**.")


def three_speaker_line(q3: dict) -> str:
    """The card's three-speaker sentence (Markdown) for a ``_score`` result."""
    return (f"Three-speaker mixtures (`--num-speakers 3`, {q3['n']} mixtures, "
            f"`{q3['test_set']}`): SI-SNRi {q3['si_snri']:.2f} dB, SDRi {q3['sdri']:.2f} dB.")


def rescore_shipped(name: str, test2: Path, threads: int, quality: str = "fast",
                    shifted: Path | None = None, test3: Path | None = None) -> dict:
    """Score shipped model ``name`` again as it is now, with inference preset
    ``quality`` (``sep separate --quality``), and replace its card's quality
    and ``measured_with`` (JSON, and the Markdown table, keeping every other
    section); with ``shifted`` (recipes/shifted.py's copy of the test set) also
    its ``quality_shifted``; with ``test3`` (three-speaker mixtures) also its
    ``quality_3spk``. Returns the new quality."""
    path = registry.models_dir() / f"{name}.safetensors"
    scores = _score(path, test2, None, threads, quality)
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["quality"] = scores
    if shifted is not None:
        card["quality_shifted"] = _score(path, shifted, None, threads, quality)
    if test3 is not None:
        card["quality_3spk"] = _score(path, test3, 3, threads, quality)
    card["measured_with"] = {"preset": quality, **_settings(path, quality)}
    write_atomic(card_path, json.dumps(card, indent=2) + "\n")
    md_path = path.with_suffix(".md")
    md = md_path.read_text()
    start = md.index("Measured with `sep separate`")
    end = md.index("\n\n", md.index("| SDR |", start))
    rest = md[end:]  # "\n\n" and the sections after the table
    if shifted is not None:
        # the shifted paragraph follows the table (render_markdown): replace it, or add it there
        after = rest[2:]
        if after.startswith("Shifted test ("):
            after = after.split("\n\n", 1)[1] if "\n\n" in after else ""
        rest = "\n\n" + shifted_paragraph(card["quality_shifted"]) + "\n\n" + after
    if test3 is not None:
        rest = re.sub(r"^Three-speaker mixtures \(.*$", lambda _m: three_speaker_line(card["quality_3spk"]), rest,
                      count=1, flags=re.M)
    write_atomic(md_path, md[:start] + "\n".join(quality_table(scores)) + rest)
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, nargs="?", help="training run folder (holds best.safetensors, log.jsonl)")
    ap.add_argument("--name", help="shipped name, e.g. convtasnet")
    ap.add_argument("--recipe", help="recipe that trained it (for the card)")
    ap.add_argument("--rescore", metavar="NAME",
                    help="only score shipped model NAME again as it is now and replace its card's quality "
                         "(after recipes/ship.py's update_shipped changed an inference setting; with --weights, "
                         "after putting those tensors in it, keeping its config)")
    ap.add_argument("--quality", choices=["fast", "high"], default="fast",
                    help="inference preset the scores are measured with (recorded as the card's measured_with)")
    ap.add_argument("--test2", type=Path, default=ROOT / "data" / "test2", help="2-speaker test set")
    ap.add_argument("--test3", type=Path, default=None, help="3-speaker test set (clustering models)")
    ap.add_argument("--shifted", type=Path, default=None,
                    help="shifted copy of the test set (recipes/shifted.py), scored into quality_shifted")
    ap.add_argument("--hardware", default=None, help="what it trained on (default: this CPU)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for scoring")
    ap.add_argument("--notes", default="", help="free text for the card")
    ap.add_argument("--weights", type=Path, default=None,
                    help="weights to ship instead of RUN/best.safetensors (e.g. an average made by "
                         "recipes/average.py; say so in --notes); with --rescore, the tensors to put in "
                         "the shipped model before scoring it")
    ap.add_argument("--config-set", action="append", default=[], metavar="KEY=VALUE",
                    help="change an inference setting of the config before shipping, e.g. "
                         "auto_threshold=0.12 as tuned on the valid split (repeatable; JSON values)")
    ap.add_argument("--prior-run", action="append", type=Path, default=[], metavar="DIR",
                    help="an earlier stage whose weights RUN started from (--init); its steps, epochs "
                         "and hours are added to the card's (repeatable, oldest first)")
    ap.add_argument("--command", default=None,
                    help="the training commands for the card, when RUN's recipe alone does not "
                         "reproduce them (e.g. a warm restart with --init and --set)")
    ap.add_argument("--ensemble", nargs="+", metavar="MEMBER", default=None,
                    help="ship --name as the average of these shipped models (family ensemble)")
    ap.add_argument("--member-weights", type=float, nargs="+", default=None, metavar="W",
                    help="each --ensemble member's share (default: equal)")
    args = ap.parse_args()
    if args.ensemble:
        if not args.name:
            ap.error("--ensemble needs --name")
        card = ship_ensemble(args.name, args.ensemble, args.member_weights or [], args.test2, args.threads,
                             args.shifted, args.notes)
        _print_summary(card)
        return
    if args.rescore:
        if args.weights is not None:
            replace_weights(args.rescore, args.weights)
        quality = rescore_shipped(args.rescore, args.test2, args.threads, args.quality, args.shifted, args.test3)
        print(json.dumps({"name": args.rescore, "si_snri": quality["si_snri"], "sdri": quality["sdri"]}, indent=2))
        return
    if args.run is None or not args.name or not args.recipe:
        ap.error("RUN, --name and --recipe are needed to ship (or --rescore NAME)")

    src = args.weights or args.run / "best.safetensors"
    model = registry.load_file(src)
    set_config(model, args.config_set)
    dest = registry.models_dir() / f"{args.name}.safetensors"
    # fp16 storage halves the repository's size; weights are cast back to
    # float32 on load, and the card's scores are measured on this very file.
    sha = registry.save_model(model, dest, dtype=torch.float16, force=True)
    shipped = registry.load_file(dest)

    quality = _score(dest, args.test2, None, args.threads, args.quality)
    card = {
        "name": args.name,
        "family": model.family,
        "config": dataclasses.asdict(model.config),
        "sample_rate": model.config.sample_rate,
        "n_src": model.config.n_src,
        "causal": bool(getattr(model.config, "causal", False)),
        "params": registry.count_parameters(shipped),
        "sha256": sha,
        "measured_with": {"preset": args.quality, **_settings(dest, args.quality)},
        "quality": quality,
        "training": {
            **training_summary(args.run, args.prior_run),
            "recipe": args.recipe,
            "command": args.command or f"sep train --config {args.recipe} --out {args.run} "
                                       f"(continued with: sep train --resume {args.run})",
            "hardware": args.hardware or f"{cpu_name()}, {os.cpu_count()} cores",
            "data": "../shared/data/librispeech-8k (LibriSpeech dev-clean, test-clean and "
                    "train-clean-100 at 8 kHz, CC BY 4.0), dynamic mixing of 'train' speakers",
        },
        "held_out_speakers": json.loads(SPLIT.read_text()),
        "date": dt.date.today().isoformat(),
        "sep_version": __version__,
        "notes": args.notes,
    }
    if args.shifted is not None:
        card["quality_shifted"] = _score(dest, args.shifted, None, args.threads, args.quality)
    if args.test3 is not None:
        card["quality_3spk"] = _score(dest, args.test3, 3, args.threads)
    write_atomic(dest.with_suffix(".json"), json.dumps(card, indent=2) + "\n")
    write_atomic(dest.with_suffix(".md"), render_markdown(card))
    _print_summary(card)


def ship_ensemble(name: str, members: list[str], weights: list[float], test2: Path, threads: int,
                  shifted: Path | None = None, notes: str = "") -> dict:
    """Write shipped model ``name``, the average of shipped ``members`` with shares
    ``weights`` (family ``ensemble``: no weights of its own; each member's SHA-256 is
    pinned), score it and write its cards. The training block sums the members'. Shipped
    again (a member changed), the card keeps its notes unless ``notes`` are given: bring
    their figures up to date by hand."""
    from sepcli.models.ensemble import member_sha256

    ship = registry.shipped_models()
    missing = [m for m in members if m not in ship]
    if missing:
        raise SepError(f"--ensemble takes shipped models; not shipped: {', '.join(missing)}")
    model = registry.build("ensemble", members=members, weights=weights,
                           member_sha256=[member_sha256(m) for m in members])
    dest = registry.models_dir() / f"{name}.safetensors"
    card_path = dest.with_suffix(".json")
    if not notes and card_path.is_file():
        notes = json.loads(card_path.read_text()).get("notes", "")
    sha = registry.save_model(model, dest, force=True)
    trained = [ship[m]["training"] for m in members]
    card = {
        "name": name,
        "family": "ensemble",
        "config": dataclasses.asdict(model.config),
        "sample_rate": model.config.sample_rate,
        "n_src": model.config.n_src,
        "causal": False,
        "params": registry.count_parameters(model),
        "sha256": sha,
        "measured_with": {"preset": "fast", **_settings(dest, "fast")},
        "quality": _score(dest, test2, None, threads),
        "training": {
            "recipe": "none of its own: " + ", ".join(f"{m}: {tr['recipe']}" for m, tr in zip(members, trained)),
            "command": f"python recipes/ship.py --ensemble {' '.join(members)}"
                       + (f" --member-weights {' '.join(f'{w:g}' for w in weights)}" if weights else "")
                       + f" --name {name}"
                       + (f" --shifted {_rel(shifted)}" if shifted is not None else ""),
            "hardware": "; ".join(f"{m}: {tr['hardware']}" for m, tr in zip(members, trained)),
            "hours": round(sum(float(tr["hours"]) for tr in trained), 2),
            "data": trained[0]["data"],
            "members": {m: {"hours": tr["hours"], "card": f"models/{m}.md"} for m, tr in zip(members, trained)},
        },
        "held_out_speakers": json.loads(SPLIT.read_text()),
        "date": dt.date.today().isoformat(),
        "sep_version": __version__,
        "notes": notes,
    }
    if shifted is not None:
        card["quality_shifted"] = _score(dest, shifted, None, threads)
    write_atomic(card_path, json.dumps(card, indent=2) + "\n")
    write_atomic(dest.with_suffix(".md"), render_markdown(card))
    return card


def _print_summary(card: dict) -> None:
    """What a ship prints: the card's name, size, SHA-256 and clean test scores."""
    print(json.dumps({k: card[k] for k in ("name", "params", "sha256")} | {
        "si_snri": card["quality"]["si_snri"], "sdri": card["quality"]["sdri"]}, indent=2))


def _rel(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (for commands on cards)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _settings(path: Path, quality: str) -> dict:
    """The inference settings ``sep separate --quality QUALITY`` runs ``path`` with (no precision)."""
    settings = Separator(path, device="cpu", quality=quality).settings.to_dict()
    settings.pop("precision")
    return settings


def render_markdown(card: dict) -> str:
    q = card["quality"]
    t = card["training"]
    lines = [
        f"# Model card: `{card['name']}`",
        "",
        f"- **Family:** {card['family']} ({'causal' if card['causal'] else 'non-causal'}), "
        f"{card['n_src']} speakers, {card['sample_rate']} Hz",
        f"- **Parameters:** {card['params']:,}",
        f"- **Configuration:** `{json.dumps(card['config'], sort_keys=True)}`",
        f"- **Weights:** `models/{card['name']}.safetensors` "
        + ("(no tensors: it names its members and pins each one's SHA-256), " if card["family"] == "ensemble"
           else "(float16 storage), ")
        + f"SHA-256 `{card['sha256']}` (checked on load)",
        f"- **Date:** {card['date']}, sep {card['sep_version']}",
        "",
        "## Quality (held-out speakers, never trained or tuned on)",
        "",
        *quality_table(q),
    ]
    if "quality_shifted" in card:
        lines += ["", shifted_paragraph(card["quality_shifted"])]
    if "quality_3spk" in card:
        lines += ["", three_speaker_line(card["quality_3spk"])]
    lines += [
        "",
        "## Training",
        "",
        f"- **Data:** {t['data']}",
        f"- **Held-out speakers:** test {', '.join(card['held_out_speakers']['test'])}; "
        f"valid {', '.join(card['held_out_speakers']['valid'])} (`recipes/splits/librispeech-8k.json`)",
        f"- **Recipe:** `{t['recipe']}`",
        f"- **Command:** `{t['command']}`",
    ]
    if "members" in t:  # an ensemble: its members' training, no run of its own
        lines.append(f"- **Trained for:** nothing of its own; its members {t['hours']} h in all ("
                     + ", ".join(f"`{m}` {v['hours']} h, {v['card']}" for m, v in t["members"].items()) + ")")
    else:
        lines.append(f"- **Trained for:** {t['steps']} steps, {t['epochs']} epochs, {t['hours']} h on {t['hardware']}")
    stages = t.get("stages", [])
    lines += [f"  - stage {i}: {st['hours']} h, {st['steps']} steps, {st['epochs']} epochs (`{st['run']}`)"
              for i, st in enumerate(stages, 1)]
    if "best_valid_si_snri" in t:
        lines.append(f"- **Best validation SI-SNRi:** {t['best_valid_si_snri']} dB" + (" (last stage)" if stages else ""))
    if card.get("notes"):
        lines += ["", "## Notes", "", card["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
