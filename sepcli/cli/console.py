"""What ``sep separate`` shows on the console: progress bars and per-file
lines (:class:`ConsoleReport`, the CLI's :class:`sepcli.api.BatchEvents`).
UI lives here, not in the library modules."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sepcli.api import BatchEvents, BatchResult, SeparationResult


def _failure_text(result: SeparationResult) -> str:
    """The error, prefixed with the input unless the message already names it."""
    error = result.error or "failed"
    return error if result.input in error else f"{result.input}: {error}"


class ConsoleReport(BatchEvents):
    """What ``sep separate`` shows: rich progress bars (overall and per file)
    on stderr when it is a terminal, and one line per finished file.

    Args:
        quiet: only errors.
        lines_to_stderr: per-file lines go to stderr (stdout is kept for ``--json``).
        bars: draw progress bars (default: stderr is a terminal and not quiet).
    """

    def __init__(self, quiet: bool = False, lines_to_stderr: bool = False, bars: bool | None = None) -> None:
        import sys

        from rich.console import Console

        self.quiet = quiet
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.out = self.err if lines_to_stderr else Console(highlight=False, soft_wrap=True)
        self.bars = (not quiet and sys.stderr.isatty()) if bars is None else bars
        self.progress: Any = None
        self.overall: Any = None
        self.tasks: dict[int, Any] = {}
        self.n_files = self.n_done = 0

    def __enter__(self) -> ConsoleReport:
        if self.bars:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("{task.description}", justify="left"), BarColumn(),
                TextColumn("{task.percentage:>3.0f}% {task.fields[detail]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.err, transient=True,
            )
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def _print(self, console: Any, text: str) -> None:
        (self.progress.console if self.progress is not None and console is self.err else console).print(
            text, markup=False
        )

    def files_found(self, n_files: int) -> None:
        self.n_files, self.n_done = n_files, 0
        if self.progress is not None:
            self.overall = self.progress.add_task("all files", total=n_files, detail=f"0/{n_files} files")

    def file_started(self, index: int, path: str) -> None:
        if self.progress is not None:
            self.tasks[index] = self.progress.add_task(f"  {Path(path).name}", total=None, detail="")

    def file_progress(self, index: int, done: int, total: int) -> None:
        if self.progress is not None and index in self.tasks:
            self.progress.update(self.tasks[index], completed=done, total=total)

    def file_done(self, index: int, result: SeparationResult) -> None:
        self.n_done += 1
        if self.progress is not None:
            task = self.tasks.pop(index, None)
            if task is not None:
                self.progress.remove_task(task)
            if self.overall is not None:
                self.progress.update(self.overall, advance=1, detail=f"{self.n_done}/{self.n_files} files")
        name = result.input
        if result.status == "failed":
            self._print(self.err, f"Error: {_failure_text(result)}")
        elif self.quiet:
            return
        elif result.status == "skipped":
            where = Path(result.outputs[0]).parent if result.outputs else ""
            self._print(self.out, f"{name}: skipped, outputs exist in {where} (--force to redo)")
        else:
            folder = Path(result.outputs[0]).parent
            names = " ".join(Path(p).name if Path(p).parent == folder else str(p) for p in result.outputs)
            extra = f", scaled {result.gain_db:.1f} dB" if result.gain_db < 0 else ""
            self._print(
                self.out,
                f"{name} -> {folder}/ {names} ({result.n_src} speakers, {result.duration:.1f} s in "
                f"{result.seconds:.1f} s{extra})",
            )

    def summary(self, batch: BatchResult) -> None:
        """Final line; failures are listed again so they are not lost in a long log."""
        parts = [f"{batch.ok} separated"]
        if batch.skipped:
            parts.append(f"{batch.skipped} skipped")
        if batch.failed:
            parts.append(f"{batch.failed} failed")
        if batch.failed:
            self._print(self.err, "Done: " + ", ".join(parts) + ". Failed:")
            for r in batch.results:
                if r.status == "failed":
                    self._print(self.err, f"  {_failure_text(r)}")
        elif not self.quiet:
            self._print(self.out, "Done: " + ", ".join(parts) + ".")


__all__ = ["ConsoleReport"]
