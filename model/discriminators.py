"""Discriminators: on latents (synthetic against real old photos) and multi-scale PatchGAN on images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import DiscriminatorConfig


class LatentDiscriminator(nn.Module):
    """Tells latents of synthetic photos from latents of real old photos, per latent patch."""

    def __init__(self, latent_channels: int, channels: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(latent_channels, channels, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(channels, 1, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)


class PatchGAN(nn.Module):
    """A PatchGAN that returns every layer's features, the last being the patch scores."""

    def __init__(self, channels: int, layers: int, in_channels: int = 3):
        super().__init__()
        blocks = [nn.Sequential(nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True))]
        c = channels
        for _ in range(layers - 1):
            blocks.append(nn.Sequential(nn.Conv2d(c, 2 * c, 4, 2, 1), nn.InstanceNorm2d(2 * c), nn.LeakyReLU(0.2, inplace=True)))
            c *= 2
        blocks.append(nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.InstanceNorm2d(c), nn.LeakyReLU(0.2, inplace=True)))
        blocks.append(nn.Conv2d(c, 1, 3, 1, 1))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features


class MultiscaleDiscriminator(nn.Module):
    """PatchGANs on the image and on successively halved copies of it."""

    def __init__(self, config: DiscriminatorConfig, in_channels: int = 3):
        super().__init__()
        self.scales = nn.ModuleList([PatchGAN(config.channels, config.layers, in_channels) for _ in range(config.scales)])

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        results = []
        for i, discriminator in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            results.append(discriminator(x))
        return results
