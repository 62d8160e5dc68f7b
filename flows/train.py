"""train: each stage of the triplet domain translation network in turn, tracked in MLflow, then the
restorer bundle registered as a new model version."""

from __future__ import annotations

import hashlib
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from tabulate import tabulate

from oldphoto import storage
from oldphoto.model.config import ModelConfig
from oldphoto.model.stages import DEFAULT, ORDER, REQUIRED, STAGES
from oldphoto.models import REGISTERED_NAME, load_restorer
from oldphoto.settings import get_settings
from oldphoto.tasks.train import checkpoint_url, close_runs, open_runs, register_restorer, train_stage


def default_checkpoints(config: ModelConfig, pairs: str, real: str | None, init: str | None = None) -> str:
    """The same command gets the same checkpoint folder, so that running it again resumes it (with
    more --steps, it trains on from there)."""
    settings = config.model_dump_json(exclude={"train": {"steps"}})
    text = f"{settings}\n{pairs}\n{real}" + (f"\n{init}" if init else "")
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    return str((get_settings().home / "checkpoints" / f"{config.name}-{key}").resolve())


@flow(name="train")
def train(pairs: str, real: str | None = None, config: ModelConfig | None = None, stages: list[str] | None = None,
          checkpoints: str | None = None, model_name: str = REGISTERED_NAME,
          steps: dict[str, int] | None = None, init: str | None = None) -> dict[str, Any]:
    """steps: the step each stage trains to, where it differs from config.train.steps (fine-tuning
    stages that stopped at different steps). init: a restorer (path, URL, MLflow URI) whose parts
    stand in for the stages the checkpoint folder has not trained (refine fine-tunes it, say)."""
    config = config or ModelConfig()
    unknown = set(stages or []) - set(ORDER)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; the stages are {', '.join(ORDER)}")
    stages = [s for s in ORDER if s in (stages or DEFAULT)]  # in dependency order
    direct = any(STAGES[s].ablation for s in stages)  # its restorer is the ablation's path beside the detector
    if not init and (teaching := [s for s in stages if STAGES[s].starts_from == "teacher"]):
        raise ValueError(f"the {teaching[0]} stage learns from a teacher: give the restorer to distill as init")
    checkpoints = checkpoints or default_checkpoints(config, pairs, real, init)
    if init:
        load_restorer(init)  # a bad reference fails now, not after the first stages have trained
    else:
        # Stages not trained now must already be in the folder: a restorer needs all its parts (refine and
        # the tone correction only if they were ever trained there; older folders have neither).
        needed = [s for s in ORDER if STAGES[s].ablation or s == "scratch"] if direct else REQUIRED
        missing = [s for s in needed if s not in stages and not storage.exists(checkpoint_url(checkpoints, s))]
        if missing:
            raise FileNotFoundError(f"stages {', '.join(missing)} are neither asked for nor trained in {checkpoints}")
    tracking_uri = get_settings().tracking_uri

    def until(stage: str) -> ModelConfig:
        if not steps or stage not in steps:
            return config
        return config.model_copy(update={"train": config.train.model_copy(update={"steps": steps[stage]})})

    runs = open_runs(checkpoints, stages, config, tracking_uri)
    results = [train_stage(stage, until(stage), pairs, real, checkpoints, runs["stages"][stage], tracking_uri, init)
               for stage in stages]
    registered = runs.get("registered")
    trained_now = any(r["steps"] > r["resumed_at"] for r in results)
    # A rerun of a finished training trains nothing and registers nothing new.
    if trained_now or not registered or registered["name"] != model_name:
        registered = register_restorer(checkpoints, runs["parent"], tracking_uri, model_name, direct, init)
    close_runs(runs, stages, tracking_uri)

    columns = ["stage", "steps", "resumed_at", "seconds", "device", "precision"]
    lines = ["# Training", "", f"checkpoints: `{checkpoints}`", f"MLflow run: `{runs['parent']}`",
             f"registered: `{registered['uri']}`", "",
             tabulate([[r[c] for c in columns] for r in results], columns, "github", disable_numparse=True)]
    create_markdown_artifact("\n".join(lines), key="train-summary")
    return {"checkpoints": checkpoints, "run_id": runs["parent"], "stages": results, **registered}
