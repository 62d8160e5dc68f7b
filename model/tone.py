"""Global tone correction: one colour transform per photograph, predicted from thumbnails.

The restore path is fully convolutional and sees one tile at a time, so it cannot tell a faded or
toned print from a pale or warm scene: that needs the whole picture. This head looks at thumbnails
of the degraded photo and of the restore path's output and predicts a 3 x 3 colour matrix and an
offset, applied to every pixel of the output. One transform per photo keeps tiles consistent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

THUMBNAIL = 64
QUANTILES = (0.02, 0.5, 0.98)
STATISTICS = 3 * (2 + len(QUANTILES))  # per channel: mean, standard deviation and the quantiles


def thumbnail(image: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W -> B x 3 x 64 x 64, area-averaged."""
    return F.interpolate(image.float(), (THUMBNAIL, THUMBNAIL), mode="area")


def channel_statistics(thumb: torch.Tensor) -> torch.Tensor:
    """Per channel: mean, standard deviation and the 2%, 50% and 98% quantiles (B x STATISTICS)."""
    flat = thumb.flatten(2)
    quantiles = torch.quantile(flat, torch.tensor(QUANTILES, device=flat.device), dim=2).permute(1, 2, 0)
    return torch.cat([flat.mean(2), flat.std(2), quantiles.flatten(1)], 1)


class ToneCorrection(nn.Module):
    def __init__(self, channels: int = 32, hidden: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(6, channels, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, 2 * channels, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * channels, 2 * channels, 3, 2, 1), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Linear(2 * channels + 2 * STATISTICS, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 12))
        nn.init.zeros_(self.head[-1].weight)  # starts as the identity transform
        nn.init.zeros_(self.head[-1].bias)

    def transform(self, degraded_thumb: torch.Tensor, restored_thumb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Thumbnails in [-1, 1] -> (B x 3 x 3 matrix, B x 3 offset)."""
        pooled = self.features(torch.cat([degraded_thumb, restored_thumb], 1)).mean((2, 3))
        p = self.head(torch.cat([pooled, channel_statistics(degraded_thumb), channel_statistics(restored_thumb)], 1))
        return torch.eye(3, device=p.device) + p[:, :9].view(-1, 3, 3), p[:, 9:]

    def forward(self, degraded_thumb: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        """The restored photos (B x 3 x H x W, [-1, 1]) with their tone corrected."""
        matrix, offset = self.transform(degraded_thumb, thumbnail(restored))
        return torch.einsum("bij,bjhw->bihw", matrix, restored.float()) + offset[:, :, None, None]
