"""Digital losses: JPEG re-compression and down/up resampling."""

from __future__ import annotations

import cv2
import numpy as np

from ._util import Image

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


def jpeg(image: Image, rng: np.random.Generator, quality: int) -> Image:
    """Encode as JPEG at `quality` (1-100, 4:2:0 chroma) and decode again."""
    colour = image.ndim == 3
    src = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if colour else image
    ok, buffer = cv2.imencode(".jpg", src, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    decoded = cv2.imdecode(buffer, cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB) if colour else decoded


def resample(image: Image, rng: np.random.Generator, scale: float, down: str = "area",
             up: str = "bilinear") -> Image:
    """Down-scale by `scale` (0-1] and back up to the original size: lost resolution."""
    h, w = image.shape[:2]
    small = (max(1, round(w * scale)), max(1, round(h * scale)))
    low = cv2.resize(image, small, interpolation=INTERPOLATIONS[down])
    return cv2.resize(low, (w, h), interpolation=INTERPOLATIONS[up])
