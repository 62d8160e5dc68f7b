"""Sensor, film and transmission noise. Sigmas are in 0-255 units."""

from __future__ import annotations

import cv2
import numpy as np

from ._util import Image, luminance, per_pixel, smooth_field, to_float, to_uint8


def _normal(rng: np.random.Generator, image: Image, gray: bool) -> np.ndarray:
    shape = image.shape[:2] if gray or image.ndim == 2 else image.shape
    noise = rng.standard_normal(shape, dtype=np.float32)
    return per_pixel(noise, image) if noise.ndim == 2 else noise


def gaussian_noise(image: Image, rng: np.random.Generator, sigma: float, gray: bool = False) -> Image:
    """Additive white Gaussian noise; `gray` uses one noise field for all channels."""
    return to_uint8(to_float(image) + sigma * _normal(rng, image, gray))


def speckle_noise(image: Image, rng: np.random.Generator, sigma: float, gray: bool = False) -> Image:
    """Multiplicative noise: x + x * n, n ~ N(0, sigma / 255)."""
    x = to_float(image)
    return to_uint8(x + x * (sigma / 255.0) * _normal(rng, image, gray))


def poisson_noise(image: Image, rng: np.random.Generator, peak: float, gray: bool = False) -> Image:
    """Shot noise of a sensor that counts `peak` photons at full white (lower is noisier)."""
    x = to_float(image) / 255.0
    if gray and image.ndim == 3:
        y = luminance(image) / 255.0
        noisy = rng.poisson(y * peak).astype(np.float32) / peak
        return to_uint8((x + per_pixel(noisy - y, image)) * 255.0)
    return to_uint8(rng.poisson(x * peak).astype(np.float32) / peak * 255.0)


def salt_pepper_noise(image: Image, rng: np.random.Generator, amount: float, salt: float = 0.5) -> Image:
    """A fraction `amount` of pixels set to white (share `salt`) or black."""
    out = image.copy()
    u = rng.random(image.shape[:2], dtype=np.float32)
    out[u < amount * salt] = 255
    out[(u >= amount * salt) & (u < amount)] = 0
    return out


def film_grain(image: Image, rng: np.random.Generator, strength: float, size: float = 1.5,
               mono: bool = True) -> Image:
    """Film grain: clumped noise of about `size` pixels, strongest in the mid-tones.

    strength is the grain's standard deviation (0-255 units) in the mid-tones; it falls to about a
    third in deep shadows and highlights, as in developed silver-halide emulsion.
    """
    h, w = image.shape[:2]
    y = luminance(image) / 255.0
    amplitude = strength * (0.35 + 2.6 * y * (1.0 - y))

    def grain() -> np.ndarray:
        field = rng.standard_normal((h, w), dtype=np.float32) if size <= 1.0 else smooth_field(rng, (h, w), size)
        return field * amplitude

    if mono or image.ndim == 2:
        noise = per_pixel(grain(), image)
    else:
        noise = cv2.merge([grain(), grain(), grain()])
    return to_uint8(to_float(image) + noise)
