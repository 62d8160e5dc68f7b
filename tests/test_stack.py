"""Operations end to end: the local stack up, the deployments registered with `prefect deploy`, the
restore-archive deployment run over moto S3 through the Prefect API on the stack's Dask workers, its
outputs and manifest checked, and the stack down with none of its processes left."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import psutil
import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from conftest import _free_port, noise_png
from oldphoto import stack
from oldphoto.tasks.restore import read_manifest

REPOSITORY = Path(__file__).resolve().parents[1]


def _wait_for_flow_run(client, flow_run_id, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.is_final():
            return run
        time.sleep(1)
    raise TimeoutError(f"flow run {flow_run_id} not finished after {timeout} s")


def _register_champion(tracking_uri: str, bundle: str, tmp_path: Path) -> str:
    """The bundle as version 1 of oldphoto-restorer on an MLflow server, under the champion alias."""
    import shutil

    from mlflow import MlflowClient

    from oldphoto.models import BUNDLE_FILE, CHAMPION, REGISTERED_NAME

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    run = client.create_run(client.create_experiment("stack-test"))
    shutil.copy(bundle, tmp_path / BUNDLE_FILE)
    client.log_artifact(run.info.run_id, str(tmp_path / BUNDLE_FILE), "restorer")
    client.create_registered_model(REGISTERED_NAME)
    version = client.create_model_version(REGISTERED_NAME, f"{run.info.artifact_uri}/restorer", run.info.run_id)
    client.set_registered_model_alias(REGISTERED_NAME, CHAMPION, version.version)
    return f"models:/{REGISTERED_NAME}/{version.version}"


@pytest.mark.slow
def test_stack_deploy_and_restore_archive_over_s3(tmp_path, bucket, model):
    config = stack.StackConfig(home=tmp_path / "stack", prefect_port=_free_port(), mlflow_port=_free_port(),
                               dask_port=_free_port(), dask_dashboard_port=_free_port())
    s3 = boto3.client("s3", endpoint_url=os.environ["OLDPHOTO_S3_ENDPOINT_URL"])
    name = bucket.removeprefix("s3://")
    scans = {f"box/{i}.png": noise_png(i, 48, 64) for i in range(3)} | {"box/torn.jpg": b"not a jpeg"}
    for key, data in scans.items():
        s3.put_object(Bucket=name, Key=f"scans/{key}", Body=data)

    stack.up(config, log=lambda line: None)
    try:
        assert set(stack.status(config).values()) == {"healthy"}
        env = os.environ | {"PREFECT_API_URL": config.prefect_api, "OLDPHOTO_REPOSITORY": str(REPOSITORY)}
        deploy = subprocess.run([str(Path(sys.executable).with_name("prefect")), "--no-prompt", "deploy", "--all",
                                 "--prefect-file", "deployments/prefect.yaml"],
                                cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=300)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

        # Prefect's own client, as `prefect deployment run` uses: it retries the 503s a busy SQLite
        # database answers under load (seen on a 2-core CI box) where a bare HTTP call would fail.
        with temporary_settings({PREFECT_API_URL: config.prefect_api}), get_client(sync_client=True) as client:
            deployments = {d.name: d for d in client.read_deployments()}
            assert set(deployments) == {"restore-archive", "synthesize", "train", "evaluate", "retrain"}
            assert [entry.schedule.cron for entry in deployments["retrain"].schedules] == ["0 2 * * 0"]
            restore = deployments["restore-archive"]
            assert restore.work_pool_name == config.work_pool

            # The champion in the stack's MLflow server: restores that name no model use it.
            champion = _register_champion(config.mlflow_uri, model, tmp_path)
            parameters = {"src": f"{bucket}/scans", "dst": f"{bucket}/restored", "config": {"batch_size": 2}}
            flow_run = client.create_flow_run_from_deployment(restore.id, parameters=parameters)
            finished = _wait_for_flow_run(client, flow_run.id)
            assert finished.state.is_completed(), finished.state

        worker_log = (config.home / "logs" / "prefect-worker.log").read_text()
        assert f"Connecting to an existing Dask cluster at {config.dask_address}" in worker_log, \
            "the flow run's tasks ran on the stack's Dask scheduler"
    finally:
        records = [json.loads(p.read_text()) for p in (config.home / "pids").glob("*.json")]
        stack.down(config, log=lambda line: None)

    manifest = read_manifest(f"{bucket}/restored")
    assert sorted(manifest) == sorted(scans)
    assert manifest["box/torn.jpg"]["status"] == "failed"
    for key in scans.keys() - {"box/torn.jpg"}:
        assert manifest[key]["status"] == "restored" and manifest[key]["model_name"] == champion
        out = Image.open(io.BytesIO(s3.get_object(Bucket=name, Key=f"restored/{key}")["Body"].read()))
        assert out.size == (64, 48)
        assert s3.get_object(Bucket=name, Key=f"scans/{key}")["Body"].read() == scans[key], "originals untouched"

    assert len(records) == 5 and set(stack.status(config).values()) == {"not running"}
    for record in records:
        assert not psutil.pid_exists(record["pid"]) or psutil.Process(record["pid"]).status() == psutil.STATUS_ZOMBIE


def test_down_leaves_unrelated_processes_alone(tmp_path):
    """A pid file whose process is another program now (pid reused) is dropped, the program untouched."""
    config = stack.StackConfig(home=tmp_path / "stack")
    (config.home / "pids").mkdir(parents=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"pid": bystander.pid, "create_time": psutil.Process(bystander.pid).create_time() - 100, "argv": []}
        (config.home / "pids" / "dask-scheduler.json").write_text(json.dumps(record))
        assert stack.status(config)["dask-scheduler"] == "not running"
        stack.down(config, log=lambda line: None)
        assert bystander.poll() is None, "not ours: left running"
        assert not (config.home / "pids" / "dask-scheduler.json").exists()
    finally:
        bystander.kill()


def test_up_refuses_a_port_in_use(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = stack.StackConfig(home=tmp_path / "stack", prefect_port=_free_port(), mlflow_port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match=f"mlflow-server: port 127.0.0.1:{config.mlflow_port} is in use"):
            stack.up(config, log=lambda line: None)
    assert not list((config.home / "pids").glob("*.json")), "nothing started, nothing recorded"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", config.prefect_port)) != 0, "not even the service before it"
