"""restore_archive: every image under SRC restored to DST/<same key>, with a manifest and a report."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.futures import as_completed
from prefect.logging import get_run_logger

from oldphoto.progress import FlowProgress
from oldphoto.settings import get_settings
from oldphoto.tasks.restore import (RestoreConfig, check_model, choose_model, fold_manifest, list_inputs, new_run_id,
                                    read_manifest, restore_batch, write_report)


@flow(name="restore-archive")
def restore_archive(src: str, dst: str, config: RestoreConfig | None = None) -> dict[str, Any]:
    """Restore the images under src (folder, prefix, single file or URL) into dst."""
    logger = get_run_logger()
    started = time.perf_counter()
    config = config or RestoreConfig()
    config = config.model_copy(update={"model": choose_model(config.model, get_settings().tracking_uri)})

    # On a worker, which keeps the model loaded for the batches.
    version = check_model.submit(config.model, config.device, config.precision, config.tile).result()
    root, stamps = list_inputs(src, dst)
    keys = list(stamps)
    previous = read_manifest(dst)
    done = {k: r for k, r in previous.items() if r["status"] in ("restored", "skipped") and r["model_version"] == version}
    batches = [{k: stamps[k] for k in keys[i : i + config.batch_size]} for i in range(0, len(keys), config.batch_size)]
    logger.info("%d images under %s, %d restored earlier with model %s", len(keys), src, len(done), version)

    run_id = new_run_id()
    futures = [restore_batch.submit(root, dst, batch, config, {k: done[k] for k in batch if k in done}, run_id, i)
               for i, batch in enumerate(batches)]
    progress = FlowProgress(len(keys), "images", "restore-progress", f"{src} -> {dst}")
    rows: list[dict[str, Any]] = []
    for future in as_completed(futures):
        rows += future.result()
        progress.update(len(rows), f"{sum(r['status'] == 'failed' for r in rows)} failed")
    progress.close()
    rows.sort(key=lambda r: r["key"])

    manifest = fold_manifest(dst)
    seconds = time.perf_counter() - started
    count = {s: sum(r["status"] == s for r in rows) for s in ("restored", "skipped", "failed")}
    summary = {"src": src, "dst": dst, "images": len(keys), **count, "model": config.model,
               "model_version": version, "seconds": round(seconds, 2),
               "images_per_second": round(count["restored"] / seconds, 3), "manifest": manifest}
    summary["report"] = write_report(dst, rows, summary)
    create_table_artifact([{k: r[k] for k in ("key", "status", "reason", "output_key", "seconds")} for r in rows],
                          key="restore-results", description=f"restore {src} -> {dst}")
    logger.info("done: %s", summary)
    return summary
