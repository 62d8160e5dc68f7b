"""Ageing of the print: fading, toning, uneven illumination, vignetting, halftone screens."""

from __future__ import annotations

import cv2
import numpy as np

from ._util import Image, luminance, per_pixel, smooth_field, to_float, to_uint8

# Colours (RGB, 0-1) that a faded print's white and black drift towards.
TONES = {
    "sepia": ((1.00, 0.89, 0.71), (0.20, 0.12, 0.06)),
    "yellow": ((1.00, 0.96, 0.74), (0.10, 0.09, 0.04)),
    "cyan": ((0.86, 0.97, 1.00), (0.03, 0.08, 0.10)),  # the cyan cast of some faded colour prints
}


def fade(image: Image, rng: np.random.Generator, contrast: float, lift: float) -> Image:
    """Lost density: contrast scaled by `contrast` around mid-grey, blacks lifted by `lift` (0-1)."""
    x = to_float(image)
    x = 127.5 + (x - 127.5) * contrast
    return to_uint8(lift * 255.0 + x * (1.0 - lift))


def tone(image: Image, rng: np.random.Generator, color: str, strength: float) -> Image:
    """Chemical toning / yellowing: luminance mapped onto a tone ramp, mixed in by `strength`."""
    if color not in TONES:
        raise ValueError(f"tone color must be one of {sorted(TONES)}, got {color!r}")
    if image.ndim == 2:  # toning is a colour change: a single-channel picture has none to take
        return image.copy()
    white, black = TONES[color]
    y = luminance(image) * (strength / 255.0)
    # per channel: (1 - s) * x + s * 255 * (black + (white - black) * y)
    toned = cv2.merge([y * (255.0 * (w - b)) + 255.0 * strength * b for w, b in zip(white, black)])
    return to_uint8(to_float(image) * (1.0 - strength) + toned)


def uneven_illumination(image: Image, rng: np.random.Generator, strength: float, scale: float = 0.5) -> Image:
    """A smooth multiplicative light field (uneven exposure or development), +-strength."""
    h, w = image.shape[:2]
    field = 1.0 + strength * np.tanh(smooth_field(rng, (h, w), scale * max(h, w)))
    return to_uint8(to_float(image) * per_pixel(field, image))


def vignette(image: Image, rng: np.random.Generator, strength: float, radius: float = 0.8) -> Image:
    """Darkened corners, by `strength` at the corners, from `radius` (fraction of the half-diagonal) outwards."""
    h, w = image.shape[:2]
    cy, cx = h / 2 * (1 + rng.uniform(-0.15, 0.15)), w / 2 * (1 + rng.uniform(-0.15, 0.15))
    y, x = np.ogrid[:h, :w]
    d = np.sqrt(((y - cy) / (h / 2)) ** 2 + ((x - cx) / (w / 2)) ** 2).astype(np.float32) / np.sqrt(2)
    falloff = np.clip((d - radius) / max(1e-3, 1.0 - radius), 0, 1) ** 2
    return to_uint8(to_float(image) * per_pixel(1.0 - strength * falloff, image))


def halftone(image: Image, rng: np.random.Generator, cell: float, angle: float, strength: float) -> Image:
    """A printed halftone screen of `cell`-pixel dots at `angle` degrees, mixed in by `strength`."""
    h, w = image.shape[:2]
    y, x = np.mgrid[:h, :w].astype(np.float32)
    a = np.deg2rad(angle)
    u = (x * np.cos(a) + y * np.sin(a)) / cell
    v = (-x * np.sin(a) + y * np.cos(a)) / cell
    # distance from the centre of this screen cell, 0 at the centre, ~0.7 at the corners
    dist = np.hypot(u - np.floor(u) - 0.5, v - np.floor(v) - 0.5)
    darkness = 1.0 - cv2.GaussianBlur(luminance(image), (0, 0), cell / 3) / 255.0
    radius = np.sqrt(darkness / np.pi)  # ink dot area equals local darkness
    ink = np.clip((radius - dist) * cell + 0.5, 0.0, 1.0)  # anti-aliased dot edge
    screened = (1.0 - ink) * 255.0
    x_float = to_float(image)
    screened = per_pixel(screened, image) * (x_float + 1.0) / (per_pixel(luminance(image), image) + 1.0)
    return to_uint8(x_float * (1.0 - strength) + screened * strength)
