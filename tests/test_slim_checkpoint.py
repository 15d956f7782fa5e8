"""Slim checkpoints: the frozen SAM tensors left out and restored, exactly, from the SAM checkpoint."""
from __future__ import annotations

import shutil

import pytest
import torch

from sam3d_nnunet.model import SAM3DNet, SAMCheckpointError, load_sam_checkpoint, write_random_sam_checkpoint
from sam3d_nnunet.model.finetune import is_frozen
from sam3d_nnunet.model.slim_checkpoint import complete_slim_weights, omitted_keys, slim_weights


def _net(finetune="adapter"):
    torch.manual_seed(0)
    return SAM3DNet(1, 3, variant="tiny", patch_size=(32, 32, 32), window_size=4, finetune=finetune)


@pytest.mark.parametrize("finetune", ["adapter", "lora"])
def test_slim_weights_restore_the_full_state_exactly(tmp_path, finetune):
    sam = write_random_sam_checkpoint("tiny", tmp_path / "sam.pth", seed=3)
    trained = _net(finetune)
    load_sam_checkpoint(trained, sam)
    with torch.no_grad():  # "training": every trainable tensor moves
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    full = {k: v.clone() for k, v in trained.state_dict().items()}
    keys = omitted_keys(trained, sam)
    assert len(keys) > 10 and all(is_frozen(k, finetune) for k in keys)
    slim, record = slim_weights(full, keys, sam)
    assert not set(keys) & set(slim) and len(slim) == len(full) - len(keys)
    assert sum(v.numel() for v in slim.values()) < sum(v.numel() for v in full.values())
    restored = complete_slim_weights(slim, record, _net(finetune))  # a fresh, differently initialised network
    assert set(restored) == set(full)
    for k in full:
        assert torch.equal(restored[k], full[k]), k


def test_full_policy_omits_nothing(tmp_path):
    sam = write_random_sam_checkpoint("tiny", tmp_path / "sam.pth", seed=3)
    assert omitted_keys(_net("full"), sam) == []


def test_changed_or_missing_sam_checkpoint_is_refused(tmp_path):
    sam = write_random_sam_checkpoint("tiny", tmp_path / "sam.pth", seed=3)
    net = _net()
    load_sam_checkpoint(net, sam)
    slim, record = slim_weights(net.state_dict(), omitted_keys(net, sam), sam)
    shutil.move(sam, tmp_path / "moved.pth")
    with pytest.raises(SAMCheckpointError, match="does not exist"):
        complete_slim_weights(slim, record, _net(), "fold_0/checkpoint_final.pth")
    write_random_sam_checkpoint("tiny", sam, seed=4)  # same path and size, other weights
    with pytest.raises(SAMCheckpointError, match=r"checkpoint_final.pth is a slim checkpoint .* has changed"):
        complete_slim_weights(slim, record, _net(), "fold_0/checkpoint_final.pth")
