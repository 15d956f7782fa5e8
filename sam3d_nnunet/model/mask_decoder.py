"""The multi-layer-aggregation 3D decoder: three intermediate levels, the prompt-updated deepest
level and a downsampled image skip, fused at twice the token resolution, then up to the crop."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_norm_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(in_ch, out_ch, kernel_size=3, padding=1),
                         nn.InstanceNorm3d(out_ch, affine=True), nn.ReLU(inplace=True))


class MultiLevelDecoder3D(nn.Module):
    """levels: 4 maps [B, in_dim, *grid]; image: [B, C, *crop] -> logits [B, 2, *crop] (1 = wanted class)."""

    def __init__(self, in_dim: int, image_channels: int, level_dim: int = 128, head_dim: int = 64,
                 num_levels: int = 4, out_channels: int = 2) -> None:
        super().__init__()
        self.levels = nn.ModuleList(
            nn.Sequential(conv_norm_relu(in_dim, level_dim), conv_norm_relu(level_dim, level_dim))
            for _ in range(num_levels)
        )
        self.head = nn.Sequential(conv_norm_relu(num_levels * level_dim + image_channels, head_dim),
                                  nn.Conv3d(head_dim, out_channels, kernel_size=1))

    def forward(self, levels: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        fused_size = tuple(2 * n for n in levels[0].shape[2:])
        parts = [F.interpolate(block(level), size=fused_size, mode="trilinear", align_corners=False)
                 for block, level in zip(self.levels, levels)]
        parts.append(F.interpolate(image, size=fused_size, mode="trilinear", align_corners=False))
        logits = self.head(torch.cat(parts, dim=1))
        return F.interpolate(logits, size=tuple(image.shape[2:]), mode="trilinear", align_corners=False)
