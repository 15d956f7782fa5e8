"""The click-prompt encoder ("visual sampler"): features read at the clicks, learned global queries,
and two attention layers that write the prompt into the deepest feature map.

Beyond the published method: every click carries a positive/negative label, any number of clicks
per sample works (padding label -1), zero clicks selects a learned no-click token (automatic mode),
and a learned class embedding says which of the dataset's classes is wanted.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PAD_LABEL = -1


def clicks_to_grid(clicks: torch.Tensor, crop_size: tuple[int, int, int]) -> torch.Tensor:
    """Voxel coordinates in the crop's array order (d, h, w) -> normalised coordinates in [-1, 1],
    still in (d, h, w) order, with align_corners=False semantics: voxel v sits at 2 (v + 0.5) / size - 1.

    With token stride s, token t covers voxels s*t - 1 .. s*t + s and is centred on s*t + (s - 1)/2,
    which is exactly where align_corners=False puts it, so sampling reads the right token.
    """
    size = torch.tensor(crop_size, dtype=clicks.dtype, device=clicks.device)
    return 2 * (clicks + 0.5) / size - 1


def sample_features_at_clicks(feature_map: torch.Tensor, clicks: torch.Tensor,
                              crop_size: tuple[int, int, int]) -> torch.Tensor:
    """Trilinearly sample feature_map [B, C, D, H, W] at clicks [B, N, 3] (voxels, (d, h, w)) -> [B, N, C].

    grid_sample wants (x, y, z) = (w, h, d): the flip below is the axis trap the published code warns of.
    """
    b, n, _ = clicks.shape
    if n == 0:
        return feature_map.new_zeros(b, 0, feature_map.shape[1])
    grid = clicks_to_grid(clicks, crop_size).flip(-1).to(feature_map.dtype)
    sampled = F.grid_sample(feature_map, grid.view(b, n, 1, 1, 3), mode="bilinear", padding_mode="border",
                            align_corners=False)
    return sampled.view(b, feature_map.shape[1], n).transpose(1, 2)


class FourierPositionEncoding3D(nn.Module):
    """Random Fourier features of normalised 3D coordinates (SAM's PositionEmbeddingRandom in 3D).
    The frequency matrix is a fixed, saved buffer drawn from a fixed seed."""

    def __init__(self, dim: int, scale: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator(device="cpu").manual_seed(seed)
        frequencies = scale * torch.randn(3, dim // 2, generator=generator, device="cpu")
        self.register_buffer("frequencies", frequencies.to(torch.empty(0).device))  # honours `with torch.device(...)`

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """coords [..., 3] in [-1, 1] -> [..., dim]."""
        angles = 2 * math.pi * coords.to(self.frequencies.dtype) @ self.frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def grid(self, size: tuple[int, int, int]) -> torch.Tensor:
        """Encodings of every token centre of a grid, flattened [D*H*W, dim]."""
        axes = [(torch.arange(n, device=self.frequencies.device, dtype=self.frequencies.dtype) + 0.5) * 2 / n - 1
                for n in size]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        return self(coords.reshape(-1, 3))


class PromptAttentionLayer(nn.Module):
    """Prompt tokens attend to each other (then an MLP); image tokens cross-attend to the prompt tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, image: torch.Tensor, image_pos: torch.Tensor,
                padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attended, _ = self.self_attn(tokens, tokens, tokens, key_padding_mask=padding, need_weights=False)
        tokens = self.norm1(tokens + attended)
        tokens = self.norm2(tokens + self.mlp(tokens))
        attended, _ = self.cross_attn(image + image_pos, tokens, tokens, key_padding_mask=padding, need_weights=False)
        return tokens, self.norm3(image + attended)


class ClickPromptEncoder(nn.Module):
    """Updates the deepest feature map [B, C, D, H, W] with clicks and the wanted class."""

    def __init__(self, dim: int, num_foreground_classes: int, num_global_queries: int = 10, num_layers: int = 2,
                 num_heads: int = 8, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.num_foreground_classes = num_foreground_classes
        self.global_queries = nn.Parameter(0.02 * torch.randn(num_global_queries, dim))
        self.click_label_embed = nn.Embedding(2, dim)  # 0 negative, 1 positive
        self.class_embed = nn.Embedding(max(num_foreground_classes, 1), dim)
        self.no_click_embed = nn.Parameter(0.02 * torch.randn(1, dim))
        self.position = FourierPositionEncoding3D(dim)
        self.layers = nn.ModuleList(PromptAttentionLayer(dim, num_heads, mlp_dim) for _ in range(num_layers))

    def forward(self, feature_map: torch.Tensor, clicks: torch.Tensor, click_labels: torch.Tensor,
                target_class: torch.Tensor, crop_size: tuple[int, int, int]) -> torch.Tensor:
        b, c, *grid = feature_map.shape
        if not target_class.is_meta and (int(target_class.min()) < 1
                                         or int(target_class.max()) > self.num_foreground_classes):
            raise ValueError(f"target_class must lie in 1..{self.num_foreground_classes}, got {target_class.tolist()}")
        valid = click_labels != PAD_LABEL
        points = sample_features_at_clicks(feature_map, clicks, crop_size)
        points = (points + self.click_label_embed(click_labels.clamp(min=0))
                  + self.position(clicks_to_grid(clicks, crop_size)))
        class_token = self.class_embed(target_class - 1)[:, None]
        tokens = torch.cat([self.global_queries.expand(b, -1, -1), class_token,
                            self.no_click_embed.expand(b, -1, -1), points], dim=1)
        has_clicks = valid.any(dim=1, keepdim=True)
        padding = torch.cat([torch.zeros(b, self.global_queries.shape[0] + 1, dtype=torch.bool, device=valid.device),
                             has_clicks, ~valid], dim=1)  # True = ignored
        image = feature_map.flatten(2).transpose(1, 2)
        image_pos = self.position.grid(tuple(grid)).to(image.dtype)[None]
        for layer in self.layers:
            tokens, image = layer(tokens, image, image_pos, padding)
        return image.transpose(1, 2).reshape(b, c, *grid)
