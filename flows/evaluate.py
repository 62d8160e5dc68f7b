"""evaluate: a restorer against the classical baselines on held-out synthetic pairs, logged to MLflow."""

from __future__ import annotations

import hashlib
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from oldphoto.flows.synth import synthesize
from oldphoto.pairs import shard_urls
from oldphoto.settings import get_settings
from oldphoto.tasks.evaluate import (EvaluateConfig, check_lpips, evaluate_shard, heldout_url, log_evaluation, markdown_table,
                                     real_sheet, summarize, write_results)
from oldphoto.tasks.restore import check_model
from oldphoto.tasks.synth import SynthConfig

HELDOUT_SHARD_SIZE = 16


@flow(name="evaluate")
def evaluate(pairs: str | None = None, clean: str | None = None, config: EvaluateConfig | None = None,
             out: str | None = None, real: str | None = None) -> dict[str, Any]:
    """Score config.model and the baselines on pairs, or on a held-out set synthesized from clean
    photographs with config's seed; real: old photographs for a before/after sheet."""
    config = config or EvaluateConfig()
    if (pairs is None) == (clean is None):
        raise ValueError("give exactly one of synthetic pairs or clean photographs to synthesize them from, not both")
    settings = get_settings()
    version = check_model.submit(config.model, config.device, config.precision, config.tile).result()
    if config.compare:
        check_model.submit(config.compare, config.device, config.precision, config.tile).result()
    check_lpips.submit(config).result()
    if clean is not None:
        pairs = heldout_url(clean, config, settings.home)
        synthesize(clean, pairs, SynthConfig(count=config.count, seed=config.seed, crop=config.crop,
                                             shard_size=HELDOUT_SHARD_SIZE, degradation=config.degradation))
    shards = shard_urls(pairs)
    if not shards:
        raise FileNotFoundError(f"{pairs}: no Parquet shards of pairs")
    out = out or str(settings.home / "evaluations" / f"{version}-{hashlib.sha256(pairs.encode()).hexdigest()[:8]}")

    results = [f.result() for f in [evaluate_shard.submit(shard, config) for shard in shards]]
    rows = sorted((r for result in results for r in result["rows"]), key=lambda r: r["sample_id"])
    summary = summarize(rows)
    files = write_results(out, rows, summary, [s for result in results for s in result["sheet"]])
    if real is not None:
        files["real_sheet.png"] = real_sheet.submit(real, out, config).result()
    params = {"model": config.model, "model_version": version, "compare": str(config.compare), "pairs": pairs,
              "clean": str(clean), "seed": config.seed, "count": len(rows), "scratch": config.scratch, "colour": config.colour, "real": str(real)}
    run_id = log_evaluation(summary, files, params, version, settings.tracking_uri)

    table = markdown_table(summary)
    create_markdown_artifact(table, key="evaluation")
    get_run_logger().info("evaluation of %s (%s) logged to MLflow run %s", config.model, version, run_id)
    return {"model": config.model, "model_version": version, "pairs": pairs, "out": out, "files": files,
            "mlflow_run_id": run_id, "table": table, **summary}
