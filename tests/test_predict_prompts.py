"""``sam3d-nnunet predict`` with a version-2 prompt file: boxes, scribbles, lassos and masks reach the network as
point types and a dense prompt mapped through the image's preprocessing (transpose, crop, resampling)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tiny_plans import DATASET_JSON, tiny_plans

SITK = pytest.importorskip("SimpleITK")


class DenseOracleNet(torch.nn.Module):
    """TEST DOUBLE for SAM3DNet (not a model): the object is the dense prompt's previous mask or positive region,
    minus its negative region; it records the point types it was given."""

    def __init__(self, patch):
        super().__init__()
        self.patch_size, self.num_classes = tuple(patch), 3
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.point_types = []

    def encode(self, image):
        return image

    def decode(self, features, clicks=None, click_labels=None, target_class=1, point_types=None, dense_prompt=None):
        self.point_types.append(None if point_types is None else sorted(set(point_types.flatten().tolist())))
        if dense_prompt is None:
            keep = torch.zeros_like(features[:, 0], dtype=torch.bool)
        else:
            keep = (dense_prompt[:, :2].amax(1) > 0.5) & (dense_prompt[:, 2] < 0.5)
        margin = torch.where(keep, 10.0, -10.0)
        return torch.stack([-margin / 2, margin / 2], 1)


def test_prompt_file_boxes_scribbles_lassos_and_masks_reach_the_network(tmp_path):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sam3d_nnunet.commands.predict import predict_folder
    from sam3d_nnunet.inference import PromptedPredictor
    from sam3d_nnunet.prompts import ClickFile, FilePrompt, write_click_file

    pm = PlansManager(tiny_plans((32, 32, 32), spacing=(1.5, 1.2, 1.0), transpose=(2, 0, 1),
                                 norm="NoNormalization", dataset_name="Dataset996_PromptFiles"))
    net = DenseOracleNet((32, 32, 32))
    predictor = PromptedPredictor(net, pm, pm.get_configuration("3d_fullres"), DATASET_JSON, "cpu",
                                  max_windows_per_class=16)
    shape = (30, 40, 36)  # raw (z, y, x), spacing (2.0, 1.0, 1.0) mm
    img = SITK.GetImageFromArray(np.random.default_rng(0).uniform(1, 100, shape).astype(np.float32))
    img.SetSpacing((1.0, 1.0, 2.0))
    (tmp_path / "in").mkdir()
    SITK.WriteImage(img, str(tmp_path / "in" / "c_0000.nii.gz"))
    mask = np.zeros(shape, np.uint8)
    mask[18:26, 25:35, 4:14] = 1
    mask_img = SITK.GetImageFromArray(mask)
    mask_img.CopyInformation(img)
    SITK.WriteImage(mask_img, str(tmp_path / "mask.nii.gz"))
    box = np.zeros(shape, bool)
    box[4:13, 6:21, 8:25] = True  # corners (x, y, z) (8, 6, 4) and (24, 20, 12)
    write_click_file(tmp_path / "prompts.json", ClickFile("voxel", {"c": {
        1: [FilePrompt("box", ((8, 6, 4), (24, 20, 12))), FilePrompt("scribble", ((10, 10, 8), (20, 12, 8)))],
        2: [FilePrompt("mask", file="mask.nii.gz"),
            FilePrompt("lasso", ((4, 25, 20), (4, 34, 20), (9, 34, 20), (9, 25, 20)), positive=False)]}}))
    predict_folder(predictor, str(tmp_path / "in"), str(tmp_path / "out"),
                   clicks_file=str(tmp_path / "prompts.json"), progress=False)
    seg = SITK.GetArrayFromImage(SITK.ReadImage(str(tmp_path / "out" / "c.nii.gz")))

    def iou(a, b):
        return (a & b).sum() / (a | b).sum()

    assert iou(seg == 1, box) > 0.85, "the box, back in raw space after transpose, crop and resampling"
    expected_2 = mask.astype(bool)
    expected_2[20, 25:35, 4:10] = False  # the negative lasso cuts one slice out (blurred by the z resampling)
    assert iou(seg == 2, expected_2) > 0.75 and not (seg == 2)[20, 27:33, 5:9].any()
    assert [1, 2] in [t for t in net.point_types if t] and [3] in [t for t in net.point_types if t]
    record = json.loads((tmp_path / "out" / "prompts.json").read_text())["cases"]["c"]["classes"]
    assert [p["type"] for p in record["1"]["prompts"]] == ["box", "scribble"]
    assert record["2"]["prompts"][0] == {"type": "mask", "voxels": int(mask.sum())}


@pytest.mark.parametrize("shape_in, shape_out", [((7, 9, 11), (10, 6, 23)), ((8, 8, 8), (8, 8, 8)),
                                                 ((5, 12, 9), (3, 31, 9))])
def test_dense_prompts_resample_only_their_box_exactly_like_trilinear(shape_in, shape_out):
    from sam3d_nnunet.inference.prompted_predictor import resample_nonzero_box
    rng = np.random.default_rng(0)
    x = torch.zeros(3, *shape_in)
    x[0, 2:4, 3:7, 1:5] = torch.from_numpy(rng.random((2, 4, 4)).astype(np.float32))
    x[2, -1, -2:, -3:] = 1.0
    expected = torch.nn.functional.interpolate(x[None], size=shape_out, mode="trilinear", align_corners=False)[0]
    torch.testing.assert_close(resample_nonzero_box(x, shape_out), expected, rtol=0, atol=1e-6)
    assert not resample_nonzero_box(torch.zeros(1, *shape_in), shape_out).any()


@pytest.mark.parametrize("transpose", [(0, 1, 2), (2, 0, 1)])
def test_dense_prompt_mapping_reads_only_the_boxes_the_encoder_wrote(transpose):
    """``encode_prompts`` records per channel the box of what it wrote (a box, a lasso, a mask); mapping the dense
    prompt with those boxes gives exactly the mapping that searches the whole array for its non-zero part."""
    from sam3d_nnunet.inference.prompted_predictor import ClassPrompt, class_prompt_to_preprocessed
    from sam3d_nnunet.prompts.shapes import BoxPrompt, LassoPrompt, MaskPrompt, encode_prompts, nonzero_box
    shape = (12, 20, 18)
    mask = np.zeros(shape, np.float32)
    mask[3:6, 4:9, 10:12] = 0.7
    prompts = [BoxPrompt((2, 3, 4), (7, 9, 8)), LassoPrompt([(5, 12, 2), (5, 18, 3), (5, 16, 9)], False),
               BoxPrompt((8, 1, 1), (10, 2, 5)), MaskPrompt(mask)]
    enc = encode_prompts(prompts, shape)
    for channel, box in enumerate(enc.dense_box):
        assert box == nonzero_box(enc.dense[channel]), channel
    assert encode_prompts(prompts[:1], shape).dense_box[0] is None and encode_prompts(prompts[:2], shape).dense_box[2]
    raw_t = [shape[a] for a in transpose]  # the crop (transposed order) cuts into the prompts
    props = {"bbox_used_for_cropping": [[1, raw_t[0] - 1], [2, raw_t[1]], [0, raw_t[2] - 1]]}
    props["shape_after_cropping_and_before_resampling"] = [b - a for a, b in props["bbox_used_for_cropping"]]
    pre_shape = (7, 25, 30)
    with_box = class_prompt_to_preprocessed(ClassPrompt.from_prompts(prompts, shape), props, transpose, pre_shape)
    without = class_prompt_to_preprocessed(ClassPrompt(enc.points, enc.labels, enc.types, enc.dense), props,
                                           transpose, pre_shape)
    assert with_box.dense.abs().sum() > 0
    torch.testing.assert_close(with_box.dense, without.dense, rtol=0, atol=0)
