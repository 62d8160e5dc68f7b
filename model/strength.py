"""How much of its restoration a photograph gets, judged from the whole of it.

The restore path changes every photo it is given: a print that needs no repair loses texture and
tone on the way, and a lightly degraded one is often over-corrected (on the held-out pairs, the one
blend of input and restoration that fits each best is below 0.8 for half of them). This head looks
at full-resolution crops of the input and of the restored output and predicts one strength g in
[0, 1] for the photo; the output is then input + g * (restoration - input). Damage the detector
marked is filled whatever g is, with the restoration brought to the tone of the input around it,
so that a fill on a print left alone does not stand out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CROP = 256  # full resolution: grain, blur and JPEG blocks do not survive a thumbnail
GRID = 4  # crops per side of a large photo, evenly spread
TONE_CELL = 4  # a fill takes the tone of the input around it, averaged over cells of this many pixels a side,
FILL_TONE = 2  # over this many cells on every side


def crop_boxes(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(y, x, h, w) of the crops a photo is judged on: up to GRID x GRID of CROP x CROP, evenly spread."""
    def starts(length: int) -> list[int]:
        size = min(CROP, length)
        count = min(GRID, -(-length // size))
        return sorted({i * (length - size) // max(count - 1, 1) for i in range(count)})
    return [(y, x, min(CROP, height), min(CROP, width)) for y in starts(height) for x in starts(width)]


class RestorationStrength(nn.Module):
    def __init__(self, channels: int = 16, hidden: int = 32):
        super().__init__()
        c = channels
        self.features = nn.Sequential(  # to 1/16 resolution: grain, blocks and blur over a neighbourhood
            nn.Conv2d(6, c, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(c, 2 * c, 3, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 4 * c, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(4 * c, 4 * c, 3, 2, 1), nn.LeakyReLU(0.2))
        self.head = nn.Sequential(nn.Linear(8 * c, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))
        nn.init.zeros_(self.head[-1].weight)  # starts at one half for every photo, not saturated
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, image: torch.Tensor, restored: torch.Tensor, photos: int | None = None) -> torch.Tensor:
        """Crops (B x 3 x h x w, [-1, 1]) of the input and the restored output, those of each photo
        together, photos of them (None: one crop each) -> each photo's strength (photos,)."""
        # The change, magnified: on most photos it is a few levels of 255.
        maps = self.features(torch.cat([image, 4 * (restored - image)], 1)).float().flatten(2)
        pooled = torch.cat([maps.mean(2), maps.std(2, correction=0)], 1)
        pooled = pooled.view(photos or len(image), -1, pooled.shape[1]).mean(1)  # the photo's crops together
        return torch.sigmoid(self.head(pooled))[:, 0]


def _box_sum(x: torch.Tensor) -> torch.Tensor:
    """Sums over a (2 FILL_TONE + 1)^2 box, zeros outside, by running sums along each axis."""
    k = 2 * FILL_TONE + 1
    for dim, pad in ((-1, (FILL_TONE + 1, FILL_TONE)), (-2, (0, 0, FILL_TONE + 1, FILL_TONE))):
        running = F.pad(x, pad).cumsum(dim)
        x = running.narrow(dim, k, x.shape[dim]) - running.narrow(dim, 0, x.shape[dim])
    return x


def tone_nearby(difference: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per pixel, the mean of difference over the pixels nearby where keep is 1 (difference is 0
    elsewhere). Made on cells of TONE_CELL pixels, where it is smooth anyway: at full resolution it
    took 0.4-0.5 s of a 12 MP scan by running sums, 0.9-1.0 s by pooling."""
    cells = [F.avg_pool2d(t, TONE_CELL, ceil_mode=True) for t in (difference, keep)]
    mean = _box_sum(cells[0]) / _box_sum(cells[1]).clamp_min(1e-3)
    return F.interpolate(mean, size=difference.shape[-2:], mode="bilinear", align_corners=False)


def blend(image: torch.Tensor, restored: torch.Tensor, mask: torch.Tensor, strength: torch.Tensor,
          inplace: bool = False) -> torch.Tensor:
    """restored + (1 - strength) * (image - restored) per photo, B x C x H x W: the input at strength
    0, the restoration at 1. Where mask (B x 1 x H x W, 0/1) marks damage, the restoration moved by
    the input's difference from it over the undamaged pixels nearby instead, as far as the strength
    leaves it undone: a fill takes the tone around it. inplace: image and restored are used up
    (a 12 MP scan's temporaries are 144 MB each), for inference."""
    if not bool((strength < 1).any()):
        return restored
    keep = 1 - mask.to(image.dtype)
    difference = (image.sub_(restored) if inplace else image - restored).mul_(keep)
    rows, columns = (mask.amax(dim=(0, 1, axis)).nonzero()[:, 0] for axis in (3, 2))
    if len(rows):  # only around the damage
        margin = (FILL_TONE + 1) * TONE_CELL
        window = (..., *(slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1) for i in (rows, columns)))
        nearby = difference[window]
        nearby.add_((1 - keep[window]) * tone_nearby(nearby, keep[window]))
    undone = (1 - strength).view(-1, 1, 1, 1).to(image.dtype)
    return restored.addcmul_(difference, undone) if inplace else restored + undone * difference
