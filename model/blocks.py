"""Building blocks shared by the networks."""

from __future__ import annotations

import torch
from torch import nn


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
