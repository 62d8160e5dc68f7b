"""Building blocks shared by the networks."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

BAND = 256  # rows of a full-size map made at a time from a coarse one (upsampled_bands)


def conv(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    """A convolution that keeps the size (at stride 1). Zero padding, not reflection: oneDNN pads
    zeros inside the convolution, whereas reflection is a separate copy of every activation (14% of
    the default model's inference time)."""
    return nn.Conv2d(in_channels, out_channels, kernel, stride, padding=(kernel - 1) // 2)


def norm(channels: int, kind: str = "batch") -> nn.Module:
    """"instance": as the reference VAEs and mapping (without affine parameters); its statistics come
    from the whole input, so a tile's output depends on the tile. "batch": at inference a fixed
    per-channel affine map, so tiles restore exactly as the whole image would, given the overlap."""
    return nn.InstanceNorm2d(channels, affine=False) if kind == "instance" else nn.BatchNorm2d(channels)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, kind: str = "batch"):
        super().__init__()
        self.body = nn.Sequential(conv(channels, channels), norm(channels, kind), nn.ReLU(inplace=True),
                                  conv(channels, channels), norm(channels, kind))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W -> B x 1 x H x W (Rec. 601 weights): what the scratch detector sees."""
    return 0.299 * image[:, :1] + 0.587 * image[:, 1:2] + 0.114 * image[:, 2:3]


def upsampled_bands(coarse: torch.Tensor, height: int, width: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows, the map for those rows) for bands of BAND rows of coarse (B x C x h x w) upsampled to
    height x width: together F.interpolate(coarse, (height, width), mode="bilinear",
    align_corners=False), without ever holding the full-size map."""
    cells = coarse.shape[2]
    source = ((torch.arange(height, dtype=torch.float64) + 0.5) * (cells / height) - 0.5).clamp_(min=0)
    lo = source.floor().long().clamp_(max=cells - 1)
    hi = (lo + 1).clamp_(max=cells - 1)
    weight = (source - lo).to(coarse)[:, None]
    lo, hi = lo.to(coarse.device), hi.to(coarse.device)
    for top in range(0, height, BAND):
        rows = slice(top, top + BAND)
        down = coarse[:, :, lo[rows]] * (1 - weight[rows]) + coarse[:, :, hi[rows]] * weight[rows]
        # Across the width a band's samples are the whole map's: F.interpolate's own mapping.
        yield rows, F.interpolate(down, (down.shape[2], width), mode="bilinear", align_corners=False)
