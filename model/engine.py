"""The restoration engine: any image size in bounded memory, by overlapping tiles blended smoothly.

Two passes over the same tiles: scratch detection (probabilities blended, then thresholded into one
mask for the whole image; with the detector's reference size set, a photo larger than those it
learned on is searched at halved resolutions too), then global restoration of each tile with its
part of the mask (the partial non-local block attends within the tile's latent grid). Where tiles
overlap, outputs are blended with weights that ramp down towards each tile's edges, so no seam
shows. Only the tile being computed is held as float tensors; the image itself stays in its own
dtype. Last, when the model has one, the tone correction (a colour transform and a smooth light
field for the whole photo) predicted from thumbnails of the input and the output; unless asked to
restore colour too, the original's own colours on the restored luminance (model/colour.py); and,
when the model has one, how much of all this the photo gets (model/strength.py).
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..runtime import keep_freed_memory
from .blocks import luminance
from .colour import chroma_coefficients, filter_size, keep_colours
from .device import autocast, pick_device, pick_precision
from .restorer import RestorerNetwork, ScratchMode
from .strength import blend, crop_boxes
from .tone import THUMBNAIL

Span = tuple[int, int]  # start, length
ColourMode = Literal["keep", "restore"]


def tile_spans(length: int, tile: int, overlap: int, multiple: int = 1) -> list[Span]:
    """Equal tiles of at most `tile` (multiples of `multiple`) covering [0, length) with neighbours
    overlapping by at least `overlap`; evenly spread, so that no tile is wasted on a sliver."""
    if length <= tile:
        return [(0, length)]
    count = math.ceil((length - overlap - multiple) / (tile - overlap - multiple))
    size = min(tile, -(-math.ceil((length + (count - 1) * (overlap + multiple)) / count) // multiple) * multiple)
    last = length - size
    starts = [i * last // (count - 1) // multiple * multiple for i in range(count - 1)] + [last]
    return [(s, size) for s in starts]


def blend_window(height: int, width: int, overlap: int) -> torch.Tensor:
    """1 inside, ramping linearly to near 0 over `overlap` pixels at every edge (never exactly 0)."""
    def ramp(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float32)
        return torch.clamp(torch.minimum(x + 0.5, n - x - 0.5) / max(overlap, 1), 1e-3, 1.0)
    return ramp(height)[:, None] * ramp(width)[None, :]


def detection_levels(height: int, width: int, reference_size: int | None) -> int:
    """How many resolutions to search for damage: 1 (the photo's own), plus one per halving that
    leaves the short side at least reference_size."""
    if reference_size is None:
        return 1
    return 1 + max(0, int(math.floor(math.log2(min(height, width) / reference_size))))


def split_channels(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(colour or gray, alpha or None) of an H x W, H x W x 2 (gray + alpha), x 3 or x 4 (RGBA) image."""
    if image.ndim == 3 and image.shape[2] in (2, 4):
        return image[..., :-1].squeeze(2) if image.shape[2] == 2 else image[..., :3], image[..., -1]
    return image, None


class Restorer:
    """restore(image) -> (restored, mask, info) for uint8 or uint16 images: gray (H x W), gray + alpha
    (H x W x 2), RGB (H x W x 3) or RGBA (H x W x 4). The output has the input's shape and dtype; alpha
    is returned untouched and gray stays gray."""

    def __init__(self, network: RestorerNetwork, device: str = "auto", precision: str = "auto",
                 tile: int | None = 512, overlap: int = 32):
        """tile None: the whole image in one piece (memory grows with the image)."""
        multiple = network.multiple
        if tile is not None and (tile % multiple or tile <= 2 * overlap):
            raise ValueError(f"tile {tile} must be a multiple of {multiple} and more than twice the overlap {overlap}")
        # Every tile's temporaries would otherwise be fresh page mappings (Dask workers lower glibc's
        # trim threshold further): 20-35% of the engine's time on a CPU (BENCHMARKS.md).
        keep_freed_memory()
        self.device = pick_device(device)
        self.dtype = pick_precision(self.device, precision)
        self.network = network.folded().to(self.device)
        self.tile, self.overlap = tile, overlap

    def _tiles(self, h: int, w: int) -> list[tuple[int, int, int, int]]:
        if self.tile is None:
            return [(0, 0, h, w)]
        m = self.network.multiple
        return [(y, x, th, tw) for y, th in tile_spans(h, self.tile, self.overlap, m)
                for x, tw in tile_spans(w, self.tile, self.overlap, m)]

    def restore(self, image: np.ndarray, scratch: ScratchMode = "auto", colour: ColourMode = "keep"
                ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """scratch "off": no detection, local restoration only; "auto": detect, and run the partial
        non-local branch on the tiles where damage was found; "on": run it on every tile.
        colour "keep": the original's colours on the restored luminance; "restore": the model's colours."""
        return self.restore_many([image], scratch, colour)[0]

    @torch.inference_mode()
    def restore_many(self, images: list[np.ndarray], scratch: ScratchMode = "auto", colour: ColourMode = "keep"
                     ) -> list[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
        """restore() of each image. Images of one shape and dtype go through the network together, as
        many as fill one tile: a small photo alone pays the network's per-call overhead (measured: a
        64x64 photo 9 ms alone, under 1 ms of network in a batch of 64)."""
        for image in images:
            if image.dtype not in (np.uint8, np.uint16) or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] > 4):
                raise ValueError(f"expected a uint8 or uint16 image of 1 to 4 channels (H x W [x C]), got {image.dtype} {image.shape}")
        if colour not in ("keep", "restore"):
            raise ValueError(f"colour must be 'keep' or 'restore', got {colour!r}")
        groups: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault((image.shape, image.dtype), []).append(i)
        results: list = [None] * len(images)
        m = self.network.multiple
        for (shape, _), members in groups.items():
            pixels = -(-shape[0] // m) * m * (-(-shape[1] // m) * m)
            together = 1 if self.tile is None else max(1, self.tile**2 // pixels)  # memory as one tile's
            for start in range(0, len(members), together):
                chunk = members[start : start + together]
                for i, result in zip(chunk, self._restore_alike([images[i] for i in chunk], scratch, colour)):
                    results[i] = result
        return results

    def _restore_alike(self, images: list[np.ndarray], scratch: ScratchMode, colour: ColourMode
                       ) -> list[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
        """restore() of images of one shape and dtype, as one batch."""
        started = time.perf_counter()
        split = [split_channels(image) for image in images]
        gray = split[0][0].ndim == 2
        h, w = split[0][0].shape[:2]
        scale = float(np.iinfo(images[0].dtype).max)
        padded = [self._padded(pixels[..., None] if gray else pixels) for pixels, _ in split]
        rgb = padded[0][None] if len(padded) == 1 else np.stack(padded)  # B x H x W x C, no copy for one
        mask = (torch.zeros(len(images), 1, *rgb.shape[1:3], dtype=torch.bool) if scratch == "off"
                else self._detect(rgb, h, w, scale))
        out, global_tiles = self._restore_tiles(rgb, scale, mask, scratch)
        out = self._tone(out[..., :h, :w], rgb[:, :h, :w], scale)
        if gray:  # gray in, gray out: the luminance the network restored
            out = luminance(out)
        elif colour == "keep":
            out = self._keep_colours(out, rgb[:, :h, :w], scale)
        out = self._strength(out, rgb[:, :h, :w], mask[..., :h, :w], scale)
        out = out.permute(0, 2, 3, 1).clamp_(-1, 1).add_(1).mul_(scale / 2).round_().numpy().astype(images[0].dtype)
        seconds = (time.perf_counter() - started) / len(images)  # each image's share
        tiles = len(self._tiles(*rgb.shape[1:3]))
        results = []
        for b, (_, alpha) in enumerate(split):
            restored = out[b, ..., 0] if gray else out[b]
            if alpha is not None:
                restored = np.concatenate([restored.reshape(h, w, -1), alpha[..., None]], axis=2)
            mask_out = mask[b, 0, :h, :w].numpy()
            info = {"height": h, "width": w, "tiles": tiles, "global_tiles": int(global_tiles[b]),
                    "damaged_fraction": float(mask_out.mean()), "precision": str(self.dtype).removeprefix("torch."),
                    "device": str(self.device), "seconds": seconds}
            results.append((restored, mask_out, info))
        return results

    @torch.inference_mode()
    def detect(self, image: np.ndarray) -> np.ndarray:
        """The damage mask alone (H x W bool), as restore finds it."""
        pixels = split_channels(image)[0]
        rgb = self._padded(pixels if pixels.ndim == 3 else pixels[..., None])[None]
        return self._detect(rgb, *pixels.shape[:2], float(np.iinfo(image.dtype).max))[0, 0, : pixels.shape[0], : pixels.shape[1]].numpy()

    def _detect(self, rgb: np.ndarray, h: int, w: int, scale: float) -> torch.Tensor:
        """The damage masks (B x 1 x H x W) of padded images (B x H x W x C, their first h x w pixels the photos')."""
        probability = self._blended(rgb, scale, 1, self._damage_probability)
        # A photo larger than those the detector learned on shows its damage wider: search it at
        # halved resolutions too (held-out pairs enlarged 2x and 4x: F1 about 0.80 so, against 0.58
        # and 0.00 at their own resolution). Thin damage on a large photo gets wider marks from the
        # coarse levels (MODEL_CARD.md, Limits). Set per bundle: scratch.reference_size, which the
        # shipped one has.
        for level in range(1, detection_levels(h, w, self.network.config.scratch.reference_size)):
            sh, sw = -(-h // 2**level), -(-w // 2**level)
            small = self._padded(np.stack([cv2.resize(image[:h, :w], (sw, sh), interpolation=cv2.INTER_AREA).reshape(sh, sw, -1)
                                           for image in rgb]))
            coarse = self._blended(small, scale, 1, self._damage_probability)[..., :sh, :sw]
            coarse = F.interpolate(coarse, (h, w), mode="bilinear", align_corners=False)
            probability[..., :h, :w] = torch.maximum(probability[..., :h, :w], coarse)
        return probability > self.network.config.scratch.threshold

    def _damage_probability(self, tile: torch.Tensor, region) -> torch.Tensor:
        return torch.sigmoid(self.network.scratch(luminance(tile)))

    def _restore_tiles(self, rgb: np.ndarray, scale: float, mask: torch.Tensor, scratch: ScratchMode
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The restored padded images, and per image how many of its tiles ran the non-local branch
        (those with damage under "auto", every one under "on")."""
        global_tiles = torch.zeros(len(rgb), dtype=torch.long)

        def restore_tile(tile: torch.Tensor, region) -> torch.Tensor:
            uses = torch.full((len(tile),), scratch == "on") if scratch != "auto" else mask[region].flatten(1).any(1)
            global_tiles.add_(uses)
            # Images of a batch without damage get an empty mask: the partial non-local block leaves
            # them exactly as the local branch alone would.
            return self.network(tile, mask[region].to(self.device) if bool(uses.any()) else None)

        return self._blended(rgb, scale, 3, restore_tile), global_tiles

    def _tone(self, out: torch.Tensor, rgb: np.ndarray, scale: float) -> torch.Tensor:
        """The tone correction of the whole output, when the model has one: one transform and one
        light field for the photo, predicted from thumbnails of the input and the output."""
        if self.network.tone is None:
            return out
        thumb = self._small(rgb, scale, (THUMBNAIL, THUMBNAIL)).to(self.device)
        return self.network.tone(thumb, out.to(self.device)).cpu()

    def _strength(self, out: torch.Tensor, rgb: np.ndarray, mask: torch.Tensor, scale: float) -> torch.Tensor:
        """The input plus each photo's strength of the restoration, damage filled (model/strength.py),
        when the model has a strength."""
        if self.network.strength is None:
            return out
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float().mul_(2 / scale).sub_(1)
        crops = [(image[..., y : y + ch, x : x + cw], out[..., y : y + ch, x : x + cw])
                 for y, x, ch, cw in crop_boxes(*image.shape[-2:])]
        # B photos x K crops, each photo's crops together; gray ones judged as gray RGB.
        inputs, outputs = (torch.stack([c[i] for c in crops], 1).flatten(0, 1).expand(-1, 3, -1, -1) for i in (0, 1))
        with autocast(self.device, self.dtype):
            strength = self.network.strength(inputs.to(self.device), outputs.to(self.device), photos=len(image))
        return blend(image, out, mask.float(), strength.float().cpu(), inplace=True)

    def _keep_colours(self, out: torch.Tensor, rgb: np.ndarray, scale: float) -> torch.Tensor:
        """The original's colours on the restored luminance (model/colour.py)."""
        size = filter_size(*rgb.shape[1:3])
        original = self._small(rgb, scale, size)
        return keep_colours(out, chroma_coefficients(original, F.interpolate(out, size, mode="area")))

    def _padded(self, array: np.ndarray) -> np.ndarray:
        """[B x] H x W x C with sides padded up to multiples of the latent grid's, by repeating the edge."""
        m = self.network.multiple
        pad = [(0, 0)] * (array.ndim - 3) + [(0, -array.shape[-3] % m), (0, -array.shape[-2] % m), (0, 0)]
        return np.pad(array, pad, mode="edge")

    def _small(self, rgb: np.ndarray, scale: float, size: tuple[int, int]) -> torch.Tensor:
        """The whole inputs (B x H x W x C) area-averaged to size (height, width), in [-1, 1]; made from
        the images in their own dtype, never a full-size float copy."""
        small = np.stack([cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA).reshape(*size, -1) for image in rgb])
        small = small.astype(np.float32) * (2 / scale) - 1
        return torch.from_numpy(small).permute(0, 3, 1, 2).expand(-1, 3, -1, -1)

    def _blended(self, array: np.ndarray, scale: float, channels: int, run) -> torch.Tensor:
        """run(tile, region) on every tile of the padded images (B x H x W x C); the results blended
        into B images of `channels` channels. Only the tile being computed is held as a float tensor."""
        b, h, w = array.shape[:3]
        total = torch.zeros(b, channels, h, w)
        weight = torch.zeros(1, 1, h, w)
        for y, x, th, tw in self._tiles(h, w):
            region = (..., slice(y, y + th), slice(x, x + tw))
            tile = torch.from_numpy(np.ascontiguousarray(array[:, y : y + th, x : x + tw])).float().mul_(2 / scale).sub_(1)
            tile = tile.expand(b, th, tw, 3) if tile.shape[3] == 1 else tile
            tile = tile.permute(0, 3, 1, 2).to(self.device).contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.dtype):
                result = run(tile, region)
            window = blend_window(th, tw, self.overlap)
            total[region] += result.float().cpu() * window
            weight[region] += window
        return total.div_(weight)
