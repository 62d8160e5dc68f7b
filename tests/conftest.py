"""Shared fixtures: a real S3 endpoint (moto's server on 127.0.0.1) and one Prefect API for the run."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Before anything imports prefect or boto: isolated state, dummy credentials, no network probes.
_STATE = Path(tempfile.mkdtemp(prefix="oldphoto-tests-"))
os.environ.update({
    "PREFECT_HOME": str(_STATE / "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
    "OLDPHOTO_HOME": str(_STATE / "oldphoto"),
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
})
os.environ.pop("PREFECT_API_URL", None)


def pytest_unconfigure(config):
    """The run's state goes with it: the session's Prefect API and Dask cluster are down by now."""
    shutil.rmtree(_STATE, ignore_errors=True)


DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAMPLES = Path(__file__).resolve().parents[1] / "oldphoto" / "samples"


def noise_png(seed: int, height: int = 96, width: int = 96) -> bytes:
    """A small RGB noise picture, PNG-encoded: an input whose content does not matter."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 for the whole run; oldphoto's settings point at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    os.environ["OLDPHOTO_S3_ENDPOINT_URL"] = url
    from oldphoto.settings import get_settings

    get_settings.cache_clear()
    yield url
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, request):
    """A fresh, empty bucket; returns its s3:// URL."""
    import boto3

    name = "test-" + request.node.name.lower().replace("_", "-")[:40].strip("-[]")
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name)
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect API for the run, exported so that Dask workers use it too."""
    from oldphoto.prefect_api import prefect_api as api

    with api() as url:
        yield url


@pytest.fixture(scope="session")
def dask_address(prefect_api, s3_endpoint) -> str:
    """One local Dask cluster for the run's flows, used as a deployment uses an existing scheduler:
    a cluster of its own costs a flow run about 8 s here. Started after the Prefect API and the S3
    endpoint, so that its workers inherit both; they import the task modules as the stack's do."""
    import dask
    from distributed import LocalCluster

    from oldphoto.flows.runner import LOCAL_CLUSTER_CONFIG
    from oldphoto.stack import WORKER_MODULES

    dask.config.set(LOCAL_CLUSTER_CONFIG)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      preload=list(WORKER_MODULES)) as cluster:
        yield cluster.scheduler_address


@pytest.fixture
def on_the_cluster(dask_address, monkeypatch) -> str:
    """The test's flows run on the run's Dask cluster, named by configuration."""
    from oldphoto.settings import get_settings

    monkeypatch.setenv("OLDPHOTO_DASK_ADDRESS", dask_address)
    get_settings.cache_clear()
    yield dask_address
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def pairs(tmp_path_factory) -> str:
    """Two shards of 8 small synthetic pairs made from the bundled sample photos."""
    from oldphoto.synth import DegradationConfig
    from oldphoto.tasks.synth import SynthConfig, synthesize_shard

    dst = tmp_path_factory.mktemp("pairs")
    keys = sorted(p.name for p in SAMPLES.glob("*.jpg"))
    config = SynthConfig(count=16, seed=3, crop=48, shard_size=8, degradation=DegradationConfig.load("default"))
    for shard in range(2):
        samples = [(i, keys[i % len(keys)]) for i in range(8 * shard, 8 * shard + 8)]
        synthesize_shard.fn(str(SAMPLES), str(dst), shard, samples, config, "test")
    return str(dst)


@pytest.fixture(scope="session")
def real(tmp_path_factory) -> str:
    """Real-photo stand-ins: the bundled samples, grayscale-toned, plus one unreadable file."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("real")
    for path in sorted(SAMPLES.glob("*.jpg"))[:3]:
        Image.open(path).convert("L").convert("RGB").save(folder / f"{path.stem}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    return str(folder)


@pytest.fixture
def tracking(tmp_path, monkeypatch) -> str:
    """MLflow tracking on a fresh SQLite file."""
    from oldphoto.settings import get_settings

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("OLDPHOTO_MLFLOW_TRACKING_URI", uri)
    get_settings.cache_clear()
    yield uri
    get_settings.cache_clear()


@pytest.fixture
def photo() -> np.ndarray:
    """A 96x128 RGB test picture with edges, gradients and texture."""
    rng = np.random.default_rng(123)
    y, x = np.mgrid[:96, :128]
    image = np.stack([x * 2, y * 2, (x + y) % 256], axis=2).astype(np.float32)
    image[20:60, 30:90] = [200, 60, 40]
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture
def clean_folder(tmp_path) -> Path:
    """A folder of a few small clean JPEGs in nested folders."""
    from PIL import Image

    rng = np.random.default_rng(5)
    root = tmp_path / "clean"
    for i, name in enumerate(["a.jpg", "b.png", "sub/c.jpg", "sub/deeper/d.jpg"]):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = (rng.random((72 + 8 * i, 96, 3)) * 255).astype(np.uint8)
        Image.fromarray(image).save(path)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """A tiny restorer bundle with seeded random weights: the engine's whole path, in milliseconds."""
    import torch

    from oldphoto.model.config import ModelConfig
    from oldphoto.model.restorer import RestorerNetwork

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save(RestorerNetwork(ModelConfig.load("tiny")).eval().bundle(), path)
    return str(path)


def random_vgg_state(layout: list, seed: int = 0) -> dict:
    """Random VGG `features` weights under torchvision's key names, as the real ImageNet files have them."""
    import torch

    torch.manual_seed(seed)
    state, index, in_channels = {}, 0, 3
    for width in layout:
        if width == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(width, in_channels, 3, 3) * (2 / (9 * in_channels)) ** 0.5
        state[f"features.{index}.bias"] = torch.zeros(width)
        in_channels, index = width, index + 2
    return state
