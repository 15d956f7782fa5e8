"""Map a dataset's input channels onto the three SAM was trained on."""
from __future__ import annotations

import torch
from torch import nn


class InputChannelMixer(nn.Module):
    """[B, C, ...] -> [B, 3, ...].

    1 channel is repeated (the paper's choice); 2 channels give (c0, c1, mean); 3 pass through; more go
    through a trainable 1x1x1 mixing whose first output is the repeat of the channel mean.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"input_channels must be >= 1, got {in_channels}")
        self.in_channels = in_channels
        self.trainable = in_channels > 3
        if in_channels == 1:
            matrix = torch.ones(3, 1)
        elif in_channels == 2:
            matrix = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
        elif in_channels == 3:
            matrix = torch.eye(3)
        else:
            matrix = torch.full((3, in_channels), 1.0 / in_channels)
        if self.trainable:
            self.weight = nn.Parameter(matrix)
        else:
            self.register_buffer("weight", matrix, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]}")
        return torch.einsum("oc,bc...->bo...", self.weight.to(x.dtype), x)
