"""Hard negatives for the scratch detector: the samples of a pair set on which a restorer's detector
marks what is not damage, written as shards that the `scratch` stage trains on beside the usual pairs
(a folder holding both sets' shards).

    .venv/bin/python scripts/hard_negatives.py PAIRS MODEL OUT [--share 0.001]

PAIRS: pairs synthesized without the damage stage (oldphoto/weights/recipe-nodamage36.json), so that
whatever the detector marks beyond their masks is a false mark. A sample is kept where its degraded
photo has at least SHARE of its pixels falsely marked; and its clean photo as an untouched sample
(degraded = clean, no mask), where the detector marks that much of it. The detector is the one that
`oldphoto restore` runs, at the model's threshold (`Restorer.detect`).
"""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from oldphoto import storage
from oldphoto.images import encode_png
from oldphoto.model.engine import Restorer
from oldphoto.models import load_restorer
from oldphoto.pairs import decoded, shard_urls, stored_rows
from oldphoto.tasks.synth import SCHEMA

SHARD_SIZE = 64
UNTOUCHED = json.dumps({"grayscale": False, "ops": []})  # as synthesis records a sample left as it is


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs")
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--share", type=float, default=0.001, help="least share of pixels falsely marked")
    args = parser.parse_args()
    restorer = Restorer(load_restorer(args.model), "auto", "auto")
    kept: list[dict] = []
    shards, seen, degraded_kept, clean_kept = 0, 0, 0, 0

    def write(rows: list[dict]) -> None:
        nonlocal shards
        out = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out, compression="zstd")
        storage.write_bytes_atomic(storage.join(args.out, f"hard-negatives-{shards:05d}.parquet"), out.getvalue())
        shards += 1

    for url in shard_urls(args.pairs):
        for raw in stored_rows(url):
            sample = decoded(dict(raw))
            seen += 1
            if (restorer.detect(sample["degraded"]) & ~sample["mask"]).mean() >= args.share:
                kept.append(raw)
                degraded_kept += 1
            if restorer.detect(sample["clean"]).mean() >= args.share:
                kept.append(raw | {"degraded": raw["clean"], "mask": encode_png(np.zeros(sample["mask"].shape, np.uint8)),
                                   "record": UNTOUCHED})
                clean_kept += 1
            while len(kept) >= SHARD_SIZE:
                write(kept[:SHARD_SIZE])
                kept = kept[SHARD_SIZE:]
    if kept:
        write(kept)
    print(json.dumps({"samples": seen, "degraded_kept": degraded_kept, "clean_kept": clean_kept, "shards": shards}))


if __name__ == "__main__":
    main()
