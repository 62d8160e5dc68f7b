"""restore_archive: every image under SRC restored to DST/<same key>, with a manifest and a report."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.context import FlowRunContext
from prefect.futures import as_completed
from prefect.logging import get_run_logger

from oldphoto.progress import FlowProgress
from oldphoto.settings import get_settings
from oldphoto.storage import IMAGE_SUFFIXES
from oldphoto.tasks.restore import (RestoreConfig, check_model, choose_model, clear_leftovers, fold_manifest, keep_plan,
                                    new_run_id, plan_restore, record_skipped, recorded_version, restore_batch,
                                    write_report)

ARTIFACT_ROWS = 500  # rows of the run's artifact besides the failures: a million-row table helps nobody


@flow(name="restore-archive")
def restore_archive(src: str, dst: str, config: RestoreConfig | None = None) -> dict[str, Any]:
    """Restore the images under src (folder, prefix, single file or URL) into dst."""
    logger = get_run_logger()
    started = time.perf_counter()
    config = config or RestoreConfig()
    config = config.model_copy(update={"model": choose_model(config.model, get_settings().tracking_uri)})

    # On a worker, which keeps the model loaded for the batches.
    version = check_model.submit(config.model, config.device, config.precision, config.tile).result()
    plan = plan_restore(src, dst, config, version)
    keys, batches = plan["stamps"], plan["batches"]
    configs = [config.model_copy(update=settings) for settings in plan["settings"]]  # a redo's own settings
    for model in {c.model for c in configs} - {config.model}:
        check_model.submit(model, config.device, config.precision, config.tile).result()
    logger.info("%d images under %s: %d unchanged since restored with model %s, %d to do in %d batches",
                len(keys), src, len(plan["skipped"]), version, len(keys) - len(plan["skipped"]), len(batches))
    if plan["not_images"]:
        logger.warning("%s: left alone, not images by their names: %s (restore reads %s)", src,
                       ", ".join(f"{n} {s}" for s, n in plan["not_images"].items()), " ".join(sorted(IMAGE_SUFFIXES)))

    run_id = new_run_id()
    rows: list[dict[str, Any]] = record_skipped(dst, plan["skipped"], run_id)
    progress = FlowProgress(len(keys), "images", "restore-progress", f"{src} -> {dst}")
    progress.update(len(rows), "0 failed")
    # A bounded number of batches in flight: a million keys never become a million futures at once.
    waiting, running = list(enumerate(batches))[::-1], set()
    while waiting or running:
        while waiting and len(running) < 2 * _task_slots():
            i, batch = waiting.pop()
            running.add(restore_batch.submit(plan["root"], dst, {k: keys[k] for k in batch}, configs[i],
                                             {k: plan["done"][k] for k in batch if k in plan["done"]}, run_id, i))
        finished = next(as_completed(list(running)))
        running.remove(finished)
        rows += finished.result()
        progress.update(len(rows), f"{sum(r['status'] == 'failed' for r in rows)} failed")
    progress.close()
    rows.sort(key=lambda r: r["key"])

    clear_leftovers(dst, [r["key"] for r in rows if r["status"] == "restored"])
    summary = _summary(src, dst, config, version, rows, started, fold_manifest(dst), plan["not_images"])
    summary["report"] = write_report(dst, rows, summary)
    shown = [r for r in rows if r["status"] == "failed"] + [r for r in rows if r["status"] != "failed"][:ARTIFACT_ROWS]
    create_table_artifact([{k: r[k] for k in ("key", "status", "reason", "output_key", "seconds")} for r in shown],
                          key="restore-results", description=f"restore {src} -> {dst}: every failure, and the "
                          f"first {ARTIFACT_ROWS} others (all of them in the manifest)")
    logger.info("done: %s", summary)
    return summary


def up_to_date(src: str, dst: str, config: RestoreConfig | None = None) -> dict[str, Any] | None:
    """The summary of a run with nothing to do, done without Prefect: when every input under src is
    known restored by the model and unchanged (the model's version from OLDPHOTO_HOME's record, the
    inputs' from the listings and the manifest), the skips are recorded and the report written as
    restore_archive would. Else None, and the plan is kept for restore_archive to take. For the
    command line: a temporary Prefect API takes longer to start than such a rerun takes whole."""
    started = time.perf_counter()
    config = config or RestoreConfig()
    config = config.model_copy(update={"model": choose_model.fn(config.model, get_settings().tracking_uri)})
    version = recorded_version(config.model)
    if version is None:
        return None
    plan = plan_restore.fn(src, dst, config, version)
    if plan["batches"]:
        keep_plan(plan, src, dst, config, version)
        return None
    rows = sorted(record_skipped.fn(dst, plan["skipped"], new_run_id()), key=lambda r: r["key"])
    summary = _summary(src, dst, config, version, rows, started, fold_manifest.fn(dst), plan["not_images"])
    summary["report"] = write_report.fn(dst, rows, summary)
    return summary


def _summary(src: str, dst: str, config: RestoreConfig, version: str, rows: list[dict[str, Any]], started: float,
             manifest: str, not_images: dict[str, int]) -> dict[str, Any]:
    seconds = time.perf_counter() - started
    count = {s: sum(r["status"] == s for r in rows) for s in ("restored", "skipped", "failed")}
    return {"src": src, "dst": dst, "images": len(rows), **count, "not_images": not_images, "model": config.model,
            "model_version": version, "seconds": round(seconds, 2), "images_per_second": round(count["restored"] / seconds, 3),
            "manifest": manifest}


def _task_slots() -> int:
    """Tasks the flow's runner runs at once: the Dask cluster's worker threads, else one."""
    client = getattr(FlowRunContext.get().task_runner, "client", None)
    return max(1, sum(client.nthreads().values())) if client is not None else 1
