"""InteractiveSession with boxes, scribbles, lassos and masks: label maps like add_click, undo, no further encoder
pass, the dense prompt mapped like the image, and bad prompts refused in one line without changing anything."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny_plans import DATASET_JSON, tiny_plans

SHAPE = (30, 28, 26)  # raw (z, y, x); transposed (0, 2, 1) and cropped (two zero slices) by preprocessing


@pytest.fixture(scope="module")
def session():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sam3d_nnunet.inference import InteractiveSession
    from sam3d_nnunet.model import SAM3DNet
    pm = PlansManager(tiny_plans((32, 32, 32), transpose=(0, 2, 1), dataset_name="Dataset997_Prompts"))
    cm = pm.get_configuration("3d_fullres")
    torch.manual_seed(0)
    net = SAM3DNet(1, 3, **cm.network_arch_init_kwargs)
    with torch.no_grad():  # trained-looking extensions, so that every prompt changes the output
        for p in (net.prompt_encoder.point_type_embed.weight, net.prompt_encoder.dense_encoder.weight):
            p.normal_(0, 1.0)
    s = InteractiveSession(net, pm, cm, DATASET_JSON, "cpu")
    image = np.random.default_rng(0).uniform(1, 100, SHAPE).astype(np.float32)
    image[:2] = 0
    s.set_image(image, spacing=(1.0, 1.0, 1.0))
    inner = s.network.network
    s.calls = {"encode": 0, "decode": []}
    encode, decode = inner.encode, inner.decode

    def counting_encode(x):
        s.calls["encode"] += 1
        return encode(x)

    def recording_decode(*args, **kwargs):
        s.calls["decode"].append(kwargs)
        return decode(*args, **kwargs)

    inner.encode, inner.decode = counting_encode, recording_decode
    return s


def test_every_prompt_returns_the_label_map_without_encoding_again_and_undo_covers_it(session):
    from sam3d_nnunet.prompts.shapes import BoxPrompt, LassoPrompt, MaskPrompt, ScribblePrompt
    assert session.calls["encode"] == 0

    maps = [session.add_click((15, 14, 13), class_id=1)]
    assert session.calls["encode"] == 1
    maps.append(session.add_box((15, 5, 4), (15, 20, 18)))  # 2D box on slice z = 15
    maps.append(session.add_scribble([(10, 10, 10), (12, 14, 16), (14, 18, 20)], positive=False))
    maps.append(session.add_lasso([(20, 4, 4), (20, 4, 20), (20, 22, 12)]))
    maps.append(session.set_mask(np.ones(SHAPE, np.uint8)))
    maps.append(session.set_mask(maps[-1] == 1))  # the last prediction as the previous mask: replaces the first
    assert session.calls["encode"] == 1, "prompts re-run only the prompt encoder and the decoder"
    assert all(m.shape == SHAPE and m.dtype == np.uint8 for m in maps)
    kinds = [type(p) for p in session.prompts()]
    assert kinds[1:] == [BoxPrompt, ScribblePrompt, LassoPrompt, MaskPrompt] and len(session.clicks()) == 1
    assert session.calls["decode"][0] == {}, "a click alone calls decode exactly as before"
    assert set(session.calls["decode"][1]) == {"point_types", "dense_prompt"}
    assert session.calls["decode"][2]["point_types"].unique().tolist() == [0, 1, 2]
    assert not np.array_equal(maps[0], maps[1]) or not np.array_equal(maps[1], maps[3])
    for expected in reversed(maps[:-1]):
        np.testing.assert_array_equal(session.undo(), expected)
    assert len(session.prompts()) == 1
    session.undo()
    assert session.prompts() == [] and not session.can_undo


def test_a_mask_alone_is_a_prompt(session):
    mask = np.zeros(SHAPE, bool)
    mask[10:20, 8:16, 6:12] = True
    encodes = session.calls["encode"]
    out = session.set_mask(mask, class_id=2)
    assert out.shape == SHAPE and session.prompts(2)[0].mask.sum() == mask.sum()
    assert session.calls["decode"][-1]["dense_prompt"][0, 0].sum() == mask.sum()
    assert session.calls["encode"] == max(encodes, 1)
    session.undo()
    assert session.prompts(2) == []


def test_the_dense_prompt_goes_through_the_images_preprocessing(session):
    from sam3d_nnunet.inference.prompted_predictor import raw_to_preprocessed_coords
    session.add_box((5, 3, 4), (12, 10, 20), class_id=2)
    dense = session.calls["decode"][-1]["dense_prompt"][0]
    region = torch.nonzero(dense[1]).numpy()
    corners = raw_to_preprocessed_coords(np.array([(5, 3, 4), (12, 10, 20)]), session._properties,
                                         session.plans_manager.transpose_forward, session.preprocessed_shape)
    pad = (np.array(session.predictor.patch_size) - np.array(session.preprocessed_shape)) // 2
    np.testing.assert_array_equal(region.min(0), corners.min(0) + pad)
    np.testing.assert_array_equal(region.max(0), corners.max(0) + pad)
    assert len(region) == 8 * 8 * 17 and not dense[0].any() and not dense[2].any()


@pytest.mark.parametrize("call, message", [
    (lambda s: s.add_box((0, 0, 0), (40, 5, 5)), "box: point .* falls outside the image"),
    (lambda s: s.add_box((3, 4, 5), (3, 4, 9)), "box: .*zero extent"),
    (lambda s: s.add_scribble([(3, 4, 5)]), "scribble: needs at least two distinct points"),
    (lambda s: s.add_lasso([(5, 0, 0), (5, 5, 5), (5, 0, 5), (5, 5, 0)]), "lasso: the contour intersects itself"),
    (lambda s: s.add_lasso([(5, 0, 0), (5, 0, 5), (5, 0, 9)]), "lasso: degenerate"),
    (lambda s: s.add_lasso([(5, 0, 0), (5, 4, 4)]), "lasso: needs at least 3 distinct points"),
    (lambda s: s.set_mask(np.zeros((30, 28, 25))), "mask: shape"),
])
def test_bad_prompts_are_refused_in_one_line_and_change_nothing(session, call, message):
    from sam3d_nnunet.inference import InferenceInputError
    before = (session.label_map.copy(), session.prompts(1), len(session._history), session.calls["encode"])
    with pytest.raises(InferenceInputError, match=message) as error:
        call(session)
    assert "\n" not in str(error.value)
    after = (session.label_map, session.prompts(1), len(session._history), session.calls["encode"])
    assert np.array_equal(after[0], before[0]) and after[1:] == before[1:], "a failed call changes nothing"
