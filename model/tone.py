"""Tone correction of a whole photograph, predicted from thumbnails.

The restore path is fully convolutional and sees one tile at a time, so it cannot tell a faded or
toned print from a pale or warm scene, nor uneven exposure from the scene's own light: that needs
the whole picture. This head looks at thumbnails of the degraded photo and of the restore path's
output and predicts a 3 x 3 colour matrix and an offset, applied to every pixel of the output, and
(spatial) a smooth light field on a coarse grid: a gain and an offset per cell, interpolated
bilinearly over the photo. Both come from the whole photo, so tiles stay consistent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import upsampled_bands

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
    def __init__(self, channels: int = 32, spatial: bool = True):
        super().__init__()
        hidden = 2 * channels
        self.features = nn.Sequential(  # 64 x 64 thumbnails -> an 8 x 8 grid of features
            nn.Conv2d(6, channels, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, 2 * channels, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * channels, 2 * channels, 3, 2, 1), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Linear(2 * channels + 2 * STATISTICS, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 12))
        # Per cell, from its features and the whole photo's: a gain (1 + g) of the light, and an offset per channel.
        self.field = nn.Sequential(nn.Conv2d(2 * channels + hidden, hidden, 3, 1, 1), nn.ReLU(inplace=True),
                                   nn.Conv2d(hidden, 4, 3, 1, 1)) if spatial else None
        last = [self.head[-1]] + ([self.field[-1]] if spatial else [])
        for layer in last:  # starts as the identity transform
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def transform(self, degraded_thumb: torch.Tensor, restored_thumb: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Thumbnails in [-1, 1] -> (B x 3 x 3 matrix, B x 3 offset, B x 4 x 8 x 8 light field or None)."""
        maps = self.features(torch.cat([degraded_thumb, restored_thumb], 1))
        summary = torch.cat([maps.mean((2, 3)), channel_statistics(degraded_thumb), channel_statistics(restored_thumb)], 1)
        hidden = self.head[:2](summary)
        p = self.head[2](hidden)
        field = None
        if self.field is not None:
            field = self.field(torch.cat([maps, hidden[:, :, None, None].expand(-1, -1, *maps.shape[2:])], 1))
        return torch.eye(3, device=p.device) + p[:, :9].view(-1, 3, 3), p[:, 9:], field

    def forward(self, degraded_thumb: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        """The restored photos (B x 3 x H x W, [-1, 1]) with their tone corrected."""
        matrix, offset, field = self.transform(degraded_thumb, thumbnail(restored))
        out = torch.einsum("bij,bjhw->bihw", matrix, restored.float()) + offset[:, :, None, None]
        if field is None:
            return out
        # In place when no gradient is kept (inference): one full-size image in memory, not two.
        result = out if not torch.is_grad_enabled() else torch.empty_like(out)
        for rows, band in upsampled_bands(field, *out.shape[-2:]):
            gain, shift = band.split([1, 3], 1)
            # Light multiplies intensity, (x + 1) / 2, so the gain pivots on black: (x + 1)(1 + g) - 1 + shift.
            result[:, :, rows] = out[:, :, rows] * (1 + gain) + (gain + shift)
        return result
