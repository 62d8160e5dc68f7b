"""Prefect tasks of the training flow: train one stage with checkpoints and MLflow tracking, then
bundle the stages into a restorer and register it as a model version."""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from prefect import task
from prefect.logging import get_run_logger

from oldphoto import storage
from oldphoto.images import UnreadableImage, decode_rgb
from oldphoto.model.config import ModelConfig
from oldphoto.model.data import SampleStream, pair_batch, real_batch
from oldphoto.model.device import pick_device, pick_precision
from oldphoto.model.losses import VGGLoss
from oldphoto.model.restorer import RestorerNetwork, assemble_restorer
from oldphoto.model.stages import ORDER, STAGES, applied_after
from oldphoto.model.train import StageTrainer, check_ranks_agree, load_state, save_state, train_loop
from oldphoto.model.vae import VAE
from oldphoto.models import BUNDLE_FILE, load_restorer, read_weights
from oldphoto.pairs import read_shard, shard_urls
from oldphoto.progress import FlowProgress
from oldphoto.runtime import usable_cores
from oldphoto.settings import get_settings
from oldphoto.tracking import experiment_id

EXPERIMENT = "oldphoto-train"
REAL_CHUNK = 8  # real photos decoded per "shard" of the real-photo stream


def checkpoint_url(checkpoints: str, stage: str) -> str:
    return storage.join(checkpoints, f"{stage}.pt")


def _flatten(prefix: str, value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(f"{prefix}.{key}" if prefix else key, item).items()}
    return {prefix: str(value)}


def _streams(stage: str, config: ModelConfig, pairs: str, real: str | None, rank: int, world: int) -> dict[str, SampleStream]:
    seed = config.train.seed
    urls = shard_urls(pairs)
    if not urls:
        raise FileNotFoundError(f"{pairs}: no Parquet shards of pairs (make them with `oldphoto synth`)")
    streams = {"pairs": SampleStream(len(urls), lambda i: read_shard(urls[i]), seed, rank, world)}
    if "real" in STAGES[stage].needs:
        if not real:
            raise ValueError(f"stage {stage} needs real old photographs: give --real")
        keys = storage.list_images(real)
        if not keys:
            raise FileNotFoundError(f"{real}: no images of real old photographs")
        chunks = [keys[i : i + REAL_CHUNK] for i in range(0, len(keys), REAL_CHUNK)]
        streams["real"] = SampleStream(len(chunks), lambda i: _read_real(real, chunks[i]), seed + 1, rank, world)
    return streams


def _read_real(real: str, keys: list[str]) -> list[dict[str, Any]]:
    images = []
    for key in keys:
        try:
            images.append({"image": decode_rgb(storage.read_bytes(storage.join(real, key)), key)})
        except UnreadableImage:
            pass  # an unreadable scan is left out of training, not fatal to it
    return images


def _starting_point(stage: str, checkpoints: str, init: str | None) -> dict[str, torch.nn.Module]:
    """The frozen networks a stage starts from, as its declaration says (model/stages.py)."""
    match STAGES[stage].starts_from:
        case "restorer":
            # Its own part comes along (the tone and strength stages go on from the init's where it has one).
            return {"restorer": build_restorer(checkpoints, without=applied_after(stage), init=init)}
        case "init":
            return {"restorer": load_restorer(init)} if init else {}
        case "teacher":
            if not init:
                raise ValueError(f"the {stage} stage learns from a teacher: give the restorer to distill as init (--init)")
            return {"teacher": load_restorer(init)}
        case "vaes":
            frozen = {}
            for name in ("vae_a", "vae_b"):
                url = checkpoint_url(checkpoints, name)
                if not storage.exists(url):
                    raise FileNotFoundError(f"the {stage} stage needs a trained {name}: {url} is missing "
                                            f"(train {name} first, into the same checkpoint folder)")
                state = load_state(storage.read_bytes(url))
                vae = VAE(ModelConfig.model_validate_json(state["config"]).vae)
                vae.load_state_dict(state["trainer"]["modules"]["vae"])
                frozen[name] = vae
            return frozen
    return {}


def _check_same_networks(state: dict[str, Any], config: ModelConfig, url: str) -> None:
    stored = ModelConfig.model_validate_json(state["config"])
    if stored.model_dump(exclude={"train", "name"}) != config.model_dump(exclude={"train", "name"}):
        raise ValueError(f"{url} holds networks of another configuration; use another checkpoint folder")


