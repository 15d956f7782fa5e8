"""Bad inputs at every stage (issue 7, part 2): conversion, planning, prediction, evaluation.

Each kind of bad input (NaN / infinite intensities, zero / negative / non-finite voxel sizes, 2D and 4D images
where 3D is expected, image and label on different grids, label values dataset.json does not declare,
non-integer labels, truncated ``.nii.gz`` files, a missing channel file, clicks outside the image or for a class
the model does not have) is tried at every stage where it can occur; hypothesis draws its details (which axis,
which value, where the NaN sits, how much of the file survives) with a bounded number of examples. Expected: an
error whose message names the bad file (or case / click) and the problem, and no output for it; or, for the
inputs that have a documented meaning (an empty label, a click on another class's voxels), that behaviour.

In-process calls check the messages; one command-line run per stage checks what a user sees: exit status 1,
``error:`` on stderr with the file name, no ``Traceback``, no hang (subprocess timeouts), no partial output.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_conversion import nnunet_env  # noqa: F401 - the fixture (nnU-Net folders in tmp_path)

from reliability_helpers import (assert_clean_cli_error, assert_complete_images, cli_env, make_model_folder,
                                 patch_nifti_pixdim, record, run_cli, sphere, truncate, write_image)

SUITE = "inputs"
SHAPE = (12, 14, 16)  # z, y, x
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# what the error must say about each kind of bad input (besides the file name)
PROBLEM = {
    "nan_intensity": r"NaN or infinite",
    "inf_intensity": r"NaN or infinite",
    "zero_spacing": r"(voxel size|spacing).*(not finite and positive)|Zero-valued spacing",
    "negative_spacing": r"(voxel size|spacing).*not finite and positive",
    "nonfinite_spacing": r"(voxel size|spacing).*not finite and positive",
    "image_2d": r"2D|2 dim",
    "image_4d": r"4D|4 dim|4 dimensions|channel",
    "geometry_mismatch": r"geometry mismatch|shape|size",
    "unknown_label_value": r"value",
    "non_integer_label": r"non-integer|value",
    "truncated_image": r"truncated|corrupt",
    "truncated_label": r"truncated|corrupt",
    "missing_channel": r"missing|does not exist",
}


# --------------------------------------------------------------------------------------------- bad files
def _image(rng) -> np.ndarray:
    img = rng.normal(40.0, 10.0, SHAPE).astype(np.float32)
    img[sphere(SHAPE, (6, 7, 8), 4)] += 100.0
    return img


def _label() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[sphere(SHAPE, (6, 7, 8), 4)] = 1
    lab[sphere(SHAPE, (6, 7, 8), 2)] = 2
    return lab


@st.composite
def breakage(draw, kind: str) -> dict:
    """The details of one bad input of ``kind``, drawn by hypothesis."""
    p = {"kind": kind, "seed": draw(st.integers(0, 2 ** 16))}
    if kind in ("nan_intensity", "inf_intensity"):
        p["n"] = draw(st.integers(1, 5))
        p["value"] = float("nan") if kind == "nan_intensity" else draw(st.sampled_from([np.inf, -np.inf]))
    elif kind in ("zero_spacing", "negative_spacing", "nonfinite_spacing"):
        p["axis"] = draw(st.integers(0, 2))
        p["value"] = {"zero_spacing": 0.0,
                      "negative_spacing": -draw(st.floats(0.1, 5.0)),
                      "nonfinite_spacing": draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))}[kind]
        p["on_label"] = draw(st.booleans())
    elif kind == "geometry_mismatch":
        p["what"] = draw(st.sampled_from(["size", "spacing", "origin", "direction"]))
    elif kind == "unknown_label_value":
        p["value"] = draw(st.integers(4, 250))
    elif kind in ("truncated_image", "truncated_label"):
        p["fraction"] = draw(st.floats(0.05, 0.95))
    return p


def write_case(p: dict, image_path, label_path=None, spacing=(0.8, 0.75, 2.5), origin=(-10.0, 20.0, 30.0)):
    """Write an image (and a label) with the breakage ``p`` applied; returns the path of the bad file."""
    rng = np.random.default_rng(p["seed"])
    kind = p["kind"]
    img, lab = _image(rng), _label()
    bad = str(image_path)
    if kind in ("nan_intensity", "inf_intensity"):
        idx = tuple(rng.integers(0, s, p["n"]) for s in SHAPE)
        img[idx] = p["value"]
    if kind == "image_2d":
        img = img[SHAPE[0] // 2]
    if kind == "image_4d":
        import SimpleITK as sitk
        vol = sitk.GetImageFromArray(img)
        vol.SetSpacing(spacing)
        four = sitk.JoinSeries([vol, vol])
        Path(image_path).parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(four, str(image_path), True)
    else:
        write_image(img, image_path, spacing if img.ndim == 3 else spacing[:2], origin if img.ndim == 3 else origin[:2])
    lab_spacing, lab_origin, lab_direction = spacing, origin, None
    if kind == "geometry_mismatch":
        bad = str(label_path)
        if p["what"] == "size":
            lab = lab[:-1]
        elif p["what"] == "spacing":
            lab_spacing = (spacing[0] * 1.5, spacing[1], spacing[2])
        elif p["what"] == "origin":
            lab_origin = (origin[0] + 5.0, origin[1], origin[2])
        else:
            lab_direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    if kind == "unknown_label_value":
        lab[0, 0, 0] = p["value"]
        bad = str(label_path)
    if kind == "non_integer_label":
        lab = lab.astype(np.float32)
        lab[lab == 2] = 1.5
        bad = str(label_path)
    if kind == "empty_label":
        lab[:] = 0
    if label_path is not None:
        write_image(lab, label_path, lab_spacing, lab_origin, lab_direction)
    if kind in ("zero_spacing", "negative_spacing", "nonfinite_spacing"):
        target = label_path if p.get("on_label") and label_path is not None else image_path
        patch_nifti_pixdim(target, p["axis"], p["value"])
        bad = str(target)
    if kind == "truncated_image":
        truncate(image_path, p["fraction"])
    if kind == "truncated_label":
        truncate(label_path, p["fraction"])
        bad = str(label_path)
    return bad


def _expect(error: BaseException, bad: str, kind: str) -> None:
    text = str(error)
    assert bad in text, f"{kind}: the message does not name {bad}: {text}"
    assert re.search(PROBLEM[kind], text), f"{kind}: the message does not say what is wrong: {text}"


_ids = itertools.count(1)


def _fresh(tmp_path: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=tmp_path))


# =========================================================================================== conversion
CONVERSION_KINDS = ["nan_intensity", "inf_intensity", "zero_spacing", "negative_spacing", "nonfinite_spacing",
                    "image_2d", "image_4d", "geometry_mismatch", "unknown_label_value", "non_integer_label",
                    "truncated_image", "truncated_label"]


@pytest.mark.parametrize("kind", CONVERSION_KINDS)
@settings(max_examples=3, **SETTINGS)
@given(data=st.data())
def test_conversion_refuses_bad_case(kind, data, tmp_path, nnunet_env):
    from sam3d_nnunet.conversion import ConversionError, convert_kits21
    p = data.draw(breakage(kind))
    src = _fresh(tmp_path) / "kits21"
    write_case(dict(p, kind="none"), src / "case_00000" / "imaging.nii.gz", src / "case_00000" /
               "aggregated_MAJ_seg.nii.gz")
    bad = write_case(p, src / "case_00001" / "imaging.nii.gz", src / "case_00001" / "aggregated_MAJ_seg.nii.gz")
    name, dataset_id = "Rel", 600 + next(_ids)
    with pytest.raises(ConversionError) as e:
        convert_kits21(str(src), dataset_id, name=name)
    _expect(e.value, bad, kind)
    assert "case_00001" in str(e.value)
    target = Path(nnunet_env["nnUNet_raw"]) / f"Dataset{dataset_id:03d}_{name}"
    assert not (target / "labelsTr" / "case_00001.nii.gz").exists() and not (target / "dataset.json").exists()
    assert_complete_images(target)
    record(SUITE, "conversion", kind, "clear error", detail=json.dumps(p, default=str))


def test_conversion_accepts_an_empty_label(tmp_path, nnunet_env):
    import SimpleITK as sitk

    from sam3d_nnunet.conversion import convert_kits21
    src = tmp_path / "kits21"
    for i, kind in enumerate(["none", "empty_label"]):
        write_case({"kind": kind, "seed": i}, src / f"case_{i:05d}" / "imaging.nii.gz",
                   src / f"case_{i:05d}" / "aggregated_MAJ_seg.nii.gz")
    target = Path(convert_kits21(str(src), 599))
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(target / "labelsTr" / "case_00001.nii.gz"))).any()
    record(SUITE, "conversion", "empty_label", "handled: converted (a 'no object' case)")


def test_convert_cli_error(tmp_path, nnunet_env):
    src = tmp_path / "kits21"
    write_case({"kind": "none", "seed": 0}, src / "case_00000" / "imaging.nii.gz",
               src / "case_00000" / "aggregated_MAJ_seg.nii.gz")
    bad = write_case({"kind": "truncated_image", "seed": 1, "fraction": 0.5}, src / "case_00001" / "imaging.nii.gz",
                     src / "case_00001" / "aggregated_MAJ_seg.nii.gz")
    p = run_cli(["convert", "kits21", src, "-d", "602", "-np", "1"], env=cli_env(**nnunet_env), timeout=300)
    assert_clean_cli_error(p, bad, "truncated")
    assert not list(Path(nnunet_env["nnUNet_raw"]).rglob("case_00001.nii.gz"))
    record(SUITE, "conversion", "truncated_image (command line)", "clear error")


# ============================================================================================= planning
PLANNING_KINDS = CONVERSION_KINDS + ["missing_channel"]


def _raw_dataset(root: Path, p: dict, n_channels: int = 1) -> tuple:
    """An nnU-Net raw dataset of 2 cases, case 'b' carrying breakage ``p``; returns (folder, bad file)."""
    folder = root / "Dataset603_Rel"
    good = {"kind": "none", "seed": 0}
    for case, params in (("a", good), ("b", p)):
        bad = write_case(params, folder / "imagesTr" / f"{case}_0000.nii.gz", folder / "labelsTr" / f"{case}.nii.gz")
        for c in range(1, n_channels):
            shutil.copy(folder / "imagesTr" / f"{case}_0000.nii.gz", folder / "imagesTr" / f"{case}_{c:04d}.nii.gz")
    if p["kind"] == "missing_channel":
        os.remove(folder / "imagesTr" / f"b_{n_channels - 1:04d}.nii.gz")
        bad = str(folder / "imagesTr" / f"b_{n_channels - 1:04d}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): "CT" for c in range(n_channels)},
        "labels": {"background": 0, "organ": 1, "tumour": 2}, "numTraining": 2, "file_ending": ".nii.gz"}))
    return folder, bad


@pytest.mark.parametrize("kind", PLANNING_KINDS)
@settings(max_examples=2, **SETTINGS)
@given(data=st.data())
def test_planning_refuses_bad_raw_dataset(kind, data, tmp_path):
    from sam3d_nnunet.validation import InputFileError, validate_raw_dataset
    p = data.draw(breakage(kind))
    folder, bad = _raw_dataset(_fresh(tmp_path), p, n_channels=2 if kind == "missing_channel" else 1)
    with pytest.raises(InputFileError) as e:
        validate_raw_dataset(folder, num_workers=2)
    _expect(e.value, bad, kind)
    record(SUITE, "planning", kind, "clear error", detail=json.dumps(p, default=str))


def test_planning_accepts_an_empty_label(tmp_path):
    from sam3d_nnunet.validation import validate_raw_dataset
    folder, _ = _raw_dataset(tmp_path, {"kind": "empty_label", "seed": 3})
    assert validate_raw_dataset(folder) == ["a", "b"]
    record(SUITE, "planning", "empty_label", "handled: accepted (a 'no object' case)")


@pytest.mark.slow
def test_plan_and_preprocess_cli_error(tmp_path):
    folder, bad = _raw_dataset(tmp_path / "raw", {"kind": "nan_intensity", "seed": 4, "n": 2,
                                                  "value": float("nan")})
    env = cli_env(nnUNet_raw=tmp_path / "raw", nnUNet_preprocessed=tmp_path / "pre", nnUNet_results=tmp_path / "res")
    (tmp_path / "pre").mkdir()
    p = run_cli(["plan_and_preprocess", "-d", "603", "-c", "3d_fullres", "--sam-variant", "tiny", "-npfp", "1",
                 "-np", "1", "--no_pbar"], env=env, timeout=300)
    assert_clean_cli_error(p, bad, "NaN")
    assert not any((tmp_path / "pre").iterdir()), "nothing was planned or preprocessed"
    record(SUITE, "planning", "nan_intensity (command line)", "clear error")


# =========================================================================================== prediction
PREDICTION_KINDS = ["nan_intensity", "inf_intensity", "zero_spacing", "negative_spacing", "nonfinite_spacing",
                    "image_2d", "image_4d", "truncated_image"]
LABEL_KINDS = ["geometry_mismatch", "unknown_label_value", "truncated_label"]  # --simulate-clicks labels


@pytest.mark.parametrize("kind", PREDICTION_KINDS + LABEL_KINDS)
@settings(max_examples=2, **SETTINGS)
@given(data=st.data())
def test_prediction_refuses_bad_input(kind, data, tmp_path):
    from test_predict import _oracle_predictor

    from sam3d_nnunet.commands.predict import predict_folder
    from sam3d_nnunet.inference import InferenceInputError
    p = data.draw(breakage(kind))
    if kind in ("zero_spacing", "negative_spacing", "nonfinite_spacing"):
        p["on_label"] = False  # the image's; a label's voxel size is tried under the label kinds
    root = _fresh(tmp_path)
    bad = write_case(p, root / "in" / "b_0000.nii.gz", root / "labels" / "b.nii.gz")
    out = root / "out"
    with pytest.raises(InferenceInputError) as e:
        predict_folder(_oracle_predictor(), str(root / "in"), str(out), simulate_labels=str(root / "labels"),
                       progress=False)
    _expect(e.value, bad, kind)
    assert not (out / "b.nii.gz").exists()
    if out.exists():
        assert_complete_images(out)
    record(SUITE, "prediction", kind if kind in PREDICTION_KINDS else f"{kind} (--simulate-clicks label)",
           "clear error", detail=json.dumps(p, default=str))


def _clicks(path, cases, system="voxel"):
    from test_predict import _clicks as write
    return write(path, cases, system)


@settings(max_examples=6, **SETTINGS)
@given(point=st.tuples(st.floats(-50, 80), st.floats(-50, 80), st.floats(-50, 80)).filter(
    lambda q: not all(-0.5 <= v <= s - 0.5 for v, s in zip(q, SHAPE[::-1]))))
def test_click_outside_the_image_is_refused(point, tmp_path):
    from test_predict import _oracle_predictor

    from sam3d_nnunet.commands.predict import predict_folder
    from sam3d_nnunet.inference import InferenceInputError
    root = _fresh(tmp_path)
    write_case({"kind": "none", "seed": 0}, root / "in" / "c_0000.nii.gz")
    clicks = _clicks(root / "clicks.json", {"c": {1: [((8, 7, 6), True), (point, True)]}})
    with pytest.raises(InferenceInputError, match=r"case 'c', class 1: click 1 .* outside the image"):
        predict_folder(_oracle_predictor(), str(root / "in"), str(root / "out"), clicks_file=clicks, progress=False)
    assert not (root / "out").exists()
    record(SUITE, "prediction", "click outside the image", "clear error", detail=str(point))


@settings(max_examples=4, **SETTINGS)
@given(cls=st.one_of(st.integers(3, 255), st.just(0), st.integers(-5, -1)))
def test_click_for_a_class_the_model_lacks_is_refused(cls, tmp_path):
    from test_predict import _oracle_predictor

    from sam3d_nnunet.commands.predict import predict_folder
    from sam3d_nnunet.inference import InferenceInputError
    from sam3d_nnunet.prompts import ClickFileError
    root = _fresh(tmp_path)
    write_case({"kind": "none", "seed": 0}, root / "in" / "c_0000.nii.gz")
    path = root / "clicks.json"
    path.write_text(json.dumps({"coordinate_system": "voxel",
                                "cases": {"c": {str(cls): [{"point": [8, 7, 6], "positive": True}]}}}))
    with pytest.raises((InferenceInputError, ClickFileError), match=rf"(class|label).*{cls}"):
        predict_folder(_oracle_predictor(), str(root / "in"), str(root / "out"), clicks_file=str(path),
                       progress=False)
    assert not (root / "out").exists()
    record(SUITE, "prediction", "click for a class the model does not have", "clear error", detail=str(cls))


def test_missing_channel_file_is_refused(tmp_path):
    from test_predict import _oracle_predictor

    from sam3d_nnunet.commands.predict import predict_folder
    from sam3d_nnunet.inference import InferenceInputError
    write_case({"kind": "none", "seed": 0}, tmp_path / "in" / "c_0001.nii.gz")
    with pytest.raises(InferenceInputError, match=r"case 'c'.*c_0000\.nii\.gz'\] missing"):
        predict_folder(_oracle_predictor(), str(tmp_path / "in"), str(tmp_path / "out"), auto=True, progress=False)
    assert not (tmp_path / "out").exists()
    record(SUITE, "prediction", "missing_channel", "clear error")


def test_empty_label_and_click_on_another_class_have_their_documented_meaning(tmp_path):
    """--simulate-clicks with an empty label: no clicks, the case is predicted empty (every class absent). A
    positive click for class 1 placed on class 2's voxels: class 1 is segmented where the user clicked (the
    prompt, not the anatomy, decides; README "Guarantees")."""
    import SimpleITK as sitk
    from test_predict import _oracle_predictor

    from sam3d_nnunet.commands.predict import predict_folder
    write_case({"kind": "empty_label", "seed": 0}, tmp_path / "in" / "e_0000.nii.gz", tmp_path / "labels" / "e.nii.gz")
    predict_folder(_oracle_predictor(), str(tmp_path / "in"), str(tmp_path / "out"),
                   simulate_labels=str(tmp_path / "labels"), progress=False)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "e.nii.gz")))
    assert not seg.any()
    assert json.loads((tmp_path / "out" / "prompts.json").read_text())["cases"]["e"] == {"classes": {}}
    record(SUITE, "prediction", "empty_label (--simulate-clicks)", "handled: no clicks, empty mask")
    # the centre voxel is class 2 in _label(); a positive click for class 1 there
    clicks = _clicks(tmp_path / "k.json", {"e": {1: [((8, 7, 6), True)]}})
    predict_folder(_oracle_predictor(), str(tmp_path / "in"), str(tmp_path / "out2"), clicks_file=clicks,
                   progress=False)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out2" / "e.nii.gz")))
    assert seg[6, 7, 8] == 1 and set(np.unique(seg)) <= {0, 1}
    record(SUITE, "prediction", "positive click on another class's voxels", "handled: the clicked class is "
           "segmented there")


@pytest.mark.slow
def test_predict_cli_error(tmp_path):
    """NaN intensities in the second case: the first case is written (complete), the command stops at the bad
    file with one error line, nothing for the bad case."""
    model = make_model_folder(tmp_path / "model")
    write_case({"kind": "none", "seed": 0}, tmp_path / "in" / "a_0000.nii.gz")
    bad = write_case({"kind": "nan_intensity", "seed": 0, "n": 1, "value": float("nan")},
                     tmp_path / "in" / "b_0000.nii.gz")
    clicks = _clicks(tmp_path / "clicks.json", {"a": {1: [((8, 7, 6), True)]}, "b": {1: [((8, 7, 6), True)]}})
    p = run_cli(["predict", "-m", model, "-f", "0", "-device", "cpu", "--disable_progress_bar", "-i", tmp_path / "in",
                 "-o", tmp_path / "out", "--clicks", clicks], timeout=300)
    assert_clean_cli_error(p, bad, "NaN")
    assert (tmp_path / "out" / "a.nii.gz").is_file() and not (tmp_path / "out" / "b.nii.gz").exists()
    assert_complete_images(tmp_path / "out")
    record(SUITE, "prediction", "nan_intensity (command line)", "clear error")


# =========================================================================================== evaluation
EVALUATION_KINDS = ["nan_intensity", "inf_intensity", "zero_spacing", "negative_spacing", "nonfinite_spacing",
                    "image_2d", "image_4d", "geometry_mismatch", "unknown_label_value", "non_integer_label",
                    "truncated_image", "truncated_label"]


def _eval_folders(root: Path, p: dict) -> tuple:
    """reference (label slot) and prediction (image slot) folders; the prediction is a label map too."""
    ref, pred = root / "ref", root / "pred"
    write_image(_label(), ref / "a.nii.gz", (0.8, 0.75, 2.5), (-10.0, 20.0, 30.0))
    write_image(_label(), pred / "a.nii.gz", (0.8, 0.75, 2.5), (-10.0, 20.0, 30.0))
    kind = p["kind"]
    if kind in ("unknown_label_value", "non_integer_label", "geometry_mismatch", "truncated_label"):
        # the bad file is the reference (label slot)
        write_image(_label(), pred / "b.nii.gz", (0.8, 0.75, 2.5), (-10.0, 20.0, 30.0))
        bad = write_case(p, root / "scratch" / "b.nii.gz", ref / "b.nii.gz")
        if kind == "geometry_mismatch":  # the prediction vs the reference
            bad = str(ref / "b.nii.gz")
    else:
        write_image(_label(), ref / "b.nii.gz", (0.8, 0.75, 2.5), (-10.0, 20.0, 30.0))
        # the breakage on a label map written in the prediction slot
        lab = _label()
        if kind in ("nan_intensity", "inf_intensity"):  # a float label map with NaN / infinity
            lab = lab.astype(np.float32)
            rng = np.random.default_rng(p["seed"])
            lab[tuple(rng.integers(0, s, p["n"]) for s in SHAPE)] = p["value"]
        if kind == "image_2d":
            write_image(lab[SHAPE[0] // 2], pred / "b.nii.gz", (0.8, 0.75), (-10.0, 20.0))
        elif kind == "image_4d":
            import SimpleITK as sitk
            vol = sitk.GetImageFromArray(lab)
            sitk.WriteImage(sitk.JoinSeries([vol, vol]), str(pred / "b.nii.gz"), True)
        else:
            write_image(lab, pred / "b.nii.gz", (0.8, 0.75, 2.5), (-10.0, 20.0, 30.0))
        if kind in ("zero_spacing", "negative_spacing", "nonfinite_spacing"):
            patch_nifti_pixdim(pred / "b.nii.gz", p["axis"], p["value"])
        if kind == "truncated_image":
            truncate(pred / "b.nii.gz", p["fraction"])
        bad = str(pred / "b.nii.gz")
    dj = root / "dataset.json"
    dj.write_text(json.dumps({"labels": {"background": 0, "organ": 1, "tumour": 2}, "file_ending": ".nii.gz",
                              "channel_names": {"0": "CT"}, "numTraining": 2}))
    return ref, pred, dj, bad


@pytest.mark.parametrize("kind", EVALUATION_KINDS)
@settings(max_examples=2, **SETTINGS)
@given(data=st.data())
def test_evaluation_refuses_bad_segmentation(kind, data, tmp_path):
    from sam3d_nnunet.evaluation import EvaluationError, evaluate_folders
    p = data.draw(breakage(kind))
    root = _fresh(tmp_path)
    ref, pred, dj, bad = _eval_folders(root, p)
    out = root / "summary.json"
    with pytest.raises(EvaluationError) as e:
        evaluate_folders(str(ref), str(pred), str(dj), output_file=str(out), num_processes=1, progress=False)
    text = str(e.value)
    assert bad in text, text
    if kind not in ("image_2d", "image_4d", "geometry_mismatch"):
        assert re.search(PROBLEM[kind], text), text
    else:  # evaluate accepts 2D label maps: a 2D prediction of a 3D reference is a geometry mismatch
        assert re.search(r"4D|2D and 3D|geometry mismatch", text), text
    assert not out.exists() and not out.with_suffix(".csv").exists()
    record(SUITE, "evaluation", kind, "clear error", detail=json.dumps(p, default=str))


def test_evaluation_of_empty_labels_follows_nnunet(tmp_path):
    from sam3d_nnunet.evaluation import evaluate_folders
    ref, pred, dj, _ = _eval_folders(tmp_path, {"kind": "none", "seed": 0, "on_label": False})
    write_image(np.zeros(SHAPE, np.uint8), ref / "b.nii.gz", (0.8, 0.75, 2.5), (-10.0, 20.0, 30.0))
    write_image(np.zeros(SHAPE, np.uint8), pred / "b.nii.gz", (0.8, 0.75, 2.5), (-10.0, 20.0, 30.0))
    result = evaluate_folders(str(ref), str(pred), str(dj), num_processes=1, progress=False,
                              tolerances_mm=[1.0])
    empty = [c for c in result["metric_per_case"] if c["reference_file"].endswith("b.nii.gz")][0]
    assert np.isnan(empty["metrics"][1]["Dice"]) and empty["metrics"][1]["NSD@1mm"] == 1.0
    assert result["mean"][1]["Dice"] == 1.0, "the empty case is left out of the mean (nnU-Net's nanmean)"
    record(SUITE, "evaluation", "empty_label (reference and prediction)", "handled: Dice NaN (left out of means), "
           "NSD 1")


def test_evaluate_cli_error(tmp_path):
    ref, pred, dj, bad = _eval_folders(tmp_path, {"kind": "truncated_image", "seed": 0, "fraction": 0.5})
    p = run_cli(["evaluate", "-ref", ref, "-pred", pred, "-djfile", dj, "-np", "1", "--no-progress"], timeout=300)
    assert_clean_cli_error(p, bad, "truncated")
    assert not (pred / "summary.json").exists()
    record(SUITE, "evaluation", "truncated prediction (command line)", "clear error")


# ============================================================================================= training
def test_training_uses_empty_labels_as_no_object_samples():
    """An all-background patch trains "no object": a foreground class is asked for, no positive click, an empty
    binary target (``sample_training_prompt``'s documented rule)."""
    import torch

    from sam3d_nnunet.prompts.simulation import simulate_training_prompts
    target = torch.zeros((3, 1, 8, 8, 8), dtype=torch.int16)
    for seed in range(5):
        clicks, labels, cls, binary = simulate_training_prompts(target, [1, 2], seed)
        assert set(cls.tolist()) <= {1, 2}
        assert not (labels == 1).any() and not binary.any()
    record(SUITE, "training", "empty_label (all-background patch)", "handled: 'no object' sample")
