"""Optical blur: out of focus, camera shake, soft lenses. Deterministic given their parameters."""

from __future__ import annotations

import cv2
import numpy as np

from ._util import Image


def gaussian_blur(image: Image, rng: np.random.Generator, sigma: float) -> Image:
    """Isotropic Gaussian blur, kernel cut at 3 sigma."""
    if sigma <= 0:
        return image.copy()
    size = 2 * int(np.ceil(3 * sigma)) + 1
    return cv2.GaussianBlur(image, (size, size), sigma, borderType=cv2.BORDER_REFLECT_101)


def disk_kernel(radius: float) -> np.ndarray:
    """A normalized disk of the given radius, anti-aliased at its edge (the defocus point spread)."""
    r = int(np.ceil(radius))
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    kernel = np.clip(radius + 0.5 - np.hypot(x, y), 0.0, 1.0)
    return kernel / kernel.sum()


def defocus_blur(image: Image, rng: np.random.Generator, radius: float) -> Image:
    """Out-of-focus blur: convolution with a disk."""
    if radius < 0.5:
        return image.copy()
    return cv2.filter2D(image, -1, disk_kernel(radius), borderType=cv2.BORDER_REFLECT_101)


def motion_kernel(length: float, angle: float) -> np.ndarray:
    """A normalized line of the given length (pixels) and angle (degrees), anti-aliased."""
    r = int(np.ceil(length / 2))
    size = 2 * r + 1
    canvas = np.zeros((size * 8, size * 8), np.uint8)  # drawn 8x larger, then averaged down
    dx, dy = np.cos(np.deg2rad(angle)) * length / 2, np.sin(np.deg2rad(angle)) * length / 2
    cv2.line(canvas, (round(8 * (r - dx) + 4), round(8 * (r - dy) + 4)),
             (round(8 * (r + dx) + 4), round(8 * (r + dy) + 4)), 255, 8, cv2.LINE_AA)
    kernel = cv2.resize(canvas.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return kernel / kernel.sum()


def motion_blur(image: Image, rng: np.random.Generator, length: float, angle: float) -> Image:
    """Linear camera-shake blur along `angle` degrees over `length` pixels."""
    if length < 1:
        return image.copy()
    return cv2.filter2D(image, -1, motion_kernel(length, angle), borderType=cv2.BORDER_REFLECT_101)
