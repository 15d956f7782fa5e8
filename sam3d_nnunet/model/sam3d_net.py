"""SAM3DNet: the whole promptable network, built the way nnU-Net builds networks from plans.

``SAM3DNet(input_channels, num_classes, deep_supervision, **arch_kwargs)`` is the signature nnU-Net's
``get_network_from_plans`` calls; ``arch_kwargs`` are plain JSON values. The encoder runs once per
crop (``encode``); every new set of clicks only runs the prompt encoder and decoder (``decode``).

By default this is the published 3DSAM-adapter network, function for function (tested against the authors'
outputs in ``tests/test_reference_fidelity.py``); ``decoder="linear"`` swaps in a faster decoder that is not.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from .channel_mixer import InputChannelMixer
from .finetune import apply_finetune_policy, check_policy
from .image_encoder import ImageEncoder3D
from .linear_decoder import LinearHeadDecoder3D
from .mask_decoder import MLADecoder3D
from .prompt_encoder import PAD_LABEL, VisualSampler, click_balls
from .variants import TokenStride, get_variant, with_depth

#: bumped whenever a change makes older checkpoints compute something else; stored in every state dict
ARCHITECTURE_VERSION = 3
#: versions whose weights load exactly: version 2 lacks only zero-initialised prompt extensions (filled with zeros)
_ADDED_IN_VERSION_3 = ("prompt_encoder.point_type_embed.weight", "prompt_encoder.dense_encoder.weight",
                       "prompt_encoder.dense_encoder.bias")
DECODERS = {"mla": MLADecoder3D, "linear": LinearHeadDecoder3D}


class IncompatibleCheckpointError(ValueError):
    """Weights written for another architecture than this network's."""


class ImageFeatures(NamedTuple):
    """What ``encode`` caches for a crop: the four neck maps and the decoder's prompt-independent logits."""

    levels: list[torch.Tensor]
    prompt_independent: torch.Tensor


