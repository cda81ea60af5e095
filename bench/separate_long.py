"""Long inputs through `sep separate` (issue 5): speed, memory and stitching.

Speed and memory (random weights are fine: cost does not depend on them)::

    python bench/separate_long.py                      # 10- and 60-minute inputs, 2 threads
    python bench/separate_long.py --minutes 1 --segment 2 --overlap 0.25
    python bench/separate_long.py --small --minutes 1 60   # pipeline memory only, fast

Each input is separated in a fresh child process running the whole file
pipeline (``Separator.separate_file``: block reading, chunked paper-size
Conv-TasNet, two-pass writing). Reported per input: real-time factor
(wall seconds / audio seconds), CPU RTF (user+sys CPU seconds / threads /
audio seconds: what the wall RTF would be on otherwise idle cores), and
peak RSS of the child (``ru_maxrss``) next to its RSS before separating.
The input is 8 kHz noise written block by block.

Stitching check (needs trained weights)::

    python bench/separate_long.py --stitch-check --model runs/x/best.safetensors

builds 10-minute two-talker recordings from held-out 'test' speakers of
../shared/data/librispeech-8k (recipes/splits/librispeech-8k.json): each
voice talks in 2-8 s pieces separated by 0.3-3 s pauses, throughout, so the
two overlap, alternate and sometimes both pause. One mixed-gender and one
same-gender pair by default (``--all-pairs``: all 15). Reported per recording:

- the issue's figure: the SI-SNRi scored with one permutation over the whole
  recording against the mean over its 10-s pieces, each scored with its own
  best permutation (pass: within 1 dB). A speaker swap anywhere makes the
  first fall behind; so does a model whose quality varies from piece to piece
  (a mean of per-piece dB is not one dB over the whole file), hence also:
- "swaps cost": the mean over the same pieces scored with the whole-file
  permutation against their own best ones. The estimate and the pieces are
  the same, only the permutation differs, so this is what swaps alone cost.
  Also how many pieces prefer another permutation, and the whole file
  re-stitched with each piece in its own best order.
- with ``--unchunked``: the same model over the whole recording in one pass
  (no chunks, nothing stitched; its memory grows with the length), scored the
  same way. Its own whole-vs-pieces difference is the part of the issue's
  figure that chunking has nothing to do with, and the chunked whole-file
  SI-SNRi minus the unchunked one is what chunking and stitching cost (or gain).

Targets (issue 5, 2 cores): RTF <= 0.08, peak RSS <= 1.5 GB; a 60-minute input
within the same memory.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "librispeech-8k"
SPLIT = ROOT / "recipes" / "splits" / "librispeech-8k.json"
RATE = 8000


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ----------------------------------------------------------------------------- speed / memory


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def busy_seconds() -> float:
    """CPU seconds all processes on the machine spent busy so far (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def write_noise(path: Path, minutes: float, seed: int = 0) -> None:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    total = int(minutes * 60 * RATE)
    with sf.SoundFile(str(path), "w", RATE, 1, "PCM_16") as f:
        for start in range(0, total, 60 * RATE):
            n = min(60 * RATE, total - start)
            f.write((0.1 * rng.standard_normal(n)).astype(np.float32))


def child(args: argparse.Namespace) -> None:
    """Runs in a fresh process so that ru_maxrss is this input's peak alone."""
    import torch

    torch.set_num_threads(args.threads)
    from sepcli import registry
    from sepcli.api import Separator

    torch.manual_seed(0)
    if args.small:
        model = registry.build("convtasnet", N=64, L=16, B=32, H=64, Sc=32, X=4, R=2).eval()
    else:
        model = registry.build("convtasnet-paper").eval()
    sep = Separator(model, device="cpu", segment=args.segment, overlap=args.overlap,
                    batch_size=args.batch_size, precision=args.precision)
    base = rss_mb()
    with tempfile.TemporaryDirectory(dir=args.workdir) as out:
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        result = sep.separate_file(args.input, out)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "minutes": result.duration / 60, "wall_s": wall, "rtf": wall / result.duration,
        "cpu_rtf": cpu / args.threads / result.duration, "cpu_s": cpu, "rss_before_mb": base, "peak_rss_mb": peak,
        "chunks": result.chunks, "threads": args.threads, "segment": sep.segment,
        "overlap": args.overlap, "batch_size": sep.batch_size, "precision": sep.precision,
        "model": "small convtasnet" if args.small else "convtasnet-paper",
    }))


