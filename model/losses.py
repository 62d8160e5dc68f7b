"""Losses of the three stages and the scratch detector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kl_divergence(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_variance)) || N(0, I)), averaged over latent elements."""
    return 0.5 * torch.mean(mean.pow(2) + log_variance.exp() - 1.0 - log_variance)


def lsgan(scores: torch.Tensor | list, target: float) -> torch.Tensor:
    """Least-squares GAN loss of discriminator scores against target (1 real, 0 fake). Takes one score
    map or the output of MultiscaleDiscriminator (the last feature of each scale is its scores)."""
    if isinstance(scores, torch.Tensor):
        return torch.mean((scores.float() - target) ** 2)
    return sum(torch.mean((scale[-1].float() - target) ** 2) for scale in scores) / len(scores)


def feature_matching(fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]]) -> torch.Tensor:
    """L1 between the discriminator's intermediate features of generated and real images."""
    total = sum(F.l1_loss(f.float(), r.detach().float()) for fs, rs in zip(fake, real) for f, r in zip(fs[:-1], rs[:-1]))
    return total / len(fake)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of B x 1 x H x W images on a 0-1 scale, as the evaluation computes it (model/metrics.py:
    Wang et al.'s Gaussian window of 11 taps, sigma 1.5, and constants; the border left out), in torch."""
    taps = torch.exp(-((torch.arange(11, device=a.device, dtype=torch.float32) - 5) ** 2) / (2 * 1.5**2))
    taps = taps / taps.sum()

    def mean(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, taps.view(1, 1, 1, 11)), taps.view(1, 1, 11, 1))
    a, b = a.float(), b.float()
    c1, c2 = 0.01**2, 0.03**2
    mean_a, mean_b = mean(a), mean(b)
    var_a, var_b, cov = mean(a * a) - mean_a**2, mean(b * b) - mean_b**2, mean(a * b) - mean_a * mean_b
    return ((2 * mean_a * mean_b + c1) * (2 * cov + c2) / ((mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2))).mean()


def bce_dice(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice: BCE for every pixel, Dice against the rarity of damage.
    Dice is over the whole batch, not per photo: on an undamaged photo a per-photo Dice is 1 - 1/(m + 1)
    for m marked pixels, nearly all of it for the first few marks, which taught the detector to mark
    nothing at all on photos it judged undamaged, and so to miss whole scratches (MODEL_CARD.md)."""
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return bce + dice_weight * dice


def focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float = 0.75) -> torch.Tensor:
    """Focal loss: cross-entropy down-weighted on pixels already classified well."""
    logits, target = logits.float(), target.float()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_true = torch.exp(-ce)
    weight = alpha * target + (1 - alpha) * (1 - target)
    return torch.mean(weight * (1 - p_true) ** gamma * ce)


# VGG19's convolution widths ("M" = max pooling), as torchvision numbers its `features` layers, so
# that ImageNet weights saved from torchvision load as they are.
VGG19_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]
# relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 and their weights in the perceptual loss (pix2pixHD's).
VGG_LAYERS = {1: 1 / 32, 6: 1 / 16, 11: 1 / 8, 20: 1 / 4, 29: 1.0}


def vgg_features(layout: list, state_dict: dict[str, torch.Tensor]) -> nn.Sequential:
    """torchvision's VGG `features` of a layout, frozen, with weights from its state dict."""
    layers: list[nn.Module] = []
    in_channels = 3
    for width in layout:
        if width == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=False)]
            in_channels = width
    features = nn.Sequential(*layers)
    features.load_state_dict({k.removeprefix("features."): v for k, v in state_dict.items() if not k.startswith("classifier.")})
    return features.requires_grad_(False).eval()


class VGGLoss(nn.Module):
    """Perceptual loss: weighted L1 between VGG19 features of two images in [-1, 1]."""

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        super().__init__()
        self.features = vgg_features(VGG19_LAYOUT, state_dict)
        self.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        x = torch.cat([fake, real])
        x = ((x + 1) / 2 - self.mean) / self.std
        loss, n = 0.0, len(fake)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in VGG_LAYERS:
                loss = loss + VGG_LAYERS[i] * F.l1_loss(x[:n].float(), x[n:].detach().float())
                if i == max(VGG_LAYERS):
                    break
        return loss
