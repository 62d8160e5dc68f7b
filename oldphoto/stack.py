"""The local monitoring stack: a Prefect server (SQLite) with a worker for the process pool, an MLflow
tracking server (SQLite and a local artifact folder), and a Dask scheduler with its workers and
dashboard, on one host. `up` starts each in a session of its own (so that it outlives the shell) and
writes a pid file per service; `down` stops exactly the processes those files name, checked by their
start time so that a reused pid is never touched, and nothing else."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from pydantic import BaseModel, Field


class StackConfig(BaseModel):
    home: Path = Field(Path(".oldphoto/stack"), description="pid files, logs, databases and artifacts")
    host: str = "127.0.0.1"
    prefect_port: int = 4200
    mlflow_port: int = 5000
    dask_port: int = 8786
    dask_dashboard_port: int = 8787
    dask_workers: int = Field(2, ge=1)
    work_pool: str = "oldphoto-process"
    timeout: float = Field(120, gt=0, description="seconds to wait for each service to become healthy")

    @property
    def prefect_api(self) -> str:
        return f"http://{self.host}:{self.prefect_port}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def dask_address(self) -> str:
        return f"tcp://{self.host}:{self.dask_port}"

    @property
    def dask_dashboard(self) -> str:
        return f"http://{self.host}:{self.dask_dashboard_port}"

    def env(self) -> dict[str, str]:
        """What points prefect, oldphoto and its flows at this stack."""
        return {"PREFECT_API_URL": self.prefect_api, "OLDPHOTO_MLFLOW_TRACKING_URI": self.mlflow_uri,
                "OLDPHOTO_DASK_ADDRESS": self.dask_address}


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    port: int | None  # the port it listens on, checked free before the start
    url: str  # what a person opens, or connects to
    needs: str | None = None  # the service it connects to, healthy before this one starts


WORKER_MODULES = ("oldphoto.tasks.synth", "oldphoto.tasks.restore", "oldphoto.tasks.evaluate", "oldphoto.model.engine")


def _tool(name: str) -> str:
    """A console script of the environment oldphoto runs in (the venv's, not whatever is on PATH)."""
    return str(Path(sys.executable).with_name(name))


def services(c: StackConfig) -> list[Service]:
    """The servers, then the workers that connect to them."""
    home = c.home.resolve()
    return [
        Service("prefect-server", [_tool("prefect"), "server", "start", "--host", c.host, "--port", str(c.prefect_port)],
                c.prefect_port, f"http://{c.host}:{c.prefect_port}"),
        Service("mlflow-server", [_tool("mlflow"), "server", "--host", c.host, "--port", str(c.mlflow_port), "--workers", "1",
                                  "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
                                  "--artifacts-destination", str(home / "mlartifacts")],
                c.mlflow_port, c.mlflow_uri),
        Service("dask-scheduler", [_tool("dask"), "scheduler", "--host", c.host, "--port", str(c.dask_port),
                                   "--dashboard-address", f"{c.host}:{c.dask_dashboard_port}"],
                c.dask_port, f"{c.dask_dashboard}/status"),
        Service("prefect-worker", [_tool("prefect"), "worker", "start", "--pool", c.work_pool, "--type", "process"],
                None, f"http://{c.host}:{c.prefect_port}/work-pools/work-pool/{c.work_pool}", needs="prefect-server"),
        # The workers import the task modules as they start, not in the first flow run (~10 s here).
        Service("dask-workers", [_tool("dask"), "worker", c.dask_address, "--nworkers", str(c.dask_workers),
                                 "--nthreads", "1", "--host", c.host, "--no-dashboard",
                                 *(f"--preload={m}" for m in WORKER_MODULES)],
                None, c.dask_address, needs="dask-scheduler"),
    ]


# --- health: one check per service, None when healthy, else the reason ---

def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=5)


