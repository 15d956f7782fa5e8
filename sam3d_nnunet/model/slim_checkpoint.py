"""Slim checkpoints: the trained weights without the frozen SAM tensors, which the SAM checkpoint already holds.

A vit_b model is 112.5 M parameters of which 88.8 M are SAM's frozen encoder weights, unchanged by training:
storing them in every ``checkpoint_*.pth`` of every fold repeats the same 355 MB. A slim checkpoint leaves out
every tensor that is frozen under the model's fine-tuning policy AND loaded from the SAM checkpoint, and records
which SAM file (path, size, SHA-256) restores them. Loading converts that file again and refuses, naming both
files, if it has changed or is missing. The price: the SAM checkpoint must stay where the plans say, and only
this package's loaders (the SAM3D trainers, ``PromptedPredictor``, ``sam3d-nnunet predict``) read slim files;
nnU-Net's own ``nnUNetv2_predict`` needs full ones.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .finetune import is_frozen
from .sam_checkpoint import SAMCheckpointError, convert_sam_state_dict, load_sam_checkpoint, read_sam_state_dict

SLIM_KEY = "sam3d_slim"  # the checkpoint entry that marks a slim checkpoint


@lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def sam_file_identity(path: str | Path) -> dict:
    """{'path', 'size', 'sha256'} of a SAM checkpoint (the hash is cached per path, size and mtime)."""
    path = os.path.abspath(os.fspath(path))
    stat = os.stat(path)
    return {"path": path, "size": stat.st_size, "sha256": _file_sha256(path, stat.st_size, stat.st_mtime_ns)}


def omitted_keys(network: nn.Module, sam_checkpoint: str | Path) -> list[str]:
    """The state-dict keys a slim checkpoint leaves out: frozen under the network's policy and taken from SAM."""
    mapped, _ = convert_sam_state_dict(read_sam_state_dict(sam_checkpoint), network, sam_checkpoint)
    policy = getattr(network, "finetune", "adapter")
    return sorted(k for k in mapped if is_frozen(k, policy))


def slim_weights(weights: dict[str, torch.Tensor], keys: list[str], sam_checkpoint: str | Path) -> tuple[dict, dict]:
    """(weights without ``keys``, the record to store under ``SLIM_KEY``)."""
    missing = [k for k in keys if k not in weights]
    if missing:
        raise KeyError(f"cannot slim: {len(missing)} SAM tensor(s) are not in the weights, e.g. {missing[0]}")
    kept = {k: v for k, v in weights.items() if k not in set(keys)}
    return kept, {**sam_file_identity(sam_checkpoint), "omitted_keys": list(keys)}


def complete_slim_weights(weights: dict[str, torch.Tensor], record: dict, network: nn.Module,
                          checkpoint_file: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The full state dict of a slim checkpoint: its weights plus the omitted SAM tensors, converted again from
    the SAM checkpoint it names into ``network`` (a freshly built network of the same architecture, which is
    modified: it ends up holding the SAM weights)."""
    path = record.get("path")
    if not path or not os.path.isfile(path):
        raise SAMCheckpointError(f"{checkpoint_file} is a slim checkpoint: its frozen SAM weights come from {path}, "
                                 "which does not exist. Put that SAM checkpoint back at this path.")
    identity = sam_file_identity(path)
    if (identity["size"], identity["sha256"]) != (record.get("size"), record.get("sha256")):
        raise SAMCheckpointError(f"{checkpoint_file} is a slim checkpoint written with the SAM checkpoint {path} "
                                 f"(sha256 {str(record.get('sha256'))[:12]}...), but that file has changed (sha256 "
                                 f"{identity['sha256'][:12]}...): the frozen weights cannot be restored.")
    load_sam_checkpoint(network, path)
    own = network.state_dict()
    omitted = list(record.get("omitted_keys", []))
    unknown = [k for k in omitted if k not in own]
    if unknown:
        raise SAMCheckpointError(f"{checkpoint_file}: slim record names tensors this network does not have, "
                                 f"e.g. {unknown[0]}")
    full = dict(weights)
    for key in omitted:
        full[key] = own[key].detach().clone()
    return full
