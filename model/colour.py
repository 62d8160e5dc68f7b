"""Keeping a print's own colours: the restored luminance with the original's chroma.

The restore path and its tone correction learned colour from synthetic fading and toning. On real
prints, their colour changes can be wrong: a sepia print turned cool, dark browns turned red. So by
default the engine keeps the colours of the original and takes only the luminance from the model.
The original's chroma is passed through a guided filter (He et al., 2013), with the restored
luminance as the guide, computed at 1/SCALE of the resolution. This averages colour grain and thin
scratches out of the chroma, and makes colour edges follow the repaired image, not the damage.
The luminance (Rec. 601 Y, as the detector and the evaluation use) stays exactly the restored one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .blocks import luminance, upsampled_bands

SCALE = 4  # the filter runs on images 4x smaller: colour is smooth, and this keeps it cheap
RADIUS = 2  # box radius at that scale: windows of 5 x 5, about 20 x 20 pixels of the photo
EPS = 4e-3  # regularisation, in [-1, 1] units squared: 1e-3 in [0, 1], a luminance std of about 0.03


def filter_size(height: int, width: int) -> tuple[int, int]:
    return max(1, round(height / SCALE)), max(1, round(width / SCALE))


def _box(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (RADIUS,) * 4, mode="replicate"), 2 * RADIUS + 1, stride=1)


def _chroma(rgb: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W in [-1, 1] -> B x 2 x H x W: R - Y and B - Y."""
    y = luminance(rgb)
    return torch.cat([rgb[:, :1] - y, rgb[:, 2:] - y], 1)


def chroma_coefficients(original_small: torch.Tensor, restored_small: torch.Tensor) -> torch.Tensor:
    """Both B x 3 x h x w in [-1, 1] at filter_size -> B x 4 x h x w: per pixel, chroma = a * Y + b
    (a for R - Y and B - Y, then b), fitted in a window of the original's chroma against the
    restored luminance."""
    guide = luminance(restored_small.float())
    chroma = _chroma(original_small.float())
    mean_guide, mean_chroma = _box(guide), _box(chroma)
    variance = _box(guide * guide) - mean_guide**2
    covariance = _box(guide * chroma) - mean_guide * mean_chroma
    a = covariance / (variance + EPS)
    b = mean_chroma - a * mean_guide
    return torch.cat([_box(a), _box(b)], 1)


def keep_colours(restored: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """restored (B x 3 x H x W, [-1, 1]) with its chroma replaced, in place, by the coefficients'
    a * Y + b (Y its own luminance), the coefficients upsampled bilinearly a band of rows at a time."""
    for rows, band in upsampled_bands(coefficients, *restored.shape[-2:]):
        a, b = band.split(2, 1)
        part = restored[:, :, rows]
        y = luminance(part)
        red, blue = (y + a * y + b).split(1, 1)  # Y + (R - Y), Y + (B - Y)
        part[:, :1], part[:, 2:] = red, blue
        part[:, 1:2] = (y - 0.299 * red - 0.114 * blue) / 0.587  # the green that keeps Y
    return restored
