"""Training batches from samples held in shards: an endless, seeded stream whose position is a small
state dict, so that a resumed run sees exactly the batches an uninterrupted one would have seen.

The stream does no I/O itself: it is handed a function that loads shard i as a list of samples
(dicts of numpy arrays), and the tasks layer decides where shards come from (Parquet, folders, s3://).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch

Sample = dict[str, Any]


class SampleStream:
    """Epoch after epoch: shards in a seeded order, samples in a seeded order within each shard.

    Under DistributedDataParallel each rank takes every world-th sample of the same sequence.
    """

    def __init__(self, shard_count: int, load_shard: Callable[[int], list[Sample]], seed: int,
                 rank: int = 0, world: int = 1):
        if shard_count < 1:
            raise ValueError("a sample stream needs at least one shard")
        self.shard_count, self.load_shard, self.seed = shard_count, load_shard, seed
        self.rank, self.world = rank, world
        self.epoch = self.position = self.row = 0  # position: index into this epoch's shard order
        self._loaded: tuple[int, list[Sample]] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "row": self.row}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self.row = state["epoch"], state["position"], state["row"]

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def _next_raw(self) -> tuple[Sample, np.random.Generator]:
        empty = 0  # shards in a row that held no sample: a whole round of them means none ever will
        while True:
            shard = int(self._rng(self.epoch).permutation(self.shard_count)[self.position])
            if self._loaded is None or self._loaded[0] != shard:
                self._loaded = (shard, self.load_shard(shard))
            rows = self._loaded[1]
            if self.row < len(rows):
                order = self._rng(self.epoch, shard).permutation(len(rows))
                row, self.row = int(order[self.row]), self.row + 1
                return rows[row], self._rng(self.epoch, shard, row, 1)
            empty = empty + 1 if not rows else 0
            if empty >= self.shard_count:
                raise ValueError(f"none of the {self.shard_count} shards holds a sample")
            self.row, self.position = 0, self.position + 1
            if self.position == self.shard_count:
                self.position, self.epoch = 0, self.epoch + 1

    def take(self, count: int) -> list[tuple[Sample, np.random.Generator]]:
        """The next count samples of this rank, each with its own generator for augmentation."""
        taken = []
        while len(taken) < count:
            for k in range(self.world):
                item = self._next_raw()
                if k == self.rank:
                    taken.append(item)
        return taken


def crop_and_flip(images: list[np.ndarray], size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The same random size x size crop and horizontal flip of aligned images (reflect-padded if small)."""
    h, w = images[0].shape[:2]
    if h < size or w < size:
        pad = ((0, max(0, size - h)), (0, max(0, size - w)))
        images = [np.pad(im, pad + ((0, 0),) * (im.ndim - 2), mode="reflect") for im in images]
        h, w = images[0].shape[:2]
    y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    flip = bool(rng.integers(2))
    out = [im[y : y + size, x : x + size] for im in images]
    return [np.ascontiguousarray(im[:, ::-1]) if flip else im for im in out]


def rescale_short_side(image: np.ndarray, low: int, high: int, rng: np.random.Generator) -> np.ndarray:
    """Shrink a large scan so that its short side is a random length in [low, high]: real old photos come
    at scanning resolution, the synthetic pairs at about the scale of the clean photographs."""
    short = min(image.shape[:2])
    target = int(rng.integers(low, high + 1))
    if short <= target:
        return image
    scale = target / short
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def to_batch(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 H x W x 3 (or H x W) images -> float B x C x H x W in [-1, 1] (masks: 0/1 in {0, 1})."""
    array = np.stack(images)
    if array.dtype == bool:
        return torch.from_numpy(array).float()[:, None]
    if array.ndim == 3:
        array = np.repeat(array[..., None], 3, axis=3)
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def rescaled_crop(images: list[np.ndarray], size: int, scale: float, rng: np.random.Generator) -> list[np.ndarray]:
    """A size x size crop of aligned images seen at scale times their resolution: a region of size /
    scale pixels (at most the images' short side), resized to size. Boolean masks are resized as
    coverage and thresholded at a half, so that damage keeps its width at the new scale."""
    region = min(max(1, round(size / scale)), *images[0].shape[:2])
    out = []
    for im in crop_and_flip(images, region, rng):
        interpolation = cv2.INTER_AREA if region > size else cv2.INTER_LINEAR if im.dtype == bool else cv2.INTER_CUBIC
        if im.dtype == bool:
            out.append(cv2.resize(im.astype(np.float32), (size, size), interpolation=interpolation) > 0.5)
        else:
            out.append(cv2.resize(im, (size, size), interpolation=interpolation))
    return out


def pair_batch(stream: SampleStream, count: int, crop: int, scales: tuple[float, float] = (1.0, 1.0)) -> dict[str, torch.Tensor]:
    """A batch of synthetic pairs: clean, degraded (B x 3 x crop x crop) and mask (B x 1 x crop x crop);
    scales: each pair seen at a random scale in that range (log-uniform), as scans of other
    resolutions show the same damage wider or narrower."""
    clean, degraded, mask = [], [], []
    for sample, rng in stream.take(count):
        images = [sample["clean"], sample["degraded"], sample["mask"]]
        if scales == (1.0, 1.0):
            c, d, m = crop_and_flip(images, crop, rng)
        else:
            c, d, m = rescaled_crop(images, crop, float(np.exp(rng.uniform(*np.log(scales)))), rng)
        clean.append(c), degraded.append(d), mask.append(m)
    return {"clean": to_batch(clean), "degraded": to_batch(degraded), "mask": to_batch(mask)}


def real_batch(stream: SampleStream, count: int, crop: int) -> torch.Tensor:
    """A batch of real old photographs (B x 3 x crop x crop)."""
    images = []
    for sample, rng in stream.take(count):
        image = rescale_short_side(sample["image"], crop, 3 * crop, rng)
        images.append(crop_and_flip([image], crop, rng)[0])
    return to_batch(images)
