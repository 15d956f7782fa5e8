"""One ViT block of SAM run on 3D windows, with a spatial adapter at its input."""
from __future__ import annotations

import torch
from segment_anything.modeling.common import MLPBlock
from torch import nn

from .adapter import SpatialAdapter
from .attention import WindowAttention3D, shifted_window_mask, window_partition, window_unpartition


class Block3D(nn.Module):
    """SAM's ``Block`` (norm1, attn, norm2, mlp: same names, same tensors) attending inside 3D windows,
    Swin-shifted by half a window when ``shift`` is set (the encoder shifts the even blocks 0, 2, 4, ...,
    as the published network does); ``adapter`` (None under LoRA) runs first."""

    def __init__(self, dim: int, num_heads: int, window_size: int, sam_rel_pos_size: int, shift: bool,
                 adapter_dim: int | None, mlp_ratio: float = 4.0, lora_rank: int = 0) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = window_size // 2 if shift else 0
        self.adapter = SpatialAdapter(dim, adapter_dim) if adapter_dim else None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = WindowAttention3D(dim, num_heads, window_size, sam_rel_pos_size, lora_rank=lora_rank)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        self._mask_cache: dict[tuple, torch.Tensor] = {}

    def _mask(self, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor | None:
        if not self.shift:
            return None
        key = (grid, str(device))
        if key not in self._mask_cache:
            self._mask_cache[key] = shifted_window_mask(grid, self.window_size, self.shift, device)
        return self._mask_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: tokens [B, D, H, W, C], every axis a multiple of the window."""
        if self.adapter is not None:
            x = self.adapter(x)
        grid = tuple(x.shape[1:4])
        shortcut = x
        x = self.norm1(x)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift,) * 3, dims=(1, 2, 3))
        windows = window_partition(x, self.window_size)
        windows = self.attn(windows, self._mask(grid, x.device))
        x = window_unpartition(windows, self.window_size, grid)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift,) * 3, dims=(1, 2, 3))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))
