"""Seeded training simulation of boxes, scribbles, lassos and previous masks: reproducible, where they belong
(inside / around the object), with the right polarity; the points-only mix draws exactly the paper's clicks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sam3d_nnunet.prompts.shape_simulation import (add_correction_prompts, check_mix, simulate_box, simulate_lasso,
                                                   simulate_prompt_batch, simulate_scribble)
from sam3d_nnunet.prompts.shapes import LassoPrompt, encode_prompts, rasterise_region, validate_prompt
from sam3d_nnunet.prompts.simulation import simulate_training_prompts

SHAPE = (24, 32, 32)


def _object() -> np.ndarray:
    g = np.ogrid[tuple(slice(0, s) for s in SHAPE)]
    ellipsoid = ((g[0] - 12) / 6.0) ** 2 + ((g[1] - 14) / 8.0) ** 2 + ((g[2] - 15) / 10.0) ** 2 <= 1
    ellipsoid[12:, 14:, 15:] = False  # concave
    return ellipsoid


OBJ = _object()


@pytest.mark.parametrize("seed", range(6))
def test_boxes_contain_the_object_or_its_slice_and_are_seeded(seed):
    box = simulate_box(OBJ, seed)
    assert box == simulate_box(OBJ, seed) and box.positive
    validate_prompt(box, SHAPE)
    inside = np.zeros(SHAPE, bool)
    inside[rasterise_region(box, SHAPE)] = True
    flat = np.flatnonzero(box.hi - box.lo == 0)
    if len(flat):  # a 2D box: the whole object on its slice
        axis, index = int(flat[0]), int(box.lo[flat[0]])
        assert np.take(OBJ, index, axis).any() and not np.take(OBJ & ~inside, index, axis).any()
    else:
        assert not (OBJ & ~inside).any()


@pytest.mark.parametrize("seed", range(6))
def test_scribbles_run_inside_the_object_when_positive_and_outside_when_negative(seed):
    for positive in (True, False):
        scribble = simulate_scribble(OBJ, seed, positive=positive)
        assert scribble == simulate_scribble(OBJ, seed, positive=positive) and scribble.positive == positive
        validate_prompt(scribble, SHAPE)
        vertices = np.asarray(scribble.points).astype(int)
        assert np.all(OBJ[tuple(vertices.T)] == positive)
        assert np.all(np.abs(np.diff(vertices, axis=0)) <= 1), "consecutive vertices are neighbours"


@pytest.mark.parametrize("seed", range(6))
def test_lassos_enclose_the_objects_slice_or_stay_away_from_it(seed):
    lasso = simulate_lasso(OBJ, seed)
    assert isinstance(lasso, LassoPrompt) and lasso == simulate_lasso(OBJ, seed) and lasso.positive
    filled = np.zeros(SHAPE, bool)
    filled[rasterise_region(lasso, SHAPE)] = True
    pts = np.asarray(lasso.points)
    axis = int(np.flatnonzero(np.ptp(pts, 0) == 0)[0])
    on_slice = np.take(OBJ, int(pts[0, axis]), axis)
    assert (np.take(filled, int(pts[0, axis]), axis) & on_slice).sum() >= 0.9 * on_slice.sum()
    negative = simulate_lasso(OBJ, seed, positive=False)
    filled[:] = False
    filled[rasterise_region(negative, SHAPE)] = True
    assert not negative.positive and filled.any() and not (filled & OBJ).any()


def test_points_only_mix_draws_exactly_the_click_simulation():
    target = torch.from_numpy(np.stack([OBJ, np.zeros(SHAPE, bool)]).astype(np.int16))[:, None]
    old = simulate_training_prompts(target, [1], np.random.default_rng(3))
    new = simulate_prompt_batch(target, [1], np.random.default_rng(3), {"click": 1.0})
    for a, b in zip(old, (new.clicks, new.click_labels, new.target_class, new.binary_target)):
        assert torch.equal(a, b)
    assert new.point_types is None and new.dense is None


def test_mixed_batch_is_seeded_and_feeds_types_dense_prompts_and_previous_masks():
    target = torch.from_numpy(np.stack([OBJ * 1, OBJ * 2, np.zeros(SHAPE)]).astype(np.int16))[:, None]
    mix = {"click": 1, "box": 1, "scribble": 1, "lasso": 1}
    batches = [simulate_prompt_batch(target, [1, 2], np.random.default_rng(s), mix, p_no_click=0.0)
               for s in range(8)]
    again = simulate_prompt_batch(target, [1, 2], np.random.default_rng(0), mix, p_no_click=0.0)
    assert torch.equal(again.clicks, batches[0].clicks) and torch.equal(again.point_types, batches[0].point_types)
    seen = set()
    for batch in batches:
        assert batch.clicks.shape[:2] == batch.point_types.shape == batch.click_labels.shape
        seen |= set(batch.point_types[batch.click_labels >= 0].tolist())
        assert batch.point_types[2].max() == 0, "no object in the patch: negative clicks only"
    assert seen == {0, 1, 2, 3}
    assert any(b.dense is not None and b.dense[:, 1].any() for b in batches)
    batch = batches[0]
    prediction = torch.zeros(3, 1, *SHAPE, dtype=torch.long)
    prediction[0, 0, 10:14, 10:14, 10:14] = 1
    corrected = add_correction_prompts(prediction, batch, 0, p_previous_mask=1.0)
    assert corrected.clicks.shape[1] == batch.clicks.shape[1] + 1 == corrected.point_types.shape[1]
    assert torch.equal(corrected.dense[:, 0], prediction[:, 0].float())
    assert add_correction_prompts(prediction, batch, 0).dense is batch.dense


def test_prompt_mix_is_checked():
    assert check_mix({"click": 1}) == {"click": 1.0}
    with pytest.raises(ValueError, match="unknown keys"):
        check_mix({"clicks": 1})
    with pytest.raises(ValueError, match="one of"):
        check_mix({"mask": 0.5})
    enc = encode_prompts([simulate_box(OBJ, 0)], SHAPE)
    assert enc.dense[1].any()


def _trainer(cls, network):
    """The attributes ``_prompted_forward`` reads, without nnU-Net's plans and data (a unit test of the step)."""
    from types import SimpleNamespace
    trainer = cls.__new__(cls)
    trainer.network, trainer.is_ddp, trainer.device = network, False, torch.device("cpu")
    trainer.label_manager = SimpleNamespace(foreground_labels=[1, 2], ignore_label=None)
    trainer.prompt_rng = np.random.default_rng(7)
    trainer.prompt_mix = dict(cls.prompt_mix)
    return trainer


