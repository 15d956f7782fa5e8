"""``sam3d-nnunet evaluate`` and sam3d_nnunet.evaluation: NSD against hand counts and the library, Dice
against nnU-Net, empty-case conventions, summary.json / summary.csv, and one clear error per bad input.

Fixtures are tiny label maps (z, y, x) = (6, 12, 16) written with SimpleITK under tmp_path, with anisotropic
spacing (x, y, z) = (0.5, 1.0, 3.0) mm, i.e. (3.0, 1.0, 0.5) in array order.
"""
from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk

import surface_distance
from sam3d_nnunet.cli import main
from sam3d_nnunet.evaluation import (EvaluationError, compute_case_metrics, evaluate_folders, nsd,
                                     nsd_at_tolerances)

SPACING_XYZ = (0.5, 1.0, 3.0)
ARRAY_SPACING = tuple(reversed(SPACING_XYZ))  # (3.0, 1.0, 0.5)
ORIGIN = (10.0, -20.0, 5.0)
SHAPE = (6, 12, 16)
PROG_ERROR = "sam3d-nnunet evaluate: error:"


# ------------------------------------------------------------------------------------------ helpers
def write_seg(path, array, spacing=SPACING_XYZ, origin=ORIGIN, direction=None):
    image = sitk.GetImageFromArray(np.asarray(array))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return str(path)


def write_dataset_json(path, labels=None, **extra):
    dj = {"channel_names": {"0": "CT"}, "labels": labels or {"background": 0, "organ": 1, "tumour": 2},
          "numTraining": 3, "file_ending": ".nii.gz", **extra}
    path.write_text(json.dumps(dj))
    return str(path)


def _cases():
    """Three (reference, prediction) pairs with labels 1 and 2; case 2 has no tumour in either."""
    out = []
    for i in range(3):
        ref = np.zeros(SHAPE, np.uint8)
        pred = np.zeros(SHAPE, np.uint8)
        ref[1:5, 2:10, 3:13] = 1
        pred[1 + (i == 1):5, 2:10 - i, 3 + i:13] = 1
        if i != 2:
            ref[2:4, 4:7, 5:9 + i] = 2
            pred[2:4, 4 + i:7, 5:9] = 2
        out.append((ref, pred))
    return out


@pytest.fixture
def folders(tmp_path):
    ref_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    for i, (ref, pred) in enumerate(_cases()):
        write_seg(ref_dir / f"case_{i:03d}.nii.gz", ref)
        write_seg(pred_dir / f"case_{i:03d}.nii.gz", pred)
    return str(ref_dir), str(pred_dir), write_dataset_json(tmp_path / "dataset.json")


