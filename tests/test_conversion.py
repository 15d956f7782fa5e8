"""Dataset conversion: KiTS21, LiTS and MSD layouts -> nnU-Net raw format; split.pkl -> splits_final.json.

Fixtures are tiny synthetic datasets written in each ORIGINAL layout under tmp_path (16 x 20 x 24 voxels,
anisotropic spacing, non-trivial origin and direction).
"""
from __future__ import annotations

import gzip
import json
import os
import pickle

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from sam3d_nnunet.conversion import (ConversionError, convert_kits21, convert_lits, convert_msd, convert_splits,
                                     load_split_pickle)
from sam3d_nnunet.conversion.splits import map_case

SHAPE_ZYX = (16, 20, 24)
SPACING = (0.8, 0.75, 2.5)              # x, y, z
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # a 90 degree in-plane rotation


# ----------------------------------------------------------------------------------------------- helpers
@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    paths = {}
    for var, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        paths[var] = str(tmp_path / "nnunet" / sub)
        os.makedirs(paths[var])
        monkeypatch.setenv(var, paths[var])
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")
    return paths


def _arrays(seed: int, labels=(1, 2, 3)):
    """(CT-like int16 image, label) in (z, y, x): organ 1 box, tumour 2 blob inside it, cyst 3 elsewhere."""
    rng = np.random.default_rng(seed)
    img = rng.integers(-200, 300, SHAPE_ZYX).astype(np.int16)
    lab = np.zeros(SHAPE_ZYX, np.uint8)
    if 1 in labels:
        lab[3:13, 4:16, 5:19] = 1
    if 2 in labels:
        lab[5:9 + seed % 3, 6:10, 7:12] = 2
    if 3 in labels:
        lab[12:15, 15:18, 19:22] = 3
    return img, lab


def _sitk(arr, spacing=SPACING, origin=(-10.0, 20.0, 30.0), direction=DIRECTION):
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(spacing)
    im.SetOrigin(origin)
    im.SetDirection(direction)
    return im


def make_kits21(root, n=3):
    cases = {}
    for i in range(n):
        d = root / f"case_{i:05d}"
        d.mkdir(parents=True)
        img, lab = _arrays(i)
        origin = (-10.0 - i, 20.0, 30.0 + 2 * i)
        sitk.WriteImage(_sitk(img, origin=origin), str(d / "imaging.nii.gz"))
        sitk.WriteImage(_sitk(lab, origin=origin), str(d / "aggregated_MAJ_seg.nii.gz"))
        cases[d.name] = (img, lab)
    return cases


def _affine(i):
    """A RAS affine with anisotropic spacing, an axis flip and a rotation (no shear)."""
    a = np.zeros((4, 4))
    a[:3, 0] = [0.0, -0.7, 0.0]
    a[:3, 1] = [-0.7, 0.0, 0.0]
    a[:3, 2] = [0.0, 0.0, 1.5 + 0.5 * i]
    a[:3, 3] = [100.0 + i, -50.0, -300.5]
    a[3, 3] = 1
    return a


def make_lits(root, numbers=(0, 1, 3)):
    cases = {}
    for k, n in enumerate(numbers):
        d = root / f"Training Batch {1 + k % 2}"
        d.mkdir(parents=True, exist_ok=True)
        img, lab = _arrays(n, labels=(1, 2))
        # nibabel arrays are (i, j, k) = (x, y, z)
        nib.save(nib.Nifti1Image(img.transpose(2, 1, 0), _affine(n)), str(d / f"volume-{n}.nii"))
        nib.save(nib.Nifti1Image(lab.transpose(2, 1, 0).astype(np.float32), _affine(n)),
                 str(d / f"segmentation-{n}.nii"))
        cases[f"lits_{n:04d}"] = (img, lab, d / f"volume-{n}.nii")
    return cases