def speed(args: argparse.Namespace) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for minutes in args.minutes:
            path = Path(tmp) / f"noise_{minutes:g}min.wav"
            write_noise(path, minutes)
            cmd = [sys.executable, __file__, "--_child", "--input", str(path),
                   "--threads", str(args.threads), "--overlap", str(args.overlap), "--workdir", tmp]
            if args.segment is not None:
                cmd += ["--segment", str(args.segment)]
            if args.batch_size:
                cmd += ["--batch-size", str(args.batch_size)]
            cmd += ["--precision", args.precision]
            if args.small:
                cmd += ["--small"]
            busy0, own0, t0 = busy_seconds(), children_cpu(), time.perf_counter()
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
            busy, own, wall = busy_seconds() - busy0, children_cpu() - own0, time.perf_counter() - t0
            row = json.loads(out.stdout.strip().splitlines()[-1])
            # Other work on the machine inflates wall time (CPU RTF much less so):
            # record how many cores other processes kept busy meanwhile.
            row["other_cores_busy"] = max(0.0, (busy - own) / wall)
            rows.append(row)
            print(f"{row['model']}, {row['minutes']:5.1f} min  RTF {row['rtf']:.3f}  CPU RTF {row['cpu_rtf']:.3f}  "
                  f"peak RSS {row['peak_rss_mb']:.0f} MB (before separating {row['rss_before_mb']:.0f} MB)  "
                  f"[{row['threads']} threads, segment {row['segment']:g} s, overlap {row['overlap']:g}, {row['precision']} products, "
                  f"batch {row['batch_size']}; other processes kept {row['other_cores_busy']:.1f} of "
                  f"{os.cpu_count()} cores busy]", flush=True)
            path.unlink()
    return rows


# ----------------------------------------------------------------------------- stitching


def speakers_by_gender() -> dict[str, str]:
    genders = {}
    for line in (DATA / "SPEAKERS.TXT").read_text().splitlines():
        if line.startswith(";") or "|" not in line:
            continue
        parts = [p.strip() for p in line.split("|")]
        genders[parts[0]] = parts[1]
    return genders


def talker_track(speaker: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One voice talking on and off: 2-8 s pieces of its utterances, 0.3-3 s pauses.
    Shape: [T]."""
    import soundfile as sf

    files = sorted((DATA).glob(f"*/{speaker}/*.flac"))
    if not files:
        raise SystemExit(f"no audio for speaker {speaker} under {DATA}")
    total = int(seconds * RATE)
    track = np.zeros(total, dtype=np.float32)
    pos = int(rng.uniform(0, 2) * RATE)
    order = rng.permutation(len(files))
    k = 0
    while pos < total:
        x, rate = sf.read(str(files[order[k % len(files)]]), dtype="float32")
        k += 1
        assert rate == RATE
        start = 0
        while start < x.shape[0] and pos < total:
            n = int(rng.uniform(2, 8) * RATE)
            piece = x[start : start + n]
            piece = piece / (np.sqrt(np.mean(piece**2)) + 1e-9) * 10 ** (rng.uniform(-2.5, 2.5) / 20)
            m = min(piece.shape[0], total - pos)
            track[pos : pos + m] = 0.05 * piece[:m]
            pos += m + int(rng.uniform(0.3, 3.0) * RATE)
            start += n
    return track


def recording(a: str, b: str, seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The stitching check's two-talker recording of speakers a and b, peak at most 0.9.
    Shape: (ref [2, T], mix [T])."""
    rng = np.random.default_rng(seed)
    ref = np.stack([talker_track(a, seconds, rng), talker_track(b, seconds, rng)])  # [2, T]
    mix = ref.sum(axis=0)
    peak = np.abs(mix).max()
    if peak > 0.9:
        ref *= 0.9 / peak
        mix *= 0.9 / peak
    return ref, mix


def split_speakers(split: str) -> list[str]:
    """The held-out speakers of a split ('test' or 'valid')."""
    return json.loads(SPLIT.read_text())[split]


def speaker_pairs(split: str) -> list[tuple[str, str]]:
    """Every pair of the split's held-out speakers."""
    ids = split_speakers(split)
    return [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :]]


