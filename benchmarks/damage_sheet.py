"""Synthetic damage beside real old prints, to judge by eye whether the recipe looks like the archive.

    .venv/bin/python benchmarks/damage_sheet.py CLEAN_FOLDER REAL_FOLDER OUT.png [--degradation archive]
                                                [--count 8] [--crop 384] [--seed 0]

Rows of four: synthetic samples of the recipe (degraded | its damage mask) from the clean photographs,
then crops of the real scans at their own resolution (the same size as the synthetic crops).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from oldphoto.images import encode_png
from oldphoto.sheets import labelled_grid
from oldphoto.synth import DegradationConfig, DegradationPipeline, make_sample


def _read(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("clean", type=Path)
    parser.add_argument("real", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--degradation", default="archive")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--crop", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pipeline = DegradationPipeline(DegradationConfig.load(args.degradation))
    photos = sorted(p for p in args.clean.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    rng = np.random.default_rng(args.seed)
    tiles = []
    for i, path in enumerate(rng.choice(photos, args.count, replace=False)):
        sample = make_sample(_read(path), args.seed * 1000 + i, args.crop, pipeline)
        ops = ", ".join(sorted({op["op"] for op in sample.record["ops"]}))[:60]
        tiles += [(f"synthetic: {ops}", sample.degraded), ("its mask", np.repeat(sample.mask[..., None] * 255, 3, 2).astype(np.uint8))]
    scans = sorted(p for p in args.real.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for path in rng.choice(scans, min(len(scans), args.count), replace=False):
        scan = _read(path)
        h, w = scan.shape[:2]
        y, x = (int(rng.integers(0, max(1, n - args.crop))) for n in (h, w))
        tiles.append((f"real: {path.name}", scan[y : y + args.crop, x : x + args.crop]))
    rows = [tiles[i : i + 4] for i in range(0, len(tiles), 4)]
    args.out.write_bytes(encode_png(labelled_grid(rows, tile=args.crop)))
    print(args.out)


if __name__ == "__main__":
    main()