def make_msd(root, task="Task07_Pancreas", labels=None, n=3, n_test=1):
    labels = labels or {"0": "background", "1": "pancreas", "2": "cancer"}
    prefix = task.split("_")[1].lower()
    folder = root / task
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True)
    training, cases = [], {}
    values = tuple(int(k) for k in labels if int(k) > 0)
    for i in range(n + n_test):
        case = f"{prefix}_{i + 1:03d}"
        img, lab = _arrays(i, labels=values)
        if i < n:
            sitk.WriteImage(_sitk(img), str(folder / "imagesTr" / f"{case}.nii.gz"))
            sitk.WriteImage(_sitk(lab), str(folder / "labelsTr" / f"{case}.nii.gz"))
            training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
            cases[case] = (img, lab)
        else:
            sitk.WriteImage(_sitk(img), str(folder / "imagesTs" / f"{case}.nii.gz"))
    js = {"name": task.split("_")[1], "description": "synthetic", "reference": "test", "licence": "CC-BY-SA 4.0",
          "release": "1.0", "tensorImageSize": "3D", "modality": {"0": "CT"}, "labels": labels,
          "numTraining": n, "numTest": n_test, "training": training,
          "test": [f"./imagesTs/{prefix}_{i + 1:03d}.nii.gz" for i in range(n, n + n_test)]}
    (folder / "dataset.json").write_text(json.dumps(js))
    return folder, cases


def verify(target):
    """nnU-Net's own integrity check, its worker pool forked instead of spawned (saves ~3 s of imports)."""
    import multiprocessing
    import types

    import nnunetv2.experiment_planning.verify_dataset_integrity as vdi
    real = vdi.multiprocessing
    vdi.multiprocessing = types.SimpleNamespace(get_context=lambda method: multiprocessing.get_context("fork"))
    try:
        vdi.verify_dataset_integrity(target, 1)
    finally:
        vdi.multiprocessing = real


def read(path):
    im = sitk.ReadImage(str(path))
    return im, sitk.GetArrayFromImage(im)


def assert_same_geometry(a, b):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def dataset_json(target):
    with open(os.path.join(target, "dataset.json")) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------------- KiTS21
