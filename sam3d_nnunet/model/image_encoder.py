"""SAM's ViT image encoder adapted to 3D volumes (the 3DSAM-adapter encoder)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import nn
from torch.utils.checkpoint import checkpoint

from .block import Block3D
from .neck import Neck3D
from .patch_embed import PatchEmbed3D
from .variants import SAMVariant, TokenStride, token_grid


def pool_position_table(table: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """SAM's position table [1, 64, 64, E] -> [grid_h, grid_w, E].

    Average pooling when the grid divides 64 (the paper's 64 -> 32), else timm's antialiased
    bicubic resampling for any other grid.
    """
    _, th, tw, e = table.shape
    gh, gw = grid_hw
    if th % gh == 0 and tw % gw == 0:
        pooled = F.avg_pool2d(table.permute(0, 3, 1, 2), kernel_size=(th // gh, tw // gw))
        return pooled[0].permute(1, 2, 0)
    flat = resample_abs_pos_embed(table.reshape(1, th * tw, e), new_size=[gh, gw], old_size=[th, tw],
                                  num_prefix_tokens=0)
    return flat.reshape(gh, gw, e)


class ImageEncoder3D(nn.Module):
    """Crop [B, 3, D, H, W] -> four feature maps [B, neck_dim, D/s, H/s, W/s] (after each quarter of
    the blocks). Tensors named as in SAM's ``ImageEncoderViT`` carry SAM's weights unchanged."""

    def __init__(self, variant: SAMVariant, patch_size: tuple[int, int, int], token_stride: TokenStride = 4,
                 window_size: int = 8, adapter_dim: int | None = None, neck_dim: int = 256,
                 lora_rank: int = 0, patch_embed_mode: str = "fused", gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.variant = variant
        self.patch_size = tuple(patch_size)
        self.grid = token_grid(self.patch_size, token_stride, window_size)
        self.gradient_checkpointing = gradient_checkpointing
        e = variant.embed_dim
        self.patch_embed = PatchEmbed3D(e, token_stride, sam_patch=variant.sam_patch, mode=patch_embed_mode)
        self.pos_embed = nn.Parameter(torch.zeros(1, variant.sam_grid, variant.sam_grid, e))
        # the paper's learnable depth table, initialised to ones
        self.depth_embed = nn.Parameter(torch.ones(1, self.grid[0], 1, 1, e))
        self.blocks = nn.ModuleList(
            Block3D(e, variant.num_heads, window_size, variant.sam_rel_pos_size(i), shift=i % 2 == 0,
                    adapter_dim=adapter_dim, mlp_ratio=variant.mlp_ratio, lora_rank=lora_rank)
            for i in range(variant.depth)
        )
        self.neck_block_indexes = variant.neck_block_indexes
        self.necks = nn.ModuleList(Neck3D(e, neck_dim) for _ in self.neck_block_indexes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if tuple(x.shape[2:]) != self.patch_size:
            raise ValueError(f"the encoder was built for crops of {self.patch_size}, got {tuple(x.shape[2:])}")
        x = self.patch_embed(x)
        x = x + pool_position_table(self.pos_embed, self.grid[1:])[None, None] + self.depth_embed
        levels = []
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if i in self.neck_block_indexes:
                neck = self.necks[self.neck_block_indexes.index(i)]
                levels.append(neck(x.permute(0, 4, 1, 2, 3)))
        return levels
