"""The latent mapping: a local branch of residual blocks for unstructured defects (noise, blur), and
the partial non-local block for structured ones (scratches, dust), guided by the scratch mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResidualBlock, conv, norm
from .config import MappingConfig


class PartialNonLocal(nn.Module):
    """Damaged positions take features attended from valid positions only; valid ones keep their own.

    With affinity f_ij = exp(theta(F_i) . phi(F_j)) and mask m (1 = damaged):
        s_ij = (1 - m_j) f_ij / sum_k (1 - m_k) f_ik,   O_i = nu(sum_j s_ij mu(F_j)),
        out_i = m_i O_i + (1 - m_i) F_i.
    Queries are processed query_chunk at a time, so memory grows with N, never with N x N; only
    damaged positions are queried at all. key_stride > 1 takes keys from a sparser grid of valid
    positions, key_stride**2 fewer (measured: 10% of the default model's time with 75% of an image
    marked damaged, before striding). Features at damaged positions are never attended to (a damaged
    position's own features still form its query, as in the method). With no valid position in the
    image, damaged positions get nu(0).
    """

    def __init__(self, channels: int, attention_channels: int, query_chunk: int = 4096, key_stride: int = 1):
        super().__init__()
        self.key_stride = key_stride
        self.theta = nn.Conv2d(channels, attention_channels, 1)
        self.phi = nn.Conv2d(channels, attention_channels, 1)
        self.mu = nn.Conv2d(channels, channels, 1)
        self.nu = nn.Conv2d(channels, channels, 1)
        self.query_chunk = query_chunk

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """features: B x C x H x W; mask: B x 1 x H x W, 1 where damaged (any value > 0 counts)."""
        b, c, h, w = features.shape
        damaged = (mask > 0).reshape(b, h * w)
        unkeyed = torch.ones(h, w, dtype=torch.bool, device=features.device)  # positions never used as keys
        unkeyed[:: self.key_stride, :: self.key_stride] = False
        out = features.clone(memory_format=torch.contiguous_format)
        if not damaged.any():
            return out
        # Zeros appended to queries and keys change no dot product, and with them as wide as the
        # values, on 4-D inputs, PyTorch takes its fused (flash) kernel: 2-4x faster than the
        # unfused one on CPU, in bf16 and fp32 alike (benchmarks/restore.py --part attention).
        widen = (0, max(0, c - self.theta.out_channels))
        queries = F.pad(self.theta(features).flatten(2).transpose(1, 2), widen)  # B x N x C
        keys = F.pad(self.phi(features).flatten(2).transpose(1, 2), widen)
        values = self.mu(features).flatten(2).transpose(1, 2)  # B x N x C
        for i in range(b):
            where = damaged[i].nonzero().squeeze(1)
            if len(where) == 0:
                continue
            valid = ~(damaged[i] | unkeyed.flatten())
            if valid.any():
                k, v = keys[i, valid][None, None], values[i, valid][None, None]
                attended = torch.cat([
                    F.scaled_dot_product_attention(queries[i, where[s : s + self.query_chunk]][None, None], k, v, scale=1.0)[0, 0]
                    for s in range(0, len(where), self.query_chunk)])
            else:
                attended = values.new_zeros(len(where), c)
            # nu is a 1x1 convolution: apply it to the attended vectors directly.
            o = F.linear(attended.to(self.nu.weight.dtype), self.nu.weight.flatten(1), self.nu.bias)
            out[i].view(c, h * w)[:, where] = o.t().to(out.dtype)
        return out


def latent_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A full-resolution mask on the latent grid: a latent cell is damaged if any pixel in it is."""
    return (F.adaptive_max_pool2d(mask.float(), size) > 0).float()


class Mapping(nn.Module):
    """Degraded latent (E_RX) -> clean latent (E_Y), with the damage mask on the latent grid."""

    def __init__(self, config: MappingConfig, latent_channels: int):
        super().__init__()
        c = config.channels
        self.head = nn.Sequential(conv(latent_channels, c), norm(c, config.norm), nn.ReLU(inplace=True))
        self.local = nn.Sequential(*[ResidualBlock(c, config.norm) for _ in range(config.blocks)])
        self.global_branch = PartialNonLocal(c, config.attention_channels, config.query_chunk, config.key_stride)
        self.fuse = nn.Sequential(nn.Conv2d(2 * c, c, 1), norm(c, config.norm), nn.ReLU(inplace=True))
        self.tail = nn.Sequential(*[ResidualBlock(c, config.norm) for _ in range(config.blocks)], conv(c, latent_channels))

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.head(z)
        local = self.local(h)
        restored = self.global_branch(h, mask) if mask is not None else h
        return self.tail(self.fuse(torch.cat([local, restored], 1)))
