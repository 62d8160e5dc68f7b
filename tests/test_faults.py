"""Faults: the S3 endpoint gone midway and back, a Dask worker process killed midway (on a separate
scheduler and workers: the scale-out path), and credentials kept out of every record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import psutil
import pyarrow.parquet as pq
import pytest

from conftest import _free_port, noise_png
from oldphoto import storage
from oldphoto.flows.runner import task_runner
from oldphoto.tasks.restore import RestoreConfig, read_manifest

pytestmark = pytest.mark.usefixtures("prefect_api")
DASK = str(Path(sys.executable).with_name("dask"))


def _settings_changed():
    from oldphoto.settings import get_settings

    get_settings.cache_clear()


@pytest.fixture
def own_s3(monkeypatch):
    """A moto S3 server of this test's own, which it may stop and start again on the same port
    (moto's buckets live in the process, so they survive the restart)."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    servers = [ThreadedMotoServer(ip_address="127.0.0.1", port=port)]
    servers[0].start()
    monkeypatch.setenv("OLDPHOTO_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    _settings_changed()

    def outage(seconds: float) -> float:
        """Stop the endpoint for seconds; returns when it answered again (monotonic clock)."""
        servers[-1].stop()
        time.sleep(seconds)
        servers.append(ThreadedMotoServer(ip_address="127.0.0.1", port=port))
        servers[-1].start()
        return time.monotonic()

    yield f"http://127.0.0.1:{port}", outage
    servers[-1].stop()
    _settings_changed()


def test_s3_outage_midway_is_retried_and_loses_nothing(own_s3, model):
    from oldphoto.flows.restore import restore_archive

    endpoint, outage = own_s3
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="archive")
    scans = {f"scans/{i:02d}.png": noise_png(i) for i in range(30)}
    for key, data in scans.items():
        s3.put_object(Bucket="archive", Key=key, Body=data)

    cut = {}

    def cut_when_the_first_output_lands():
        while not (landed := s3.list_objects_v2(Bucket="archive", Prefix="restored/").get("KeyCount")):
            time.sleep(0.02)
        cut["outputs_before"] = landed
        cut["back_at"] = outage(6.0)
    cutter = threading.Thread(target=cut_when_the_first_output_lands)
    cutter.start()
    # On Dask, where real runs go: the cluster's workers start here, so they take this test's endpoint.
    run = restore_archive.with_options(task_runner=task_runner(2))
    summary = run("s3://archive/scans", "s3://archive/restored", RestoreConfig(model=model, batch_size=1))
    finished_at = time.monotonic()
    cutter.join()
    # The endpoint went away with most of the work still to do, and the run outlived the outage:
    # the S3 client's retries with backoff, then the tasks' own, carried it through.
    assert cut["outputs_before"] < 30 and finished_at > cut["back_at"]
    failures = {k: r["reason"] for k, r in read_manifest("s3://archive/restored").items() if r["status"] == "failed"}
    assert (summary["restored"], summary["failed"]) == (30, 0), failures

    manifest = read_manifest("s3://archive/restored")
    assert sorted(manifest) == sorted(k.removeprefix("scans/") for k in scans)
    assert all(row["status"] == "restored" for row in manifest.values())
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="archive", Prefix="restored/", MaxKeys=1000)["Contents"]]
    outputs = [k for k in listed if k.endswith(".png") and "/_" not in k]
    assert sorted(outputs) == sorted(f"restored/{k.removeprefix('scans/')}" for k in scans), "each output once"
    for key, data in scans.items():
        assert s3.get_object(Bucket="archive", Key=key)["Body"].read() == data, "originals untouched"


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
def test_restore_on_a_separate_dask_cluster_survives_a_killed_worker(tmp_path, model):
    src, dst = tmp_path / "scans", tmp_path / "restored"
    src.mkdir()
    for i in range(24):
        (src / f"{i:02d}.png").write_bytes(noise_png(i, 160, 160))
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = _start([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                       tmp_path / "scheduler.log")
    workers = _start([DASK, "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
                     tmp_path / "workers.log")
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            pids = client.run(os.getpid)  # worker address -> the pid of its process (not the nanny's)
            restore = subprocess.Popen([sys.executable, "-m", "oldphoto.cli", "restore", str(src), str(dst), "--model",
                                        model, "--batch-size", "2", "--dask-address", address],
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            while not list(dst.glob("*.png")):
                assert restore.poll() is None, restore.stdout.read()
                time.sleep(0.05)
            victim, pid = sorted(pids.items())[0]
            os.kill(pid, signal.SIGKILL)
            output, _ = restore.communicate(timeout=300)
            # The scheduler lost that worker (its nanny may start a new one, at another address).
            assert victim not in client.scheduler_info()["workers"] and not psutil.pid_exists(pid)
        assert restore.returncode == 0, output[-3000:]
        assert '"restored": 24' in output and '"failed": 0' in output
        assert f"Remove worker addr: {victim}" in (tmp_path / "scheduler.log").read_text()
    finally:
        for process in (workers, scheduler):
            os.killpg(process.pid, 9)
            process.wait()

    table = pq.read_table(dst / "_manifest" / "manifest.parquet").to_pylist()
    assert sorted(r["key"] for r in table) == sorted(p.name for p in src.glob("*.png")), "each image once"
    assert sorted(p.name for p in dst.glob("*.png")) == sorted(p.name for p in src.glob("*.png"))
    assert not list(dst.rglob("*.tmp*")), "no half-written files"


@pytest.mark.slow
def test_sigterm_midway_stops_what_the_command_started_and_a_rerun_finishes(tmp_path, model):
    """`kill` (SIGTERM) of a restore midway: the command exits 143 and takes its temporary Prefect
    API and local Dask workers with it, instead of leaving them running; a rerun restores the rest."""
    from oldphoto.flows.restore import restore_archive

    src, dst = tmp_path / "scans", tmp_path / "restored"
    src.mkdir()
    for i in range(60):
        (src / f"{i:02d}.png").write_bytes(noise_png(i, 160, 160))
    # Its own temporary API, as from a shell: not the test session's.
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path / "prefect")}
    restore = subprocess.Popen([sys.executable, "-m", "oldphoto.cli", "restore", str(src), str(dst), "--model", model,
                                "--batch-size", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not list(dst.glob("*.png")):
        assert restore.poll() is None, restore.stdout.read()
        time.sleep(0.05)
    started = psutil.Process(restore.pid).children(recursive=True)
    assert any("uvicorn" in " ".join(p.cmdline()) for p in started), "the temporary Prefect API runs"
    restore.terminate()
    output, _ = restore.communicate(timeout=120)
    assert restore.returncode == 128 + signal.SIGTERM, output[-3000:]
    _, alive = psutil.wait_procs(started, timeout=60)
    assert not alive, [" ".join(p.cmdline())[:120] for p in alive]
    done = len(list(dst.glob("*.png")))
    assert 0 < done < 60, "stopped midway"

    summary = restore_archive(str(src), str(dst), RestoreConfig(model=model, batch_size=1))
    assert summary["failed"] == 0 and summary["restored"] <= 60 - done + 1, summary
    assert sorted(p.name for p in dst.glob("*.png")) == sorted(p.name for p in src.glob("*.png"))
    assert not list(dst.rglob("*.tmp*")), "no half-written files"


def test_sigterm_during_start_up_stops_the_early_prefect_api(tmp_path, model):
    """The command line launches its temporary Prefect API before it has even imported Prefect: a
    SIGTERM then, while the command still starts, exits 143 and takes that server with it."""
    src = tmp_path / "scans"
    src.mkdir()
    (src / "a.png").write_bytes(noise_png(0, 64, 64))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path / "prefect")}
    restore = subprocess.Popen([sys.executable, "-m", "oldphoto.cli", "restore", str(src), str(tmp_path / "out"),
                                "--model", model], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not (started := [p for p in psutil.Process(restore.pid).children(recursive=True) if "uvicorn" in " ".join(p.cmdline())]):
        assert restore.poll() is None and time.monotonic() < deadline, restore.stdout.read()
        time.sleep(0.01)
    restore.terminate()
    output, _ = restore.communicate(timeout=120)
    assert restore.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert not (tmp_path / "out").exists(), "stopped before the flow began"
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, [" ".join(p.cmdline())[:120] for p in alive]


def test_sigterm_swallowed_by_another_handler_still_exits_143():
    """Prefect's own handler, swapped in during a flow run, can raise where the exception gets
    rewrapped (CI saw a PydanticSerializationError). The command still exits 143, not with the
    rewrapped error; without a SIGTERM the same error goes through as it is."""
    from oldphoto.cli import exit_on_sigterm

    def rewrapping(signum, frame):
        raise KeyError("TerminationSignal")  # what a serializer makes of it

    def command(kill: bool):
        inner = signal.signal(signal.SIGTERM, rewrapping)  # as Prefect's flow engine does
        try:
            try:
                if kill:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(5)
            except KeyError as error:
                raise ValueError(f"Error calling function: {error}") from None
        finally:
            signal.signal(signal.SIGTERM, inner)
        return 0

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        with exit_on_sigterm():
            command(kill=True)
    assert stopped.value.code == 128 + signal.SIGTERM
    with pytest.raises(ValueError, match="Error calling function"):
        with exit_on_sigterm():
            raise ValueError("Error calling function: unrelated")
    with exit_on_sigterm():
        assert command(kill=False) == 0
    assert signal.getsignal(signal.SIGTERM) is before and signal.set_wakeup_fd(-1) == -1


def test_credentials_never_reach_records_and_keys_never_leave_dst(bucket, model, monkeypatch, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    from oldphoto.flows.restore import restore_archive

    # Credentials as AWS's variables and as fsspec options: neither may reach a record. The flow runs
    # on a Dask cluster started here, so that its workers hold both too.
    secret, option_secret = "oldphoto-test-secret-4f1c9a", "oldphoto-option-secret-8d2e7b"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("OLDPHOTO_STORAGE_OPTIONS", json.dumps({"key": "testing", "secret": option_secret}))
    _settings_changed()
    s3 = boto3.client("s3", endpoint_url=os.environ["OLDPHOTO_S3_ENDPOINT_URL"])
    name = bucket.removeprefix("s3://")
    for i in range(3):
        s3.put_object(Bucket=name, Key=f"scans/{i}.png", Body=noise_png(i))
    s3.put_object(Bucket=name, Key="scans/bad.jpg", Body=b"broken")
    s3.put_object(Bucket=name, Key="scans/box/../../escape.png", Body=noise_png(9))  # a key that climbs out of DST
    assert storage.filesystem(f"{bucket}/scans")[0].secret == option_secret, "the option is in force"
    state = restore_archive.with_options(task_runner=task_runner(2))(f"{bucket}/scans", f"{bucket}/restored",
                                                                     RestoreConfig(model=model), return_state=True)
    summary = state.result()
    assert summary["restored"] == 3 and summary["failed"] == 2
    assert "outside the destination" in read_manifest(f"{bucket}/restored")["../escape.png"]["reason"]
    assert "escape.png" not in [o["Key"] for o in s3.list_objects_v2(Bucket=name)["Contents"] if "/" not in o["Key"]]

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert logs and artifacts
    records = [str(run.parameters), *(log.message for log in logs), *(str(a.data) for a in artifacts),
               *(str(t.task_inputs) for t in tasks)]
    records += [storage.read_bytes(f"{bucket}/restored/{key}").decode("latin-1") for key in
                ("_report/index.html", "_manifest/manifest.parquet")]
    assert not [r for r in records if secret in r or option_secret in r]
    _settings_changed()


class _Payload:
    """Unpickling this would run code: creating the file named."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("kind", ["code", "not a restorer", "truncated"])
def test_a_wrong_or_malicious_model_fails_before_any_image_is_touched(kind, tmp_path, model):
    import torch

    from oldphoto.flows.restore import restore_archive

    src = tmp_path / "scans"
    src.mkdir()
    (src / "a.png").write_bytes(noise_png(1))
    marker, bad = tmp_path / "code-ran", tmp_path / "model.pt"
    if kind == "code":
        torch.save({"config": _Payload(marker)}, bad)
    elif kind == "not a restorer":
        torch.save({"weights": torch.zeros(3)}, bad)
    else:
        bad.write_bytes(Path(model).read_bytes()[:5000])
    expected = "not a usable restorer bundle" if kind == "not a restorer" else "not a readable weights file"
    with pytest.raises(ValueError, match=f"model.pt: {expected}"):
        restore_archive(str(src), str(tmp_path / "out"), RestoreConfig(model=str(bad)))
    assert not marker.exists(), "weights_only: nothing in a model file runs"
    assert not (tmp_path / "out").exists()
