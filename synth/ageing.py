"""Ageing of the print: fading, toning, uneven illumination, vignetting, halftone screens, silvering."""

from __future__ import annotations

import cv2
import numpy as np

from ._util import Image, luminance, multiply, smooth_field, to_uint8

# Colours (RGB, 0-1) that a faded print's white and black drift towards.
TONES = {
    "sepia": ((1.00, 0.89, 0.71), (0.20, 0.12, 0.06)),
    "yellow": ((1.00, 0.96, 0.74), (0.10, 0.09, 0.04)),
    "cyan": ((0.86, 0.97, 1.00), (0.03, 0.08, 0.10)),  # the cyan cast of some faded colour prints
}


def fade(image: Image, rng: np.random.Generator, contrast: float, lift: float) -> Image:
    """Lost density: contrast scaled by `contrast` around mid-grey, blacks lifted by `lift` (0-1)."""
    levels = 127.5 + (np.arange(256, dtype=np.float32) - 127.5) * contrast
    return cv2.LUT(image, to_uint8(lift * 255.0 + levels * (1.0 - lift)))  # a per-level curve: a lookup


def tone(image: Image, rng: np.random.Generator, color: str, strength: float) -> Image:
    """Chemical toning / yellowing: luminance mapped onto a tone ramp, mixed in by `strength`."""
    if color not in TONES:
        raise ValueError(f"tone color must be one of {sorted(TONES)}, got {color!r}")
    if image.ndim == 2:  # toning is a colour change: a single-channel picture has none to take
        return image.copy()
    white, black = TONES[color]
    # per channel c: (1 - s) * x + s * 255 * (black_c + (white_c - black_c) * y), a curve of luminance y
    y = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    levels = np.arange(256, dtype=np.float32) / 255.0
    toned = cv2.merge([cv2.LUT(y, to_uint8(255.0 * (b + (w - b) * levels))) for w, b in zip(white, black)])
    return cv2.addWeighted(image, 1.0 - strength, toned, strength, 0.0)


def uneven_illumination(image: Image, rng: np.random.Generator, strength: float, scale: float = 0.5) -> Image:
    """A smooth multiplicative light field (uneven exposure or development), +-strength."""
    h, w = image.shape[:2]
    # The field is smooth: made on a grid 8x coarser, then resized up.
    coarse = 1.0 + strength * np.tanh(smooth_field(rng, (h // 8 + 2, w // 8 + 2), scale * max(h, w) / 8))
    return multiply(image, cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR))


def vignette(image: Image, rng: np.random.Generator, strength: float, radius: float = 0.8) -> Image:
    """Darkened corners, by `strength` at the corners, from `radius` (fraction of the half-diagonal) outwards."""
    h, w = image.shape[:2]
    cy, cx = 0.5 + rng.uniform(-0.075, 0.075), 0.5 + rng.uniform(-0.075, 0.075)
    # The falloff is smooth: computed on a coarse grid (a few pixels per cell) and resized up.
    gh, gw = max(2, h // 8), max(2, w // 8)
    y, x = np.ogrid[:gh, :gw]
    d = np.sqrt(((y / (gh - 1) - cy) * 2) ** 2 + ((x / (gw - 1) - cx) * 2) ** 2) / np.sqrt(2)
    falloff = np.clip((d - radius) / max(1e-3, 1.0 - radius), 0, 1) ** 2
    coarse = (1.0 - strength * falloff).astype(np.float32)
    return multiply(image, cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR))


def halftone(image: Image, rng: np.random.Generator, cell: float, angle: float, strength: float) -> Image:
    """A printed halftone screen of `cell`-pixel dots at `angle` degrees, mixed in by `strength`."""
    h, w = image.shape[:2]
    y, x = (axis.astype(np.float32) for axis in np.ogrid[:h, :w])
    a = np.deg2rad(angle)
    u = x * np.float32(np.cos(a) / cell) + y * np.float32(np.sin(a) / cell)
    v = y * np.float32(np.cos(a) / cell) - x * np.float32(np.sin(a) / cell)
    # distance from the centre of this screen cell, 0 at the centre, ~0.7 at the corners
    dist = cv2.magnitude(u - np.floor(u) - 0.5, v - np.floor(v) - 0.5)
    lum = luminance(image)
    darkness = 1.0 - cv2.GaussianBlur(lum, (0, 0), cell / 3) / 255.0
    radius = np.sqrt(np.maximum(darkness, 0.0) / np.pi)  # ink dot area equals local darkness
    paper = 1.0 - np.clip((radius - dist) * cell + 0.5, 0.0, 1.0)  # anti-aliased dot edge
    # screened colour = x * (255 * paper) / luminance: the dot pattern keeps each pixel's hue
    ratio = paper * 255.0 / (lum + 1.0)
    return multiply(image, (1.0 - strength) + strength * ratio)


def silvering(image: Image, rng: np.random.Generator, strength: float, reach: float = 0.25) -> Image:
    """Silver mirroring: silver migrated to the surface gives the dark tones a bluish metallic sheen
    that lifts them, strongest towards the print's edges (`reach`: how far in, as a share of the
    short side) and blotchy; `strength` (0-1) the lift of black at the edge."""
    h, w = image.shape[:2]
    y, x = np.ogrid[:h, :w]
    edge = np.minimum(np.minimum(y, h - 1 - y), np.minimum(x, w - 1 - x)).astype(np.float32) / max(1.0, reach * min(h, w))
    sheen = np.exp(-edge) * np.clip(0.6 + 0.8 * smooth_field(rng, (h, w), min(h, w) / 12), 0, 1) * strength
    darkness = 1.0 - luminance(image) / 255.0  # silver mirrors where there is silver: the dark tones
    amount = (sheen * darkness)[..., None] if image.ndim == 3 else sheen * darkness
    metal = np.asarray((200.0, 205.0, 215.0), np.float32) if image.ndim == 3 else 205.0
    out = image.astype(np.float32)
    return to_uint8(out + (metal - out) * amount)
