"""3D necks: SAM's 2D neck (1x1 conv, LayerNorm, 3x3 conv, LayerNorm) rebuilt in 3D, one per level."""
from __future__ import annotations

import torch
from torch import nn


class LayerNorm3d(nn.Module):
    """LayerNorm over channels of a channel-first volume [B, C, D, H, W] (SAM's LayerNorm2d in 3D)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


class Neck3D(nn.Sequential):
    """Tokens [B, E, D, H, W] -> [B, out_dim, D, H, W]."""

    def __init__(self, embed_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Conv3d(embed_dim, out_dim, kernel_size=1, bias=False),
            LayerNorm3d(out_dim),
            nn.Conv3d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_dim),
        )