def run_stage(stage: str, config: ModelConfig, pairs: str, real: str | None, checkpoints: str,
              run_id: str | None = None, tracking_uri: str | None = None, device: str | None = None,
              init: str | None = None) -> dict[str, Any]:
    """Train one stage up to config.train.steps, resuming from its checkpoint if there is one; init, a
    restorer reference, stands in for the earlier stages the folder lacks (see build_restorer).

    Plain function (the Prefect task wraps it) so that torchrun can launch it: under torchrun it
    joins the process group and trains with DistributedDataParallel; rank 0 alone writes
    checkpoints and logs to MLflow.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device_ = pick_device(device or get_settings().device)
    joins = world > 1 and not dist.is_initialized()
    if joins:
        if device_.type == "cuda":
            device_ = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device_)
        dist.init_process_group("nccl" if device_.type == "cuda" else "gloo")
    # A Dask cluster started in this process sets OMP_NUM_THREADS=1: set the thread count on purpose.
    torch.set_num_threads(max(1, usable_cores() // world))
    torch.manual_seed(config.train.seed + rank)
    dtype = pick_precision(device_, config.train.precision)
    t = config.train

    vgg = VGGLoss(read_weights(t.vgg_weights)) if t.vgg_weights else None
    frozen = _starting_point(stage, checkpoints, init)
    trainer: StageTrainer = STAGES[stage].trainer_class()(config, device_, dtype, frozen=frozen, vgg=vgg)
    streams = _streams(stage, config, pairs, real, rank, world)
    url = checkpoint_url(checkpoints, stage)
    if storage.exists(url):
        state = load_state(storage.read_bytes(url))
        _check_same_networks(state, config, url)
        trainer.load_state_dict(state["trainer"])
        for name, stream in streams.items():
            stream.load_state_dict(state["streams"][name])
    resumed_at = trainer.step_count

    client = MlflowClient(tracking_uri) if run_id and rank == 0 else None
    if client and resumed_at == 0:
        params = _flatten("", config.model_dump(mode="json"))
        params |= {"stage": stage, "pairs": pairs, "real": str(real), "device": str(device_),
                   "precision": str(dtype).removeprefix("torch."), "world_size": str(world),
                   "vgg_loss": "on" if vgg is not None else "off (no vgg_weights configured)"}
        client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in sorted(params.items())])

    def next_batch() -> dict[str, torch.Tensor]:
        batch = pair_batch(streams["pairs"], t.batch_size, t.crop, t.scales)
        if "real" in streams:
            batch["real"] = real_batch(streams["real"], t.batch_size, t.crop)
        return batch

    # Where the run is tracked (the train flow's task), its steps show as the other flows' items do.
    progress = FlowProgress(t.steps, "steps", f"train-{stage.replace('_', '-')}-progress", f"{stage} -> {checkpoints}",
                            start=resumed_at) if client else None

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        if progress:
            losses = [f"{k} {v:.3g}" for k, v in metrics.items() if k not in ("samples_per_second", "lr")]
            progress.update(step, ", ".join(losses[:4]))
        if client:
            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in sorted(metrics.items())])

    def on_preview(step: int, grid) -> None:
        if client:
            client.log_image(run_id, grid, key=f"{stage}_samples", step=step)

    def on_checkpoint(step: int) -> None:
        if rank == 0:
            state = {"config": config.model_dump_json(), "trainer": trainer.state_dict(),
                     "streams": {name: stream.state_dict() for name, stream in streams.items()}}
            storage.write_bytes_atomic(url, save_state(state))

    started = time.perf_counter()
    train_loop(trainer, next_batch, t.steps, on_metrics=on_metrics, on_preview=on_preview, on_checkpoint=on_checkpoint)
    seconds = time.perf_counter() - started
    if progress:
        progress.close()
    check_ranks_agree(trainer)
    if joins:  # left to interpreter exit, gloo's threads can abort the process after the work is done
        dist.destroy_process_group()
    if client and trainer.step_count > resumed_at:
        if "://" not in url:
            client.log_artifact(run_id, url, "checkpoints")
        else:  # MLflow logs local files: fetch a remote checkpoint first
            with tempfile.TemporaryDirectory() as folder:
                local = Path(folder) / f"{stage}.pt"
                local.write_bytes(storage.read_bytes(url))
                client.log_artifact(run_id, str(local), "checkpoints")
    return {"stage": stage, "checkpoint": url, "steps": trainer.step_count, "resumed_at": resumed_at,
            "seconds": round(seconds, 2), "device": str(device_), "precision": str(dtype).removeprefix("torch."),
            "world_size": world}


@task(retries=1, retry_delay_seconds=2)
def train_stage(stage: str, config: ModelConfig, pairs: str, real: str | None, checkpoints: str,
                run_id: str, tracking_uri: str, init: str | None = None) -> dict[str, Any]:
    """One stage; a retry resumes from the stage's last checkpoint."""
    result = run_stage(stage, config, pairs, real, checkpoints, run_id, tracking_uri, init=init)
    get_run_logger().info("%s: %d steps (resumed at %d) in %.1f s on %s, %s", stage, result["steps"],
                          result["resumed_at"], result["seconds"], result["device"], result["precision"])
    return result


