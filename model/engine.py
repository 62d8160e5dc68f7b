"""The restoration engine: any image size in bounded memory, by overlapping tiles blended smoothly.

Two passes over the same tiles: scratch detection (probabilities blended, then thresholded into one
mask for the whole image), then global restoration of each tile with its part of the mask (the
partial non-local block attends within the tile's latent grid). Where tiles overlap, outputs are
blended with weights that ramp down towards each tile's edges, so no seam shows.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .device import autocast, pick_device, pick_precision
from .blocks import luminance
from .restorer import RestorerNetwork, ScratchMode, to_image, to_tensor


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size tile covering [0, length), neighbours overlapping by >= overlap."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def blend_window(height: int, width: int, overlap: int) -> torch.Tensor:
    """1 inside, ramping linearly to near 0 over `overlap` pixels at every edge (never exactly 0)."""
    def ramp(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float32)
        return torch.clamp(torch.minimum(x + 0.5, n - x - 0.5) / max(overlap, 1), 1e-3, 1.0)
    return ramp(height)[:, None] * ramp(width)[None, :]


class Restorer:
    """restore(image) -> (restored, mask, info) for uint8 RGB (H x W x 3) or grayscale (H x W) images."""

    def __init__(self, network: RestorerNetwork, device: str = "auto", precision: str = "auto",
                 tile: int | None = 512, overlap: int = 64):
        """tile None: the whole image in one piece (memory grows with the image)."""
        multiple = network.multiple
        if tile is not None and (tile % multiple or tile <= 2 * overlap):
            raise ValueError(f"tile {tile} must be a multiple of {multiple} and more than twice the overlap {overlap}")
        self.device = pick_device(device)
        self.dtype = pick_precision(self.device, precision)
        self.network = network.to(self.device).eval().fast()
        self.tile, self.overlap = tile, overlap

    def _tiles(self, h: int, w: int) -> list[tuple[int, int, int, int]]:
        if self.tile is None:
            return [(0, 0, h, w)]
        return [(y, x, min(self.tile, h), min(self.tile, w))
                for y in tile_starts(h, self.tile, self.overlap) for x in tile_starts(w, self.tile, self.overlap)]

    @torch.inference_mode()
    def restore(self, image: np.ndarray, scratch: ScratchMode = "auto") -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        started = time.perf_counter()
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise ValueError(f"expected a uint8 H x W x 3 or H x W image, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        m = self.network.multiple
        x = to_tensor(image)
        x = F.pad(x, (0, -w % m, 0, -h % m), mode="replicate")  # the latent grid needs multiples of m
        tiles = self._tiles(*x.shape[-2:])

        if scratch == "off":
            mask = torch.zeros(1, 1, *x.shape[-2:])
        else:
            probability = self._blended(x, tiles, 1, lambda t, region: torch.sigmoid(self.network.scratch(luminance(t))))
            mask = (probability > self.network.config.scratch.threshold).float()
        use_global = scratch == "on" or bool(mask.any())
        out = self._blended(x, tiles, 3, lambda t, region: self.network(
            t, mask[region].to(self.device) if use_global else None))

        restored = to_image(out[..., :h, :w])
        if image.ndim == 2:
            restored = np.round(restored.mean(axis=2)).astype(np.uint8)
        mask_out = mask[0, 0, :h, :w].bool().numpy()
        info = {"height": h, "width": w, "tiles": len(tiles), "global_branch": use_global,
                "damaged_fraction": float(mask_out.mean()), "precision": str(self.dtype).removeprefix("torch."),
                "device": str(self.device), "seconds": time.perf_counter() - started}
        return restored, mask_out, info

    def _blended(self, x: torch.Tensor, tiles: list[tuple[int, int, int, int]], channels: int, run) -> torch.Tensor:
        """run(tile, region) on every tile; the results blended into one image of `channels` channels."""
        total = torch.zeros(1, channels, *x.shape[-2:])
        weight = torch.zeros(1, 1, *x.shape[-2:])
        for y, x0, th, tw in tiles:
            region = (..., slice(y, y + th), slice(x0, x0 + tw))
            tile = x[region].to(self.device).contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.dtype):
                result = run(tile, region)
            window = blend_window(th, tw, self.overlap)
            total[region] += result.float().cpu() * window
            weight[region] += window
        return total / weight
