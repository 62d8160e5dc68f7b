"""Prefect tasks of scheduled retraining: find the material not trained on yet (a Parquet ledger of
seen keys), stage it for one round, start the challenger from the champion's checkpoints, and move
the `champion` alias only when the challenger wins by the configured margin."""

from __future__ import annotations

import hashlib
import io
import json
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from pydantic import BaseModel, Field
from tabulate import tabulate

from oldphoto import SAMPLES, storage
from oldphoto.model.config import ModelConfig
from oldphoto.model.stages import DEFAULT, STAGES, sources
from oldphoto.model.train import load_state
from oldphoto.models import CHAMPION, REGISTERED_NAME
from oldphoto.tasks.evaluate import EvaluateConfig
from oldphoto.tasks.review import reviewed


class RetrainConfig(BaseModel):
    """Where new material appears, how much a round trains, and what a challenger must beat."""

    clean: list[str] = Field(default_factory=list, description="folders or URLs watched for new clean photographs")
    real: list[str] = Field(default_factory=list, description="folders or URLs watched for new unrestored real scans")
    reviewed: list[str] = Field(default_factory=list, description="restored archives reviewed with `oldphoto review`: "
                                "the scans of accepted restorations join the real scans, the accepted restorations "
                                "the clean photographs, and the scans of rejected ones the evaluation's before/after sheet")
    work: str | None = Field(None, description="ledger, staged material, pairs and checkpoints (default OLDPHOTO_HOME/retrain)")
    model_name: str = REGISTERED_NAME
    samples_per_photo: int = Field(8, gt=0, description="synthetic pairs per new clean photograph")
    crop: int = Field(256, ge=16)
    seed: int = Field(0, ge=0)
    stages: list[str] = Field(["vae_a", "mapping", "scratch", "refine", "tone"],
                              description="fine-tuned; vae_a only when there are new real scans, mapping only "
                                          "under a champion without refine (whose mapping refine replaces)")
    steps: int = Field(500, gt=0, description="steps per stage beyond the champion's")
    margin_db: float = Field(0.1, description="Y-PSNR the challenger must gain over the champion to replace it")
    heldout: str = Field(str(SAMPLES), description="clean photographs of the fixed evaluation set (default: the "
                         "photographs the package ships; name your own held-out set)")
    evaluation: EvaluateConfig = Field(default_factory=EvaluateConfig, description="its seed, count, crop; model and compare are set by the flow")


def _keys(urls: list[str]) -> list[str]:
    return [storage.join(url, key) for url in urls for key in storage.list_images(url)]


def _ledger_url(work: str) -> str:
    return storage.join(work, "ledger.parquet")


def _read_ledger(work: str) -> pa.Table | None:
    url = _ledger_url(work)
    return pq.read_table(io.BytesIO(storage.read_bytes(url))) if storage.exists(url) else None


@task(retries=2, retry_delay_seconds=[2, 10])
def find_new_material(config: RetrainConfig, work: str) -> dict[str, list[str]]:
    """The keys under the watched URLs that no earlier round trained on."""
    ledger = _read_ledger(work)
    seen = set(ledger["key"].to_pylist()) if ledger is not None else set()
    offered = [reviewed(dst) for dst in config.reviewed]
    found = {"clean": _keys(config.clean) + [k for o in offered for k in o["clean"]],
             "real": _keys(config.real) + [k for o in offered for k in o["real"]]}
    return {kind: [k for k in keys if k not in seen] for kind, keys in found.items()}


@task(retries=2, retry_delay_seconds=[2, 10])
def find_rejected(config: RetrainConfig) -> list[str]:
    """The scans whose restorations curators rejected, in every reviewed archive (not only new ones)."""
    return [k for dst in config.reviewed for k in reviewed(dst)["rejected"]]


def round_url(work: str, material: dict[str, list[str]]) -> str:
    """One folder per set of new material: a rerun after a crash finds its staged files, pairs and
    checkpoints there and resumes them."""
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:12]
    return storage.join(work, "rounds", digest)


@task(retries=2, retry_delay_seconds=[2, 10])
def stage_material(keys: list[str], dst: str) -> str:
    """Copy the new files into the round's folder (numbered, so that equal names from different
    sources stay apart), skipping those already there."""
    for i, key in enumerate(keys):
        target = storage.join(dst, f"{i:06d}-{key.rsplit('/', 1)[-1]}")
        if not storage.exists(target):
            storage.write_bytes_atomic(target, storage.read_bytes(key))
    return dst


@task
def find_champion(model_name: str, tracking_uri: str) -> dict[str, Any]:
    """The version under the `champion` alias; when none has it yet, the latest version takes it."""
    from mlflow import MlflowClient  # here: importing MLflow costs seconds, and the CLI loads this module's config
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        versions = client.search_model_versions(f"name = '{model_name}'")
        if not versions:
            raise FileNotFoundError(f"no registered model {model_name!r} to fine-tune: train one first (oldphoto train)") from None
        version = max(versions, key=lambda v: int(v.version))
        client.set_registered_model_alias(model_name, CHAMPION, version.version)
    checkpoints = client.get_run(version.run_id).data.tags.get("oldphoto.checkpoints")
    if not checkpoints:
        raise ValueError(f"{model_name} version {version.version} names no checkpoint folder to fine-tune from")
    return {"version": version.version, "uri": f"models:/{model_name}/{version.version}", "checkpoints": checkpoints}


