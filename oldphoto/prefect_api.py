"""One Prefect API for a process and the Dask workers it starts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings


@contextmanager
def prefect_api(startup_timeout: int = 90) -> Iterator[str | None]:
    """Use the configured Prefect API, or start one temporary local API for the duration.

    Without this, every Dask worker process that runs a task would start a temporary API of its own
    (seconds each, and competing SQLite writers). The URL is exported so that workers inherit it.
    """
    configured = PREFECT_API_URL.value()
    if configured:
        os.environ.setdefault("PREFECT_API_URL", configured)
        yield configured
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    # A temporary API serves one run and goes: its telemetry heartbeat only fails (and logs an ERROR
    # on every run) on the offline machines archives often use. A user's explicit setting wins.
    analytics = {} if "PREFECT_SERVER_ANALYTICS_ENABLED" in os.environ else {PREFECT_SERVER_ANALYTICS_ENABLED: False}
    with temporary_settings(analytics):
        server.start(timeout=startup_timeout)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        # Send what the log worker still holds before the API goes away.
        APILogHandler().flush()
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()
