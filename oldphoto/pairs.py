"""Reading the synthetic pair shards written by the synthesis flow."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq

from . import storage
from .images import decode_png


def shard_urls(url: str) -> list[str]:
    """The Parquet shards of a data set, in order."""
    fs, root = storage.filesystem(url)
    names = sorted(p for p in fs.ls(root, detail=False) if p.endswith(".parquet"))
    return [storage.join(url, p.rsplit("/", 1)[-1]) for p in names]


def decoded(row: dict[str, Any]) -> dict[str, Any]:
    """A sample as stored (PNG bytes, JSON record), its images decoded in place."""
    row["clean"] = decode_png(row["clean"])
    row["degraded"] = decode_png(row["degraded"])
    row["mask"] = decode_png(row["mask"]) > 127
    row["record"] = json.loads(row["record"])
    return row


def stored_rows(shard: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard as stored: images as PNG bytes."""
    fs, path = storage.filesystem(shard)
    with fs.open(path, "rb") as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=16):
            yield from batch.to_pylist()


def read_shard(shard: str) -> list[dict[str, Any]]:
    """Every sample of one shard, decoded."""
    return [decoded(row) for row in stored_rows(shard)]


def read_pairs(url: str, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Samples of a data set as dicts with decoded images (clean, degraded: HxWx3; mask: HxW bool)."""
    seen = 0
    for shard in shard_urls(url):
        for row in stored_rows(shard):
            if limit is not None and seen >= limit:
                return
            seen += 1
            yield decoded(row)