def test_kits21_full_and_tumour_only(tmp_path, nnunet_env):
    src = tmp_path / "kits21"
    cases = make_kits21(src)
    target = convert_kits21(str(src), 501)
    assert os.path.basename(target) == "Dataset501_KiTS21"
    verify(target)
    js = dataset_json(target)
    assert js["labels"] == {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
    assert js["channel_names"] == {"0": "CT"} and js["numTraining"] == 3 and js["file_ending"] == ".nii.gz"
    for case, (img, lab) in cases.items():
        src_img = sitk.ReadImage(str(src / case / "imaging.nii.gz"))
        out_img, out_arr = read(os.path.join(target, "imagesTr", f"{case}_0000.nii.gz"))
        out_lab, out_lab_arr = read(os.path.join(target, "labelsTr", f"{case}.nii.gz"))
        assert_same_geometry(out_img, src_img)
        assert_same_geometry(out_lab, src_img)
        np.testing.assert_array_equal(out_arr, img)
        np.testing.assert_array_equal(out_lab_arr, lab)

    tumour = convert_kits21(str(src), 502, tumour_only=True)
    assert os.path.basename(tumour) == "Dataset502_KiTS21Tumour"
    assert dataset_json(tumour)["labels"] == {"background": 0, "tumor": 1}
    for case, (img, lab) in cases.items():
        out_lab, arr = read(os.path.join(tumour, "labelsTr", f"{case}.nii.gz"))
        assert set(np.unique(arr)) == {0, 1}
        np.testing.assert_array_equal(arr == 1, lab == 2)
        assert_same_geometry(out_lab, sitk.ReadImage(str(src / case / "imaging.nii.gz")))
    verify(tumour)


def test_kits21_rerun_skips_done_cases_and_refuses_changed_settings(tmp_path, nnunet_env, capsys):
    src = tmp_path / "kits21"
    make_kits21(src)
    target = convert_kits21(str(src), 503)
    files = {f: os.stat(os.path.join(target, "imagesTr", f)).st_mtime_ns
             for f in os.listdir(os.path.join(target, "imagesTr"))}
    os.remove(os.path.join(target, "labelsTr", "case_00001.nii.gz"))   # as if interrupted during case 1
    capsys.readouterr()
    convert_kits21(str(src), 503)
    assert "2 of 3 cases already converted, skipped" in capsys.readouterr().out
    after = {f: os.stat(os.path.join(target, "imagesTr", f)).st_mtime_ns for f in files}
    assert after["case_00000_0000.nii.gz"] == files["case_00000_0000.nii.gz"]
    assert after["case_00002_0000.nii.gz"] == files["case_00002_0000.nii.gz"]
    assert os.path.isfile(os.path.join(target, "labelsTr", "case_00001.nii.gz"))
    assert not [f for f in os.listdir(target) if f.startswith(".partial-")]
    with pytest.raises(ConversionError, match="different settings"):
        convert_kits21(str(src), 503, name="KiTS21", tumour_only=True)
    with pytest.raises(ConversionError, match="already used by"):
        convert_kits21(str(src), 503, name="Other")


def test_interrupted_conversion_leaves_no_partial_files(tmp_path, nnunet_env, monkeypatch):
    import sam3d_nnunet.conversion.common as common
    src = tmp_path / "kits21"
    make_kits21(src)
    real_write = sitk.WriteImage

    def crash_after_partial_write(image, path, *args):
        if "case_00001" in os.path.basename(path):
            with open(path, "wb") as f:  # half a file under the temporary name, then "power cut"
                f.write(b"\x1f\x8b partial")
            raise KeyboardInterrupt
        return real_write(image, path, *args)

    monkeypatch.setattr(sitk, "WriteImage", crash_after_partial_write)
    with pytest.raises(KeyboardInterrupt):
        convert_kits21(str(src), 504)
    target = os.path.join(nnunet_env["nnUNet_raw"], "Dataset504_KiTS21")
    assert sorted(os.listdir(os.path.join(target, "labelsTr"))) == ["case_00000.nii.gz"]
    assert not os.path.exists(os.path.join(target, "dataset.json"))
    assert not [f for f in os.listdir(target) if f.startswith(common.STAGING_PREFIX)]
    monkeypatch.setattr(sitk, "WriteImage", real_write)
    verify(convert_kits21(str(src), 504))


def test_kits21_with_worker_processes(tmp_path, nnunet_env):
    src = tmp_path / "kits21"
    cases = make_kits21(src, n=4)
    target = convert_kits21(str(src), 507, num_processes=2)
    assert sorted(os.listdir(os.path.join(target, "labelsTr"))) == [f"{c}.nii.gz" for c in sorted(cases)]
    lab_path = src / "case_00002" / "aggregated_MAJ_seg.nii.gz"
    lab = sitk.ReadImage(str(lab_path))
    lab.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(lab, str(lab_path))
    with pytest.raises(ConversionError, match=r"case case_00002: image/label geometry mismatch"):
        convert_kits21(str(src), 508, num_processes=2)  # a worker's error reaches the caller
    assert not [f for f in os.listdir(os.path.join(nnunet_env["nnUNet_raw"], "Dataset508_KiTS21"))
                if f.startswith(".partial-")]


@pytest.mark.parametrize("breakage, pattern", [
    ("missing_label", r"case case_00001: label file missing: .*aggregated_MAJ_seg"),
    ("spacing", r"case case_00001: image/label geometry mismatch \(spacing"),
    ("origin", r"case case_00001: image/label geometry mismatch \(origin"),
    ("direction", r"case case_00001: image/label geometry mismatch \(direction"),
    ("size", r"case case_00001: image/label geometry mismatch \(size"),
    ("label_value", r"case case_00001: unexpected label value\(s\) \[7\] in .*aggregated_MAJ_seg"),
    ("corrupt", r"case case_00001: cannot read image .*case_00001.*imaging.nii.gz"),
])
def test_kits21_broken_inputs_name_the_case(tmp_path, nnunet_env, breakage, pattern):
    src = tmp_path / "kits21"
    make_kits21(src)
    d = src / "case_00001"
    lab_path, img_path = str(d / "aggregated_MAJ_seg.nii.gz"), str(d / "imaging.nii.gz")
    lab = sitk.ReadImage(lab_path)
    arr = sitk.GetArrayFromImage(lab)
    if breakage == "missing_label":
        os.remove(lab_path)
    elif breakage == "spacing":
        lab.SetSpacing((0.8, 0.75, 3.0))
        sitk.WriteImage(lab, lab_path)
    elif breakage == "origin":
        lab.SetOrigin((0.0, 0.0, 0.0))
        sitk.WriteImage(lab, lab_path)
    elif breakage == "direction":
        lab.SetDirection((1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
        sitk.WriteImage(lab, lab_path)
    elif breakage == "size":
        sitk.WriteImage(_sitk(arr[:-1], spacing=lab.GetSpacing(), origin=lab.GetOrigin()), lab_path)
    elif breakage == "label_value":
        arr[0, 0, 0] = 7
        bad = sitk.GetImageFromArray(arr)
        bad.CopyInformation(lab)
        sitk.WriteImage(bad, lab_path)
    elif breakage == "corrupt":
        data = open(img_path, "rb").read()
        with open(img_path, "wb") as f:
            f.write(data[: len(data) // 2])
    with pytest.raises(ConversionError, match=pattern):
        convert_kits21(str(src), 505)
    target = os.path.join(nnunet_env["nnUNet_raw"], "Dataset505_KiTS21")
    assert not os.path.exists(os.path.join(target, "labelsTr", "case_00001.nii.gz"))
    assert not os.path.exists(os.path.join(target, "dataset.json"))


def test_small_header_differences_within_tolerance_are_accepted(tmp_path, nnunet_env):
    src = tmp_path / "kits21"
    make_kits21(src, n=1)
    lab_path = str(src / "case_00000" / "aggregated_MAJ_seg.nii.gz")
    lab = sitk.ReadImage(lab_path)
    lab.SetOrigin(tuple(o + 2e-4 for o in lab.GetOrigin()))
    sitk.WriteImage(lab, lab_path)
    target = convert_kits21(str(src), 506)
    out_lab = sitk.ReadImage(os.path.join(target, "labelsTr", "case_00000.nii.gz"))
    # the label is written with the image's geometry, so nnU-Net sees them equal
    assert out_lab.GetOrigin() == sitk.ReadImage(str(src / "case_00000" / "imaging.nii.gz")).GetOrigin()


# ------------------------------------------------------------------------------------------------------ LiTS
def test_lits_plain_nii_full_and_tumour_only(tmp_path, nnunet_env):
    src = tmp_path / "LiTS"
    cases = make_lits(src)
    target = convert_lits(str(src), 511)
    assert os.path.basename(target) == "Dataset511_LiTS"
    verify(target)
    assert dataset_json(target)["labels"] == {"background": 0, "liver": 1, "tumor": 2}
    assert sorted(os.listdir(os.path.join(target, "labelsTr"))) == [f"{c}.nii.gz" for c in sorted(cases)]
    for case, (img, lab, volume) in cases.items():
        out_img, out_arr = read(os.path.join(target, "imagesTr", f"{case}_0000.nii.gz"))
        out_lab, out_lab_arr = read(os.path.join(target, "labelsTr", f"{case}.nii.gz"))
        # geometry equal to the source as SimpleITK reads it (it can read these well-formed files)
        assert_same_geometry(out_img, sitk.ReadImage(str(volume)))
        assert_same_geometry(out_lab, out_img)
        assert out_arr.dtype == np.int16
        np.testing.assert_array_equal(out_arr, img)
        np.testing.assert_array_equal(out_lab_arr, lab)
    n = int(case.split("_")[1])
    np.testing.assert_allclose(out_img.GetSpacing(), (0.7, 0.7, 1.5 + 0.5 * n))

    tumour = convert_lits(str(src), 512, tumour_only=True)
    assert dataset_json(tumour)["labels"] == {"background": 0, "tumor": 1}
    for case, (img, lab, volume) in cases.items():
        _, arr = read(os.path.join(tumour, "labelsTr", f"{case}.nii.gz"))
        assert set(np.unique(arr)) == {0, 1}
        np.testing.assert_array_equal(arr == 1, lab == 2)
    verify(tumour)


def test_lits_file_simpleitk_refuses_is_read_with_nibabel(tmp_path, nnunet_env):
    src = tmp_path / "LiTS"
    make_lits(src, numbers=(5,))
    vol = src / "Training Batch 1" / "volume-5.nii"
    img = nib.load(str(vol), mmap=False)
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] @ (np.eye(3) + 1e-4 * np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0]]))
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), affine), str(vol))  # not quite orthonormal
    seg = src / "Training Batch 1" / "segmentation-5.nii"
    s = nib.load(str(seg), mmap=False)
    nib.save(nib.Nifti1Image(np.asanyarray(s.dataobj), affine), str(seg))
    with pytest.raises(RuntimeError, match="orthonormal"):
        sitk.ReadImage(str(vol))  # what nnU-Net's SimpleITK reader would hit
    target = convert_lits(str(src), 513)
    out = sitk.ReadImage(os.path.join(target, "imagesTr", "lits_0005_0000.nii.gz"))
    np.testing.assert_allclose(out.GetSpacing(), (0.7, 0.7, 4.0), rtol=1e-4)
    np.testing.assert_allclose(out.GetDirection(), (0, 1, 0, 1, 0, 0, 0, 0, 1), atol=1e-3)  # RAS -> LPS
    np.testing.assert_allclose(out.GetOrigin(), (-105.0, 50.0, -300.5), atol=1e-4)
    verify(target)


