"""Many files at once (what ``sep separate`` runs): finding the inputs
(:func:`find_audio_files`), separating them in this process or in worker
processes (:func:`separate_files`), and the callbacks a UI draws progress
with (:class:`BatchEvents`). Public through :mod:`sepcli.api`.
"""
from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sepcli import audio, plots
from sepcli.audio import AUDIO_EXTENSIONS
from sepcli.errors import SepError
from sepcli.inference.device import available_cpus
from sepcli.inference.outputs import DEFAULT_FILENAME, SeparationResult, check_template, render_filename
from sepcli.inference.separator import Separator
from sepcli.inference.settings import DEFAULT_QUALITY

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """Outcome of :func:`separate_files`: one result per input file found (in
    argument order), then one per argument that matched nothing."""

    results: list[SeparationResult]
    model: str = ""
    quality: str | None = DEFAULT_QUALITY  # preset the settings came from (Separator.quality)
    precision: str = "float32"  # of the matrix products (Separator.precision)
    passes: int = 1  # forward passes averaged (Separator.passes)
    pass_signs: bool = False  # whether they alternate the input's sign (Separator.pass_signs)
    speeds: list[float] = field(default_factory=lambda: [1.0])  # speed views averaged (Separator.speeds)
    equalize: float = 0.0  # channel normalisation, dB (Separator.equalize)

    @property
    def ok(self) -> int:
        return sum(r.status == "ok" for r in self.results)

    @property
    def skipped(self) -> int:
        return sum(r.status == "skipped" for r in self.results)

    @property
    def failed(self) -> int:
        return sum(r.status == "failed" for r in self.results)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "quality": self.quality,
            "precision": self.precision,
            "passes": self.passes,
            "pass_signs": self.pass_signs,
            "speeds": self.speeds,
            "equalize": self.equalize,
            "ok": self.ok,
            "skipped": self.skipped,
            "failed": self.failed,
            "files": [r.to_dict() for r in self.results],
        }


@dataclass(frozen=True)
class InputFile:
    """An input found by :func:`find_audio_files`; ``parent`` is its folder
    relative to the folder argument it was found in (``""`` for files named directly)."""

    path: Path
    parent: str = ""


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def find_audio_files(
    inputs: Sequence[str | os.PathLike], exclude: Sequence[str | os.PathLike] = ()
) -> tuple[list[InputFile], list[tuple[str, str]]]:
    """Expand files, folders (searched recursively for audio files) and glob
    patterns into a de-duplicated list of inputs, in argument order.

    Hidden files and anything under an ``exclude`` folder (e.g. the output
    folder, so re-running on a folder never separates earlier outputs) are left
    out of folder searches. Returns ``(inputs, problems)``; ``problems`` are
    ``(argument, message)`` for arguments that matched nothing.
    """
    excluded = [Path(e).resolve() for e in exclude]
    found: list[InputFile] = []
    seen: set[Path] = set()
    problems: list[tuple[str, str]] = []

    def add(p: Path, parent: str) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            found.append(InputFile(p, parent))

    def walk(folder: Path) -> int:
        n = 0
        for root, dirs, files in os.walk(folder):
            r = Path(root)
            dirs[:] = sorted(
                d for d in dirs
                if not d.startswith(".") and not any((r / d).resolve() == e for e in excluded)
            )
            for name in sorted(files):
                if name.startswith(".") or not audio.has_audio_suffix(name):
                    continue
                rel = r.relative_to(folder).as_posix()
                add(r / name, "" if rel == "." else rel)
                n += 1
        return n

    for arg in inputs:
        text = os.fspath(arg)
        p = Path(text)
        if p.is_dir():
            if walk(p) == 0:
                problems.append((text, f"{text}: no audio files found in this folder"))
        elif p.exists():
            add(p, "")
        elif _has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                problems.append((text, f"{text}: no files match this pattern"))
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    walk(mp)
                elif audio.has_audio_suffix(mp):
                    add(mp, "")
        else:
            problems.append((text, f"file not found: {text}"))
    return found, problems


