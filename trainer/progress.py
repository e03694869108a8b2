"""Training progress: rich progress bars on a terminal, plain log lines everywhere else.

``auto`` picks bars when stderr is a terminal; a CI log or a container gets one "epoch" log
line per epoch (losses, learning rate, rows/s) and an "epoch progress" line every
``LOG_EVERY_S`` seconds inside long epochs. Only rank 0 reports.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Literal, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

log = logging.getLogger("trainer.fit")
LOG_EVERY_S = 30.0
ProgressMode = Literal["auto", "bar", "log"]


class Reporter(Protocol):
    def start_epoch(self, epoch: int, steps: int) -> None: ...
    def advance(self, rows: int, loss: float | None) -> None: ...
    def end_epoch(
        self, epoch: int, train_loss: float, validation_loss: float, lr: float, rows_per_s: float
    ) -> None: ...
    def close(self) -> None: ...


class NullReporter:
    """For ranks other than 0."""

    def start_epoch(self, epoch: int, steps: int) -> None:
        pass

    def advance(self, rows: int, loss: float | None) -> None:
        pass

    def end_epoch(
        self, epoch: int, train_loss: float, validation_loss: float, lr: float, rows_per_s: float
    ) -> None:
        pass

    def close(self) -> None:
        pass


class LogReporter:
    """One structured log line per epoch, and a heartbeat inside long epochs."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self._epoch = 0
        self._steps = 0
        self._done = 0
        self._rows = 0
        self._loss: float | None = None
        self._started = self._last = time.monotonic()

    def start_epoch(self, epoch: int, steps: int) -> None:
        self._epoch, self._steps, self._done, self._rows = epoch, steps, 0, 0
        self._started = self._last = time.monotonic()

    def advance(self, rows: int, loss: float | None) -> None:
        self._done += 1
        self._rows += rows
        if loss is not None:
            self._loss = loss
        now = time.monotonic()
        if now - self._last >= LOG_EVERY_S:
            self._last = now
            log.info(
                "epoch progress",
                extra={
                    "epoch": self._epoch,
                    "step": self._done,
                    "steps": self._steps,
                    "loss": self._loss,
                    "rows_per_s": round(self._rows / max(now - self._started, 1e-9)),
                },
            )

    def end_epoch(
        self, epoch: int, train_loss: float, validation_loss: float, lr: float, rows_per_s: float
    ) -> None:
        log.info(
            "epoch",
            extra={
                "epoch": epoch,
                "epochs": self.epochs,
                "train_loss": round(train_loss, 6),
                "validation_loss": round(validation_loss, 6),
                "lr": lr,
                "rows_per_s": round(rows_per_s),
            },
        )

    def close(self) -> None:
        pass


class BarReporter:
    """Two rich bars: epochs, and steps of the current epoch with loss and rows/s."""

    def __init__(self, epochs: int, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._progress.start()
        self._epochs = self._progress.add_task("epochs", total=epochs, info="")
        self._steps: TaskID | None = None
        self._rows = 0
        self._loss: float | None = None
        self._started = time.monotonic()

    def start_epoch(self, epoch: int, steps: int) -> None:
        if self._steps is not None:
            self._progress.remove_task(self._steps)
        self._steps = self._progress.add_task(f"epoch {epoch}", total=steps, info="")
        self._rows, self._loss, self._started = 0, None, time.monotonic()

    def advance(self, rows: int, loss: float | None) -> None:
        assert self._steps is not None
        self._rows += rows
        if loss is not None:
            self._loss = loss
        rate = self._rows / max(time.monotonic() - self._started, 1e-9)
        loss_text = f"loss {self._loss:.4f}  " if self._loss is not None else ""
        self._progress.update(self._steps, advance=1, info=f"{loss_text}{rate:,.0f} rows/s")

    def end_epoch(
        self, epoch: int, train_loss: float, validation_loss: float, lr: float, rows_per_s: float
    ) -> None:
        info = f"train {train_loss:.4f}  val {validation_loss:.4f}  lr {lr:.2g}"
        self._progress.update(self._epochs, completed=epoch, info=info)
        self._progress.console.log(
            f"epoch {epoch}: train {train_loss:.5f}  validation {validation_loss:.5f}  "
            f"lr {lr:.3g}  {rows_per_s:,.0f} rows/s",
            highlight=False,
        )

    def close(self) -> None:
        self._progress.stop()


def make_reporter(mode: ProgressMode, epochs: int, is_main: bool) -> Reporter:
    """Bars on a terminal (or when asked), log lines otherwise; nothing on other ranks."""
    if not is_main:
        return NullReporter()
    if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
        return BarReporter(epochs)
    return LogReporter(epochs)