def piece_scores(est: np.ndarray, ref: np.ndarray, mix: np.ndarray, seconds: float = 10.0) -> dict:
    """Score a separated recording as a whole and per piece.

    Shape: est [2, T], ref [2, T], mix [T].

    Returns the whole-file SI-SNRi with its permutation, and over the pieces
    of ``seconds`` where both voices are present: the mean SI-SNRi with each
    piece's own best permutation (``pieces``), the mean with the whole-file
    permutation (``pieces_one_perm``; the two differ only by swaps), how many
    pieces prefer another permutation, and the whole file re-stitched with
    each piece in its own best order (``restitched``).
    """
    from sepcli.metrics import pit_si_snr, si_snr

    def baseline(r: np.ndarray, m: np.ndarray) -> np.ndarray:
        return si_snr(np.stack([m, m]), r)  # [2]: the mixture as both estimates

    def si_snri(e: np.ndarray, r: np.ndarray, base: np.ndarray) -> tuple[float, np.ndarray]:
        vals, perm = pit_si_snr(e, r)
        return float(np.mean(vals - base)), perm

    whole_base = baseline(ref, mix)
    whole, whole_perm = si_snri(est, ref, whole_base)
    best, one_perm, swapped, skipped = [], [], 0, 0
    step = int(seconds * RATE)
    restitched = est[whole_perm].copy()  # [2, T] in ref order
    for start in range(0, mix.shape[0] - step + 1, step):
        sl = slice(start, start + step)
        if (np.sqrt(np.mean(ref[:, sl] ** 2, axis=1)) < 1e-4).any():
            skipped += 1  # a voice absent from the piece: SI-SNRi is undefined there
            continue
        base = baseline(ref[:, sl], mix[sl])
        value, perm = si_snri(est[:, sl], ref[:, sl], base)
        best.append(value)
        one_perm.append(float(np.mean(si_snr(est[whole_perm, sl], ref[:, sl]) - base)))
        swapped += int(np.any(perm != whole_perm))
        restitched[:, sl] = est[perm, sl]
    oracle, _ = si_snri(restitched, ref, whole_base)
    return {
        "whole_si_snri": whole, "pieces_si_snri": float(np.mean(best)),
        "pieces_one_perm_si_snri": float(np.mean(one_perm)), "pieces_std_db": float(np.std(best)),
        "pieces": len(best), "pieces_skipped": skipped, "pieces_other_permutation": swapped,
        "restitched_si_snri": oracle,
    }