@task(retries=2, retry_delay_seconds=[2, 10])
def start_from_champion(champion: str, dst: str, stages: list[str], steps: int) -> tuple[ModelConfig, dict[str, int]]:
    """Copy the champion's stage checkpoints into the round's folder (once: a rerun keeps the
    progress made), and the step each fine-tuned stage trains to: the champion's plus steps. A stage
    the champion was trained before (refine, tone) is trained afresh; a stage whose every part the
    champion takes from a later one (the mapping under refine) is not fine-tuned: it would change
    nothing that restores use."""
    from oldphoto.tasks.train import checkpoint_url  # here: it imports MLflow, which the CLI's start need not

    present = {stage for stage in DEFAULT if storage.exists(checkpoint_url(champion, stage))}
    used = set(sources(present).values())
    targets, config = {}, None
    for stage in DEFAULT:
        url = checkpoint_url(champion, stage)
        if STAGES[stage].optional and stage not in present:
            if stage in stages:
                targets[stage] = steps
            continue
        data = storage.read_bytes(url)
        state = load_state(data)
        config = ModelConfig.model_validate_json(state["config"])
        if stage in stages and stage in used:
            targets[stage] = state["trainer"]["step"] + steps
        if not storage.exists(checkpoint_url(dst, stage)):
            storage.write_bytes_atomic(checkpoint_url(dst, stage), data)
    return config, targets


@task
def decide(champion: dict[str, Any], challenger: dict[str, Any], evaluation: dict[str, Any], margin_db: float,
           model_name: str, tracking_uri: str) -> dict[str, Any]:
    """Move the alias if the challenger gained at least margin_db of Y-PSNR; the old version stays."""
    scores = evaluation["methods"]
    gain = scores["model"]["psnr_y"] - scores["compare"]["psnr_y"]
    promoted = gain >= margin_db
    from mlflow import MlflowClient  # here: importing MLflow costs seconds

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    if promoted:
        client.set_registered_model_alias(model_name, CHAMPION, challenger["version"])
    client.set_model_version_tag(model_name, challenger["version"], "oldphoto.retrain",
                                 f"{'promoted' if promoted else 'kept as challenger'}: {gain:+.2f} dB Y-PSNR over version {champion['version']}")
    return {"promoted": promoted, "gain_db": gain, "champion": challenger["version"] if promoted else champion["version"],
            "challenger": challenger["version"], "previous_champion": champion["version"]}


def decision_markdown(decision: dict[str, Any], material: dict[str, list[str]], margin_db: float,
                      evaluation: dict[str, Any]) -> str:
    s = evaluation["methods"]
    verdict = (f"**Promoted**: version {decision['challenger']} is the champion now (version {decision['previous_champion']} stays registered)."
               if decision["promoted"] else
               f"**Not promoted**: version {decision['previous_champion']} stays the champion; version {decision['challenger']} stays registered.")
    lines = ["# Retraining round", "", verdict, "",
             f"New material: {len(material['clean'])} clean photographs, {len(material['real'])} real scans.",
             f"Rule: promote when the challenger's Y-PSNR beats the champion's by at least {margin_db:.2f} dB; "
             f"it gained {decision['gain_db']:+.2f} dB.", "",
             f"Fixed evaluation set: {evaluation['samples']} pairs (`{evaluation['pairs']}`).", ""]
    rows = [[f"champion, version {decision['previous_champion']}", f"{s['compare']['psnr_y']:.2f}", f"{s['compare']['ssim_y']:.4f}", ""],
            [f"challenger, version {decision['challenger']}", f"{s['model']['psnr_y']:.2f}", f"{s['model']['ssim_y']:.4f}",
             f"{evaluation['mask']['f1']:.3f}"],
            ["degraded input", f"{s['degraded']['psnr_y']:.2f}", f"{s['degraded']['ssim_y']:.4f}", ""]]
    lines.append(tabulate(rows, ["", "Y-PSNR (dB)", "SSIM (Y)", "mask F1"], "github", disable_numparse=True))
    return "\n".join(lines)


@task(retries=2, retry_delay_seconds=[2, 10])
def record_seen(work: str, material: dict[str, list[str]], round_id: str) -> None:
    """Add the round's keys to the ledger (rewritten atomically), so that the next round skips them."""
    rows = [{"key": key, "kind": kind, "round": round_id, "recorded": time.time()}
            for kind, keys in material.items() for key in keys]
    table = pa.Table.from_pylist(rows, schema=pa.schema([("key", pa.string()), ("kind", pa.string()),
                                                         ("round", pa.string()), ("recorded", pa.float64())]))
    ledger = _read_ledger(work)
    if ledger is not None:
        table = pa.concat_tables([ledger, table])
    out = io.BytesIO()
    pq.write_table(table, out)
    storage.write_bytes_atomic(_ledger_url(work), out.getvalue())
