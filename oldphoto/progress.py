"""A progress line for the terminal: counts and rate, redrawn in place; throttled for logs."""

from __future__ import annotations

import sys
import time


class ProgressLine:
    def __init__(self, total: int, unit: str, every_s: float = 5.0, stream=sys.stderr):
        self.total, self.unit, self.every_s, self.stream = total, unit, every_s, stream
        self.done, self.started, self.reported = 0, time.perf_counter(), 0.0
        self.live = stream.isatty()

    def text(self) -> str:
        rate = self.done / max(1e-9, time.perf_counter() - self.started)
        filled = int(30 * self.done / max(1, self.total))
        return f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {self.unit}, {rate:.2f} {self.unit}/s"

    def update(self, done: int) -> bool:
        """Set the count; True when it is time to report elsewhere too (every every_s, and at the end)."""
        self.done = done
        if self.live:
            self.stream.write("\r" + self.text())
            self.stream.flush()
        now = time.perf_counter()
        if now - self.reported >= self.every_s or done == self.total:
            self.reported = now
            return True
        return False

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
