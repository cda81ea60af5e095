"""Training progress on stderr: a rich live display on a terminal, plain log lines otherwise."""
from __future__ import annotations

import logging
import sys

log = logging.getLogger("sepcli.training.loop")  # the loop's logger, so its lines read as before


class _Progress:
    """Rich live display on a terminal, plain log lines otherwise (rank 0 only)."""

    def __init__(self, enabled: bool, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.rich = None
        self.val = "-"
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.rich = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("loss {task.fields[loss]}  val SI-SNRi {task.fields[val]}  "
                           "{task.fields[speed]} s/s"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.task = self.rich.add_task("train", total=steps_per_epoch, epoch=0, loss="-",
                                           val="-", speed="-")
            self.rich.start()
        self.enabled = enabled

    def epoch(self, epoch: int, done: int) -> None:
        if self.rich is not None:
            fields = dict(self.rich.tasks[0].fields, epoch=epoch)  # reset() replaces all fields
            self.rich.reset(self.task, total=self.steps_per_epoch, completed=done, **fields)

    def step(self, done: int, loss: float | None = None, speed: float | None = None,
             line: str | None = None) -> None:
        if self.rich is not None:
            fields = {}
            if loss is not None:
                fields["loss"] = f"{loss:.3f}"
            if speed is not None:
                fields["speed"] = f"{speed:.1f}"
            self.rich.update(self.task, completed=done, **fields)
        elif self.enabled and line:
            log.info("%s", line)

    def valid(self, score: float, line: str) -> None:
        self.val = f"{score:.2f} dB"
        if self.rich is not None:
            self.rich.update(self.task, val=self.val)
            self.rich.console.print(line)
        elif self.enabled:
            log.info("%s", line)

    def close(self) -> None:
        if self.rich is not None:
            self.rich.stop()


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