class BatchEvents:
    """Callbacks of :func:`separate_files` (all no-ops here; the CLI draws
    progress bars with them). Always called in the calling process and thread."""

    def files_found(self, n_files: int) -> None:
        """The inputs are known (``n_files`` results will follow)."""

    def file_started(self, index: int, path: str) -> None:
        """Work on input ``index`` began."""

    def file_progress(self, index: int, done: int, total: int) -> None:
        """``done`` of ``total`` model-rate samples of input ``index`` separated."""

    def file_done(self, index: int, result: SeparationResult) -> None:
        """Input ``index`` finished (ok, skipped or failed)."""


def _failed(path: str, exc: BaseException) -> SeparationResult:
    msg = str(exc) if isinstance(exc, SepError) else f"{type(exc).__name__}: {exc}"
    return SeparationResult(input=path, status="failed", error=" ".join(msg.split()))


def _run_one(
    sep: Separator, index: int, item: InputFile, out_dir: Path, options: dict,
    events: BatchEvents, throttle: float = 0.1,
) -> SeparationResult:
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] >= throttle:
            last[0] = now
            events.file_progress(index, done, total)

    events.file_started(index, str(item.path))
    try:
        return sep.separate_file(item.path, out_dir, parent=item.parent, progress=progress, **options)
    except Exception as exc:  # one bad file must not stop the batch
        if not isinstance(exc, SepError):
            log.debug("unexpected error on %s", item.path, exc_info=True)
        return _failed(str(item.path), exc)


# Worker-process state for jobs > 1 (one Separator per process).
_WORKER: dict[str, Any] = {}


class _QueueEvents(BatchEvents):
    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def file_started(self, index: int, path: str) -> None:
        self.queue.put(("started", index, path))

    def file_progress(self, index: int, done: int, total: int) -> None:
        self.queue.put(("progress", index, done, total))


