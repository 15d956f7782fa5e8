"""3D window attention with SAM's decomposed relative positions, extended by a depth table."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import get_rel_pos
from torch import nn

from .lora import LoRALinear


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, D, H, W, C] -> [B * nW, window, window, window, C], windows of one image contiguous."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // window, window, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window, window, window, c)


def window_unpartition(windows: torch.Tensor, window: int, grid: tuple[int, int, int]) -> torch.Tensor:
    d, h, w = grid
    c = windows.shape[-1]
    x = windows.view(-1, d // window, h // window, w // window, window, window, window, c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(-1, d, h, w, c)


def shifted_window_mask(grid: tuple[int, int, int], window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Additive mask [nW, N, N] that stops tokens rolled across the volume's edge from attending to
    each other (Swin's trick, in 3D)."""
    region = torch.zeros(1, *grid, 1, device=device)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for sd in bands:
        for sh in bands:
            for sw in bands:
                region[:, sd, sh, sw, :] = label
                label += 1
    ids = window_partition(region, window).flatten(1)  # [nW, N]
    different = ids[:, :, None] != ids[:, None, :]
    return torch.zeros(different.shape, device=device).masked_fill(different, float("-inf"))


def decomposed_rel_pos_bias(q: torch.Tensor, rel_d: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor,
                            window: tuple[int, int, int]) -> torch.Tensor:
    """SAM's ``add_decomposed_rel_pos`` in 3D, returned as an additive bias [B, heads, N, N].

    q [B, heads, N, hd] (unscaled); rel_* are the tables [2*w-1, hd], resized as SAM resizes them.
    """
    d, h, w = window
    rd = get_rel_pos(d, d, rel_d)
    rh = get_rel_pos(h, h, rel_h)
    rw = get_rel_pos(w, w, rel_w)
    b, heads, n, hd = q.shape
    r_q = q.reshape(b, heads, d, h, w, hd)
    bias_d = torch.einsum("bndhwc,dkc->bndhwk", r_q, rd)
    bias_h = torch.einsum("bndhwc,hkc->bndhwk", r_q, rh)
    bias_w = torch.einsum("bndhwc,wkc->bndhwk", r_q, rw)
    bias = (bias_d[..., :, None, None] + bias_h[..., None, :, None] + bias_w[..., None, None, :])
    return bias.reshape(b, heads, n, n)


class WindowAttention3D(nn.Module):
    """Multi-head attention inside one 3D window. ``qkv``, ``proj``, ``rel_pos_h``, ``rel_pos_w`` are
    SAM's tensors with SAM's names and shapes (global blocks: 127 entries, windowed: 27), resized to
    the 3D window on the fly; ``rel_pos_d`` is new."""

    def __init__(self, dim: int, num_heads: int, window_size: int, sam_rel_pos_size: int,
                 lora_rank: int = 0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        linear = (lambda i, o: LoRALinear(i, o, rank=lora_rank)) if lora_rank else nn.Linear
        self.qkv = linear(dim, dim * 3)
        self.proj = linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(sam_rel_pos_size, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(sam_rel_pos_size, self.head_dim))
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * window_size - 1, self.head_dim))

    @torch.no_grad()
    def init_depth_table_from_hw(self) -> None:
        """The new depth table starts as the mean of SAM's h and w tables resized to the window."""
        n = 2 * self.window_size - 1
        self.rel_pos_d.copy_((_resize_table(self.rel_pos_h, n) + _resize_table(self.rel_pos_w, n)) / 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B*nW, w, w, w, C]; mask [nW, N, N] additive or None."""
        bw, d, h, w, c = x.shape
        n = d * h * w
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = decomposed_rel_pos_bias(q, self.rel_pos_d, self.rel_pos_h, self.rel_pos_w, (d, h, w))
        if mask is not None:
            n_windows = mask.shape[0]
            bias = (bias.view(-1, n_windows, self.num_heads, n, n) + mask[None, :, None]).view(bw, self.num_heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        out = out.transpose(1, 2).reshape(bw, d, h, w, c)
        return self.proj(out)


def _resize_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linear resize of a relative-position table [L, C] to [length, C], as SAM's ``get_rel_pos`` does."""
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.T[None], size=length, mode="linear")
    return resized[0].T