@task
def open_runs(checkpoints: str, stages: list[str], config: ModelConfig, tracking_uri: str) -> dict[str, Any]:
    """The MLflow parent run and one nested run per stage, kept in the checkpoint folder so that a rerun
    of an interrupted training goes on logging into the same runs."""
    client = MlflowClient(tracking_uri)
    url = storage.join(checkpoints, "runs.json")
    runs = json.loads(storage.read_bytes(url)) if storage.exists(url) else {}
    if "parent" not in runs:
        experiment = experiment_id(client, EXPERIMENT)
        parent = client.create_run(experiment, run_name=f"train-{config.name}",
                                   tags={"oldphoto.checkpoints": checkpoints})
        runs = {"parent": parent.info.run_id, "experiment_id": experiment, "stages": {}}
        client.log_batch(runs["parent"], params=[Param(k, v[:6000]) for k, v in
                                                 sorted(_flatten("", config.model_dump(mode="json")).items())])
    for stage in stages:
        if stage not in runs["stages"]:
            child = client.create_run(runs["experiment_id"], run_name=stage,
                                      tags={"mlflow.parentRunId": runs["parent"], "oldphoto.stage": stage})
            runs["stages"][stage] = child.info.run_id
    storage.write_bytes_atomic(url, json.dumps(runs, indent=2).encode())
    return runs


@task
def close_runs(runs: dict[str, Any], stages: list[str], tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    for stage in stages:
        client.set_terminated(runs["stages"][stage])
    client.set_terminated(runs["parent"])


def build_restorer(checkpoints: str, direct: bool = False, without: tuple[str, ...] = (), init: str | None = None) -> RestorerNetwork:
    """The restorer of the stage checkpoints in one folder (model/restorer.assemble_restorer): each
    checkpoint read once, and only if needed. direct: the ablation's; init (a restorer reference)
    supplies the parts the folder has no stage for; without: optional parts to leave out."""
    @functools.cache
    def load(stage: str) -> dict[str, Any]:
        return load_state(storage.read_bytes(checkpoint_url(checkpoints, stage)))

    present = {stage for stage in ORDER if storage.exists(checkpoint_url(checkpoints, stage))}
    return assemble_restorer(present, load, load_restorer(init) if init else None, direct, without, where=checkpoints)


@contextmanager
def _without_mlflow_advice() -> Iterator[None]:
    """MLflow's log_model advises the author of a pyfunc model to log it from code, and says it could
    not infer a signature from predict's type hint (none fits an image of any shape), in WARNING lines
    on every call: advice a user who trains can do nothing about. Its other lines pass."""
    def advice(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Passing a Python object as `python_model`",
                                                   "Failed to infer model signature"))

    pyfunc = logging.getLogger("mlflow.pyfunc")
    pyfunc.addFilter(advice)
    try:
        yield
    finally:
        pyfunc.removeFilter(advice)


@task
def register_restorer(checkpoints: str, run_id: str, tracking_uri: str, model_name: str,
                      direct: bool = False, init: str | None = None) -> dict[str, Any]:
    """Bundle the stages, log the bundle to the parent run (as a file and as an MLflow pyfunc model)
    and register it as a new version of model_name."""
    import mlflow

    from oldphoto.mlflow_model import RestorerModel

    network = build_restorer(checkpoints, direct, init=init)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / BUNDLE_FILE
        torch.save(network.bundle(), path)
        storage.write_bytes_atomic(storage.join(checkpoints, BUNDLE_FILE), path.read_bytes())
        client = MlflowClient(tracking_uri)
        client.log_artifact(run_id, str(path), "restorer")
        with mlflow.start_run(run_id=run_id), _without_mlflow_advice():
            info = mlflow.pyfunc.log_model(name="restorer", python_model=RestorerModel(), artifacts={"bundle": str(path)},
                                           pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"])
        version = mlflow.register_model(info.model_uri, model_name, tags={"oldphoto.config": network.config.name})
    get_run_logger().info("registered %s version %s", model_name, version.version)
    registered = {"name": model_name, "version": version.version, "uri": f"models:/{model_name}/{version.version}",
                  "run_uri": f"runs:/{run_id}/restorer/{BUNDLE_FILE}"}
    runs_url = storage.join(checkpoints, "runs.json")
    runs = json.loads(storage.read_bytes(runs_url))
    storage.write_bytes_atomic(runs_url, json.dumps(runs | {"registered": registered}, indent=2).encode())
    return registered
