"""Peak GPU memory of one training step, as a model fitted to measurements.

The planner needs to know, before any GPU is touched, which patch and batch size fit a memory budget and
whether activation checkpointing is needed. The estimate is

    4 B x all parameters (fp32 weights) + 12 B x trainable parameters (gradient and AdamW's two moments)
    + a fixed workspace + per sample:
      without checkpointing: blocks x tokens x (A x width + B)      (every block's saved activations)
      with checkpointing:    blocks x tokens x C x width           (each block's input, kept)
                             + tokens x D x width                  (one block recomputed, necks, decoder)

with A, B, C, D and the workspaces fitted (least squares) to the peak allocator memory
(``torch.cuda.max_memory_allocated``) of training steps measured on an NVIDIA H200 with bf16 autocast and
SDPA attention (``benchmarks/run_benchmarks.py --gpu --cases gpu_memory_grid``; the table is in
BENCHMARKS.md). On those measurements it is within 2% for vit_b and vit_l, from 64^3 to 128^3, batch 1 and
2, adapters and LoRA, and overestimates the tiny variant. Under ``full`` fine-tuning the frozen layers' inputs
must be kept for their weight gradients too: a factor measured on vit_b 128^3 covers that. GPUs without
bf16 (fp32 training) need more than this estimates.

Those GPU measurements were made with the linear-head decoder (``decoder="linear"``). The paper's MLA decoder
(the default) concatenates 4 x 128 channels at twice the token resolution and fuses them with 3x3x3 convs; it
saves more for backward. That extra is a separate term, per fused voxel and scaled with the neck width,
measured on a CPU as the bytes of the tensors autograd saves under bf16 autocast (``saved_tensors_hooks``;
vit_b 128^3: 0.62 GB for the MLA decoder against 0.21 GB for the linear one; 64^3: 0.090 against 0.036),
not as a GPU peak: no GPU was available to remeasure it.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence, Union

import torch

from .mask_decoder import fused_size
from .variants import get_variant

# fitted coefficients (bytes); see the module docstring
WORKSPACE_BYTES = 1.4e8
ACTIVATION_BYTES_PER_TOKEN_BLOCK_WIDTH = 27.9
ACTIVATION_BYTES_PER_TOKEN_BLOCK = 8766.0
CHECKPOINTING_WORKSPACE_BYTES = 1.1e8
CHECKPOINTED_BYTES_PER_TOKEN_BLOCK_WIDTH = 3.46
CHECKPOINTING_BYTES_PER_TOKEN_WIDTH = 96.6
# the MLA decoder's extra saved activations over the linear decoder's, per fused voxel at neck width 256
MLA_DECODER_BYTES_PER_FUSED_VOXEL = 1.6e3
# full fine-tuning keeps the inputs of the (no longer frozen) SAM layers: (18.97 - 1.80) / (12.81 - 0.73) GB
FULL_FINETUNE_ACTIVATION_FACTOR = 1.42


@lru_cache(maxsize=None)
def _parameter_counts(variant: str, finetune: str, adapter_dim: int | None, neck_dim: int | None,
                      decoder: str = "mla") -> tuple[int, int]:
    """(all, trainable) parameters of a SAM3DNet, counted on the meta device (no memory, about a second)."""
    from .sam3d_net import SAM3DNet
    from .summary import parameter_summary

    window = 4 if variant == "tiny" else 8
    with torch.device("meta"):
        net = SAM3DNet(1, 2, variant=variant, patch_size=(4 * window,) * 3, window_size=window,
                       adapter_dim=adapter_dim, neck_dim=neck_dim, finetune=finetune, decoder=decoder)
    summary = parameter_summary(net)
    return summary["total"], summary["total_trainable"]


def estimate_training_memory_gb(variant: str, patch_size: Sequence[int], token_stride: Union[int, Sequence[int]],
                                batch_size: int = 1, adapter_dim: int | None = None, neck_dim: int | None = None,
                                finetune: str = "adapter", gradient_checkpointing: bool = False,
                                decoder: str = "mla") -> float:
    """Estimated peak GPU memory (GB) of one bf16 training step of a SAM3DNet; see the module docstring."""
    v = get_variant(variant)
    strides = [int(token_stride)] * 3 if isinstance(token_stride, int) else [int(s) for s in token_stride]
    grid = [int(p) // s for p, s in zip(patch_size, strides)]
    tokens = float(math.prod(grid))
    fused_voxels = float(math.prod(fused_size(grid, [int(p) for p in patch_size])))
    n_all, n_trainable = _parameter_counts(variant, finetune, adapter_dim, neck_dim, decoder)
    fixed = 4.0 * n_all + 12.0 * n_trainable
    if gradient_checkpointing:
        fixed += CHECKPOINTING_WORKSPACE_BYTES
        per_sample = tokens * v.embed_dim * (v.depth * CHECKPOINTED_BYTES_PER_TOKEN_BLOCK_WIDTH
                                             + CHECKPOINTING_BYTES_PER_TOKEN_WIDTH)
    else:
        fixed += WORKSPACE_BYTES
        per_sample = v.depth * tokens * (ACTIVATION_BYTES_PER_TOKEN_BLOCK_WIDTH * v.embed_dim
                                         + ACTIVATION_BYTES_PER_TOKEN_BLOCK)
    if finetune == "full":
        per_sample *= FULL_FINETUNE_ACTIVATION_FACTOR
    if decoder == "mla":
        per_sample += fused_voxels * MLA_DECODER_BYTES_PER_FUSED_VOXEL * (neck_dim or v.default_neck_dim) / 256
    return (fixed + batch_size * per_sample) / 1e9
