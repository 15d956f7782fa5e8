"""3D patch embedding from SAM's frozen 2D 16x16 patch kernel.

The published method upsamples the crop x4 (trilinear), runs SAM's 2D patch convolution on every
slice and merges 16 slices with a trainable depth-wise convolution. All three steps are linear, so
the same function is ONE strided Conv3d on the crop padded by one voxel (replicate), whose kernel is
composed from the 2D kernel, the depth kernel and the 1D linear-upsampling stencil. ``mode="fused"``
computes that (about 20x fewer FLOPs at stride 4, no 512^3 tensor); ``mode="paper"`` computes the
published path and serves as the reference in tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .variants import TokenStride, per_axis


def upsampling_stencil(token_stride: int, sam_patch: int = 16) -> torch.Tensor:
    """Weights [token_stride + 2, sam_patch] of input voxel ``s*t - 1 + k`` in upsampled position
    ``sam_patch*t + j``, for linear upsampling by ``sam_patch / token_stride`` (align_corners=False).

    Read off ``F.interpolate`` itself on an interior token, so it matches PyTorch exactly; at the
    borders PyTorch clamps source indices, which replicate padding by one voxel reproduces.
    """
    scale = sam_patch // token_stride
    n = 4 * token_stride
    eye = torch.eye(n, dtype=torch.float64)[:, None, :]  # n signals, one per input voxel
    up = F.interpolate(eye, scale_factor=scale, mode="linear", align_corners=False)[:, 0, :]  # [n, n*scale]
    t = 1  # an interior token: its inputs s-1 .. 2s lie inside [0, n)
    rows = up[token_stride * t - 1 : token_stride * t + token_stride + 1]
    return rows[:, sam_patch * t : sam_patch * (t + 1)].contiguous()


def compose_patch_kernel(
    kernel_2d: torch.Tensor,
    bias_2d: torch.Tensor | None,
    depth_kernel: torch.Tensor,
    depth_bias: torch.Tensor | None,
    stencils: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compose (2D patch conv on upsampled slices) then (depth-wise slice merge) into one Conv3d.

    kernel_2d [E, C, P, P] acts on (H, W); depth_kernel [E, P] merges P upsampled slices along D;
    stencils (one per axis D, H, W) [K_a, P] map K_a input voxels to P upsampled positions.
    Returns kernel [E, C, K_d, K_h, K_w] and bias [E].
    """
    sd, sh, sw = (s.to(kernel_2d.dtype) for s in stencils)
    depth = depth_kernel @ sd.T  # [E, K_d]
    plane = torch.einsum("ecij,pi,qj->ecpq", kernel_2d, sh, sw)  # [E, C, K_h, K_w]
    kernel = depth[:, None, :, None, None] * plane[:, :, None, :, :]
    bias = torch.zeros(kernel_2d.shape[0], dtype=kernel_2d.dtype, device=kernel_2d.device)
    if bias_2d is not None:
        bias = bias + bias_2d * depth_kernel.sum(dim=1)
    if depth_bias is not None:
        bias = bias + depth_bias
    return kernel, bias


class PatchEmbed3D(nn.Module):
    """Crop [B, 3, D, H, W] -> tokens [B, D/s, H/s, W/s, E], one token per s^3 voxels.

    ``proj`` is SAM's 2D patch convolution (same name, so SAM's weights load unchanged); slices are
    taken along D. ``depth_conv`` is new and trainable; it starts as the mean of the 16 slices'
    embeddings, so a fresh model embeds a slab the way SAM embeds one slice.
    """

    def __init__(self, embed_dim: int, token_stride: TokenStride = 4, in_chans: int = 3, sam_patch: int = 16,
                 mode: str = "fused") -> None:
        super().__init__()
        if mode not in ("fused", "paper"):
            raise ValueError(f"patch embedding mode must be 'fused' or 'paper', got {mode!r}")
        self.mode = mode
        self.token_stride = per_axis(token_stride)
        self.sam_patch = sam_patch
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=sam_patch, stride=sam_patch)
        self.depth_conv = nn.Conv3d(embed_dim, embed_dim, kernel_size=(sam_patch, 1, 1),
                                    stride=(sam_patch, 1, 1), groups=embed_dim)
        with torch.no_grad():
            self.depth_conv.weight.fill_(1.0 / sam_patch)
            self.depth_conv.bias.zero_()
        for axis, stride in zip("dhw", self.token_stride):
            self.register_buffer(f"stencil_{axis}", upsampling_stencil(stride, sam_patch).float(), persistent=False)

    def fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The composed Conv3d kernel; recomputed each call because the depth conv trains."""
        return compose_patch_kernel(self.proj.weight, self.proj.bias, self.depth_conv.weight[:, 0, :, 0, 0],
                                    self.depth_conv.bias, (self.stencil_d, self.stencil_h, self.stencil_w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "paper":
            tokens = self.forward_paper(x)
        else:
            kernel, bias = self.fused_kernel()
            padded = F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate")
            tokens = F.conv3d(padded, kernel, bias, stride=self.token_stride)
        return tokens.permute(0, 2, 3, 4, 1)

    def forward_paper(self, x: torch.Tensor) -> torch.Tensor:
        """The published path: upsample, 2D patch conv per slice, depth-wise merge. [B, E, D/s, H/s, W/s]."""
        scale = tuple(float(self.sam_patch // s) for s in self.token_stride)
        up = F.interpolate(x, scale_factor=scale, mode="trilinear", align_corners=False)
        b, c, d, h, w = up.shape
        slices = up.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)
        planes = self.proj(slices)  # [B*D, E, H', W']
        planes = planes.reshape(b, d, *planes.shape[1:]).permute(0, 2, 1, 3, 4)  # [B, E, D, H', W']
        return self.depth_conv(planes)
