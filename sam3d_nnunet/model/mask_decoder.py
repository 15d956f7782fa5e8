"""The published multi-layer-aggregation (MLA) 3D decoder.

Inputs: the three intermediate neck levels, the prompt-updated deepest level and the image. Each level runs
two (3x3x3 conv without bias, InstanceNorm without affine, ReLU) at token resolution and is upsampled x2
(trilinear, align_corners=True); the four are concatenated with the image resized to the same grid (half the
crop: 2x2x2 mean pooling at the paper's stride 4); the fusion is a 3x3x3 conv (4 x 128 + C -> 128),
InstanceNorm, ReLU and a 3x3x3 conv (128 -> 2) at that resolution; a final trilinear x2 (align_corners=True)
gives the crop.

Keeping the next click cheap, exactly: the first fusion conv is linear in its concatenated input, so it is
the sum of one conv per input group. The part from levels 0-2 and the image does not depend on the prompt
and is computed once per crop (``prompt_independent``, 128 channels at the fused resolution); a click pays
only for the prompted level's branch, its share of the fusion conv, and what follows (``forward``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def level_branch(in_dim: int, dim: int) -> nn.Sequential:
    """Two (3x3x3 conv without bias, InstanceNorm without affine, ReLU); indexes 0 and 3 are the convs."""
    return nn.Sequential(nn.Conv3d(in_dim, dim, 3, padding=1, bias=False), nn.InstanceNorm3d(dim), nn.ReLU(),
                         nn.Conv3d(dim, dim, 3, padding=1, bias=False), nn.InstanceNorm3d(dim), nn.ReLU())


def fused_size(grid: tuple[int, ...], crop: tuple[int, ...]) -> tuple[int, ...]:
    """Where the decoders fuse their levels: twice the token grid (64^3 for the paper's 32^3), never finer than
    the crop itself."""
    return tuple(min(2 * n, c) for n, c in zip(grid, crop))


def upsample_aligned(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Trilinear resize with align_corners=True, as the published decoder upsamples."""
    return F.interpolate(x, size=size, mode="trilinear", align_corners=True)


class MLADecoder3D(nn.Module):
    """levels: 4 maps [B, in_dim, *grid] (the last one prompted); image: [B, C, *crop] -> logits [B, 2, *crop]."""

    def __init__(self, in_dim: int, image_channels: int, level_dim: int = 128, num_levels: int = 4,
                 out_channels: int = 2) -> None:
        super().__init__()
        self.level_dim = level_dim
        self.levels = nn.ModuleList(level_branch(in_dim, level_dim) for _ in range(num_levels))
        self.fusion = nn.Conv3d(num_levels * level_dim + image_channels, level_dim, 3, padding=1, bias=False)
        self.fusion_norm = nn.InstanceNorm3d(level_dim)
        self.head = nn.Conv3d(level_dim, out_channels, 3, padding=1, bias=False)

    fused_size = staticmethod(fused_size)

    def _prompted_channels(self) -> slice:
        n = len(self.levels)
        return slice((n - 1) * self.level_dim, n * self.level_dim)

    def prompt_independent(self, levels: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """The fusion conv's share from levels 0..n-2 and the image: [B, level_dim, *fused]."""
        size = self.fused_size(tuple(levels[0].shape[2:]), tuple(image.shape[2:]))
        parts = [upsample_aligned(branch(level), size) for branch, level in zip(self.levels[:-1], levels[:-1])]
        # the image at the fused grid: exactly 2x2x2 mean pooling where the grid halves the crop, as published
        parts.append(F.interpolate(image, size=size, mode="trilinear", align_corners=False).to(parts[0].dtype))
        prompted = self._prompted_channels()
        weight = torch.cat([self.fusion.weight[:, :prompted.start], self.fusion.weight[:, prompted.stop:]], dim=1)
        return F.conv3d(torch.cat(parts, dim=1), weight.to(parts[0].dtype), padding=1)

    def forward(self, deepest: torch.Tensor, prompt_independent: torch.Tensor,
                crop_size: tuple[int, ...]) -> torch.Tensor:
        size = tuple(prompt_independent.shape[2:])
        branch = upsample_aligned(self.levels[-1](deepest), size)
        weight = self.fusion.weight[:, self._prompted_channels()].to(branch.dtype)
        fused = F.relu(self.fusion_norm(prompt_independent + F.conv3d(branch, weight, padding=1)))
        return upsample_aligned(self.head(fused), crop_size)
