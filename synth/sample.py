"""One training sample from one clean photograph: seeded crop, then degradation."""

from __future__ import annotations

import cv2
import numpy as np

from ._util import Image
from .pipeline import Degraded, DegradationPipeline


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` of a data set seeded with `seed` (64-bit, independent streams)."""
    low, high = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint32)
    return int(high) << 32 | int(low)


def random_crop(image: Image, rng: np.random.Generator, size: int | None) -> Image:
    """A size x size crop at a random place; images with a shorter side are first scaled up to it."""
    if not size:
        return image
    h, w = image.shape[:2]
    if min(h, w) < size:
        scale = size / min(h, w)
        w, h = max(size, round(w * scale)), max(size, round(h * scale))
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_CUBIC)
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return np.ascontiguousarray(image[y : y + size, x : x + size])


def make_sample(image: Image, seed: int, crop: int | None, pipeline: DegradationPipeline) -> Degraded:
    rng = np.random.default_rng(seed)
    return pipeline(random_crop(image, rng, crop), rng)
