"""The scratch detector: a U-Net from a grayscale photograph to per-pixel damage logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ScratchConfig


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
    )


class ScratchDetector(nn.Module):
    """Input B x 1 x H x W in [-1, 1] (any H, W); output B x 1 x H x W logits (sigmoid > threshold = damaged)."""

    def __init__(self, config: ScratchConfig):
        super().__init__()
        widths = [config.channels * 2**i for i in range(config.depth + 1)]
        self.down = nn.ModuleList([_double_conv(1, widths[0])] +
                                  [_double_conv(widths[i], widths[i + 1]) for i in range(config.depth)])
        self.up = nn.ModuleList([_double_conv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(config.depth))])
        self.out = nn.Conv2d(widths[0], 1, 1)
        self.multiple = 2**config.depth
        self.scale = config.scale

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        if self.scale > 1:
            # Scratches stay visible at half resolution, and the mapping only needs the mask on its
            # latent grid (1/4): detecting on fewer pixels costs scale**2 times less.
            h, w = gray.shape[-2:]
            logits = self._unet(F.avg_pool2d(gray, self.scale, ceil_mode=True))
            return F.interpolate(logits, scale_factor=self.scale, mode="bilinear", align_corners=False)[..., :h, :w]
        return self._unet(gray)

    def _unet(self, gray: torch.Tensor) -> torch.Tensor:
        h, w = gray.shape[-2:]
        # Pad to a multiple of 2**depth so that every level lines up, then crop back.
        ph, pw = -h % self.multiple, -w % self.multiple
        # Reflected, as trained; a photo smaller than the padding (a few pixels) can only repeat its edge.
        x = F.pad(gray, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate") if ph or pw else gray
        skips = []
        for i, level in enumerate(self.down):
            x = level(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        for level, skip in zip(self.up, reversed(skips[:-1])):
            x = level(torch.cat([F.interpolate(x, scale_factor=2, mode="nearest"), skip], 1))
        return self.out(x)[..., :h, :w]
