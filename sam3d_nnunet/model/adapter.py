"""The spatial adapter: a bottleneck with a depth-wise 3x3x3 convolution, so a 2D-pretrained block
sees its 3D neighbourhood."""
from __future__ import annotations

import torch
from torch import nn


class SpatialAdapter(nn.Module):
    """x + relu(linear2(relu(conv(relu(linear1(x)))))) on channel-last tokens [B, D, H, W, C].

    The published adapter, ReLU after ``linear2`` included. Because of that last ReLU, ``linear2`` keeps
    PyTorch's default initialisation: a zero-initialised layer would sit at the ReLU's zero-gradient kink
    and never learn (a fresh adapter therefore perturbs SAM's features slightly, as in the paper).
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden_dim)
        self.conv = nn.Conv3d(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, dim)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.linear1(x)).permute(0, 4, 1, 2, 3)
        h = self.act(self.conv(h)).permute(0, 2, 3, 4, 1)
        return x + self.act(self.linear2(h))
