"""The SAM 3D adapter network, in plain PyTorch (no nnU-Net import)."""
from .finetune import FINETUNE_POLICIES, apply_finetune_policy
from .memory import estimate_training_memory_gb
from .precision import autocast, bf16_is_fast, resolve_precision
from .reference_checkpoint import ReferenceCheckpointError, from_reference_checkpoint
from .sam3d_net import ARCHITECTURE_VERSION, ImageFeatures, IncompatibleCheckpointError, SAM3DNet
from .sam_checkpoint import (DROPPED_PREFIXES, ConversionReport, SAMCheckpointError, load_sam_checkpoint,
                             read_sam_state_dict, write_random_sam_checkpoint)
from .summary import parameter_summary
from .variants import SAM_VARIANTS, SAMVariant, get_variant, token_grid

__all__ = [
    "SAM3DNet", "ImageFeatures", "ARCHITECTURE_VERSION", "IncompatibleCheckpointError", "from_reference_checkpoint",
    "ReferenceCheckpointError", "FINETUNE_POLICIES", "apply_finetune_policy", "DROPPED_PREFIXES", "autocast",
    "bf16_is_fast", "resolve_precision", "estimate_training_memory_gb",
    "ConversionReport", "SAMCheckpointError", "load_sam_checkpoint", "read_sam_state_dict",
    "write_random_sam_checkpoint", "parameter_summary", "SAM_VARIANTS", "SAMVariant", "get_variant", "token_grid",
]
