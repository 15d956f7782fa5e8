"""Parameter-efficient fine-tuning policies: which tensors train.

Each policy is a named, documented choice; ``apply_finetune_policy`` sets ``requires_grad`` exactly.
A tensor "from SAM" is one whose name and shape match SAM's image encoder (see ``sam_checkpoint``).
"""
from __future__ import annotations

import re

from torch import nn

FINETUNE_POLICIES: dict[str, str] = {
    "adapter": "The published method: SAM's ViT weights (patch kernel, position table, attention, MLPs, "
               "h/w relative positions) frozen; spatial adapters, every LayerNorm, the depth embedding, the "
               "slice-merging depth conv, the depth relative-position tables, the 3D necks, the prompt "
               "encoder and the decoder train.",
    "full": "Full fine-tuning: every tensor trains, SAM's included (adapters are kept, so the architecture "
            "is the same as 'adapter').",
    "lora": "LoRA: no adapters; a rank-r low-rank update on every block's qkv and output projections trains "
            "while SAM's tensors stay frozen; LayerNorms, depth embedding, depth conv, depth relative "
            "positions, necks, prompt encoder and decoder train as under 'adapter'.",
}

# SAM tensors that stay frozen under 'adapter' and 'lora' (LayerNorms from SAM train, as in the paper)
_FROZEN_SAM_TENSORS = re.compile(
    r"^image_encoder\.("
    r"patch_embed\.proj\.(weight|bias)"
    r"|pos_embed"
    r"|blocks\.\d+\.attn\.(qkv|proj)\.(weight|bias)"
    r"|blocks\.\d+\.attn\.rel_pos_[hw]"
    r"|blocks\.\d+\.mlp\.lin[12]\.(weight|bias)"
    r")$"
)


def check_policy(policy: str) -> str:
    if policy not in FINETUNE_POLICIES:
        raise ValueError(f"unknown fine-tuning policy {policy!r}; choose one of {sorted(FINETUNE_POLICIES)}")
    return policy


def is_frozen(name: str, policy: str) -> bool:
    """Whether parameter ``name`` of a SAM3DNet stays frozen under ``policy``."""
    return check_policy(policy) != "full" and bool(_FROZEN_SAM_TENSORS.match(name))


def apply_finetune_policy(model: nn.Module, policy: str) -> list[str]:
    """Set requires_grad on every parameter; return the names of the trainable ones."""
    trainable = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not is_frozen(name, policy))
        if parameter.requires_grad:
            trainable.append(name)
    return trainable