def stitch_check(args: argparse.Namespace) -> list[dict]:
    import torch

    torch.set_num_threads(args.threads)
    from sepcli.api import Separator
    from sepcli.engine import EngineStats

    held_out = split_speakers(args.split)
    genders = speakers_by_gender()
    if args.speakers:
        pairs = [tuple(args.speakers)]
    elif args.all_pairs:
        pairs = speaker_pairs(args.split)
    else:
        men = [s for s in held_out if genders.get(s) == "M"]
        women = [s for s in held_out if genders.get(s) == "F"]
        pairs = [(men[0], women[0]), tuple(women[1:3] if len(women) > 2 else women[:2])]
    sep = Separator(args.model, device=args.device, segment=args.segment, overlap=args.overlap,
                    n_src=args.num_speakers, passes=args.passes, pass_signs=args.pass_signs)
    seconds = args.minutes[0] * 60
    # the same model over the whole recording in one chunk (--unchunked)
    one = Separator(args.model, device=args.device, segment=seconds + 1.0, overlap=args.overlap) if args.unchunked else None
    rows = []
    for a, b in pairs:
        ref, mix = recording(a, b, seconds, args.seed)
        if args.negate:
            ref, mix = -ref, -mix  # the same recording with its polarity inverted
        stats = EngineStats()
        t0 = time.perf_counter()
        est = sep.separate(mix, RATE, stats=stats)  # [2, T]
        wall = time.perf_counter() - t0
        energy = (est.astype(np.float64) ** 2).sum(axis=1)  # [S]
        shares = [round(float(v), 4) for v in energy / max(energy.sum(), 1e-30)]
        if est.shape[0] != 2:
            # --num-speakers auto opened another track: report it, score nothing
            rows.append({"speakers": [a, b], "genders": [genders.get(a), genders.get(b)], "minutes": seconds / 60,
                         "segment_s": sep.segment, "tracks": int(est.shape[0]), "track_energy_shares": shares,
                         "chunks": stats.chunks, "rtf": wall / seconds})
            print(f"{a}({genders.get(a)}) + {b}({genders.get(b)}): {est.shape[0]} tracks, energy shares {shares}; "
                  "not scored", flush=True)
            continue
        scores = piece_scores(est, ref, mix)
        row = {
            "speakers": [a, b], "genders": [genders.get(a), genders.get(b)], "minutes": seconds / 60,
            "segment_s": sep.segment, "tracks": 2, "track_energy_shares": shares, **scores,
            # the issue's figure: one whole-file SI-SNRi against the mean of per-piece ones
            "difference_db": scores["pieces_si_snri"] - scores["whole_si_snri"],
            # what swaps alone cost: the same pieces, the same estimate, one permutation for all
            "swap_difference_db": scores["pieces_si_snri"] - scores["pieces_one_perm_si_snri"],
            "swap_loss_db": scores["restitched_si_snri"] - scores["whole_si_snri"],
            "chunks": stats.chunks, "reordered_chunks": stats.reordered,
            "ordered_by_signature": stats.by_signature, "rtf": wall / seconds,
        }
        row["pass"] = abs(row["difference_db"]) <= 1.0
        row["pass_swaps"] = abs(row["swap_difference_db"]) <= 1.0
        print(f"{a}({row['genders'][0]}) + {b}({row['genders'][1]}), {seconds / 60:g} min, "
              f"{sep.segment:g}-s chunks: whole-file SI-SNRi {scores['whole_si_snri']:.2f} dB, mean of "
              f"{scores['pieces']} 10-s pieces {scores['pieces_si_snri']:.2f} dB (sd {scores['pieces_std_db']:.2f}; "
              f"difference {row['difference_db']:.2f} dB, {'PASS' if row['pass'] else 'FAIL'}); "
              f"pieces with the whole-file permutation {scores['pieces_one_perm_si_snri']:.2f} dB "
              f"(swaps cost {row['swap_difference_db']:.2f} dB, {'PASS' if row['pass_swaps'] else 'FAIL'}); "
              f"{scores['pieces_other_permutation']} pieces prefer another permutation; re-stitched in each "
              f"piece's best order {scores['restitched_si_snri']:.2f} dB; {stats.reordered}/{stats.chunks} "
              f"chunks reordered, {stats.by_signature} by voice signature; RTF {row['rtf']:.3f}", flush=True)
        if one is not None:
            # The same model over the whole recording in one pass: no chunks, so
            # nothing to stitch. Its whole-vs-pieces gap is the part of the
            # difference above that chunking has nothing to do with.
            plain = piece_scores(one.separate(mix, RATE), ref, mix)
            row["unchunked"] = {**plain, "difference_db": plain["pieces_si_snri"] - plain["whole_si_snri"]}
            row["chunked_minus_unchunked_db"] = scores["whole_si_snri"] - plain["whole_si_snri"]
            print(f"    unchunked (one pass, nothing stitched): whole-file {plain['whole_si_snri']:.2f} dB, "
                  f"mean of pieces {plain['pieces_si_snri']:.2f} dB (difference "
                  f"{row['unchunked']['difference_db']:.2f} dB); chunked minus unchunked whole-file: "
                  f"{row['chunked_minus_unchunked_db']:+.2f} dB", flush=True)
        rows.append(row)
    return rows

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, nargs="+", default=None,
                   help="input lengths (default: 10 60; stitch check: 10)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--segment", type=float, default=None, help="chunk seconds (default: the model's)")
    p.add_argument("--overlap", type=float, default=None, help="overlap fraction (default: the library's)")
    p.add_argument("--batch-size", type=int, default=None, help="chunks per forward call")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="matrix-product precision (Separator's precision; default auto)")
    p.add_argument("--small", action="store_true",
                   help="a small Conv-TasNet instead of the paper's: checks that the pipeline's own "
                        "memory does not grow with the input, quickly")
    p.add_argument("--stitch-check", action="store_true", help="run the stitching check (needs --model)")
    p.add_argument("--model", help="trained model (name or .safetensors) for --stitch-check")
    p.add_argument("--speakers", nargs=2, metavar="ID", help="speaker pair for --stitch-check")
    p.add_argument("--all-pairs", action="store_true", help="--stitch-check: every pair of the split's speakers")
    p.add_argument("--split", default="test", choices=["test", "valid"],
                   help="--stitch-check: held-out speakers to build recordings from (default test; "
                        "tune on valid, report on test)")
    p.add_argument("--unchunked", action="store_true",
                   help="--stitch-check: also separate each recording in one pass (no chunks; memory grows "
                        "with the length) and score it the same way")
    p.add_argument("--device", default="auto", help="device for --stitch-check")
    p.add_argument("--num-speakers", default=None,
                   help="--stitch-check: tracks to separate into (default the model's; 'auto' lets a clustering "
                        "model count each chunk, and recordings that come out with other than 2 tracks are "
                        "reported, not scored)")
    p.add_argument("--passes", type=int, default=None,
                   help="--stitch-check: forward passes averaged per chunk (default: the model's)")
    p.add_argument("--pass-signs", action=argparse.BooleanOptionalAction, default=None,
                   help="--stitch-check: alternate the input's sign between passes (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="recording construction seed")
    p.add_argument("--negate", action="store_true",
                   help="--stitch-check: invert each recording's sign (are the model's tracks as good?)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--workdir", default=None, help="folder for temporary files (default: system temp)")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from sepcli import api

    args.overlap = api.DEFAULT_OVERLAP if args.overlap is None else args.overlap
    if args._child:
        child(args)
        return
    if args.stitch_check:
        if not args.model:
            p.error("--stitch-check needs --model (trained weights)")
        args.minutes = args.minutes or [10.0]
        rows = stitch_check(args)
    else:
        args.minutes = args.minutes or [10.0, 60.0]
        rows = speed(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
