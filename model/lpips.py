"""LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric",
2018), VGG variant, as the `lpips` package computes it: VGG16 features at five depths, each unit-
normalized over channels, squared differences weighted per channel by the learned linear layers,
averaged over space and summed over depths. Lower is closer; 0 for identical images.

Weights are handed in: torchvision's ImageNet VGG16 state dict and the package's linear layers
(`weights/v0.1/vgg.pth`, keys lin0.model.1.weight ... lin4.model.1.weight).
"""

from __future__ import annotations

import torch
from torch import nn

from .losses import vgg_features

VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
TAPS = {3: 64, 8: 128, 15: 256, 22: 512, 29: 512}  # relu1_2 ... relu5_3 in torchvision's numbering


class LPIPS(nn.Module):
    def __init__(self, vgg16: dict[str, torch.Tensor], linear: dict[str, torch.Tensor]):
        super().__init__()
        self.features = vgg_features(VGG16_LAYOUT, vgg16)
        self.linear = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in TAPS.values())
        for i, layer in enumerate(self.linear):
            layer.weight.data.copy_(linear[f"lin{i}.model.1.weight"])
        # The package's input scaling of images in [-1, 1].
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W images in [-1, 1] -> B distances."""
        n = len(a)
        x = (torch.cat([a, b]) - self.shift) / self.scale
        total = torch.zeros(n, device=a.device)
        linear = iter(self.linear)
        for i, layer in enumerate(self.features[: max(TAPS) + 1]):
            x = layer(x)
            if i in TAPS:
                unit = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total += next(linear)((unit[:n] - unit[n:]).pow(2)).mean((1, 2, 3))
        return total
