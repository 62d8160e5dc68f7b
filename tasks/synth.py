"""Prefect tasks of the synthesis flow: find sources, probe them, write Parquet shards of pairs."""

from __future__ import annotations

import hashlib
import io
import json
import time
from typing import Annotated, Any

import cv2
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.logging import get_run_logger
from pydantic import BaseModel, BeforeValidator, Field

from oldphoto import storage
from oldphoto.images import UnreadableImage, decode_rgb, encode_png
from oldphoto.runtime import keep_freed_memory
from oldphoto.synth import DegradationConfig, DegradationPipeline, make_sample, sample_seed

SCHEMA = pa.schema([
    ("sample_id", pa.int64()),
    ("source_key", pa.string()),
    ("seed", pa.uint64()),
    ("clean", pa.binary()),
    ("degraded", pa.binary()),
    ("mask", pa.binary()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("record", pa.string()),
])
FINGERPRINT_KEY = b"oldphoto.fingerprint"


# A square crop of each photograph; None, or 0 (how a command line says it), keeps whole images.
Crop = Annotated[Annotated[int, Field(ge=16)] | None, BeforeValidator(lambda value: value or None)]


class SynthConfig(BaseModel):
    """What a synthetic data set is made of; with the source list it determines every byte on one
    machine (OpenCV's SIMD code, chosen per CPU, can change the last bits of pixels elsewhere)."""

    count: int = Field(400, gt=0, description="number of samples")
    seed: int = Field(0, ge=0, description="sample i is drawn with SeedSequence([seed, i])")
    crop: Crop = Field(256, description="square crop size; 0 keeps whole images")
    shard_size: int = Field(64, gt=0, description="samples per Parquet shard")
    degradation: DegradationConfig = Field(default_factory=lambda: DegradationConfig.load("default"),
                                           description="degradation preset (default, v2, corruptions) or JSON file")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def fingerprint(config: SynthConfig, keys: list[str]) -> str:
    """Hash of everything a shard's bytes depend on, stored in every shard and the manifest."""
    digest = hashlib.sha256(config.model_dump_json().encode())
    for key in keys:
        digest.update(key.encode() + b"\0")
    return digest.hexdigest()


@task
def list_sources(src: str) -> list[str]:
    keys = storage.list_images(src)
    if not keys:
        raise FileNotFoundError(f"{src}: no images found (looked for {', '.join(sorted(storage.IMAGE_SUFFIXES))})")
    get_run_logger().info("found %d images under %s", len(keys), src)
    return keys


@task(retries=2, retry_delay_seconds=[1, 5])
def probe_sources(src: str, keys: list[str]) -> list[dict[str, Any]]:
    """Decode each source once; report which are unreadable and why.

    A full decode (not just a header check) finds truncated files too. It is done up front, at the
    cost of a second decode later, because the sample plan must rest on the set of readable sources
    for the data set to be the same whichever shard meets a bad file first.
    """
    results = []
    for key in keys:
        try:
            decode_rgb(storage.read_bytes(storage.join(src, key)), key)
            results.append({"key": key, "reason": None})
        except UnreadableImage as error:
            results.append({"key": key, "reason": error.reason})
    return results


@task(retries=2, retry_delay_seconds=[1, 5])
def synthesize_shard(src: str, dst: str, shard: int, samples: list[tuple[int, str]], config: SynthConfig,
                     dataset_fingerprint: str) -> dict[str, Any]:
    """Write one shard of (index, source key) samples, unless a complete one is there already."""
    url = storage.join(dst, shard_name(shard))
    existing = _existing_shard(url, dataset_fingerprint, len(samples))
    if existing is not None:
        return {"shard": shard, "rows": len(samples), "sha256": existing, "skipped": True, "seconds": 0.0}
    # One Dask worker per core: OpenCV's and Arrow's own thread pools would oversubscribe it.
    cv2.setNumThreads(1)
    pa.set_cpu_count(1)
    keep_freed_memory()
    started = time.perf_counter()
    pipeline = DegradationPipeline(config.degradation)
    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for index, key in samples:
        seed = sample_seed(config.seed, index)
        source = decode_rgb(storage.read_bytes(storage.join(src, key)), key)
        sample = make_sample(source, seed, config.crop, pipeline)
        columns["sample_id"].append(index)
        columns["source_key"].append(key)
        columns["seed"].append(seed)
        columns["clean"].append(encode_png(sample.clean))
        columns["degraded"].append(encode_png(sample.degraded))
        columns["mask"].append(encode_png(sample.mask.astype("uint8") * 255))
        columns["height"].append(sample.degraded.shape[0])
        columns["width"].append(sample.degraded.shape[1])
        columns["record"].append(json.dumps(sample.record, sort_keys=True))
    table = pa.table(columns, schema=SCHEMA).replace_schema_metadata({FINGERPRINT_KEY: dataset_fingerprint.encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", row_group_size=16, use_dictionary=["source_key"])
    data = buffer.getvalue()
    storage.write_bytes_atomic(url, data)
    return {"shard": shard, "rows": len(samples), "sha256": hashlib.sha256(data).hexdigest(), "skipped": False,
            "seconds": time.perf_counter() - started}


def _existing_shard(url: str, dataset_fingerprint: str, rows: int) -> str | None:
    """The sha256 of a complete shard of this data set at url, or None if it must be (re)written."""
    if not storage.exists(url):
        return None
    data = storage.read_bytes(url)
    try:
        metadata = pq.ParquetFile(io.BytesIO(data)).metadata
    except Exception:
        return None  # not a readable Parquet file: rewrite it
    stored = (metadata.metadata or {}).get(FINGERPRINT_KEY, b"").decode()
    if stored != dataset_fingerprint:
        raise FileExistsError(f"{url} belongs to a data set made with other settings or sources; "
                              "write to another destination or remove it")
    return hashlib.sha256(data).hexdigest() if metadata.num_rows == rows else None


@task
def check_destination(dst: str, dataset_fingerprint: str) -> None:
    """Refuse, before any work, a destination that holds a data set made with other settings."""
    url = storage.join(dst, "manifest.json")
    if storage.exists(url):
        stored = json.loads(storage.read_bytes(url)).get("fingerprint")
        if stored != dataset_fingerprint:
            raise FileExistsError(f"{dst} holds a data set made with other settings or sources; "
                                  "write to another destination or remove it")


@task
def write_manifest(dst: str, manifest: dict[str, Any]) -> str:
    """Write the manifest, unless the same bytes are there: a rerun that skips every shard then
    changes nothing in dst (no new object, nor a new version in a versioned bucket). Every shard is
    written by now: what writers killed midway (an earlier run's) left in dst goes."""
    storage.remove_leftovers(dst)
    url = storage.join(dst, "manifest.json")
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    if not (storage.exists(url) and storage.read_bytes(url) == data):
        storage.write_bytes_atomic(url, data)
    return url
