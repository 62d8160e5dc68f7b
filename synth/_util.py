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
    """Rec. 601 luma in the image's own scale, HxW float32 (whole levels for uint8 images)."""
    if image.ndim == 2:
        return image.astype(np.float32)
    if image.dtype == np.uint8:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return image.astype(np.float32) @ weights


def _each_channel(op, image: Image, field: np.ndarray) -> Image:
    """op(image, field) to uint8: a field of the image's shape applies pixel for pixel, an HxW
    field to every channel.

    The HxW case runs channel by channel on the uint8 planes rather than on a field repeated three
    times: the same values, without a 3-channel float copy (which cost more than the arithmetic
    itself), and no broadcasting (numpy broadcasts over a last axis of 3 about ten times slower).
    """
    field = field.astype(np.float32, copy=False)
    if image.ndim == 2 or field.ndim == image.ndim:
        return op(image, field, dtype=cv2.CV_8U)
    return cv2.merge([op(plane, field, dtype=cv2.CV_8U) for plane in cv2.split(image)])


def add(image: Image, delta: np.ndarray) -> Image:
    """image + delta, rounded and saturated to uint8; an HxW delta applies to every channel."""
    return _each_channel(cv2.add, image, delta)


def multiply(image: Image, factor: np.ndarray) -> Image:
    """image * factor, rounded and saturated to uint8; an HxW factor applies to every channel."""
    return _each_channel(cv2.multiply, image, factor)


def standard_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 noise of the given shape, drawn by OpenCV from a seed taken from rng.

    OpenCV's generator is ~3x faster than numpy's for image-sized noise (the largest single cost of
    the noise operations). Its state is per thread and is reseeded here on every call, so the result
    depends only on rng, whatever runs in other threads.
    """
    seed = int(rng.integers(1, 2**31))
    cv2.setRNGSeed(seed)
    out = np.empty(shape, np.float32)
    cv2.randn(out.reshape(shape[0], -1), 0.0, 1.0)  # single-channel view: one scalar sigma for all
    return out


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std random field whose features are about `scale` pixels wide."""
    h, w = shape
    gh, gw = max(2, int(np.ceil(h / scale)) + 1), max(2, int(np.ceil(w / scale)) + 1)
    field = cv2.resize(standard_normal(rng, (gh, gw)), (w, h), interpolation=cv2.INTER_CUBIC)
    mean, std = (float(v[0, 0]) for v in cv2.meanStdDev(field))
    field -= mean
    if std > 0:
        field *= 1.0 / std
    return field
