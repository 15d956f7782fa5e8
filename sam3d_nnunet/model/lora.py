"""LoRA: a frozen linear layer plus a trainable low-rank update (Hu et al. 2021)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Linear):
    """``nn.Linear`` whose ``weight``/``bias`` keep SAM's names (so checkpoints load unchanged), plus
    ``lora_a`` [r, in] and ``lora_b`` [out, r]. ``lora_b`` starts at zero: the layer starts as SAM's."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rank: int = 8,
                 alpha: float | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.rank = rank
        self.scaling = (alpha if alpha is not None else rank) / rank
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scaling
