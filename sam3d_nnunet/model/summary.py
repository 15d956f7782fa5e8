"""Parameter counts of a SAM3DNet, as the published method reports them."""
from __future__ import annotations

from torch import nn


def parameter_summary(model: nn.Module) -> dict[str, int | list[int]]:
    """Counts of trainable/frozen tensors per part; the encoder includes the input channel mixer."""
    def count(module: nn.Module, trainable: bool | None = None) -> int:
        return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)

    encoder_trainable = count(model.image_encoder, True) + count(model.input_mixer, True)
    encoder_frozen = count(model.image_encoder, False) + count(model.input_mixer, False)
    return {
        "encoder_trainable": encoder_trainable,
        "encoder_frozen": encoder_frozen,
        "prompt_encoder": count(model.prompt_encoder),
        "decoder": count(model.mask_decoder),
        "total_trainable": count(model, True),
        "total": count(model),
        "token_grid": list(model.token_grid),
    }
