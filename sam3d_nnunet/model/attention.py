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
    """Boolean mask [nW, N, N] (True = may attend) that stops tokens rolled across the volume's edge
    from attending to each other (Swin's trick, in 3D)."""
    region = torch.zeros(1, *grid, 1, device=device)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for sd in bands:
        for sh in bands:
            for sw in bands:
                region[:, sd, sh, sw, :] = label
                label += 1
    ids = window_partition(region, window).flatten(1)  # [nW, N]
    return ids[:, :, None] == ids[:, None, :]


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
    the window on the fly. ``rel_pos_d`` is the new depth table, learned at the same length as SAM's tables
    and resized the same way (the published parametrisation). ``rel_pos_scale`` is the published network's
    frozen scalar on the relative-position terms (1.0 unless an imported checkpoint says otherwise)."""

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
        self.rel_pos_d = nn.Parameter(torch.zeros(sam_rel_pos_size, self.head_dim))
        self.register_buffer("rel_pos_scale", torch.ones(()))

    @torch.no_grad()
    def init_depth_table_from_hw(self) -> None:
        """The new depth table starts as the mean of SAM's h and w tables (as the published network does)."""
        self.rel_pos_d.copy_((self.rel_pos_h + self.rel_pos_w) / 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B*nW, w, w, w, C]; mask [nW, N, N] boolean (True = may attend) or None.

        The relative-position bias is folded into the attention product instead of being built as
        an N x N tensor: bias[i, j] = rel_d[i, d(j)] + rel_h[i, h(j)] + rel_w[i, w(j)] is the dot
        product of [rel_d_i, rel_h_i, rel_w_i] with the one-hot positions of key j, so appending those
        to q and k gives SAM's logits exactly and lets ``scaled_dot_product_attention`` use its fused
        kernels (``decomposed_rel_pos_bias`` is the explicit reference).
        """
        bw, d, h, w, c = x.shape
        n = d * h * w
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q_pos = relative_position_queries(q, self.rel_pos_d, self.rel_pos_h, self.rel_pos_w, (d, h, w))
        q_pos = q_pos * self.rel_pos_scale.to(q_pos.dtype)
        k_pos = key_position_one_hot((d, h, w), q.dtype, q.device).expand(bw, self.num_heads, n, -1)
        extra = q_pos.shape[-1]
        pad = (-(self.head_dim + extra)) % 8  # fused kernels like head sizes in multiples of 8
        q = torch.cat([q * self.head_dim ** -0.5, q_pos, q.new_zeros(*q.shape[:-1], pad)], dim=-1)
        k = torch.cat([k, k_pos, k.new_zeros(*k.shape[:-1], pad)], dim=-1)
        v = F.pad(v, (0, extra + pad))
        if mask is not None:  # every image has the same windows; 4D inputs keep SDPA on its fused CPU kernel
            mask = mask[:, None].repeat(bw // mask.shape[0], 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        out = out.reshape(bw, self.num_heads, n, -1)[..., : self.head_dim]
        return self.proj(out.transpose(1, 2).reshape(bw, d, h, w, c))


def relative_position_queries(q: torch.Tensor, rel_d: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor,
                              window: tuple[int, int, int]) -> torch.Tensor:
    """Per query, its bias against every key depth, row and column: [B, heads, N, d + h + w]."""
    d, h, w = window
    b, heads, n, hd = q.shape
    r_q = q.reshape(b, heads, d, h, w, hd)
    parts = [torch.einsum("bndhwc,dkc->bndhwk", r_q, get_rel_pos(d, d, rel_d).to(q.dtype)),
             torch.einsum("bndhwc,hkc->bndhwk", r_q, get_rel_pos(h, h, rel_h).to(q.dtype)),
             torch.einsum("bndhwc,wkc->bndhwk", r_q, get_rel_pos(w, w, rel_w).to(q.dtype))]
    return torch.cat([p.reshape(b, heads, n, -1) for p in parts], dim=-1)


def key_position_one_hot(window: tuple[int, int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[N, d + h + w]: which depth, row and column each key of a window sits in."""
    d, h, w = window
    dd, hh, ww = torch.meshgrid(torch.arange(d, device=device), torch.arange(h, device=device),
                                torch.arange(w, device=device), indexing="ij")
    return torch.cat([F.one_hot(dd.flatten(), d), F.one_hot(hh.flatten(), h), F.one_hot(ww.flatten(), w)],
                     dim=-1).to(dtype)
