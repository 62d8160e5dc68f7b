"""Contact sheets: synthetic samples (clean | degraded | mask) beside real old photographs, to judge by eye."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    """Scale to fit a size x size tile (letterboxed on grey)."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    h, w = image.shape[:2]
    scale = size / max(h, w)
    resized = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    tile = np.full((size, size, 3), 48, np.uint8)
    y, x = (size - resized.shape[0]) // 2, (size - resized.shape[1]) // 2
    tile[y : y + resized.shape[0], x : x + resized.shape[1]] = resized
    return tile


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    cv2.putText(tile, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(tile, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 80), 1, cv2.LINE_AA)
    return tile


def _grid(tiles: Sequence[np.ndarray], columns: int, size: int) -> np.ndarray:
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * (size + 4) + 4, columns * (size + 4) + 4, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[4 + r * (size + 4) : 4 + r * (size + 4) + size, 4 + c * (size + 4) : 4 + c * (size + 4) + size] = tile
    return sheet


def labelled_grid(rows: Sequence[Sequence[tuple[str, np.ndarray]]], tile: int = 200) -> np.ndarray:
    """An RGB sheet with one row per sequence of (label, RGB image), each image fit to a tile."""
    columns = max(len(row) for row in rows)
    tiles = [_label(_fit(image, tile), text) for row in rows for text, image in row]
    if any(len(row) != columns for row in rows):
        raise ValueError("every row of a labelled grid needs the same number of images")
    return _grid(tiles, columns, tile)


def contact_sheet(samples: Iterable[dict], real: Sequence[tuple[str, np.ndarray]] = (), tile: int = 200,
                  triplets_per_row: int = 3) -> np.ndarray:
    """An RGB sheet: rows of synthetic (clean, degraded, mask) triplets, then the real photographs."""
    tiles = []
    for sample in samples:
        ops = ",".join(op["op"] for op in sample["record"]["ops"] if op["stage"] == "damage") or "no damage"
        tiles += [_label(_fit(sample["clean"], tile), "clean"), _label(_fit(sample["degraded"], tile), ops[:28]),
                  _label(_fit(sample["mask"].astype(np.uint8) * 255, tile), "mask")]
    parts = [_grid(tiles, 3 * triplets_per_row, tile)] if tiles else []
    if real:
        parts.append(_grid([_label(_fit(image, tile * 2), "real: " + name) for name, image in real],
                           3 * triplets_per_row // 2, tile * 2))
    width = max(p.shape[1] for p in parts)
    return np.vstack([np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in parts])