class SAM3DNet(nn.Module):
    """Promptable 3D segmenter: SAM ViT encoder with spatial adapters, click-prompt encoder, MLA decoder.

    ``num_classes`` counts background, as nnU-Net does; a prompt asks for one foreground class
    (1 .. num_classes - 1) and the output is two logits: [not that class, that class].
    ``deep_supervision`` is accepted for nnU-Net's signature and ignored (there is one output scale).
    ``decoder``: "mla" (the paper's) or "linear" (faster, not the paper's). ``depth``: fewer blocks than the
    SAM variant has (SAM's weights of those blocks only; used to import shallow reference checkpoints).
    ``click_maps``: clicks also enter the dense prompt as balls (``prompt_encoder.click_balls``), which tells the
    network where they are; not the paper's (its clicks act only through the sampled features), and with the
    dense encoder at zero (imported weights) exactly inert. A short training from random weights needs it to
    learn to follow clicks (tests/test_learning.py).
    """

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = False, *,
                 variant: str = "vit_b", patch_size: Sequence[int] = (128, 128, 128), token_stride: TokenStride = 4,
                 window_size: int = 8, adapter_dim: int | None = None, neck_dim: int | None = None,
                 finetune: str = "adapter", lora_rank: int = 8, num_global_queries: int = 10,
                 patch_embed_mode: str = "fused", gradient_checkpointing: bool = False, decoder: str = "mla",
                 depth: int | None = None, click_maps: bool = False) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts background and must be >= 2, got {num_classes}")
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose one of {sorted(DECODERS)}")
        self.variant = with_depth(get_variant(variant), depth)
        self.decoder_kind = decoder
        self.click_maps = bool(click_maps)
        self.finetune = check_policy(finetune)
        self.num_classes = num_classes
        self.patch_size = tuple(int(p) for p in patch_size)
        self.deep_supervision = False
        adapter = None if finetune == "lora" else (adapter_dim or self.variant.default_adapter_dim)
        neck_dim = neck_dim or self.variant.default_neck_dim
        self.input_mixer = InputChannelMixer(input_channels)
        self.image_encoder = ImageEncoder3D(
            self.variant, self.patch_size, token_stride=token_stride, window_size=window_size,
            adapter_dim=adapter, neck_dim=neck_dim, lora_rank=lora_rank if finetune == "lora" else 0,
            patch_embed_mode=patch_embed_mode, gradient_checkpointing=gradient_checkpointing)
        self.prompt_encoder = VisualSampler(neck_dim, num_classes - 1, num_global_queries=num_global_queries,
                                            num_heads=max(1, neck_dim // 32), mlp_dim=8 * neck_dim)
        self.mask_decoder = DECODERS[decoder](neck_dim, image_channels=input_channels, level_dim=neck_dim // 2)
        self.register_buffer("architecture_version", torch.tensor(ARCHITECTURE_VERSION))
        apply_finetune_policy(self, self.finetune)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Refuses, in one line, weights of an older architecture instead of loading them into this one. Version-2
        weights load: the tensors version 3 added are zero-initialised prompt extensions, filled with zeros, which
        computes exactly what version 2 computed."""
        version = state_dict.get("architecture_version")
        if version is not None and int(version) == 2:
            own = super().state_dict()
            state_dict = {**state_dict, "architecture_version": own["architecture_version"].clone()}
            for name in _ADDED_IN_VERSION_3:
                state_dict.setdefault(name, torch.zeros_like(own[name], device="cpu" if own[name].is_meta else None))
            version = ARCHITECTURE_VERSION
        if version is None or int(version) != ARCHITECTURE_VERSION:
            found = "none (written before versioning)" if version is None else int(version)
            raise IncompatibleCheckpointError(
                f"these weights are of SAM3DNet architecture version {found}, this sam3d_nnunet builds version "
                f"{ARCHITECTURE_VERSION} (the paper-exact 3DSAM-adapter network): retrain the model, or predict "
                f"with the sam3d_nnunet release that trained it")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def token_grid(self) -> tuple[int, int, int]:
        return self.image_encoder.grid

    def trainable_parameter_names(self) -> list[str]:
        return [name for name, p in self.named_parameters() if p.requires_grad]

    def encode(self, image: torch.Tensor) -> ImageFeatures:
        """image [B, C, *patch_size] -> cached features: everything that does not depend on the prompt."""
        levels = self.image_encoder(self.input_mixer(image))
        return ImageFeatures(levels, self.mask_decoder.prompt_independent(levels, image))

    def decode(self, features: ImageFeatures, clicks: torch.Tensor | None = None,
               click_labels: torch.Tensor | None = None, target_class: torch.Tensor | int = 1,
               point_types: torch.Tensor | None = None, dense_prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, 2, *patch_size] for the wanted class given clicks [B, N, 3] (voxel coordinates
        in the crop, array order) with labels [B, N] (1 positive, 0 negative, -1 padding), optionally the prompt
        type of each point [B, N] (0 click, 1 box, 2 scribble, 3 lasso; None: all clicks) and a dense prompt
        [B, 3, *patch_size] (previous mask, positive region, negative region; ``sam3d_nnunet.prompts.shapes``).
        Never re-runs the encoder; without point types and dense prompt (or with their zero-initialised weights)
        the output is exactly the clicks-only one."""
        levels = features.levels
        b = levels[0].shape[0]
        device = levels[0].device
        if clicks is None:
            clicks = torch.zeros(b, 0, 3, device=device)
            click_labels = torch.zeros(b, 0, dtype=torch.long, device=device)
        elif click_labels is None:
            raise ValueError("clicks given without click_labels")
        if clicks.shape[:2] != click_labels.shape or clicks.shape[0] != b or clicks.shape[-1] != 3:
            raise ValueError(f"clicks {tuple(clicks.shape)} and click_labels {tuple(click_labels.shape)} must be "
                             f"[B, N, 3] and [B, N] with B = {b}")
        target_class = torch.as_tensor(target_class, dtype=torch.long, device=device).expand(b)
        point_types = None if point_types is None else point_types.long()
        if self.click_maps and clicks.shape[1]:
            is_click = click_labels >= 0 if point_types is None else (click_labels >= 0) & (point_types == 0)
            balls = click_balls(clicks.float(), torch.where(is_click, click_labels.long(), -1), self.patch_size)
            dense_prompt = balls if dense_prompt is None else torch.maximum(dense_prompt.float(), balls)
        deepest = self.prompt_encoder(levels[-1], clicks.to(levels[-1].dtype), click_labels.long(), target_class,
                                      self.patch_size, point_types, dense_prompt)
        return self.mask_decoder(deepest, features.prompt_independent, self.patch_size)

    def forward(self, image: torch.Tensor, clicks: torch.Tensor | None = None,
                click_labels: torch.Tensor | None = None, target_class: torch.Tensor | int | None = None,
                point_types: torch.Tensor | None = None, dense_prompt: torch.Tensor | None = None) -> torch.Tensor:
        """With ``target_class``: logits [B, 2, *patch] for that class (``decode``'s prompts). Without it (nnU-Net's own
        predictor calls ``network(image)``): automatic mode for every class, returned as nnU-Net-style
        multi-class logits [B, num_classes, *patch] where channel k is class k's margin over its
        background and channel 0 is 0, so argmax picks the most confident class or background."""
        features = self.encode(image)
        if target_class is not None:
            return self.decode(features, clicks, click_labels, target_class, point_types, dense_prompt)
        margins = []
        for k in range(1, self.num_classes):
            logits = self.decode(features, clicks, click_labels, k, point_types, dense_prompt)
            margins.append(logits[:, 1] - logits[:, 0])
        return torch.stack([torch.zeros_like(margins[0]), *margins], dim=1)


__all__ = ["SAM3DNet", "ImageFeatures", "PAD_LABEL", "ARCHITECTURE_VERSION", "IncompatibleCheckpointError"]
