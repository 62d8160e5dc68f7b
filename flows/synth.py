"""synthesize: clean photographs under SRC -> Parquet shards of (clean, degraded, mask) pairs in DST."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.logging import get_run_logger

from oldphoto.tasks.synth import (SynthConfig, check_destination, fingerprint, list_sources, probe_sources,
                                  shard_name, synthesize_shard, write_manifest)

PROBE_CHUNK = 64
PROGRESS_EVERY_S = 5.0


def plan_samples(keys: list[str], config: SynthConfig) -> list[list[tuple[int, str]]]:
    """Sample i takes source order[i mod n] (a seeded permutation), grouped into shards."""
    order = np.random.default_rng(config.seed).permutation(len(keys))
    samples = [(i, keys[order[i % len(keys)]]) for i in range(config.count)]
    return [samples[i : i + config.shard_size] for i in range(0, config.count, config.shard_size)]


@flow(name="synthesize")
def synthesize(src: str, dst: str, config: SynthConfig | None = None) -> dict[str, Any]:
    """Degrade config.count samples of the images under src and write them as Parquet shards to dst."""
    config = config or SynthConfig()
    logger = get_run_logger()
    started = time.perf_counter()

    keys = list_sources(src)
    probes = [r for chunk in probe_sources.map(src, [keys[i : i + PROBE_CHUNK] for i in range(0, len(keys), PROBE_CHUNK)])
              .result() for r in chunk]
    unreadable = {p["key"]: p["reason"] for p in probes if p["reason"]}
    for key, reason in unreadable.items():
        logger.warning("skipping unreadable source %s: %s", key, reason)
    readable = [k for k in keys if k not in unreadable]
    if not readable:
        raise ValueError(f"{src}: none of the {len(keys)} images could be read")

    dataset = fingerprint(config, readable)
    check_destination(dst, dataset)
    shards = plan_samples(readable, config)
    progress = create_progress_artifact(0.0, key="synthesize-progress", description=f"{src} -> {dst}")
    futures = [synthesize_shard.submit(src, dst, i, samples, config, dataset) for i, samples in enumerate(shards)]
    results, done, reported = [], 0, 0.0
    for future in as_completed(futures):
        result = future.result()
        results.append(result)
        done += result["rows"]
        now = time.perf_counter()
        # Report at most every few seconds: each report is a call to the Prefect API, and on a small
        # machine the API server's work comes out of the workers' share.
        if now - reported >= PROGRESS_EVERY_S or done == config.count:
            reported = now
            logger.info("%d/%d samples (%d/%d shards), %.1f samples/s", done, config.count, len(results),
                        len(shards), done / max(1e-9, now - started))
            update_progress_artifact(progress, 100.0 * done / config.count)
    results.sort(key=lambda r: r["shard"])

    manifest = {
        "count": config.count,
        "config": config.model_dump(mode="json"),
        "source": {"url": src, "images": len(keys), "readable": len(readable),
                   "unreadable": [{"key": k, "reason": r} for k, r in sorted(unreadable.items())]},
        "fingerprint": dataset,
        "shards": [{"name": shard_name(r["shard"]), "rows": r["rows"], "sha256": r["sha256"]} for r in results],
        "content_sha256": _content_hash(results),
    }
    write_manifest(dst, manifest)
    seconds = time.perf_counter() - started
    written = sum(r["rows"] for r in results if not r["skipped"])
    summary = {
        "dst": dst, "samples": config.count, "shards": len(results),
        "shards_written": sum(not r["skipped"] for r in results),
        "shards_skipped": sum(r["skipped"] for r in results),
        "sources": len(keys), "unreadable_sources": len(unreadable),
        "seconds": round(seconds, 2), "samples_per_second": round(written / seconds, 2),
        "content_sha256": manifest["content_sha256"],
    }
    create_markdown_artifact(_summary_markdown(summary, unreadable), key="synthesize-summary")
    logger.info("done: %s", summary)
    return summary


def _content_hash(results: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for r in results:
        digest.update(f"{shard_name(r['shard'])} {r['sha256']}\n".encode())
    return digest.hexdigest()


def _summary_markdown(summary: dict[str, Any], unreadable: dict[str, str]) -> str:
    lines = ["# Synthesis summary", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    if unreadable:
        lines += ["", "## Unreadable sources (skipped)", "", "| key | reason |", "|---|---|"]
        lines += [f"| {k} | {r} |" for k, r in sorted(unreadable.items())]
    return "\n".join(lines)
