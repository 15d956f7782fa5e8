"""Loading Segment Anything checkpoints: every tensor used or dropped by name, bad files refused clearly."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sam3d_nnunet.model import (DROPPED_PREFIXES, SAM3DNet, SAMCheckpointError, load_sam_checkpoint,
                                read_sam_state_dict, write_random_sam_checkpoint)
from sam3d_nnunet.model.finetune import is_frozen
from sam3d_nnunet.model.sam_checkpoint import convert_sam_state_dict
from sam3d_nnunet.model.variants import SAM_VARIANTS


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_random_sam_checkpoint("tiny", tmp_path_factory.mktemp("sam") / "sam_tiny.pth", seed=7)


def _check_loaded(model: SAM3DNet, path: Path) -> None:
    source = torch.load(path, weights_only=True)
    report = load_sam_checkpoint(model, path)
    own = model.state_dict()
    # every tensor of the file is used or dropped by a documented prefix
    assert set(report.used) | set(report.dropped) == set(source)
    assert all(any(k.startswith(p) for p in DROPPED_PREFIXES) for k in report.dropped)
    for key in report.used:
        torch.testing.assert_close(own[key], source[key], rtol=0, atol=0)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(is_frozen(n, "adapter") for n in frozen)
    for name in frozen:  # every frozen tensor equals its source
        torch.testing.assert_close(own[name], source[name], rtol=0, atol=0)
    # the published transform: the new depth table is the mean of SAM's h/w tables, at their length
    expected = (source["image_encoder.blocks.0.attn.rel_pos_h"] + source["image_encoder.blocks.0.attn.rel_pos_w"]) / 2
    torch.testing.assert_close(own["image_encoder.blocks.0.attn.rel_pos_d"], expected)


def test_tiny_checkpoint_loads_and_frozen_tensors_equal_the_source(tiny_checkpoint):
    model = SAM3DNet(1, 2, variant="tiny", patch_size=(16, 16, 16), token_stride=4, window_size=2)
    _check_loaded(model, tiny_checkpoint)


def test_vit_b_checkpoint_in_sam_format_loads(tmp_path):
    """The real vit_b structure, from a file written exactly as SAM's are (random weights)."""
    path = write_random_sam_checkpoint("vit_b", tmp_path / "sam_vit_b.pth", seed=1)
    model = SAM3DNet(1, 2, variant="vit_b", patch_size=(32, 32, 32), token_stride=4, window_size=8)
    _check_loaded(model, path)
    path.unlink()


@pytest.mark.parametrize("variant", ["vit_l", "vit_h"])
def test_vit_l_and_vit_h_structures_map(variant):
    from segment_anything.build_sam import _build_sam

    spec = SAM_VARIANTS[variant]
    with torch.device("meta"):
        sam = _build_sam(encoder_embed_dim=spec.embed_dim, encoder_depth=spec.depth, encoder_num_heads=spec.num_heads,
                         encoder_global_attn_indexes=list(spec.global_attn_indexes), checkpoint=None)
        model = SAM3DNet(1, 2, variant=variant, patch_size=(128, 128, 128), token_stride=4, window_size=8)
    state = sam.state_dict()
    mapped, report = convert_sam_state_dict(state, model, f"sam_{variant}.pth")
    assert set(report.used) | set(report.dropped) == set(state)
    own = model.state_dict()
    assert all(own[k].shape == v.shape for k, v in mapped.items())
    assert {n for n, p in model.named_parameters() if not p.requires_grad} <= set(mapped)


def test_wrong_variant_is_refused_naming_file_and_variants(tiny_checkpoint):
    with torch.device("meta"):
        model = SAM3DNet(1, 2, variant="vit_b", patch_size=(128, 128, 128))
    with pytest.raises(SAMCheckpointError, match=rf"{tiny_checkpoint.name}: holds a SAM tiny .* model is vit_b"):
        load_sam_checkpoint(model, tiny_checkpoint)


def test_truncated_checkpoint_is_refused(tiny_checkpoint, tmp_path):
    truncated = tmp_path / "truncated.pth"
    data = tiny_checkpoint.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SAMCheckpointError, match=r"truncated\.pth: truncated or corrupt"):
        read_sam_state_dict(truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(SAMCheckpointError, match=r"garbage\.pth: truncated or corrupt"):
        read_sam_state_dict(garbage)


class _Payload:
    """Unpickling this would run ``os.system`` and create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_with_pickled_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1), "x": _Payload(marker)}, hostile)
    with pytest.raises(SAMCheckpointError, match=r"hostile\.pth: refused: the file holds pickled Python objects"):
        read_sam_state_dict(hostile)
    assert not marker.exists()


def test_missing_file_and_foreign_tensors(tmp_path, tiny_checkpoint):
    with pytest.raises(SAMCheckpointError, match="nope.pth: no such SAM checkpoint file"):
        read_sam_state_dict(tmp_path / "nope.pth")
    state = torch.load(tiny_checkpoint, weights_only=True)
    model = SAM3DNet(1, 2, variant="tiny", patch_size=(16, 16, 16), token_stride=4, window_size=2)
    with pytest.raises(SAMCheckpointError, match="unexpected tensor 'image_encoder.extra'"):
        convert_sam_state_dict({**state, "image_encoder.extra": torch.zeros(1)}, model, "x.pth")
    without = {k: v for k, v in state.items() if k != "image_encoder.blocks.1.mlp.lin1.weight"}
    with pytest.raises(SAMCheckpointError, match="missing 1 tensors"):
        convert_sam_state_dict(without, model, "x.pth")
