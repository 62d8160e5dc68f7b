"""A flow's progress: a bar on a terminal; a Prefect progress artifact and throttled log lines everywhere."""

from __future__ import annotations

import io
import logging
import sys

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from oldphoto.progress import FlowProgress

pytestmark = pytest.mark.usefixtures("prefect_api")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@flow
def count_to(total: int, every_s: float) -> None:
    progress = FlowProgress(total, "photos", "test-progress", "counting", every_s=every_s)
    for done in range(1, total + 1):
        progress.update(done, f"{done // 4} failed")
    progress.close()


def _artifact_progress() -> float:
    with get_client(sync_client=True) as client:
        artifact = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["test-progress"])),
                                         sort="CREATED_DESC", limit=1)[0]
    return float(artifact.data)


def test_off_a_terminal_the_log_gets_a_line_every_few_seconds_and_the_artifact_the_end(caplog, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with caplog.at_level(logging.INFO):
        count_to(10, every_s=5.0)
    lines = [r.getMessage() for r in caplog.records if "photos/s" in r.getMessage()]
    # The first count and the last; the eight between came within the same few seconds.
    assert len(lines) == 2 and lines[0].startswith("1/10 photos (0 failed)") and lines[1].startswith("10/10 photos (2 failed)")
    assert _artifact_progress() == 100.0
    assert sys.stderr.getvalue() == "", "no bar drawn into a log"


def test_on_a_terminal_a_bar_shows_the_count_the_detail_and_the_eta(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    count_to(12, every_s=5.0)
    drawn = terminal.getvalue()
    assert "12/12" in drawn and "3 failed" in drawn and "ETA" in drawn and "photos" in drawn


def test_a_console_that_hides_info_gets_the_progress_as_plain_lines(monkeypatch):
    from prefect.logging.handlers import PrefectConsoleHandler

    count_to(1, every_s=5.0)  # Prefect sets its logging up with the first run
    console = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    assert console
    monkeypatch.setattr(console[0], "level", logging.WARNING)  # as `oldphoto` sets it without -v
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    count_to(10, every_s=5.0)
    assert [line.split(",")[0] for line in sys.stderr.getvalue().splitlines()] == ["1/10 photos (0 failed)",
                                                                                 "10/10 photos (2 failed)"]
