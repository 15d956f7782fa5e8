"""Loading Segment Anything checkpoints (``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth``,
``sam_vit_h_4b8939.pth``) into a SAM3DNet.

Every tensor of the file is accounted for:
- USED unchanged (same name, same shape): ``image_encoder.`` patch_embed.proj, pos_embed, and in every
  block norm1, norm2, attn.qkv, attn.proj, attn.rel_pos_h, attn.rel_pos_w, mlp.lin1, mlp.lin2. The 3D
  model transforms them at run time only (the 2D patch kernel is composed into a 3D kernel, the
  position table is pooled to the token grid, the relative-position tables are resized to the window).
- DERIVED: each block's new depth table ``attn.rel_pos_d`` starts as the mean of its h and w tables (same length).
- DROPPED by name (``DROPPED_PREFIXES``): SAM's 2D image-encoder neck (replaced by four 3D necks), and
  SAM's 2D prompt encoder and mask decoder (replaced by the click-prompt encoder and the 3D decoder).
Anything else in the file is an error: it is not a SAM checkpoint of the expected variant.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .variants import SAM_VARIANTS, SAMVariant

ENCODER_PREFIX = "image_encoder."
DROPPED_PREFIXES: dict[str, str] = {
    "image_encoder.neck.": "SAM's 2D neck; replaced by the four 3D necks",
    "prompt_encoder.": "SAM's 2D prompt encoder; replaced by the click-prompt encoder",
    "mask_decoder.": "SAM's 2D mask decoder; replaced by the multi-level 3D decoder",
}


class SAMCheckpointError(ValueError):
    """A SAM checkpoint that cannot be used; the message names the file and the problem."""


@dataclass
class ConversionReport:
    path: str
    variant: str
    used: list[str] = field(default_factory=list)
    derived: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"path": self.path, "variant": self.variant, "used": len(self.used), "derived": len(self.derived),
                "dropped": len(self.dropped),
                "dropped_groups": {prefix: sum(k.startswith(prefix) for k in self.dropped) for prefix in DROPPED_PREFIXES}}


def read_sam_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a SAM checkpoint safely (``weights_only=True``: no code in the file can run)."""
    path = Path(path)
    if not path.is_file():
        raise SAMCheckpointError(f"{path}: no such SAM checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        if "GLOBAL" in message or "global" in message:  # the weights-only unpickler met a Python object
            culprit = next((line.strip() for line in message.splitlines() if "GLOBAL" in line or "global" in line), "")
            raise SAMCheckpointError(
                f"{path}: refused: the file holds pickled Python objects, not only tensors, and could run code "
                f"when loaded; SAM checkpoints are plain state dicts ({culprit})") from None
        raise SAMCheckpointError(f"{path}: truncated or corrupt checkpoint, cannot be read (not a PyTorch file "
                                 f"or damaged pickle stream)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise SAMCheckpointError(f"{path}: truncated or corrupt checkpoint, cannot be read "
                                 f"({str(error).splitlines()[0]})") from None
    for key in ("model", "state_dict"):  # tolerate common wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise SAMCheckpointError(f"{path}: not a state dict of tensors")
    return obj


def detect_variant(state_dict: dict[str, torch.Tensor], path: str | Path = "<state dict>") -> SAMVariant:
    """Which SAM variant a state dict holds, from its patch kernel width and block count."""
    kernel = state_dict.get("image_encoder.patch_embed.proj.weight")
    if kernel is None:
        raise SAMCheckpointError(f"{path}: no 'image_encoder.patch_embed.proj.weight': not a Segment Anything checkpoint")
    blocks = {int(k.split(".")[2]) for k in state_dict if k.startswith("image_encoder.blocks.")}
    depth = max(blocks) + 1 if blocks else 0
    for variant in SAM_VARIANTS.values():
        if variant.embed_dim == kernel.shape[0] and variant.depth == depth:
            return variant
    raise SAMCheckpointError(f"{path}: image encoder of width {kernel.shape[0]} with {depth} blocks matches no "
                             f"known SAM variant {sorted(SAM_VARIANTS)}")


def convert_sam_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module,
                           path: str | Path = "<state dict>") -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map a SAM state dict onto ``model`` (a SAM3DNet). Returns the tensors to load and the report."""
    variant = detect_variant(state_dict, path)
    wanted = model.variant
    if variant.name != wanted.name:
        raise SAMCheckpointError(f"{path}: holds a SAM {variant.name} (width {variant.embed_dim}, {variant.depth} "
                                 f"blocks) but the model is {wanted.name} (width {wanted.embed_dim}, "
                                 f"{wanted.depth} blocks); pass the {wanted.name} checkpoint or change the variant")
    own = model.state_dict()
    report = ConversionReport(str(path), variant.name)
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        reason = next((why for prefix, why in DROPPED_PREFIXES.items() if key.startswith(prefix)), None)
        if reason is not None:
            report.dropped[key] = reason
            continue
        if key not in own or not key.startswith(ENCODER_PREFIX):
            raise SAMCheckpointError(f"{path}: unexpected tensor {key!r}: not a Segment Anything {variant.name} checkpoint")
        if own[key].shape != tensor.shape:
            raise SAMCheckpointError(f"{path}: tensor {key!r} has shape {tuple(tensor.shape)}, the model expects "
                                     f"{tuple(own[key].shape)}")
        mapped[key] = tensor
        report.used.append(key)
    missing = [k for k in expected_sam_keys(model) if k not in mapped]
    if missing:
        raise SAMCheckpointError(f"{path}: missing {len(missing)} tensors of SAM's image encoder, "
                                 f"e.g. {missing[:3]}: truncated or not a full SAM checkpoint")
    report.derived = [f"image_encoder.blocks.{i}.attn.rel_pos_d" for i in range(variant.depth)]
    return mapped, report


def expected_sam_keys(model: nn.Module) -> list[str]:
    """The model's tensors that come from SAM's image encoder unchanged (LoRA's own tensors excluded)."""
    sam_parts = ("patch_embed.proj.", "pos_embed", ".norm1.", ".norm2.", ".attn.qkv.weight", ".attn.qkv.bias",
                 ".attn.proj.weight", ".attn.proj.bias", ".attn.rel_pos_h", ".attn.rel_pos_w", ".mlp.lin")
    return [k for k in model.state_dict() if k.startswith(ENCODER_PREFIX) and any(p in k for p in sam_parts)]


def load_sam_checkpoint(model: nn.Module, path: str | Path) -> ConversionReport:
    """Load SAM's pretrained image encoder into ``model`` and derive the new depth tables."""
    mapped, report = convert_sam_state_dict(read_sam_state_dict(path), model, path)
    with torch.no_grad():
        own = dict(model.named_parameters())
        for key, tensor in mapped.items():
            own[key].copy_(tensor)
        for block in model.image_encoder.blocks:
            block.attn.init_depth_table_from_hw()
    return report


def build_random_sam(variant: str, seed: int = 0) -> nn.Module:
    """A Segment Anything model of ``variant`` with every tensor random (SAM zero-initialises its
    position tables; randomising them makes "this tensor came from the file" checks meaningful)."""
    from segment_anything.build_sam import _build_sam

    spec = SAM_VARIANTS[variant]
    sam = _build_sam(encoder_embed_dim=spec.embed_dim, encoder_depth=spec.depth, encoder_num_heads=spec.num_heads,
                     encoder_global_attn_indexes=list(spec.global_attn_indexes), checkpoint=None)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in sam.parameters():
            parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
    return sam


def write_random_sam_checkpoint(variant: str, path: str | Path, seed: int = 0) -> Path:
    """Write a SAM-format checkpoint (``torch.save`` of the state dict) with random weights, for tests and
    demos where the real files cannot be downloaded."""
    from sam3d_nnunet.atomic import torch_save_atomic

    path = Path(path)
    torch_save_atomic(build_random_sam(variant, seed).state_dict(), path)
    return path
