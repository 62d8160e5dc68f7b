"""retrain: a round of champion and challenger on the material that arrived since the last round."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from oldphoto import storage
from oldphoto.flows.evaluate import evaluate
from oldphoto.flows.synth import synthesize
from oldphoto.flows.train import train
from oldphoto.settings import get_settings
from oldphoto.tasks.retrain import (RetrainConfig, decide, decision_markdown, find_champion, find_new_material,
                                    find_rejected, record_seen, round_url, stage_material, start_from_champion)
from oldphoto.tasks.synth import SynthConfig


@flow(name="retrain")
def retrain(config: RetrainConfig | None = None) -> dict[str, Any]:
    config = config or RetrainConfig()
    settings = get_settings()
    work = config.work or str((settings.home / "retrain").resolve())

    material = find_new_material(config, work)
    if not material["clean"]:
        note = f"No new clean photographs under {', '.join(config.clean) or '(none watched)'}: nothing to train on."
        create_markdown_artifact(f"# Retraining round\n\n{note}", key="retrain-decision")
        return {"promoted": False, "reason": note, "new": {k: len(v) for k, v in material.items()}}

    here = round_url(work, material)
    clean = stage_material(material["clean"], storage.join(here, "clean"))
    real = stage_material(material["real"], storage.join(here, "real")) if material["real"] else None
    pairs = storage.join(here, "pairs")
    synthesize(clean, pairs, SynthConfig(count=len(material["clean"]) * config.samples_per_photo, seed=config.seed,
                                         crop=config.crop))

    champion = find_champion(config.model_name, settings.tracking_uri)
    stages = [s for s in config.stages if real is not None or s != "vae_a"]  # vae_a learns from real scans
    checkpoints = storage.join(here, "checkpoints")
    model_config, targets = start_from_champion(champion["checkpoints"], checkpoints, stages, config.steps)
    challenger = train(pairs, real, model_config, list(targets), checkpoints, config.model_name, steps=targets)

    rejected = find_rejected(config)  # cases the curators turned down: the sheet shows them restored anew
    sheet = stage_material(rejected, storage.join(here, "rejected")) if rejected else None
    scored = evaluate(clean=config.heldout, real=sheet, config=config.evaluation.model_copy(
        update={"model": challenger["uri"], "compare": champion["uri"]}))
    decision = decide(champion, challenger, scored, config.margin_db, config.model_name, settings.tracking_uri)
    record_seen(work, material, str(flow_run.get_id() or here))
    create_markdown_artifact(decision_markdown(decision, material, config.margin_db, scored), key="retrain-decision")
    return decision | {"new": {k: len(v) for k, v in material.items()}, "round": here}
