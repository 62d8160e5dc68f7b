"""Sensor, film and transmission noise. Sigmas are in 0-255 units."""

from __future__ import annotations

import cv2
import numpy as np

from ._util import Image, add, luminance, multiply, smooth_field, standard_normal, to_float


def _normal(rng: np.random.Generator, image: Image, gray: bool) -> np.ndarray:
    """Unit noise: one field for all channels when `gray` (or the image is grayscale), else one each."""
    return standard_normal(rng, image.shape[:2] if gray else image.shape)


def gaussian_noise(image: Image, rng: np.random.Generator, sigma: float, gray: bool = False) -> Image:
    """Additive white Gaussian noise; `gray` uses one noise field for all channels."""
    return add(image, sigma * _normal(rng, image, gray))


def speckle_noise(image: Image, rng: np.random.Generator, sigma: float, gray: bool = False) -> Image:
    """Multiplicative noise: x + x * n, n ~ N(0, sigma / 255)."""
    return multiply(image, 1.0 + (sigma / 255.0) * _normal(rng, image, gray))


def poisson_noise(image: Image, rng: np.random.Generator, peak: float, gray: bool = False) -> Image:
    """Shot noise of a sensor that counts `peak` photons at full white (lower is noisier).

    Drawn as Gaussian noise with the Poisson variance (signal / peak): the usual approximation,
    exact in mean and variance, and about ten times faster than sampling Poisson counts.
    """
    level = luminance(image) if gray else to_float(image)
    sigma = np.sqrt(level * (255.0 / peak))
    return add(image, sigma * standard_normal(rng, sigma.shape))


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
        field = standard_normal(rng, (h, w)) if size <= 1.0 else smooth_field(rng, (h, w), size)
        return field * amplitude

    return add(image, grain() if mono or image.ndim == 2 else cv2.merge([grain(), grain(), grain()]))
