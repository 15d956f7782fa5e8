"""Version-2 prompt files: every prompt type round-trips in voxel and world coordinates, version-1 click files are
still read (and still written for clicks only), and bad prompts fail naming the file, case, class and prompt."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from sam3d_nnunet.prompts.click_files import (Click, ClickFile, ClickFileError, FilePrompt, case_prompts,
                                              from_array_indices, read_click_file, write_click_file)
from sam3d_nnunet.prompts.shapes import BoxPrompt, ClickPrompt, LassoPrompt, MaskPrompt, PromptError, ScribblePrompt

SHAPE = (5, 7, 11)  # array (z, y, x)


def _image() -> sitk.Image:
    img = sitk.GetImageFromArray(np.zeros(SHAPE, np.int16))
    img.SetSpacing((0.7, 1.3, 3.0))
    img.SetDirection((0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))  # rotated and flipped
    img.SetOrigin((-12.5, 30.25, 7.75))
    return img


ARRAY_PROMPTS = {  # array order (z, y, x)
    "click": [(1, 2, 3)], "box": [(1, 1, 1), (3, 5, 9)], "box2d": [(2, 1, 1), (2, 5, 9)],
    "scribble": [(0, 0, 0), (1, 2, 3), (4, 6, 10)], "lasso": [(3, 0, 0), (3, 0, 8), (3, 6, 4)],
}


def _file(tmp_path, coordinate_system: str) -> ClickFile:
    img = _image()
    mask = np.zeros(SHAPE, np.uint8)
    mask[1:3, 2:4, 3:6] = 1
    out = sitk.GetImageFromArray(mask)
    out.CopyInformation(img)
    (tmp_path / "masks").mkdir(exist_ok=True)
    sitk.WriteImage(out, str(tmp_path / "masks" / "c1.nii.gz"))

    def xyz(name):
        return tuple(map(tuple, from_array_indices(ARRAY_PROMPTS[name], img, coordinate_system)))

    return ClickFile(coordinate_system, {"c1": {1: [
        Click(xyz("click")[0], False), FilePrompt("box", xyz("box")), FilePrompt("box", xyz("box2d")),
        FilePrompt("scribble", xyz("scribble"), False), FilePrompt("lasso", xyz("lasso")),
        FilePrompt("mask", file="masks/c1.nii.gz")], 2: []}})


@pytest.mark.parametrize("coordinate_system", ["voxel", "world"])
def test_every_prompt_type_round_trips_and_maps_to_the_array(tmp_path, coordinate_system):
    path = tmp_path / "prompts.json"
    written = _file(tmp_path, coordinate_system)
    write_click_file(path, written)
    data = json.loads(path.read_text())
    assert data["version"] == 2 and [e["type"] for e in data["cases"]["c1"]["1"]] == [
        "click", "box", "box", "scribble", "lasso", "mask"]
    back = read_click_file(path)
    assert back.cases == written.cases and back.coordinate_system == coordinate_system
    prompts = case_prompts(back, "c1", _image())
    assert prompts[2] == []
    click, box, box2d, scribble, lasso, mask = prompts[1]
    assert isinstance(click, ClickPrompt) and not click.positive
    np.testing.assert_allclose(click.point, ARRAY_PROMPTS["click"][0], atol=1e-6)
    assert isinstance(box, BoxPrompt) and isinstance(box2d, BoxPrompt)
    np.testing.assert_allclose([box.lo, box.hi], ARRAY_PROMPTS["box"], atol=1e-6)
    assert box2d.lo[0] == box2d.hi[0], "a 2D box stays on its slice"
    assert isinstance(scribble, ScribblePrompt) and not scribble.positive
    np.testing.assert_allclose(scribble.points, ARRAY_PROMPTS["scribble"], atol=1e-6)
    assert isinstance(lasso, LassoPrompt) and len({p[0] for p in lasso.points}) == 1, "snapped onto one slice"
    assert isinstance(mask, MaskPrompt) and mask.mask.sum() == 2 * 2 * 3


def test_version_1_click_files_are_still_read_and_written_for_clicks_only(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"coordinate_system": "voxel",
                                "cases": {"c1": {"1": [{"point": [3, 2, 1], "positive": True}]}}}))
    old = read_click_file(path)
    assert old.cases["c1"][1] == [Click((3, 2, 1), True)]
    assert case_prompts(old, "c1", _image())[1] == [ClickPrompt((1, 2, 3), True)]
    write_click_file(tmp_path / "again.json", old)
    assert "version" not in json.loads((tmp_path / "again.json").read_text())


@pytest.mark.parametrize("entry, message", [
    ({"type": "circle", "points": []}, "prompt 0: must be an object with 'type' one of"),
    ({"type": "box", "corners": [[0, 0, 0], [1, 1, 1], [2, 2, 2]], "positive": True}, "box needs exactly 2 points"),
    ({"type": "scribble", "points": [[0, 0, 0]], "positive": True}, "scribble needs at least 2 points"),
    ({"type": "lasso", "points": [[0, 0, 0], [1, 1, 0]], "positive": True}, "lasso needs at least 3 points"),
    ({"type": "lasso", "points": [[0, 0, 0], [1, 1, 0], [0, 1, 0]]}, "a lasso needs exactly the keys"),
    ({"type": "mask", "file": ""}, "mask's 'file' must be a non-empty path"),
])
def test_malformed_entries_name_the_file_case_class_and_prompt(tmp_path, entry, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"version": 2, "coordinate_system": "voxel", "cases": {"c1": {"1": [entry]}}}))
    with pytest.raises(ClickFileError, match=message) as error:
        read_click_file(path)
    assert "bad.json" in str(error.value) and "case 'c1', class '1'" in str(error.value)
    path.write_text(json.dumps({"version": 3, "coordinate_system": "voxel", "cases": {}}))
    with pytest.raises(ClickFileError, match="'version' must be 1 or 2"):
        read_click_file(path)


@pytest.mark.parametrize("prompt, message", [
    (FilePrompt("box", ((0, 0, 0), (20, 3, 3))), r"prompt 0 \(box\) point 1 at voxel .* falls outside the image"),
    (FilePrompt("box", ((0, 0, 1), (5, 0, 1))), "prompt 0: box: .*zero extent"),
    (FilePrompt("scribble", ((1, 1, 1), (1, 1, 1))), "prompt 0: scribble: needs at least two distinct"),
    (FilePrompt("lasso", ((0, 0, 1), (5, 5, 1), (0, 5, 1), (5, 0, 1))), "prompt 0: lasso: the contour intersects"),
    (FilePrompt("mask", file="missing.nii.gz"), "prompt 0: mask: file .*missing.nii.gz' does not exist"),
    (FilePrompt("mask", file="small.nii.gz"), "prompt 0: mask: shape"),
])
def test_prompts_that_do_not_fit_the_image_fail_in_one_line(tmp_path, prompt, message):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 7, 10), np.uint8)), str(tmp_path / "small.nii.gz"))
    write_click_file(tmp_path / "p.json", ClickFile("voxel", {"c1": {1: [prompt]}}))
    with pytest.raises(ValueError, match=message) as error:
        case_prompts(read_click_file(tmp_path / "p.json"), "c1", _image())
    assert "\n" not in str(error.value) and "case 'c1', class 1" in str(error.value)
    assert isinstance(error.value, (PromptError, ValueError))
