"""The variational autoencoders: images to a Gaussian latent at 1/2**downsamples resolution, and back.

VAE_A (encoder E_RX, decoder G_RX) learns real old photos and synthetic ones together; VAE_B (E_Y, G_Y)
learns clean photos. Restoration runs E_RX -> mapping -> G_Y.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ResidualBlock, conv, norm
from .config import VAEConfig


class Encoder(nn.Module):
    def __init__(self, config: VAEConfig, in_channels: int = 3):
        super().__init__()
        c = config.channels
        layers: list[nn.Module] = [conv(in_channels, c, config.stem_kernel), norm(c, config.norm), nn.ReLU(inplace=True)]
        for _ in range(config.downsamples):
            layers += [conv(c, 2 * c, 4, stride=2), norm(2 * c, config.norm), nn.ReLU(inplace=True)]
            c *= 2
        layers += [ResidualBlock(c, config.norm) for _ in range(config.blocks)]
        self.body = nn.Sequential(*layers)
        self.mean = nn.Conv2d(c, config.latent_channels, 1)
        self.log_variance = nn.Conv2d(c, config.latent_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mean(h), self.log_variance(h).clamp(-30.0, 20.0)


class Decoder(nn.Module):
    def __init__(self, config: VAEConfig, out_channels: int = 3):
        super().__init__()
        c = config.channels * 2**config.downsamples
        layers: list[nn.Module] = [conv(config.latent_channels, c, 3)]
        layers += [ResidualBlock(c, config.norm) for _ in range(config.blocks)]
        for _ in range(config.downsamples):
            # Resize then convolve: no checkerboard artefacts, unlike transposed convolutions.
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv(c, c // 2), norm(c // 2, config.norm), nn.ReLU(inplace=True)]
            c //= 2
        layers += [conv(c, out_channels, config.stem_kernel), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)


class VAE(nn.Module):
    """Images in [-1, 1] to (mean, log-variance) of the latent, and latents back to images."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction, sampled latent, mean and log-variance."""
        mean, log_variance = self.encoder(x)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_variance) if self.training else mean
        return self.decoder(z), z, mean, log_variance
