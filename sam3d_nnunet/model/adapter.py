"""The spatial adapter: a bottleneck with a depth-wise 3x3x3 convolution, so a 2D-pretrained block
sees its 3D neighbourhood."""
from __future__ import annotations

import torch
from torch import nn


class SpatialAdapter(nn.Module):
    """x + up(relu(dwconv3d(relu(down(x))))) on channel-last tokens [B, D, H, W, C].

    ``up`` starts at zero, so a fresh adapter leaves SAM's features untouched until it learns.
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden_dim)
        self.conv = nn.Conv3d(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim)
        self.up = nn.Linear(hidden_dim, dim)
        self.act = nn.ReLU()
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.down(x)).permute(0, 4, 1, 2, 3)
        h = self.act(self.conv(h)).permute(0, 2, 3, 4, 1)
        return x + self.up(h)
