"""Progress of a flow over its items, one count reported three ways: a rich progress bar when the
console is a terminal, and everywhere a Prefect progress artifact and a log line with the rate (also
printed as a plain line where the console is no terminal and does not show INFO logs: CI, cron)."""

from __future__ import annotations

import logging
import sys
import time

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger
from prefect.logging.handlers import PrefectConsoleHandler
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class FlowProgress:
    """update(done) as items finish; close() at the end. The artifact and the log line come at most
    every every_s seconds, and at the end: each is a call to the Prefect API, whose work on a small
    machine comes out of the workers' share."""

    def __init__(self, total: int, unit: str, key: str, description: str, every_s: float = 5.0, start: int = 0):
        """start: items done before this run (a resumed one), counted in the total but not the rate."""
        self.total, self.unit, self.every_s, self.start = total, unit, every_s, start
        self.done, self.detail, self.started, self.reported = start, "", time.perf_counter(), float("-inf")
        self.logger = get_run_logger()
        self.artifact = create_progress_artifact(100.0 * start / max(1, total), key=key, description=description)
        self.bar = None
        if sys.stderr.isatty():
            self.bar = Progress(TextColumn(f"[bold]{unit}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]:.2f}/s {task.fields[detail]}"), TimeElapsedColumn(),
                                TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self.task = self.bar.add_task(unit, total=total, completed=start, rate=0.0, detail="")
            self.bar.start()

    def rate(self) -> float:
        return (self.done - self.start) / max(1e-9, time.perf_counter() - self.started)

    def update(self, done: int, detail: str = "") -> None:
        """done: items finished so far; detail: what else to show beside the count."""
        self.done, self.detail = done, detail
        if self.bar is not None:
            self.bar.update(self.task, completed=done, rate=self.rate(), detail=detail)
        now = time.perf_counter()
        if now - self.reported >= self.every_s or done >= self.total:
            self.reported = now
            update_progress_artifact(self.artifact, 100.0 * done / max(1, self.total))
            line = f"{done}/{self.total} {self.unit}{f' ({detail})' if detail else ''}, {self.rate():.2f} {self.unit}/s"
            self.logger.info(line)
            if self.bar is None and not _console_shows_info():
                print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        if self.total == 0:  # nothing to do: done at once
            update_progress_artifact(self.artifact, 100.0)


def _console_shows_info() -> bool:
    """Whether Prefect's console handler (on the root logger, or on `prefect` in older set-ups) prints INFO."""
    handlers = [*logging.getLogger().handlers, *logging.getLogger("prefect").handlers]
    return any(isinstance(h, PrefectConsoleHandler) and h.level <= logging.INFO for h in handlers)
