"""The 19 corruptions of `imagecorruptions` (Hendrycks & Dietterich) as operations, severity 1-5.

imagecorruptions draws from numpy's global random state, so each call seeds that state from the
caller's generator under a lock: results depend only on the generator, as for every other operation.
Three of its corruptions fail on numpy 2 / scikit-image >= 0.25 (gaussian_blur and glass_blur pass
the removed `multichannel` argument, fog uses the removed np.float_); they are re-implemented here
with the same constants, as is impulse_noise, whose scikit-image call draws from a fresh OS seed. glass_blur's pixel loop (seconds per image) is vectorized: each pixel takes
a neighbour's value at a random offset instead of swapping sequentially, the same local shuffle.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
from skimage.filters import gaussian
from skimage.util import random_noise

from ._util import Image, luminance, to_uint8

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pkg_resources' deprecation notice
    import imagecorruptions

NAMES: tuple[str, ...] = tuple(imagecorruptions.get_corruption_names("all"))
_GLOBAL_STATE = threading.Lock()


def corruption(image: Image, rng: np.random.Generator, name: str, severity: int) -> Image:
    """Apply imagecorruptions' corruption `name` at `severity` (1-5). Same shape as the input."""
    if name not in NAMES:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(NAMES)}")
    if int(severity) not in range(1, 6):
        raise ValueError(f"severity must be 1-5, got {severity}")
    h, w = image.shape[:2]
    if h < 32 or w < 32:
        raise ValueError(f"corruption {name} needs at least 32x32 pixels, got {w}x{h}")
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    if name in _COMPATIBLE:
        out = _COMPATIBLE[name](rgb, rng, int(severity))
    else:
        with _GLOBAL_STATE:
            state = np.random.get_state()
            np.random.seed(int(rng.integers(2**32)))
            try:
                out = imagecorruptions.corrupt(rgb, severity=int(severity), corruption_name=name)
            finally:
                np.random.set_state(state)
    out = np.asarray(out, np.uint8)
    return out if image.ndim == 3 else to_uint8(luminance(out))


def _gaussian_blur(x: Image, rng: np.random.Generator, severity: int) -> Image:
    sigma = [1, 2, 3, 4, 6][severity - 1]
    return to_uint8(np.clip(gaussian(x / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255)


def _glass_blur(x: Image, rng: np.random.Generator, severity: int) -> Image:
    sigma, delta, iterations = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]
    out = np.uint8(gaussian(x / 255.0, sigma=sigma, channel_axis=-1) * 255)
    h, w = out.shape[:2]
    rows, cols = np.mgrid[:h, :w]
    for _ in range(iterations):
        dy, dx = rng.integers(-delta, delta, size=(2, h, w))
        out = out[np.clip(rows + dy, 0, h - 1), np.clip(cols + dx, 0, w - 1)]
    return to_uint8(np.clip(gaussian(out / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255)


def plasma_fractal(rng: np.random.Generator, size: int, decay: float) -> np.ndarray:
    """Diamond-square height map in [0, 1], size x size (size a power of two)."""
    grid = np.zeros((size, size), np.float64)
    step, wibble = size, 100.0

    def wibbled(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while step >= 2:
        half = step // 2
        corners = grid[0:size:step, 0:size:step]
        squares = corners + np.roll(corners, -1, axis=0)
        squares += np.roll(squares, -1, axis=1)
        grid[half:size:step, half:size:step] = wibbled(squares)
        centres = grid[half:size:step, half:size:step]
        corners = grid[0:size:step, 0:size:step]
        grid[0:size:step, half:size:step] = wibbled(
            centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1))
        grid[half:size:step, 0:size:step] = wibbled(
            centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0))
        step //= 2
        wibble /= decay
    grid -= grid.min()
    return grid / grid.max()


def _fog(x: Image, rng: np.random.Generator, severity: int) -> Image:
    strength, decay = [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)][severity - 1]
    h, w = x.shape[:2]
    size = 1 << int(np.ceil(np.log2(max(h, w))))
    y = x / 255.0
    peak = y.max()
    y = y + strength * plasma_fractal(rng, size, decay)[:h, :w, None]
    return to_uint8(np.clip(y * peak / (peak + strength), 0, 1) * 255)


def _impulse_noise(x: Image, rng: np.random.Generator, severity: int) -> Image:
    amount = [0.03, 0.06, 0.09, 0.17, 0.27][severity - 1]
    noisy = random_noise(x / 255.0, mode="s&p", amount=amount, rng=int(rng.integers(2**32)))
    return to_uint8(np.clip(noisy, 0, 1) * 255)


_COMPATIBLE = {"impulse_noise": _impulse_noise, "gaussian_blur": _gaussian_blur, "glass_blur": _glass_blur, "fog": _fog}
