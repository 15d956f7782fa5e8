"""The linear-head decoder (``decoder="linear"``): a faster variant of the published multi-layer-aggregation
decoder, NOT the paper's network (that is ``mask_decoder.MLADecoder3D``).

Each level runs two (3x3x3 conv with bias, affine InstanceNorm, ReLU); the fusion is a single 1x1x1 conv to
two logits (the paper fuses with a 3x3x3 conv to 128 channels, InstanceNorm, ReLU and a 3x3x3 conv to two
logits), and upsampling uses align_corners=False (the paper: True).

The 1x1x1 fusion is linear and pointwise, so it is written per part (one 1x1x1 conv per level and one for
the image, summed: the same function as one conv over the concatenation), and because a pointwise linear map
commutes with trilinear upsampling, each level's part is taken before upsampling. Everything that does not depend on the prompt (levels 1-3 and the image skip) is then a
2-channel map computed once per crop (``prompt_independent``), and a new click only pays for the deepest
level (``forward``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mask_decoder import fused_size


def conv_norm_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(in_ch, out_ch, kernel_size=3, padding=1),
                         nn.InstanceNorm3d(out_ch, affine=True), nn.ReLU(inplace=True))


def _upsample(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


class LinearHeadDecoder3D(nn.Module):
    """levels: 4 maps [B, in_dim, *grid] (the last one prompted); image: [B, C, *crop] -> logits [B, 2, *crop]."""

    def __init__(self, in_dim: int, image_channels: int, level_dim: int = 128, num_levels: int = 4,
                 out_channels: int = 2) -> None:
        super().__init__()
        self.levels = nn.ModuleList(
            nn.Sequential(conv_norm_relu(in_dim, level_dim), conv_norm_relu(level_dim, level_dim))
            for _ in range(num_levels)
        )
        self.level_heads = nn.ModuleList(nn.Conv3d(level_dim, out_channels, kernel_size=1, bias=False)
                                         for _ in range(num_levels))
        self.image_head = nn.Conv3d(image_channels, out_channels, kernel_size=1)

    fused_size = staticmethod(fused_size)

    def prompt_independent(self, levels: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """The logits' share from levels 1..n-1 and the image skip, at the fused resolution [B, 2, *2grid]."""
        size = self.fused_size(tuple(levels[0].shape[2:]), tuple(image.shape[2:]))
        total = self.image_head(_upsample(image, size))
        for block, head, level in zip(self.levels[:-1], self.level_heads[:-1], levels[:-1]):
            total = total + _upsample(head(block(level)), size)
        return total

    def forward(self, deepest: torch.Tensor, prompt_independent: torch.Tensor,
                crop_size: tuple[int, ...]) -> torch.Tensor:
        size = tuple(prompt_independent.shape[2:])
        logits = prompt_independent + _upsample(self.level_heads[-1](self.levels[-1](deepest)), size)
        return _upsample(logits, crop_size)
