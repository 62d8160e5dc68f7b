"""Conversions shared by the degradation operations."""

from __future__ import annotations

import cv2
import numpy as np

Image = np.ndarray  # uint8, HxW (grayscale) or HxWx3 (RGB)
Mask = np.ndarray  # bool, HxW: True where the picture's content was destroyed


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 numpy image, got {type(image).__name__} {getattr(image, 'dtype', '')}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3):
        return
    raise ValueError(f"expected an HxW or HxWx3 image, got shape {image.shape}")


def to_float(image: Image) -> np.ndarray:
    return image.astype(np.float32)


def to_uint8(image: np.ndarray) -> Image:
    """Round and saturate to uint8."""
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def luminance(image: np.ndarray) -> np.ndarray:
    """Rec. 601 luma in the image's own scale, HxW float32."""
    if image.ndim == 2:
        return image.astype(np.float32)
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return image.astype(np.float32) @ weights


def per_pixel(field: np.ndarray, image: np.ndarray) -> np.ndarray:
    """An HxW float32 field repeated over the image's channels.

    Explicit copies (cv2.merge) rather than broadcasting: numpy broadcasts over a last axis of 3
    about ten times slower than it runs the same operation on equal shapes.
    """
    field = field.astype(np.float32, copy=False)
    return field if image.ndim == 2 else cv2.merge([field, field, field])


def per_channel(values: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Per-channel constants (RGB) as an array of the image's shape (see per_pixel)."""
    h, w = image.shape[:2]
    values = np.atleast_1d(np.asarray(values, np.float32))
    if image.ndim == 2:
        return np.full((h, w), values.mean(), np.float32)
    return cv2.merge([np.full((h, w), v, np.float32) for v in values])


def blend(image: Image, color: np.ndarray | float, alpha: np.ndarray) -> Image:
    """image * (1 - alpha) + color * alpha, with an HxW alpha in [0, 1]."""
    x = image.astype(np.float32)
    return to_uint8(x + (per_channel(color, image) - x) * per_pixel(alpha, image))


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std random field whose features are about `scale` pixels wide."""
    h, w = shape
    gh, gw = max(2, int(np.ceil(h / scale)) + 1), max(2, int(np.ceil(w / scale)) + 1)
    coarse = rng.standard_normal((gh, gw), dtype=np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field
