"""The visual sampler: the published 3DSAM-adapter prompt encoder, plus extensions that are exactly inert
on the published weights.

The published sampler reads the deepest feature map at the clicks (trilinear, zero padding) and runs two
layers. Each layer starts from its OWN learned global queries: queries and point tokens attend to each
other (the attention output is normalised before the residual), an MLP refines the global queries only,
and the image tokens cross-attend to the global queries alone. Points therefore act only through the
self-attention; no positional encoding reaches the output.

Beyond the published method, every extension is an additive embedding initialised at zero, so a network
imported from the authors' checkpoint computes their function exactly, and training can learn to use it:
- ``point_label_embed``: click polarity (0 negative, 1 positive), added to the sampled point features;
- ``class_embed``: which of the dataset's foreground classes is wanted, added to every layer's global
  queries;
- ``point_type_embed``: which kind of prompt a point was sampled from (0 click, 1 box, 2 scribble, 3 lasso;
  ``sam3d_nnunet.prompts.shapes``), added to the sampled point features;
- ``dense_encoder``: a dense prompt at patch resolution (channels: previous mask, positive region, negative
  region) average- and max-pooled to the token grid and mapped by one 3x3x3 convolution (6 -> dim, SAM's
  mask-prompt idea) whose output is added to the deepest feature map before the points are sampled;
- any number of clicks per sample (padding label -1, masked out of the attention), and zero clicks: the
  automatic mode, where the sampler runs on its global queries alone, as the published one does.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import MLPBlock
from torch import nn

PAD_LABEL = -1
NUM_POINT_TYPES = 4  # click, box, scribble, lasso (sam3d_nnunet.prompts.shapes.PROMPT_TYPES)
DENSE_PROMPT_CHANNELS = 3  # previous mask, positive region, negative region (shapes.DENSE_CHANNELS)


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
    Zero padding, as published: a click on the crop's outermost voxels reads partly outside the map.
    """
    b, n, _ = clicks.shape
    if n == 0:
        return feature_map.new_zeros(b, 0, feature_map.shape[1])
    grid = clicks_to_grid(clicks, crop_size).flip(-1).to(feature_map.dtype)
    sampled = F.grid_sample(feature_map, grid.view(b, n, 1, 1, 3), mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    return sampled.view(b, feature_map.shape[1], n).transpose(1, 2)


def click_balls(clicks: torch.Tensor, click_labels: torch.Tensor, crop_size: tuple[int, int, int],
                radius: float = 2.0) -> torch.Tensor:
    """Clicks [B, N, 3] (voxels, array order) with labels [B, N] (1, 0, -1 padding) as a dense prompt
    [B, DENSE_PROMPT_CHANNELS, *crop]: a ball of ``radius`` voxels per click in the positive (channel 1) or
    negative (channel 2) region channel, channel 0 (previous mask) empty. ``SAM3DNet(click_maps=True)`` adds
    them to the dense prompt: clicks then also say WHERE, which the sampler's feature reading does not."""
    b, n, _ = clicks.shape
    dense = clicks.new_zeros(b, DENSE_PROMPT_CHANNELS, *crop_size)
    r = int(math.ceil(radius))
    offsets = torch.stack(torch.meshgrid(*(torch.arange(-r, r + 1, device=clicks.device) for _ in range(3)),
                                         indexing="ij"), dim=-1).reshape(-1, 3)
    offsets = offsets[(offsets.float() ** 2).sum(-1) <= radius ** 2]
    size = torch.tensor(crop_size, device=clicks.device)
    for i, j in (click_labels >= 0).nonzero().tolist():
        voxels = clicks[i, j].round().long() + offsets
        voxels = voxels[((voxels >= 0) & (voxels < size)).all(-1)]
        channel = 1 if int(click_labels[i, j]) == 1 else 2
        dense[i, channel, voxels[:, 0], voxels[:, 1], voxels[:, 2]] = 1.0
    return dense


class TokenAttention(nn.Module):
    """SAM's ``Attention`` (q/k/v/out projections, optional internal downsampling, same tensor names) with a
    key padding mask, computed by ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        internal = dim // downsample_rate
        if internal % num_heads:
            raise ValueError(f"{num_heads} heads do not divide the attention width {internal}")
        self.q_proj = nn.Linear(dim, internal)
        self.k_proj = nn.Linear(dim, internal)
        self.v_proj = nn.Linear(dim, internal)
        self.out_proj = nn.Linear(internal, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_padding: torch.Tensor | None = None) -> torch.Tensor:
        """key_padding [B, Nk] True where a key is padding (ignored)."""
        mask = None if key_padding is None else ~key_padding[:, None, None, :]
        out = F.scaled_dot_product_attention(self._heads(self.q_proj(q)), self._heads(self.k_proj(k)),
                                             self._heads(self.v_proj(v)), attn_mask=mask)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class SamplerLayer(nn.Module):
    """One layer of the visual sampler (tensor names as published)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, num_global_queries: int) -> None:
        super().__init__()
        self.global_query = nn.Parameter(torch.randn(1, num_global_queries, dim))
        self.self_attn = TokenAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = TokenAttention(dim, num_heads, downsample_rate=2)
        self.norm4 = nn.LayerNorm(dim)

    def forward(self, points: torch.Tensor, padding: torch.Tensor, image: torch.Tensor,
                query_offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points [B, N, C], padding [B, N], image tokens [B, T, C], query_offset [B, 1, C] (class embedding)."""
        queries = self.global_query + query_offset
        g = queries.shape[1]
        tokens = torch.cat([queries, points], dim=1)
        key_padding = torch.cat([padding.new_zeros(padding.shape[0], g), padding], dim=1)
        tokens = self.norm2(tokens + self.norm1(self.self_attn(tokens, tokens, tokens, key_padding)))
        queries, points = tokens[:, :g], tokens[:, g:]
        queries = self.norm3(queries + self.mlp(queries))
        image = self.norm4(image + self.cross_attn_image_to_token(image, queries, queries))
        return points, image


class VisualSampler(nn.Module):
    """Writes the clicks (and the wanted class) into the deepest feature map [B, C, D, H, W]."""

    def __init__(self, dim: int, num_foreground_classes: int, num_global_queries: int = 10, num_layers: int = 2,
                 num_heads: int = 8, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.num_foreground_classes = num_foreground_classes
        self.layers = nn.ModuleList(SamplerLayer(dim, num_heads, mlp_dim, num_global_queries)
                                    for _ in range(num_layers))
        # extensions, zero at the start: inert on the published weights
        self.point_label_embed = nn.Embedding(2, dim)
        self.class_embed = nn.Embedding(max(num_foreground_classes, 1), dim)
        self.point_type_embed = nn.Embedding(NUM_POINT_TYPES, dim)
        self.dense_encoder = nn.Conv3d(2 * DENSE_PROMPT_CHANNELS, dim, kernel_size=3, padding=1)
        for tensor in (self.point_label_embed.weight, self.class_embed.weight, self.point_type_embed.weight,
                       self.dense_encoder.weight, self.dense_encoder.bias):
            nn.init.zeros_(tensor)

    def extension_parameter_names(self) -> list[str]:
        """The tensors the published sampler does not have."""
        return ["point_label_embed.weight", "class_embed.weight", "point_type_embed.weight",
                "dense_encoder.weight", "dense_encoder.bias"]

    def encode_dense(self, dense_prompt: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """[B, 3, *patch] dense prompt -> [B, dim, *grid]: mean and max per token cell (a thin scribble or a
        one-slice box survives the max), one zero-initialised 3x3x3 convolution."""
        dense_prompt = dense_prompt.to(self.dense_encoder.weight.dtype)
        pooled = torch.cat([F.adaptive_avg_pool3d(dense_prompt, grid), F.adaptive_max_pool3d(dense_prompt, grid)], 1)
        return self.dense_encoder(pooled)

    @staticmethod
    def unused(module: nn.Module) -> torch.Tensor:
        """An exact 0 that depends on ``module``'s parameters: an extension a prompt does not use still joins the
        graph with a zero gradient, so DDP without ``find_unused_parameters`` (nnU-Net's -num_gpus) sees every
        parameter used, and AdamW leaves the zero-initialised tensors at zero."""
        return 0.0 * sum(parameter.sum() for parameter in module.parameters())

    def forward(self, feature_map: torch.Tensor, clicks: torch.Tensor, click_labels: torch.Tensor,
                target_class: torch.Tensor, crop_size: tuple[int, int, int], point_types: torch.Tensor | None = None,
                dense_prompt: torch.Tensor | None = None) -> torch.Tensor:
        b, c, *grid = feature_map.shape
        if dense_prompt is not None:
            if dense_prompt.shape != (b, DENSE_PROMPT_CHANNELS, *crop_size):
                raise ValueError(f"dense_prompt must be [B, {DENSE_PROMPT_CHANNELS}, *patch] = "
                                 f"{[b, DENSE_PROMPT_CHANNELS, *crop_size]}, got {list(dense_prompt.shape)}")
            feature_map = feature_map + self.encode_dense(dense_prompt, tuple(grid)).to(feature_map.dtype)
        else:
            feature_map = feature_map + self.unused(self.dense_encoder).to(feature_map.dtype)
        if not target_class.is_meta and (int(target_class.min()) < 1
                                         or int(target_class.max()) > self.num_foreground_classes):
            raise ValueError(f"target_class must lie in 1..{self.num_foreground_classes}, got {target_class.tolist()}")
        padding = click_labels == PAD_LABEL
        points = sample_features_at_clicks(feature_map, clicks, crop_size)
        points = points + self.point_label_embed(click_labels.clamp(min=0)).to(points.dtype)
        if point_types is None:
            points = points + self.unused(self.point_type_embed).to(points.dtype)
        else:
            if point_types.shape != click_labels.shape:
                raise ValueError(f"point_types {list(point_types.shape)} must match click_labels "
                                 f"{list(click_labels.shape)}")
            points = points + self.point_type_embed(point_types.clamp(0, NUM_POINT_TYPES - 1)).to(points.dtype)
        class_offset = self.class_embed(target_class - 1)[:, None].to(points.dtype)
        image = feature_map.flatten(2).transpose(1, 2)
        for layer in self.layers:
            points, image = layer(points, padding, image, class_offset)
        return image.transpose(1, 2).reshape(b, c, *grid)
