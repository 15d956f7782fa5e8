"""Import of the authors' 3DSAM-adapter checkpoints (med-air/3DSAM-adapter ``train.py``: ``best.pth.tar``,
``last.pth.tar``) into a SAM3DNet that computes their network's function.

The file is a dict with ``encoder_dict``, ``decoder_dict`` and ``feature_dict`` (four prompt-encoder state
dicts, of which the published forward uses only index 3), plus optimiser states and counters that are
ignored. Mapping, all exact:
- tensor layouts: the published maps are [C, d1, d2, d0] for the project's (d, h, w) = (d0, d1, d2), so its
  3x3x3 kernels (adapters, necks, decoder) are permuted (0, 1, 4, 2, 3); ``slice_embed`` [E,1,1,1,16] is the
  patch embedding's depth kernel [E,1,16,1,1]; ``depth_embed`` [1, D, E] becomes [1, D, 1, 1, E];
- ``blocks.i.attn.lr`` (a frozen scalar on the relative-position terms) -> ``rel_pos_scale``;
- ``neck_3d.k`` -> ``necks.k``; ``mlahead.head{2..5}`` -> ``levels.{0..3}``; ``cls.0``/``cls.3`` ->
  ``fusion``/``head``;
- not used: the ``attn_mask`` buffers (the network builds the same masks), the sampler's
  ``positional_encoding_gaussian_matrix`` and ``cross_attn_token_to_image`` (never reach the output), and
  ``feature_dict[0..2]``;
- the project's extensions (click polarity, class embedding) are set to zero, so they are inert.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from .sam3d_net import SAM3DNet
from .variants import SAM_VARIANTS

REQUIRED_PARTS = ("encoder_dict", "decoder_dict", "feature_dict")
USED_PROMPT_ENCODER = 3  # the published forward only calls feature_dict[3] (on the last level)
CROP_PER_DEPTH_TOKEN = 4  # the published token is 4 voxels along each axis


class ReferenceCheckpointError(ValueError):
    """A file that is not a usable 3DSAM-adapter checkpoint; the message names the file and the tensor."""


def _kernel(t: torch.Tensor) -> torch.Tensor:
    """A 3x3x3 kernel from the published (d1, d2, d0) axes to (d0, d1, d2) = (d, h, w) (other shapes are
    returned as they are, for the shape check to name)."""
    return t.permute(0, 1, 4, 2, 3).contiguous() if t.dim() == 5 else t


def read_reference_checkpoint(path: str | os.PathLike) -> dict:
    """Read a reference checkpoint with ``torch.load(weights_only=True)`` (nothing in the file can run);
    one-line errors naming the file."""
    from sam3d_nnunet.validation import CheckpointError, load_checkpoint_safely

    try:
        return load_checkpoint_safely(path)
    except CheckpointError as error:
        raise ReferenceCheckpointError(f"3DSAM-adapter {error}") from None


def _parts(checkpoint: object, source: str) -> tuple[Mapping, Mapping, Mapping]:
    if not isinstance(checkpoint, Mapping):
        raise ReferenceCheckpointError(f"{source}: not a 3DSAM-adapter checkpoint (a {type(checkpoint).__name__}, "
                                       f"expected a dict with {', '.join(REQUIRED_PARTS)})")
    missing = [k for k in REQUIRED_PARTS if k not in checkpoint]
    if missing:
        raise ReferenceCheckpointError(f"{source}: not a 3DSAM-adapter checkpoint: missing {', '.join(missing)} "
                                       f"(has {', '.join(sorted(map(str, checkpoint))[:8])})")
    features = checkpoint["feature_dict"]
    if not isinstance(features, (list, tuple)) or len(features) <= USED_PROMPT_ENCODER:
        raise ReferenceCheckpointError(f"{source}: feature_dict must be a list of 4 prompt-encoder state dicts")
    parts = (checkpoint["encoder_dict"], checkpoint["decoder_dict"], features[USED_PROMPT_ENCODER])
    for name, part in zip(("encoder_dict", "decoder_dict", f"feature_dict[{USED_PROMPT_ENCODER}]"), parts):
        if not isinstance(part, Mapping) or not all(isinstance(v, torch.Tensor) for v in part.values()):
            raise ReferenceCheckpointError(f"{source}: {name} is not a state dict of tensors")
    return parts


def reference_architecture(checkpoint: Mapping, source: str = "<checkpoint>") -> dict:
    """The SAM3DNet arch kwargs of a reference checkpoint (variant, depth, adapter width, crop)."""
    encoder, _, _ = _parts(checkpoint, source)
    kernel = encoder.get("patch_embed.proj.weight")
    if kernel is None:
        raise ReferenceCheckpointError(f"{source}: missing tensor encoder_dict['patch_embed.proj.weight']")
    variant = next((v for v in SAM_VARIANTS.values() if v.embed_dim == kernel.shape[0] and v.name != "tiny"), None)
    if variant is None:
        raise ReferenceCheckpointError(f"{source}: encoder_dict['patch_embed.proj.weight'] has width {kernel.shape[0]}, "
                                       f"no SAM variant has it")
    blocks = sorted({int(k.split(".")[1]) for k in encoder if k.startswith("blocks.")})
    if not blocks or blocks != list(range(len(blocks))):
        raise ReferenceCheckpointError(f"{source}: encoder_dict holds blocks {blocks[:6]}..., expected 0..N-1")
    adapter = encoder.get("blocks.0.adapter.linear1.weight")
    depth_embed = encoder.get("depth_embed")
    if adapter is None or depth_embed is None:
        name = "blocks.0.adapter.linear1.weight" if adapter is None else "depth_embed"
        raise ReferenceCheckpointError(f"{source}: missing tensor encoder_dict['{name}']")
    crop = CROP_PER_DEPTH_TOKEN * depth_embed.shape[1]
    return {"variant": variant.name, "depth": len(blocks), "adapter_dim": int(adapter.shape[0]),
            "patch_size": [crop] * 3, "token_stride": 4, "window_size": 8, "finetune": "adapter", "decoder": "mla"}


def _map_encoder(key: str, t: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    if key.endswith("attn_mask"):
        return None
    if key == "depth_embed":
        return "image_encoder.depth_embed", t[:, :, None, None, :]
    if key == "slice_embed.weight":
        return "image_encoder.patch_embed.depth_conv.weight", _kernel(t)
    if key == "slice_embed.bias":
        return "image_encoder.patch_embed.depth_conv.bias", t
    if key.endswith("attn.lr"):
        return "image_encoder." + key[: -len("lr")] + "rel_pos_scale", t
    if key.endswith("adapter.conv.weight") or (key.startswith("neck_3d.") and key.endswith(".2.weight")):
        t = _kernel(t)
    return "image_encoder." + key.replace("neck_3d.", "necks."), t


def _map_decoder(key: str, t: torch.Tensor) -> tuple[str, torch.Tensor]:
    if key.startswith("mlahead.head"):
        level = int(key[len("mlahead.head")]) - 2
        return f"mask_decoder.levels.{level}{key[len('mlahead.headN'):]}", _kernel(t)
    renamed = {"cls.0.weight": "mask_decoder.fusion.weight", "cls.3.weight": "mask_decoder.head.weight"}
    return renamed.get(key, "mask_decoder." + key), _kernel(t)


def _map_prompt_encoder(key: str, t: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    if key == "positional_encoding_gaussian_matrix" or ".cross_attn_token_to_image." in key:
        return None
    return "prompt_encoder." + key.replace("transformer.", ""), t


def reference_name(name: str) -> str:
    """Where the published checkpoint keeps the tensor that becomes the network's ``name`` (for messages)."""
    if name.startswith("prompt_encoder."):
        return f"feature_dict[{USED_PROMPT_ENCODER}]['transformer.{name[len('prompt_encoder.'):]}']"
    if name.startswith("mask_decoder."):
        key = name[len("mask_decoder."):]
        if key.startswith("levels."):
            _, level, rest = key.split(".", 2)
            key = f"mlahead.head{int(level) + 2}.{rest}"
        key = {"fusion.weight": "cls.0.weight", "head.weight": "cls.3.weight"}.get(key, key)
        return f"decoder_dict['{key}']"
    key = name[len("image_encoder."):].replace("necks.", "neck_3d.").replace("rel_pos_scale", "lr")
    key = key.replace("patch_embed.depth_conv.", "slice_embed.")
    return f"encoder_dict['{key}']"


