"""synthesize: clean photographs under SRC -> Parquet shards of (clean, degraded, mask) pairs in DST."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.futures import as_completed
from prefect.logging import get_run_logger
from tabulate import tabulate

from oldphoto.progress import FlowProgress
from oldphoto.tasks.synth import (SynthConfig, check_destination, fingerprint, list_sources, probe_sources,
                                  shard_name, synthesize_shard, write_manifest)

PROBE_CHUNK = 64


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
    progress = FlowProgress(config.count, "samples", "synthesize-progress", f"{src} -> {dst}")
    futures = [synthesize_shard.submit(src, dst, i, samples, config, dataset) for i, samples in enumerate(shards)]
    results = []
    for future in as_completed(futures):
        results.append(future.result())
        progress.update(sum(r["rows"] for r in results), f"{len(results)}/{len(shards)} shards")
    progress.close()
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
    lines = ["# Synthesis summary", "", tabulate(summary.items(), ["", ""], "github", disable_numparse=True)]
    if unreadable:
        lines += ["", "## Unreadable sources (skipped)", "",
                  tabulate(sorted(unreadable.items()), ["key", "reason"], "github", disable_numparse=True)]
    return "\n".join(lines)