def health(c: StackConfig, name: str) -> str | None:
    """None when the service answers as it should, else why not."""
    try:
        if name == "prefect-server":
            ok = _get(f"{c.prefect_api}/health").json() is True
        elif name == "mlflow-server":
            ok = _get(f"{c.mlflow_uri}/health").text.strip() == "OK"
        elif name == "dask-scheduler":
            ok = _get(f"{c.dask_dashboard}/health").text.strip() == "ok"
        elif name == "prefect-worker":
            workers = httpx.post(f"{c.prefect_api}/work_pools/{c.work_pool}/workers/filter", json={}, timeout=5).json()
            online = [w for w in workers if isinstance(w, dict) and w.get("status") == "ONLINE"]
            return None if online else f"no online worker in work pool {c.work_pool!r}"
        elif name == "dask-workers":
            from distributed import Client

            with Client(c.dask_address, timeout=5) as client:
                n = len(client.scheduler_info()["workers"])
            return None if n >= c.dask_workers else f"{n} of {c.dask_workers} Dask workers connected"
        else:
            raise ValueError(f"unknown service {name!r}")
    except (httpx.HTTPError, OSError, ValueError, TimeoutError) as error:
        return f"not answering: {error}"
    return None if ok else "answered, but not healthy"


# --- pid files ---

def _pid_file(c: StackConfig, name: str) -> Path:
    return c.home / "pids" / f"{name}.json"


def _recorded(c: StackConfig, name: str) -> psutil.Process | None:
    """The running process a pid file names, if it is still the one `up` started."""
    path = _pid_file(c, name)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    try:
        process = psutil.Process(record["pid"])
        return process if abs(process.create_time() - record["create_time"]) < 0.01 else None
    except psutil.NoSuchProcess:
        return None


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def up(c: StackConfig, log=print) -> None:
    """Start every service not already running, wait until each is healthy; on a failure, stop what
    this call started and raise with the service's log tail."""
    for sub in ("pids", "logs"):
        (c.home / sub).mkdir(parents=True, exist_ok=True)
    env = os.environ | c.env() | {"PREFECT_HOME": str((c.home / "prefect").resolve()),
                                  "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_TRACKING_URI": c.mlflow_uri,
                                  # MLflow's job runners (seven processes, for GenAI scorers) do nothing for us.
                                  "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    todo = []
    for service in services(c):
        if _recorded(c, service.name):
            log(f"{service.name}: already running")
        elif service.port is not None and _port_in_use(c.host, service.port):
            raise RuntimeError(f"{service.name}: port {c.host}:{service.port} is in use by another program")
        else:
            todo.append(service)
    started: list[str] = []
    try:
        # The servers start together, then their workers together: each start is seconds of imports.
        for wave in ([s for s in todo if s.needs is None], [s for s in todo if s.needs is not None]):
            launched = []
            for service in wave:
                with open(c.home / "logs" / f"{service.name}.log", "ab") as out:
                    process = subprocess.Popen(service.argv, stdout=out, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, env=env, cwd=c.home, start_new_session=True)
                record = {"pid": process.pid, "create_time": psutil.Process(process.pid).create_time(),
                          "argv": service.argv}
                _pid_file(c, service.name).write_text(json.dumps(record))
                started.append(service.name)
                launched.append((service, process))
            for service, process in launched:
                _wait_healthy(c, service.name, process)
                log(f"{service.name}: up, {service.url}")
    except BaseException:
        for name in reversed(started):
            _stop(c, name)
        raise


def _wait_healthy(c: StackConfig, name: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + c.timeout
    while (reason := health(c, name)) is not None:
        if process.poll() is not None or time.monotonic() > deadline:
            tail = (c.home / "logs" / f"{name}.log").read_text(errors="replace")[-2000:]
            state = f"exited with {process.returncode}" if process.poll() is not None else f"not healthy after {c.timeout:.0f} s"
            raise RuntimeError(f"{name} {state} ({reason}); end of {c.home / 'logs' / name}.log:\n{tail}")
        time.sleep(0.5)


def status(c: StackConfig) -> dict[str, str]:
    """Each service's state: 'healthy', 'not running', or 'running, <why not healthy>'."""
    states = {}
    for service in services(c):
        if _recorded(c, service.name) is None:
            states[service.name] = "not running"
        else:
            reason = health(c, service.name)
            states[service.name] = "healthy" if reason is None else f"running, {reason}"
    return states


def _stop(c: StackConfig, name: str, grace: float = 15) -> bool:
    """Stop the process a pid file names and everything it started; True if something was stopped."""
    process = _recorded(c, name)
    _pid_file(c, name).unlink(missing_ok=True)
    if process is None:
        return False
    family = [process, *process.children(recursive=True)]
    for p in family:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return True


def down(c: StackConfig, log=print) -> None:
    """Stop, in reverse start order, what `up` started."""
    for service in reversed(services(c)):
        log(f"{service.name}: {'stopped' if _stop(c, service.name) else 'was not running'}")