def convert_reference_checkpoint(checkpoint: Mapping, network: SAM3DNet,
                                 source: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The full state dict of ``network`` (built with ``reference_architecture``) from a reference checkpoint.
    Every tensor the network needs must come from the file, in the right shape; extensions are zero."""
    encoder, decoder, prompt = _parts(checkpoint, source)
    own = network.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for part, tensors, mapper in (("encoder_dict", encoder, _map_encoder), ("decoder_dict", decoder, _map_decoder),
                                  (f"feature_dict[{USED_PROMPT_ENCODER}]", prompt, _map_prompt_encoder)):
        for key, tensor in tensors.items():
            target = mapper(key, tensor)
            if target is None:
                continue
            name, value = target
            where = f"{part}['{key}']"
            if name not in own:
                raise ReferenceCheckpointError(f"{source}: unexpected tensor {where}: not part of the 3DSAM-adapter "
                                               f"network this file's shapes describe")
            if tuple(value.shape) != tuple(own[name].shape):
                raise ReferenceCheckpointError(f"{source}: tensor {where} has shape {tuple(tensor.shape)}, the "
                                               f"network expects {tuple(own[name].shape)} (after layout conversion)")
            if not value.is_floating_point():
                raise ReferenceCheckpointError(f"{source}: tensor {where} is {value.dtype}, expected floating point")
            mapped[name] = value.to(own[name].dtype)
    extensions = {f"prompt_encoder.{n}" for n in network.prompt_encoder.extension_parameter_names()}
    for name in extensions:
        mapped[name] = torch.zeros_like(own[name])
    mapped["architecture_version"] = own["architecture_version"]
    missing = [k for k in own if k not in mapped]
    if missing:
        raise ReferenceCheckpointError(f"{source}: missing tensor {reference_name(missing[0])} ({len(missing)} missing "
                                       f"in all): truncated or not a 3DSAM-adapter checkpoint of this shape")
    return mapped


def from_reference_checkpoint(path_or_dict: str | os.PathLike | Mapping, **overrides) -> SAM3DNet:
    """A SAM3DNet in eval mode computing the network of an authors' checkpoint (a path or the loaded dict).
    ``overrides``: extra SAM3DNet arch kwargs (e.g. ``gradient_checkpointing``), never the architecture itself."""
    if isinstance(path_or_dict, Mapping):
        checkpoint, source = path_or_dict, "<checkpoint dict>"
    else:
        source = os.fspath(Path(path_or_dict))
        checkpoint = read_reference_checkpoint(source)
    arch = {**reference_architecture(checkpoint, source), **overrides}
    network = SAM3DNet(1, 2, **arch)
    network.load_state_dict(convert_reference_checkpoint(checkpoint, network, source))
    return network.eval()
