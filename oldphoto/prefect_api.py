"""One Prefect API for a process and the Dask workers it starts."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

# Prefect itself is imported only where it is used: start_early runs before it is (1.2 s here).

# How Prefect's own ephemeral mode runs its server (prefect.server.api.server.SubprocessASGIServer).
SERVER_APP = "prefect.server.api.server:create_app"
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
ADDRESS_IN_USE = 3  # uvicorn's exit status when the port was taken meanwhile

_early: tuple[subprocess.Popen, int] | None = None  # start_early's server and port, until a PrefectAPI takes it


def start_early() -> None:
    """For a command line run: the temporary API's server launched first thing, before Prefect is
    imported, unless PREFECT_API_URL is set. The server takes 4 s to answer on a 2-core machine, and
    the command's imports (1.5 s) then run beside it instead of before it. The PrefectAPI the
    command enters takes it over, or stops it when Prefect's settings name an API after all (a
    profile); stop_early stops it if none does (--help, a usage error)."""
    global _early
    if _early is None and not os.environ.get("PREFECT_API_URL"):
        # A fresh process has no settings of its own beyond the environment, profile and files that
        # the server reads too: nothing to hand over, unlike PrefectAPI._launch.
        _early = _launch_server({})


def stop_early() -> None:
    global _early
    if _early is not None:
        _stop(_early[0])
        _early = None


def _launch_server(settings: dict[str, str]) -> tuple[subprocess.Popen, int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | SERVER_ENV | settings
    # A temporary API serves one run and goes: its telemetry heartbeat only fails (and logs an
    # ERROR on every run) on the offline machines archives often use. A user's setting wins.
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    packages = Path(importlib.util.find_spec("prefect").origin).parent.parent
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(packages), "--factory", SERVER_APP,
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"], env=env)
    return server, port


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


class PrefectAPI:
    """The configured Prefect API (PREFECT_API_URL, from the environment or the Prefect profile), or
    a temporary local one for the duration of the `with` block.

    Without this, every Dask worker process that runs a task would start a temporary API of its own
    (seconds each, and competing SQLite writers). A temporary API is Prefect's own server app, run
    as Prefect's ephemeral mode runs it, but started on entering the block and waited for only in
    `ready()`: a command does its own start-up (imports, listing, loading the model) meanwhile, where
    Prefect's ephemeral mode would first import its server (1.5 s here) and then wait for it (4 s).
    A block left before `ready()` stops the server unused. On the command line the server is
    launched even earlier, by start_early, and taken over here."""

    def __init__(self, startup_timeout: float = 90):
        from prefect.settings import PREFECT_API_URL

        self.startup_timeout = startup_timeout
        self.url: str | None = PREFECT_API_URL.value() or None
        self._server: subprocess.Popen | None = None
        self._port = 0
        self._stack = ExitStack()

    def __enter__(self) -> "PrefectAPI":
        global _early
        if self.url:
            stop_early()
            os.environ.setdefault("PREFECT_API_URL", self.url)  # for the workers
        elif _early is not None:
            (self._server, self._port), _early = _early, None
        else:
            self._launch()
        return self

    def _launch(self) -> None:
        from prefect.settings import get_current_settings

        self._server, self._port = _launch_server(get_current_settings().to_environment_variables(exclude_unset=True))

    def ready(self) -> str:
        """The API's URL, once it answers; exported, so that workers and Prefect's client use it."""
        if self.url:
            return self.url
        import httpx
        from prefect.settings import (PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings,
                                      temporary_settings)

        url = f"http://127.0.0.1:{self._port}/api"
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client() as client:
            while True:
                if (code := self._server.poll()) is not None:
                    if code != ADDRESS_IN_USE:
                        raise RuntimeError(f"the temporary Prefect API exited with status {code} as it started")
                    self._launch()
                    url = f"http://127.0.0.1:{self._port}/api"
                try:
                    if client.get(f"{url}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the temporary Prefect API did not answer within {self.startup_timeout} s")
                time.sleep(0.05)
        self.url = url
        os.environ["PREFECT_API_URL"] = url
        settings = {PREFECT_API_URL: url}
        # Flow run heartbeats let a lasting server mark a run whose process died as crashed; this API
        # dies with the process. Their thread sleeps in whole seconds and is joined at the flow's end:
        # 0.3 s of a one-photo run (measured). A user's setting wins.
        if "heartbeat_frequency" not in get_current_settings().flows.model_fields_set:
            settings[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
        self._stack.enter_context(temporary_settings(settings))
        return url

    def __exit__(self, *exc) -> None:
        if self._server is None:
            return
        try:
            if self.url:
                from prefect.logging.handlers import APILogHandler

                APILogHandler().flush()  # send what the log worker still holds before the API goes
                os.environ.pop("PREFECT_API_URL", None)
            self._stack.close()
        finally:
            _stop(self._server)


@contextmanager
def prefect_api(startup_timeout: float = 90) -> Iterator[str]:
    """The configured Prefect API, or a temporary local one, answering, for the duration."""
    with PrefectAPI(startup_timeout) as api:
        yield api.ready()