def run_cli(capsys, *args):
    rc = main(["evaluate", *map(str, args), "--no-progress", "-np", "1"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


# ------------------------------------------------------------------------------------------ NSD by hand
def _hand_nsd_shifted_box(H, W, D, spacing, t):
    """NSD of an H x W x D voxel box against itself shifted by one voxel along axis 0, counted by hand.

    surface-distance puts surface elements on the voxel-corner grid: a corner is on the surface iff its
    2x2x2 neighbourhood is mixed; its area is the marching-cubes patch of that neighbourhood: a face point
    (4 of 8 voxels in) s_j*s_k, an edge point along axis i (2 in) s_i*hypot(s_j, s_k)/2, a corner point (1 in)
    sqrt((s1 s2)^2 + (s0 s2)^2 + (s0 s1)^2)/8. Box A spans corners 0..H (axis 0), box B corners 1..H+1.
    For t < 3 mm (the offset along axis 0, s0 = 3), only corner points of B in the SAME axis-0 plane can be
    within t: every lateral point of A in planes 1..H lies on B's lateral surface (distance 0); A's bottom
    rim (plane 0) is >= 3 mm from B; A's top-face interior points (plane H) see B's lateral rim in that
    plane at the in-plane distance to the footprint border. For t >= 3 mm every point is within t.
    By symmetry B's sums equal A's, so NSD = overlap_A / area_A.
    """
    s0, s1, s2 = spacing
    F0, F1, F2 = s1 * s2, s0 * s2, s0 * s1
    E0, E1, E2 = s0 * math.hypot(s1, s2) / 2, s1 * math.hypot(s0, s2) / 2, s2 * math.hypot(s0, s1) / 2
    C = math.sqrt((s1 * s2) ** 2 + (s0 * s2) ** 2 + (s0 * s1) ** 2) / 8
    h, w, d = H - 1, W - 1, D - 1  # interior corner positions per axis
    area = 2 * w * d * F0 + 2 * h * d * F1 + 2 * h * w * F2 + 4 * h * E0 + 4 * w * E1 + 4 * d * E2 + 8 * C
    if t >= s0:
        return 1.0
    on_both = 2 * h * d * F1 + 2 * h * w * F2 + 4 * h * E0 + 2 * w * E1 + 2 * d * E2 + 4 * C
    top_near_rim = sum(1 for i in range(w) for j in range(d)
                       if min(min(i + 1, w - i) * s1, min(j + 1, d - j) * s2) <= t)
    return (on_both + top_near_rim * F0) / area


@pytest.mark.parametrize("t", [0.4, 1.0, 2.0, 2.9, 3.0, 5.0])
def test_nsd_shifted_box_matches_hand_count(t):
    shape, (H, W, D) = (10, 10, 12), (4, 5, 6)
    a = _box(shape, (2, 2, 2), (2 + H, 2 + W, 2 + D))
    b = _box(shape, (3, 2, 2), (3 + H, 2 + W, 2 + D))  # one voxel (3 mm) along axis 0
    expected = _hand_nsd_shifted_box(H, W, D, ARRAY_SPACING, t)
    assert nsd(a, b, ARRAY_SPACING, t) == pytest.approx(expected, abs=1e-12)
    assert nsd(b, a, ARRAY_SPACING, t) == pytest.approx(expected, abs=1e-12)
    if t < 3.0:
        assert expected < 0.9
    # the hand numbers themselves: below the offset a strict fraction, from the offset on exactly 1
    assert (expected == 1.0) == (t >= 3.0)


def test_nsd_at_tolerances_equals_direct_library_calls():
    rng = np.random.default_rng(0)
    a = np.zeros((8, 14, 18), bool)
    b = np.zeros_like(a)
    a[2:6, 3:11, 4:15] = True
    b[1:6, 4:12, 3:13] = True
    a &= rng.random(a.shape) > 0.1
    distances = surface_distance.compute_surface_distances(a, b, ARRAY_SPACING)
    got = nsd_at_tolerances(a, b, ARRAY_SPACING, [0.5, 1, 2, 5])
    for t, value in got.items():
        assert value == surface_distance.compute_surface_dice_at_tolerance(distances, t)


def test_numpy2_shim_is_local_and_one_empty_mask_works():
    a = _box((6, 6, 6), (1, 1, 1), (4, 4, 4))
    empty = np.zeros_like(a)
    # the library's own empty branch (np.Inf) works through the shim ...
    d = surface_distance.compute_surface_distances(a, empty, ARRAY_SPACING)
    assert surface_distance.compute_surface_dice_at_tolerance(d, 1.0) == 0.0
    # ... without putting the removed aliases back into NumPy itself
    if int(np.__version__.split(".")[0]) >= 2:
        assert "Inf" not in vars(np) and "NaN" not in vars(np)


def test_nsd_empty_conventions():
    a = _box((6, 6, 6), (1, 1, 1), (4, 4, 4))
    empty = np.zeros_like(a)
    assert nsd(empty, empty, ARRAY_SPACING, 1.0) == 1.0
    assert math.isnan(nsd(empty, empty, ARRAY_SPACING, 1.0, both_empty=float("nan")))
    assert nsd(a, empty, ARRAY_SPACING, 1.0) == 0.0
    assert nsd(empty, a, ARRAY_SPACING, 100.0) == 0.0
    assert nsd(a, a, ARRAY_SPACING, 0.0) == 1.0
    with pytest.raises(ValueError, match="spacing"):
        nsd(a, a, (1.0, 1.0), 1.0)


# ------------------------------------------------------------------------------------------ folders
def test_per_case_nsd_uses_real_spacing_in_array_order(folders):
    ref_dir, pred_dir, dj = folders
    result = evaluate_folders(ref_dir, pred_dir, dj, tolerances_mm=[1, 2, 5], num_processes=1, progress=False)
    for i, (ref, pred) in enumerate(_cases()):
        case = result["metric_per_case"][i]
        assert case["reference_file"].endswith(f"case_{i:03d}.nii.gz")
        for label in (1, 2):
            if not (ref == label).any():
                continue
            d = surface_distance.compute_surface_distances(ref == label, pred == label, ARRAY_SPACING)
            for t in (1, 2, 5):
                direct = surface_distance.compute_surface_dice_at_tolerance(d, t)
                assert case["metrics"][label][f"NSD@{t}mm"] == pytest.approx(direct, abs=1e-12)
    # the spacing matters here: the x-y-z order would give other values
    d_wrong = surface_distance.compute_surface_distances(_cases()[1][0] == 1, _cases()[1][1] == 1, SPACING_XYZ)
    assert result["metric_per_case"][1]["metrics"][1]["NSD@1mm"] != pytest.approx(
        surface_distance.compute_surface_dice_at_tolerance(d_wrong, 1), abs=1e-6)


def test_dice_equals_nnunet_and_summary_layout(folders, tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder, load_summary_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    ref_dir, pred_dir, dj = folders
    out = str(tmp_path / "out" / "summary.json")
    ours = evaluate_folders(ref_dir, pred_dir, dj, output_file=out, num_processes=1, progress=False)
    theirs = compute_metrics_on_folder(ref_dir, pred_dir, None, SimpleITKIO(), ".nii.gz", [1, 2],
                                       num_processes=1, chill=False)
    nn_keys = ["Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref"]

    def same(a, b):
        return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)

    for case_ours, case_theirs in zip(ours["metric_per_case"], theirs["metric_per_case"]):
        for label in (1, 2):
            for key in nn_keys:
                assert same(case_ours["metrics"][label][key], case_theirs["metrics"][label][key]), (label, key)
    for label in (1, 2):
        for key in nn_keys:
            assert same(ours["mean"][label][key], theirs["mean"][label][key])
    for key in nn_keys:
        assert same(ours["foreground_mean"][key], theirs["foreground_mean"][key])

    # summary.json: nnU-Net's layout, readable with nnU-Net's own loader, NSD keys added
    loaded = load_summary_json(out)
    assert set(loaded) == {"foreground_mean", "mean", "metric_per_case"}
    assert set(loaded["mean"]) == {1, 2}
    assert len(loaded["metric_per_case"]) == 3
    for case in loaded["metric_per_case"]:
        assert set(case) == {"reference_file", "prediction_file", "metrics"}
        for label in (1, 2):
            assert set(nn_keys + ["NSD@1mm", "NSD@2mm", "NSD@5mm"]) == set(case["metrics"][label])
    assert {"Dice", "NSD@1mm", "NSD@2mm", "NSD@5mm"} <= set(loaded["foreground_mean"])

    # summary.csv next to it: one row per case and class
    with open(tmp_path / "out" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2
    assert list(rows[0]) == ["case", "class", "class_name", "Dice", "IoU", "NSD@1mm", "NSD@2mm", "NSD@5mm",
                             "n_ref", "n_pred"]
    assert {(r["case"], r["class"]) for r in rows} == {(f"case_{i:03d}", c) for i in range(3) for c in "12"}
    row = next(r for r in rows if r["case"] == "case_001" and r["class"] == "1")
    assert float(row["Dice"]) == pytest.approx(ours["metric_per_case"][1]["metrics"][1]["Dice"])
    assert row["class_name"] == "organ"
    assert sorted(os.listdir(tmp_path / "out")) == ["summary.csv", "summary.json"]  # no temp files left


def test_empty_cases_follow_the_convention(folders):
    ref_dir, pred_dir, dj = folders
    result = evaluate_folders(ref_dir, pred_dir, dj, tolerances_mm=[1], num_processes=1, progress=False)
    both_empty = result["metric_per_case"][2]["metrics"][2]  # no tumour in reference nor prediction
    assert math.isnan(both_empty["Dice"]) and math.isnan(both_empty["IoU"])
    assert both_empty["NSD@1mm"] == 1.0
    assert both_empty["n_ref"] == both_empty["n_pred"] == 0
    # means: nnU-Net's nanmean leaves the NaN Dice out; the NSD of 1 counts
    per_case = [c["metrics"][2] for c in result["metric_per_case"]]
    assert result["mean"][2]["Dice"] == pytest.approx(np.mean([c["Dice"] for c in per_case[:2]]))
    assert result["mean"][2]["NSD@1mm"] == pytest.approx(np.mean([c["NSD@1mm"] for c in per_case]))


def test_empty_vs_nonempty(tmp_path):
    ref_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    ref_dir.mkdir(), pred_dir.mkdir()
    ref = np.zeros(SHAPE, np.uint8)
    ref[1:4, 2:6, 3:9] = 1
    write_seg(ref_dir / "a.nii.gz", ref)
    write_seg(pred_dir / "a.nii.gz", np.zeros(SHAPE, np.uint8))       # missed entirely
    write_seg(ref_dir / "b.nii.gz", np.zeros(SHAPE, np.uint8))
    write_seg(pred_dir / "b.nii.gz", ref)                              # false positive only
    dj = write_dataset_json(tmp_path / "dataset.json", {"background": 0, "organ": 1})
    result = evaluate_folders(str(ref_dir), str(pred_dir), dj, tolerances_mm=[1, 5], num_processes=1,
                              progress=False)
    for case in result["metric_per_case"]:
        m = case["metrics"][1]
        assert m["Dice"] == 0.0 and m["NSD@1mm"] == 0.0 and m["NSD@5mm"] == 0.0


def test_regions_and_ignore_label(tmp_path):
    ref_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    ref_dir.mkdir(), pred_dir.mkdir()
    ref, pred = _cases()[0]
    ref = ref.copy()
    ref[0] = 3  # ignore label on the first slice
    pred = pred.copy()
    pred[0, :, :4] = 1  # prediction inside the ignored slice: left out of Dice and NSD
    write_seg(ref_dir / "a.nii.gz", ref)
    write_seg(pred_dir / "a.nii.gz", pred)
    dj = write_dataset_json(tmp_path / "dataset.json",
                            {"background": 0, "whole": [1, 2], "tumour": 2, "ignore": 3},
                            regions_class_order=[1, 2])
    result = evaluate_folders(str(ref_dir), str(pred_dir), dj, tolerances_mm=[2], num_processes=1,
                              progress=False)
    metrics = result["metric_per_case"][0]["metrics"]
    assert set(metrics) == {(1, 2), 2}  # nnU-Net keeps a scalar entry a label
    keep = ref != 3
    whole_ref, whole_pred = ref > 0, (pred > 0) & keep
    whole_ref &= keep
    tp = (whole_ref & whole_pred).sum()
    assert metrics[(1, 2)]["Dice"] == pytest.approx(2 * tp / (whole_ref.sum() + whole_pred.sum()))
    assert metrics[(1, 2)]["NSD@2mm"] == pytest.approx(nsd(whole_ref, whole_pred, ARRAY_SPACING, 2))


def test_multiprocessing_gives_the_same_result(folders):
    ref_dir, pred_dir, dj = folders
    one = evaluate_folders(ref_dir, pred_dir, dj, num_processes=1, progress=False)
    two = evaluate_folders(ref_dir, pred_dir, dj, num_processes=2, progress=False)
    assert json.dumps(one, sort_keys=True, default=str) == json.dumps(two, sort_keys=True, default=str)


# ------------------------------------------------------------------------------------------ command
def test_cli_writes_summary_and_csv(folders, tmp_path, capsys):
    ref_dir, pred_dir, dj = folders
    rc, out, err = run_cli(capsys, "-ref", ref_dir, "-pred", pred_dir, "-djfile", dj, "--nsd-tolerance", "1", "2.5")
    assert rc == 0, err
    assert "NSD@2.5mm" in out and "foreground" in out
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert {"NSD@1mm", "NSD@2.5mm"} <= set(summary["foreground_mean"])
    assert (tmp_path / "pred" / "summary.csv").is_file()
    # nnUNetv2_evaluate_folder's positional form and -o
    rc, _, err = run_cli(capsys, ref_dir, pred_dir, "-djfile", dj, "-o", tmp_path / "x" / "s.json")
    assert rc == 0, err
    assert (tmp_path / "x" / "s.json").is_file() and (tmp_path / "x" / "s.csv").is_file()


def test_cli_missing_prediction(folders, capsys):
    ref_dir, pred_dir, dj = folders
    os.remove(os.path.join(pred_dir, "case_001.nii.gz"))
    rc, _, err = run_cli(capsys, "-ref", ref_dir, "-pred", pred_dir, "-djfile", dj)
    assert rc == 1
    assert err.startswith(PROG_ERROR) and "prediction missing" in err
    assert os.path.join(pred_dir, "case_001.nii.gz") in err
    assert "Traceback" not in err
    rc, _, err = run_cli(capsys, "-ref", ref_dir, "-pred", pred_dir, "-djfile", dj, "--chill")
    assert rc == 0, err
    summary = json.loads(open(os.path.join(pred_dir, "summary.json")).read())
    assert len(summary["metric_per_case"]) == 2


def test_cli_corrupt_file(folders, capsys):
    ref_dir, pred_dir, dj = folders
    bad = os.path.join(pred_dir, "case_002.nii.gz")
    with open(bad, "wb") as f:
        f.write(b"\x1f\x8b not really a gzip file")
    rc, _, err = run_cli(capsys, "-ref", ref_dir, "-pred", pred_dir, "-djfile", dj)
    assert rc == 1
    assert err.startswith(PROG_ERROR) and "cannot read" in err and bad in err
    assert "Traceback" not in err
    assert not os.path.exists(os.path.join(pred_dir, "summary.json"))


@pytest.mark.parametrize("change, what", [
    (dict(array=np.zeros((6, 12, 15), np.uint8)), "size"),
    (dict(spacing=(0.5, 1.0, 2.5)), "spacing"),
    (dict(origin=(10.0, -20.0, 8.0)), "origin"),
    (dict(direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)), "direction"),
])
def test_cli_geometry_mismatch(folders, capsys, change, what):
    ref_dir, pred_dir, dj = folders
    bad = os.path.join(pred_dir, "case_000.nii.gz")
    array = change.pop("array", _cases()[0][1])
    write_seg(bad, array, **change)
    rc, _, err = run_cli(capsys, "-ref", ref_dir, "-pred", pred_dir, "-djfile", dj)
    assert rc == 1
    assert err.startswith(PROG_ERROR) and "geometry mismatch" in err and what in err
    assert bad in err and os.path.join(ref_dir, "case_000.nii.gz") in err


def test_geometry_within_tolerance_is_accepted(folders):
    ref_dir, pred_dir, dj = folders
    write_seg(os.path.join(pred_dir, "case_000.nii.gz"), _cases()[0][1],
              spacing=(0.5 * (1 + 1e-6), 1.0, 3.0), origin=(10.0 + 1e-5, -20.0, 5.0))
    evaluate_folders(ref_dir, pred_dir, dj, num_processes=1, progress=False)


def test_cli_unknown_label_value(folders, capsys):
    ref_dir, pred_dir, dj = folders
    bad = os.path.join(pred_dir, "case_001.nii.gz")
    pred = _cases()[1][1].copy()
    pred[0, 0, 0] = 7
    write_seg(bad, pred)
    rc, _, err = run_cli(capsys, "-ref", ref_dir, "-pred", pred_dir, "-djfile", dj)
    assert rc == 1
    assert err.startswith(PROG_ERROR) and bad in err and "label value(s) 7" in err and "dataset.json" in err


def test_cli_bad_dataset_json_and_folders(tmp_path, folders, capsys):
    ref_dir, pred_dir, _ = folders
    rc, _, err = run_cli(capsys, "-ref", ref_dir, "-pred", pred_dir, "-djfile", tmp_path / "nope.json")
    assert rc == 1 and err.startswith(PROG_ERROR) and "nope.json" in err
    rc, _, err = run_cli(capsys, "-ref", tmp_path / "missing", "-pred", pred_dir, "-djfile",
                         tmp_path / "dataset.json")
    assert rc == 1 and err.startswith(PROG_ERROR) and "missing" in err
    rc, _, err = run_cli(capsys, "-pred", pred_dir, "-djfile", tmp_path / "dataset.json")
    assert rc == 1 and err.startswith(PROG_ERROR) and "reference" in err


def test_compute_case_metrics_reports_missing_file(folders):
    ref_dir, _, _ = folders
    with pytest.raises(EvaluationError, match="file not found: .*nowhere.nii.gz"):
        compute_case_metrics(os.path.join(ref_dir, "case_000.nii.gz"), "/nowhere.nii.gz", [1])


def test_cli_prediction_without_reference(folders, capsys):
    ref_dir, pred_dir, dj = folders
    extra = write_seg(os.path.join(pred_dir, "case_999.nii.gz"), _cases()[0][1])
    rc, _, err = run_cli(capsys, "-ref", ref_dir, "-pred", pred_dir, "-djfile", dj)
    assert rc == 1 and err.startswith(PROG_ERROR) and "without a reference" in err and extra in err
    rc, _, err = run_cli(capsys, "-ref", ref_dir, "-pred", pred_dir, "-djfile", dj, "--chill")
    assert rc == 0, err