def test_trainer_step_points_only_is_the_papers_and_allprompts_feeds_every_prompt():
    from sam3d_nnunet.model import SAM3DNet
    from sam3d_nnunet.prompts.simulation import add_correction_clicks
    from sam3d_nnunet.trainers.nnUNetTrainerSAM3D import nnUNetTrainerSAM3D, nnUNetTrainerSAM3D_allprompts

    torch.manual_seed(0)
    net = SAM3DNet(1, 3, patch_size=SHAPE, variant="tiny", token_stride=4, window_size=2).eval()
    data = torch.randn(2, 1, *SHAPE)
    target = torch.from_numpy(np.stack([OBJ * 1, OBJ * 2]).astype(np.int16))[:, None]
    with torch.no_grad():
        logits, binary = _trainer(nnUNetTrainerSAM3D, net)._prompted_forward(data, target, correction=True)
        rng = np.random.default_rng(7)
        clicks, labels, tc, _ = simulate_training_prompts(target, [1, 2], rng, 10, 10, 0.2)
        features = net.encode(data)
        first = net.decode(features, clicks, labels, tc)
        clicks, labels = add_correction_clicks(first.argmax(1, keepdim=True), binary, clicks, labels)
        torch.testing.assert_close(logits, net.decode(features, clicks, labels, tc), rtol=0, atol=0)

        seen = []
        decode = net.decode
        net.decode = lambda *args: seen.append(args) or decode(*args)
        trainer = _trainer(nnUNetTrainerSAM3D_allprompts, net)
        for _ in range(4):
            trainer._prompted_forward(data, target, correction=True)
    assert nnUNetTrainerSAM3D.prompt_mix == {"click": 1.0}
    assert set(nnUNetTrainerSAM3D_allprompts.prompt_mix) == {"click", "box", "scribble", "lasso", "mask"}
    final = seen[1::2]  # (first pass, loss pass) per step
    assert all(args[4] is not None for args in final), "point types reach the network"
    assert any(args[5] is not None and args[5][:, 0].any() for args in final), "the previous mask reaches it"
