"""Parameter counts of a SAM3DNet, per part as the published method reports them."""
from __future__ import annotations

from torch import nn


def parameter_summary(model: nn.Module) -> dict[str, int | str | list[int]]:
    """Counts of trainable/frozen parameters per part. The encoder includes the input channel mixer. The
    prompt encoder is counted as published (the used visual sampler: the authors' modules that never reach the
    output are not built); the project's additive extensions to it (click polarity, class) are counted apart."""
    def count(module: nn.Module, trainable: bool | None = None) -> int:
        return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)

    sampler = model.prompt_encoder
    extensions = sum(p.numel() for name, p in sampler.named_parameters() if name in sampler.extension_parameter_names())
    return {
        "decoder_kind": model.decoder_kind,
        "encoder_trainable": count(model.image_encoder, True) + count(model.input_mixer, True),
        "encoder_frozen": count(model.image_encoder, False) + count(model.input_mixer, False),
        "prompt_encoder": count(sampler) - extensions,
        "prompt_encoder_extensions": extensions,
        "decoder": count(model.mask_decoder),
        "total_trainable": count(model, True),
        "total": count(model),
        "token_grid": list(model.token_grid),
    }
