"""Click files: JSON round trip, validation messages, voxel/world -> numpy array index mapping."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from sam3d_nnunet.prompts.click_files import (
    Click,
    ClickFile,
    ClickFileError,
    case_clicks_to_arrays,
    from_array_indices,
    read_click_file,
    to_array_indices,
    validate_case_id,
    write_click_file,
)

SIZE_XYZ = (11, 7, 5)  # distinct sizes so a swapped axis cannot pass


def rotated_image() -> sitk.Image:
    """Anisotropic spacing, a 90-degree rotation about z combined with a flip, non-zero origin.
    Voxel values encode their (x, y, z) index so array order can be checked too."""
    arr = np.zeros(SIZE_XYZ[::-1], dtype=np.int32)
    z, y, x = np.indices(arr.shape)
    arr[:] = x + 100 * y + 10000 * z
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 1.3, 3.0))
    # columns are the image axes in LPS: i -> +y, j -> -x, k -> -z (rotation + flip, det = -1)
    direction = np.array([[0.0, -1.0, 0.0],
                          [1.0, 0.0, 0.0],
                          [0.0, 0.0, -1.0]])
    img.SetDirection(direction.ravel().tolist())
    img.SetOrigin((-12.5, 30.25, 7.75))
    return img


def test_round_trip(tmp_path):
    cf = ClickFile("voxel", {
        "case_001": {1: [Click((1, 2, 3), True), Click((4.5, 0.25, 2), False)], 3: []},
        "case-002.b": {2: [((0, 0, 0), True)]},
    })
    path = tmp_path / "clicks.json"
    write_click_file(path, cf)
    back = read_click_file(path)
    assert back.coordinate_system == "voxel"
    assert back.cases["case_001"][1] == [Click((1.0, 2.0, 3.0), True), Click((4.5, 0.25, 2.0), False)]
    assert back.cases["case_001"][3] == []
    assert back.cases["case-002.b"] == {2: [Click((0.0, 0.0, 0.0), True)]}
    # written atomically: no temporary files left behind, readable permissions, valid JSON
    assert sorted(os.listdir(tmp_path)) == ["clicks.json"]
    assert os.stat(path).st_mode & 0o644 == 0o644
    assert json.loads(path.read_text())["cases"]["case_001"]["1"][1] == {"point": [4.5, 0.25, 2.0], "positive": False}
    # overwriting keeps working
    write_click_file(path, ClickFile("world", {"c": {1: [Click((1, 2, 3), True)]}}))
    assert read_click_file(path).coordinate_system == "world"


def test_voxel_points_are_xyz_and_map_to_zyx():
    img = rotated_image()
    arr = sitk.GetArrayFromImage(img)
    pts = [(10, 6, 4), (0, 0, 0), (3, 5, 1)]
    idx = to_array_indices(pts, img, "voxel")
    for (x, y, z), (k, j, i) in zip(pts, idx.astype(int)):
        assert (k, j, i) == (z, y, x)
        assert arr[k, j, i] == img.GetPixel(x, y, z) == x + 100 * y + 10000 * z


def test_world_clicks_land_on_intended_voxel(tmp_path):
    img = rotated_image()
    arr = sitk.GetArrayFromImage(img)
    rng = np.random.default_rng(0)
    wanted = [(4, 6, 10), (0, 0, 0), (2, 1, 3)] + [tuple(int(rng.integers(s)) for s in arr.shape) for _ in range(10)]
    clicks = []
    for k, j, i in wanted:
        clicks.append(Click(img.TransformIndexToPhysicalPoint((i, j, k)), positive=bool(k % 2)))
    path = tmp_path / "w.json"
    write_click_file(path, ClickFile("world", {"ct_01": {2: clicks}}))
    cf = read_click_file(path)
    got = to_array_indices([c.point for c in cf.cases["ct_01"][2]], img, "world", case_id="ct_01")
    assert np.allclose(got, np.array(wanted, dtype=float), atol=1e-6)
    for (k, j, i), g in zip(wanted, np.rint(got).astype(int)):
        assert arr[tuple(g)] == i + 100 * j + 10000 * k
    # the mapping is not a plain reversal: world mm differ from indices on this image
    assert not np.allclose(np.array([c.point for c in clicks])[:, ::-1], got)
    # helper: per-class arrays with labels
    per_class = case_clicks_to_arrays(cf, "ct_01", img)
    coords, labels = per_class[2]
    assert np.allclose(coords, wanted, atol=1e-6)
    assert labels.tolist() == [k % 2 for k, _, _ in wanted]
    # inverse mapping
    assert np.allclose(from_array_indices(got, img, "world"), [c.point for c in clicks], atol=1e-6)
    assert np.allclose(from_array_indices(got, img, "voxel"), np.array(wanted)[:, ::-1], atol=1e-6)


def test_out_of_image_clicks_raise_naming_case():
    img = rotated_image()
    sx, sy, sz = SIZE_XYZ
    # half a voxel beyond the edge centres is still inside
    ok = to_array_indices([(-0.5, -0.5, -0.5), (sx - 0.5, sy - 0.5, sz - 0.5)], img, "voxel", case_id="c1")
    assert np.allclose(ok[1], (sz - 0.5, sy - 0.5, sx - 0.5))
    with pytest.raises(ValueError, match=r"case 'c1'.*outside the image"):
        to_array_indices([(1, 1, 1), (sx - 0.4, 0, 0)], img, "voxel", case_id="c1")
    with pytest.raises(ValueError, match=r"case 'c1'"):
        to_array_indices([(0, -0.6, 0)], img, "voxel", case_id="c1")
    far = img.TransformContinuousIndexToPhysicalPoint((2.0, 3.0, sz + 1.0))
    with pytest.raises(ValueError, match=r"case 'lung_9', class 2.*outside"):
        to_array_indices([far], img, "world", case_id="lung_9", class_id=2)
    cf = ClickFile("world", {"lung_9": {1: [Click(far, True)]}})
    with pytest.raises(ValueError, match=r"lung_9"):
        case_clicks_to_arrays(cf, "lung_9", img)


def _write(tmp_path, content, name="bad.json") -> str:
    p = tmp_path / name
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(p)


GOOD_CLICK = {"point": [1, 2, 3], "positive": True}


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not valid JSON"),
    ([], "top level"),
    ({"cases": {}}, "coordinate_system"),
    ({"coordinate_system": "ijk", "cases": {}}, "coordinate_system"),
    ({"coordinate_system": "voxel"}, "cases"),
    ({"coordinate_system": "voxel", "cases": {}, "extra": 1}, "unknown top-level"),
    ({"coordinate_system": "voxel", "cases": {"../evil": {"1": []}}}, "'../evil'"),
    ({"coordinate_system": "voxel", "cases": {"a/b": {"1": []}}}, "'a/b'"),
    ({"coordinate_system": "voxel", "cases": {"c7": {"0": []}}}, "case 'c7', class '0'"),
    ({"coordinate_system": "voxel", "cases": {"c7": {"liver": []}}}, "case 'c7', class 'liver'"),
    ({"coordinate_system": "voxel", "cases": {"c7": {"01": []}}}, "class '01'"),
    ({"coordinate_system": "voxel", "cases": {"c7": {"1": GOOD_CLICK}}}, "case 'c7', class '1'"),
    ({"coordinate_system": "voxel", "cases": {"c7": {"1": [GOOD_CLICK, {"point": [1, 2], "positive": True}]}}},
     "case 'c7', class '1', click 1"),
    ({"coordinate_system": "voxel", "cases": {"c7": {"2": [{"point": [1, "2", 3], "positive": True}]}}},
     "class '2', click 0"),
    ({"coordinate_system": "voxel", "cases": {"c7": {"1": [{"point": [1, 2, 3], "positive": "yes"}]}}},
     "click 0: 'positive'"),
    ({"coordinate_system": "voxel", "cases": {"c7": {"1": [{"point": [1, 2, 3], "positve": True}]}}},
     "click 0: needs exactly"),
    ('{"coordinate_system": "world", "cases": {"c7": {"1": [{"point": [1, NaN, 3], "positive": true}]}}}',
     "case 'c7', class '1', click 0"),
    ('{"coordinate_system": "voxel", "cases": {"c7": {"1": [], "1": []}}}', "duplicate key '1'"),
])
def test_malformed_files_raise_naming_the_file(tmp_path, content, fragment):
    path = _write(tmp_path, content)
    with pytest.raises(ClickFileError) as e:
        read_click_file(path)
    msg = str(e.value)
    assert path in msg, msg
    assert fragment in msg, msg


def test_missing_file_and_invalid_writes(tmp_path):
    with pytest.raises(ClickFileError, match="nothere.json"):
        read_click_file(tmp_path / "nothere.json")
    with pytest.raises(ClickFileError, match=r"case id '\.\.'"):
        write_click_file(tmp_path / "x.json", ClickFile("voxel", {"..": {1: []}}))
    with pytest.raises(ClickFileError, match="coordinate_system"):
        write_click_file(tmp_path / "x.json", ClickFile("mm", {}))
    with pytest.raises(ValueError):
        Click((1.0, float("nan"), 2.0), True)
    assert not os.listdir(tmp_path)  # nothing half-written
    assert validate_case_id("case_001.v2") == "case_001.v2"
    for bad in ("", ".", "a\\b", "x..y"):
        with pytest.raises(ValueError):
            validate_case_id(bad)