def _worker_init(spec: dict, threads: int, queue: Any) -> None:
    import logging.handlers

    torch.set_num_threads(threads)
    logger = logging.getLogger("sepcli")
    logger.handlers[:] = [logging.handlers.QueueHandler(queue)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    _WORKER["sep"] = Separator(**spec)
    _WORKER["events"] = _QueueEvents(queue)


def _worker_run(index: int, item: InputFile, out_dir: Path, options: dict) -> SeparationResult:
    return _run_one(_WORKER["sep"], index, item, out_dir, options, _WORKER["events"], throttle=0.25)


def separate_files(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    model: str | os.PathLike | torch.nn.Module | None = None,
    device: str | torch.device = "auto",
    segment: float | None = None,
    overlap: float | None = None,
    n_src: int | str | None = None,
    batch_size: int | None = None,
    jobs: int = 1,
    force: bool = False,
    filename: str = DEFAULT_FILENAME,
    subtype: str = "PCM_16",
    plot: bool = False,
    threads: int | None = None,
    events: BatchEvents | None = None,
    precision: str | None = None,
    passes: int | None = None,
    pass_signs: bool | None = None,
    speeds: Sequence[float] | None = None,
    quality: str = DEFAULT_QUALITY,
    equalize: float | None = None,
) -> BatchResult:
    """Separate many files (what ``sep separate`` runs).

    ``inputs``: files, folders (searched recursively) and glob patterns
    (:func:`find_audio_files`). A problem with one input (unreadable, partial
    earlier outputs, ...) is recorded in its result and the batch goes on;
    problems with the model or the options raise SepError before any work.
    ``jobs > 1`` separates that many files at once in worker processes (the
    model is loaded once per worker). ``threads``: torch threads per job
    (default ``cores // jobs``); with ``jobs == 1`` it is set in this process.
    """
    events = events or BatchEvents()
    out = Path(out_dir)
    check_template(filename)
    subtype = audio._check_subtype(subtype)
    if isinstance(jobs, bool) or int(jobs) != jobs or jobs < 1:
        raise SepError(f"jobs must be a positive integer, got {jobs!r}")
    jobs = int(jobs)
    if threads is not None and (isinstance(threads, bool) or int(threads) != threads or threads < 1):
        raise SepError(f"threads must be a positive integer, got {threads!r}")
    per_job = int(threads) if threads else max(1, available_cpus() // jobs)
    if plot:
        plots.require_matplotlib()
    spec = dict(model=model, device=device, quality=quality, segment=segment, overlap=overlap, n_src=n_src,
                batch_size=batch_size, precision=precision, passes=passes, pass_signs=pass_signs, speeds=speeds,
                equalize=equalize)
    sep = Separator(**spec)  # model and option errors surface here, once
    found, problems = find_audio_files(inputs, exclude=[out])

    # Two inputs with the same name would write the same outputs.
    results: list[SeparationResult | None] = [None] * len(found)
    owner: dict[Path, Path] = {}
    todo: list[int] = []
    for k, item in enumerate(found):
        key = (out / render_filename(filename, stem=item.path.stem, i=1, n=1, parent=item.parent)).resolve()
        if key in owner:
            results[k] = SeparationResult(
                input=str(item.path), status="failed",
                error=f"its outputs would overwrite those of {owner[key]}; add {{parent}} to --filename "
                "(e.g. '{parent}/{stem}/s{i}.wav') or rename the file",
            )
        else:
            owner[key] = item.path
            todo.append(k)
    events.files_found(len(found) + len(problems))
    for k, r in enumerate(results):
        if r is not None:
            events.file_done(k, r)

    options = dict(force=force, filename=filename, subtype=subtype, plot=plot)
    jobs = min(jobs, max(1, len(todo)))
    if jobs == 1:
        if threads:
            torch.set_num_threads(int(threads))
        for k in todo:
            results[k] = _run_one(sep, k, found[k], out, options, events)
            events.file_done(k, results[k])
    else:
        _run_parallel(spec, jobs, per_job, found, todo, out, options, events, results, sep)

    final = [r for r in results if r is not None]
    base = len(final)
    for j, (arg, msg) in enumerate(problems):
        r = SeparationResult(input=arg, status="failed", error=msg)
        final.append(r)
        events.file_done(base + j, r)
    return BatchResult(final, model=sep.model_name, quality=sep.quality, precision=sep.precision, passes=sep.passes,
                       pass_signs=sep.pass_signs, speeds=sep.speeds, equalize=sep.equalize)


def _run_parallel(
    spec: dict, jobs: int, threads: int, found: list[InputFile], todo: list[int], out: Path, options: dict,
    events: BatchEvents, results: list[SeparationResult | None], sep: Separator,
) -> None:
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    if isinstance(spec["model"], torch.nn.Module):
        spec = dict(spec, model=sep.model.cpu())  # pickled once per worker
    elif spec["model"] is None:
        spec = dict(spec, model=sep.model_name)
    ctx = mp.get_context("spawn")  # fork after torch threads started can deadlock
    q = ctx.Queue()
    pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init, initargs=(spec, threads, q))

    def drain() -> None:
        while True:
            try:
                item = q.get_nowait()
            except queue_mod.Empty:
                return
            if isinstance(item, logging.LogRecord):
                logger = logging.getLogger(item.name)
                # handle() skips the level check that the worker's own logger had not made (-q)
                if logger.isEnabledFor(item.levelno):
                    logger.handle(item)
            elif item[0] == "started":
                events.file_started(item[1], item[2])
            elif item[0] == "progress":
                events.file_progress(*item[1:])

    try:
        futures = {pool.submit(_worker_run, k, found[k], out, options): k for k in todo}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            drain()
            for f in done:
                k = futures[f]
                try:
                    results[k] = f.result()
                except Exception as exc:  # a worker that died (out of memory, ...)
                    results[k] = _failed(str(found[k].path), exc)
                events.file_done(k, results[k])
        drain()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        pool.shutdown()


__all__ = ["AUDIO_EXTENSIONS", "BatchEvents", "BatchResult", "InputFile", "find_audio_files", "separate_files"]
