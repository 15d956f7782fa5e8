"""Mixed precision: bf16 autocast where the hardware has bf16 matrix instructions.

On CUDA devices with bf16 support, and on CPUs whose oneDNN reports bf16 support (AVX512-BF16 or AMX),
a bf16 matrix product runs several times faster than fp32; elsewhere bf16 would be emulated and slower,
so ``"auto"`` stays in fp32 there. Weights stay fp32; autocast casts per operation.
"""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def bf16_is_fast(device: torch.device | str) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """'auto' -> 'bf16' where bf16 is fast on ``device``, else 'fp32'."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    return precision


def autocast(device: torch.device | str, precision: str = "auto") -> contextlib.AbstractContextManager:
    """A context in which the network runs at ``precision`` on ``device``."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