@pytest.mark.parametrize("breakage, pattern", [
    ("missing_label", r"case lits_0001: label file missing: no segmentation-1.nii"),
    ("geometry", r"case lits_0001: image/label geometry mismatch \(spacing"),
    ("label_value", r"case lits_0001: unexpected label value\(s\) \[3\] in .*segmentation-1.nii"),
    ("corrupt", r"case lits_0001: cannot read image .*volume-1.nii"),
    ("garbage", r"case lits_0001: cannot read image .*volume-1.nii"),
])
def test_lits_broken_inputs_name_the_case(tmp_path, nnunet_env, breakage, pattern):
    src = tmp_path / "LiTS"
    make_lits(src)
    d = src / "Training Batch 2"
    seg, vol = d / "segmentation-1.nii", d / "volume-1.nii"
    if breakage == "missing_label":
        os.remove(seg)
    elif breakage == "geometry":
        s = nib.load(str(seg), mmap=False)
        a = s.affine.copy()
        a[2, 2] = 9.0
        nib.save(nib.Nifti1Image(np.asanyarray(s.dataobj), a), str(seg))
    elif breakage == "label_value":
        s = nib.load(str(seg), mmap=False)
        arr = np.asanyarray(s.dataobj).copy()
        arr[0, 0, 0] = 3
        nib.save(nib.Nifti1Image(arr, s.affine), str(seg))
    elif breakage == "corrupt":
        data = vol.read_bytes()
        vol.write_bytes(data[: len(data) // 2])
    elif breakage == "garbage":
        vol.write_bytes(b"this is not a nifti file" * 20)
    with pytest.raises(ConversionError, match=pattern):
        convert_lits(str(src), 514)


# ------------------------------------------------------------------------------------------------------- MSD
def test_msd_pancreas_full_tumour_only_and_test_images(tmp_path, nnunet_env):
    folder, cases = make_msd(tmp_path)
    target = convert_msd(str(folder), 521)
    assert os.path.basename(target) == "Dataset521_Pancreas"
    verify(target)
    js = dataset_json(target)
    assert js["labels"] == {"background": 0, "pancreas": 1, "cancer": 2}
    assert js["channel_names"] == {"0": "CT"} and js["numTraining"] == 3
    assert os.listdir(os.path.join(target, "imagesTs")) == ["pancreas_004_0000.nii.gz"]
    for case, (img, lab) in cases.items():
        out_img, arr = read(os.path.join(target, "imagesTr", f"{case}_0000.nii.gz"))
        out_lab, lab_arr = read(os.path.join(target, "labelsTr", f"{case}.nii.gz"))
        assert_same_geometry(out_img, sitk.ReadImage(str(folder / "imagesTr" / f"{case}.nii.gz")))
        assert_same_geometry(out_lab, out_img)
        np.testing.assert_array_equal(arr, img)
        np.testing.assert_array_equal(lab_arr, lab)

    tumour = convert_msd(str(folder), 522, tumour_only=True)
    assert os.path.basename(tumour) == "Dataset522_PancreasTumour"
    assert dataset_json(tumour)["labels"] == {"background": 0, "cancer": 1}
    for case, (img, lab) in cases.items():
        _, arr = read(os.path.join(tumour, "labelsTr", f"{case}.nii.gz"))
        assert set(np.unique(arr)) == {0, 1}
        np.testing.assert_array_equal(arr == 1, lab == 2)
    verify(tumour)


def test_msd_colon_single_tumour_label_and_tumour_label_choice(tmp_path, nnunet_env):
    colon, cases = make_msd(tmp_path, "Task10_Colon", {"0": "background", "1": "colon cancer primaries"}, n_test=0)
    target = convert_msd(str(colon), 523, tumour_only=True)
    assert dataset_json(target)["labels"] == {"background": 0, "colon cancer primaries": 1}
    for case, (img, lab) in cases.items():
        _, arr = read(os.path.join(target, "labelsTr", f"{case}.nii.gz"))
        np.testing.assert_array_equal(arr, lab == 1)

    hippo, cases = make_msd(tmp_path, "Task04_Hippocampus",
                            {"0": "background", "1": "Anterior", "2": "Posterior"}, n=2, n_test=0)
    with pytest.raises(ConversionError, match="--tumour-label"):
        convert_msd(str(hippo), 524, tumour_only=True)
    target = convert_msd(str(hippo), 524, tumour_only=True, tumour_label=2)
    assert dataset_json(target)["labels"] == {"background": 0, "Posterior": 1}


@pytest.mark.parametrize("breakage, pattern", [
    ("missing_label", r"case pancreas_002: label file missing: .*labelsTr/pancreas_002.nii.gz"),
    ("geometry", r"case pancreas_002: image/label geometry mismatch \(origin"),
    ("label_value", r"case pancreas_002: unexpected label value\(s\) \[4\]"),
    ("corrupt", r"case pancreas_002: cannot read image .*imagesTr/pancreas_002.nii.gz"),
])
def test_msd_broken_inputs_name_the_case(tmp_path, nnunet_env, breakage, pattern):
    folder, _ = make_msd(tmp_path)
    lab_path, img_path = folder / "labelsTr" / "pancreas_002.nii.gz", folder / "imagesTr" / "pancreas_002.nii.gz"
    if breakage == "missing_label":
        os.remove(lab_path)
    elif breakage in ("geometry", "label_value"):
        lab = sitk.ReadImage(str(lab_path))
        if breakage == "geometry":
            lab.SetOrigin((1.0, 2.0, 3.0))
        else:
            arr = sitk.GetArrayFromImage(lab)
            arr[1, 1, 1] = 4
            new = sitk.GetImageFromArray(arr)
            new.CopyInformation(lab)
            lab = new
        sitk.WriteImage(lab, str(lab_path))
    elif breakage == "corrupt":
        with gzip.open(img_path, "rb") as f:
            raw = f.read()
        with gzip.open(img_path, "wb") as f:
            f.write(raw[:400])
    with pytest.raises(ConversionError, match=pattern):
        convert_msd(str(folder), 525)


# ---------------------------------------------------------------------------------------------------- splits
def _five_folds(names):
    """The method's layout: 5 folds, test = every 5th case, val = 1 of the rest, train the others."""
    folds = []
    for k in range(5):
        test = names[k::5]
        rest = [n for n in names if n not in test]
        folds.append({"train": rest[1:], "val": rest[:1], "test": test})
    return folds


def test_splits_from_kits_and_lits_names(tmp_path, nnunet_env):
    kits = tmp_path / "kits21"
    make_kits21(kits, n=7)
    convert_kits21(str(kits), 531)
    names = [f"case_{i:05d}" for i in range(7)]
    folds = _five_folds(names)
    # the reference implementation stores {key: (image path, label path)} per part
    folds[0]["train"] = {i: (f"/{n}/imaging.nii.gz", f"/{n}/aggregated_MAJ_seg.nii.gz")
                         for i, n in enumerate(folds[0]["train"])}
    pkl = tmp_path / "split.pkl"
    pkl.write_bytes(pickle.dumps(folds))
    out = convert_splits(str(pkl), 531)
    assert out == os.path.join(nnunet_env["nnUNet_preprocessed"], "Dataset531_KiTS21", "splits_final.json")
    with open(out) as f:
        splits = json.load(f)
    expected = _five_folds(names)
    assert len(splits) == 5
    for k in range(5):
        assert splits[k]["val"] == sorted(expected[k]["test"])
        assert splits[k]["train"] == sorted(expected[k]["train"] + expected[k]["val"])
    assert sorted(sum((s["val"] for s in splits), [])) == names
    # nnU-Net's own loader accepts it
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    assert maybe_convert_to_dataset_name(531) == "Dataset531_KiTS21"
    assert convert_splits(str(pkl), 531) == out  # identical rerun is fine

    lits = tmp_path / "LiTS"
    make_lits(lits, numbers=(0, 1, 2, 3, 4, 12))
    convert_lits(str(lits), 532)
    lits_names = ["volume-0.nii", "Training Batch 1/volume-1.nii", "/data/segmentation-2.nii", "volume-3",
                  "lits_0004", "volume-12.nii.gz"]
    pkl2 = tmp_path / "lits_split.pkl"
    pkl2.write_bytes(pickle.dumps(_five_folds(lits_names), protocol=0))
    with open(convert_splits(str(pkl2), 532)) as f:
        splits = json.load(f)
    assert splits[0]["val"] == ["lits_0000", "lits_0012"]
    assert sorted(sum((s["val"] for s in splits), [])) == [f"lits_{n:04d}" for n in (0, 1, 2, 3, 4, 12)]


def test_split_name_mapping():
    ids = {"case_00012", "lits_0012", "pancreas_001"}
    assert map_case("case_00012", ids) == "case_00012"
    assert map_case("/case_00012/imaging.nii.gz", ids) == "case_00012"
    assert map_case("case_12", ids) == "case_00012"
    assert map_case("volume-12.nii", ids) == "lits_0012"
    assert map_case("C:\\LiTS\\Training Batch 1\\segmentation-12.nii", ids) == "lits_0012"
    assert map_case("./imagesTr/pancreas_001.nii.gz", ids) == "pancreas_001"
    assert map_case("pancreas_001_0000.nii.gz", ids) == "pancreas_001"
    assert map_case("pancreas_002", ids) is None


def test_splits_validation_errors(tmp_path, nnunet_env):
    kits = tmp_path / "kits21"
    make_kits21(kits, n=5)
    convert_kits21(str(kits), 533)
    names = [f"case_{i:05d}" for i in range(5)]
    pkl = tmp_path / "split.pkl"

    def check(folds, pattern):
        pkl.write_bytes(pickle.dumps(folds))
        with pytest.raises(ConversionError, match=pattern):
            convert_splits(str(pkl), 533)

    check(_five_folds(names)[:4], r"split.pkl: expected a list of 5 folds, got 4")
    folds = _five_folds(names)
    folds[2]["val"] = ["case_00099"]
    check(folds, r"fold 2 'val': case 'case_00099' matches no case")
    folds = _five_folds(names)
    folds[1]["test"] = folds[1]["test"] + ["case_00000"]
    folds[1]["train"] = [n for n in folds[1]["train"] if n != "case_00000"]
    folds[1]["val"] = [n for n in folds[1]["val"] if n != "case_00000"]
    check(folds, r"case case_00000 is a test case of folds 0 and 1")
    folds = _five_folds(names)
    folds[4] = {"train": names[:3], "val": [names[3]], "test": []}
    check(folds, r"fold 4 does not use case case_00004")
    folds[4] = {"train": names[:3], "val": [names[3], names[4]], "test": []}
    check(folds, r"case case_00004 is in no fold's test set")
    folds = _five_folds(names)
    folds[0]["train"] = folds[0]["train"] + [folds[0]["test"][0]]
    check(folds, r"fold 0: case case_00000 .* appears in both 'train' and 'test'")
    pkl.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(ConversionError, match="split.pkl: cannot read the split pickle"):
        convert_splits(str(pkl), 533)
    # an existing, different splits_final.json is only replaced with overwrite=True
    pkl.write_bytes(pickle.dumps(_five_folds(names)))
    out = convert_splits(str(pkl), 533)
    pkl.write_bytes(pickle.dumps(_five_folds(names[::-1])))
    with pytest.raises(ConversionError, match="--overwrite"):
        convert_splits(str(pkl), 533)
    assert convert_splits(str(pkl), 533, overwrite=True) == out


class _Evil:
    def __init__(self, marker, how):
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "os":
            return os.system, (f"touch {self.marker}",)
        if self.how == "exec":
            return exec, (f"open({self.marker!r}, 'w').close()",)
        return eval, (f"open({self.marker!r}, 'w').close()",)


@pytest.mark.parametrize("how", ["os", "exec", "eval"])
def test_hostile_pickle_is_refused_without_running_code(tmp_path, nnunet_env, how):
    marker = tmp_path / "pwned"
    pkl = tmp_path / "split.pkl"
    names = [f"case_{i:05d}" for i in range(5)]
    folds = _five_folds(names)
    folds[0]["train"] = [_Evil(str(marker), how)]
    pkl.write_bytes(pickle.dumps(folds))
    with pytest.raises(ConversionError, match=r"split.pkl: refusing to load '(posix|os|builtins)\.(system|exec|eval)'"):
        load_split_pickle(str(pkl))
    with pytest.raises(ConversionError, match="refusing to load"):
        convert_splits(str(pkl), 533)
    assert not marker.exists()
    pickle.loads(pkl.read_bytes())  # the fixture really is hostile: a plain unpickler runs its code
    assert marker.exists()


# ------------------------------------------------------------------------------------------------------- CLI
def test_cli_convert_and_errors(tmp_path, nnunet_env, capsys):
    from sam3d_nnunet.cli import main
    src = tmp_path / "kits21"
    make_kits21(src, n=5)
    assert main(["convert", "kits21", str(src), "-d", "541", "--tumour-only", "--name", "Kidney"]) == 0
    target = os.path.join(nnunet_env["nnUNet_raw"], "Dataset541_Kidney")
    assert dataset_json(target)["labels"] == {"background": 0, "tumor": 1}
    names = [f"case_{i:05d}" for i in range(5)]
    (tmp_path / "split.pkl").write_bytes(pickle.dumps(_five_folds(names)))
    assert main(["convert", "splits", str(tmp_path / "split.pkl"), "-d", "541"]) == 0
    assert os.path.isfile(os.path.join(nnunet_env["nnUNet_preprocessed"], "Dataset541_Kidney", "splits_final.json"))
    os.remove(src / "case_00003" / "imaging.nii.gz")
    capsys.readouterr()
    assert main(["convert", "kits21", str(src), "-d", "542"]) == 1
    err = capsys.readouterr().err
    assert "error: case case_00003: image file missing" in err
    assert main(["convert", "lits", str(tmp_path / "nowhere"), "-d", "543"]) == 1
    assert "is not a folder" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- real MSD data
def test_real_msd_task04_hippocampus(nnunet_env, shared_data):
    task = shared_data / "Task04_Hippocampus"
    if not (task / "dataset.json").is_file():
        pytest.skip(f"real MSD task not available at {task}")
    target = convert_msd(str(task), 551, tumour_only=True, tumour_label=2)  # no tumour: take 'Posterior'
    js = dataset_json(target)
    assert js["labels"] == {"background": 0, "Posterior": 1} and js["numTraining"] == 200
    verify(target)
    case = "hippocampus_001"
    src_lab = sitk.ReadImage(str(task / "labelsTr" / f"{case}.nii.gz"))
    out_lab = sitk.ReadImage(os.path.join(target, "labelsTr", f"{case}.nii.gz"))
    assert_same_geometry(out_lab, src_lab)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out_lab), sitk.GetArrayFromImage(src_lab) == 2)
