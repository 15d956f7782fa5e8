"""``sam3d-nnunet predict``: nnU-Net's folder conventions, click files / simulated clicks / automatic mode,
native-geometry output, atomic writing, reruns, and a clear error for every bad input.

Two kinds of model:

* ``ThresholdOracleNet``, a deterministic TEST DOUBLE with SAM3DNet's interface (``encode``, ``decode``,
  ``forward``, ``patch_size``, ``num_classes``) plugged into ``PromptedPredictor`` and run through
  ``predict_folder`` (everything of the command except loading a model folder). Its ``decode`` returns high
  logits for the voxels above an intensity threshold connected to a positive click inside the window (and low
  near a negative click), so "the object comes back whole" and "the click landed on the intended voxel" are
  checkable without a trained network.
* a tiny SAM3DNet trained for one epoch in the tests (``nnUNetTrainerSAM3D_1epoch`` on CT phantoms at 3 mm,
  planned with the SAM3D planner; marked ``slow``), run through the real command line.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from phantom_training import train_phantoms
from tiny_plans import DATASET_JSON, tiny_plans

SITK = pytest.importorskip("SimpleITK")
TOTALSEG_CT = "inference_ct/totalseg_example_ct.nii.gz"


# ------------------------------------------------------------------------------------------------ test doubles
class ThresholdOracleNet(torch.nn.Module):
    """TEST DOUBLE for SAM3DNet (not a model). ``decode``: logit +10 for the voxels of channel 0 above
    ``threshold`` that are 6-connected (inside the window) to a positive click, minus the voxels within
    ``negative_radius`` voxels of a negative click; -10 elsewhere. ``forward(image)`` (automatic mode): every
    above-threshold voxel is class 1, with a lower confidence (margin 4) than a clicked object (margin 10)
    (nnU-Net-style margins, channel 0 = 0)."""

    def __init__(self, patch_size=(32, 32, 32), num_classes: int = 3, threshold: float = 50.0,
                 negative_radius: float = 3.0):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.num_classes = num_classes
        self.threshold = threshold
        self.negative_radius = negative_radius
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.encode_calls = 0

    def encode(self, image):
        self.encode_calls += 1
        return image.clone()

    def decode(self, features, clicks=None, click_labels=None, target_class=1):
        out = []
        for b in range(features.shape[0]):
            fg = features[b, 0].cpu().numpy() > self.threshold
            keep = np.zeros_like(fg)
            components, _ = ndimage.label(fg)
            pts = [] if clicks is None else clicks[b].cpu().numpy()
            labs = [] if click_labels is None else click_labels[b].cpu().numpy()
            for p, lab in zip(pts, labs):
                idx = tuple(np.clip(np.rint(p).astype(int), 0, np.array(fg.shape) - 1))
                if lab == 1 and components[idx] > 0:
                    keep |= components == components[idx]
            grid = np.indices(fg.shape).astype(np.float32)
            for p, lab in zip(pts, labs):
                if lab == 0:
                    keep &= sum((grid[i] - p[i]) ** 2 for i in range(3)) > self.negative_radius ** 2
            margin = torch.from_numpy(np.where(keep, 10.0, -10.0).astype(np.float32))
            out.append(torch.stack([-margin / 2, margin / 2]))
        return torch.stack(out).to(features.device)

    def forward(self, image, clicks=None, click_labels=None, target_class=None):
        feats = self.encode(image)
        if target_class is not None:
            return self.decode(feats, clicks, click_labels, target_class)
        m1 = (feats[:, 0] > self.threshold).float() * 8 - 4  # less sure than a click
        return torch.stack([torch.zeros_like(m1), m1] + [torch.full_like(m1, -10.0)] * (self.num_classes - 2), 1)


def _plans(patch=(32, 32, 32), norm="NoNormalization", **kwargs):
    return tiny_plans(patch, norm=norm, dataset_name="Dataset997_Predict", **kwargs)


def _oracle_predictor(patch=(32, 32, 32), max_windows=64, prompted=True, **plan_kwargs):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sam3d_nnunet.inference import PromptedPredictor
    pm = PlansManager(_plans(patch, **plan_kwargs))
    return PromptedPredictor(ThresholdOracleNet(patch), pm, pm.get_configuration("3d_fullres"), DATASET_JSON, "cpu",
                             max_windows_per_class=max_windows, prompted=prompted)


def _ball(shape, centre, radius):
    g = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((a - c) ** 2 for a, c in zip(g, centre)) <= radius ** 2


def _write(array, path, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    img = SITK.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    SITK.WriteImage(img, str(path), True)


def _rotation():
    a = np.deg2rad(30)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
    return tuple((rz @ rx).ravel().tolist())


def _clicks(path, cases, system="voxel"):
    from sam3d_nnunet.prompts import Click, ClickFile, write_click_file
    write_click_file(path, ClickFile(system, {case: {c: [Click(p, pos) for p, pos in clicks]
                                                     for c, clicks in classes.items()}
                                              for case, classes in cases.items()}))
    return str(path)


def _same_geometry(a, b):
    return (a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
            and a.GetDirection() == b.GetDirection())


# ------------------------------------------------------------------------------------------------ oracle: behaviour
def test_world_mm_clicks_land_on_the_intended_voxel(tmp_path):
    """Anisotropic spacing, a rotated direction and an origin; plans that transpose and resample. A click file in
    world mm at a blob's centre voxel reaches exactly that voxel (prompts.json records the raw index), the model
    segments that blob and no other, and the output has the input's geometry."""
    from sam3d_nnunet.commands.predict import predict_folder
    predictor = _oracle_predictor(spacing=(1.5, 1.2, 1.0), transpose=(2, 0, 1))
    shape = (30, 48, 44)
    img = np.full(shape, 10, np.int16)
    centres = [(8, 12, 11), (20, 34, 31), (8, 34, 31), (22, 12, 11)]
    for c in centres:
        img[_ball(shape, c, 5)] = 100
    _write(img, tmp_path / "in" / "rot_0000.nii.gz", spacing=(0.8, 1.1, 2.5), origin=(12.5, -40.0, 7.0),
           direction=_rotation())
    src = SITK.ReadImage(str(tmp_path / "in" / "rot_0000.nii.gz"))
    target = centres[1]
    world = src.TransformIndexToPhysicalPoint(tuple(int(v) for v in target[::-1]))
    clicks = _clicks(tmp_path / "clicks.json", {"rot": {1: [(world, True)]}}, "world")
    summary = predict_folder(predictor, str(tmp_path / "in"), str(tmp_path / "out"), clicks_file=clicks,
                             progress=False)
    assert summary.predicted == ["rot"]
    record = json.loads((tmp_path / "out" / "prompts.json").read_text())
    raw = record["cases"]["rot"]["classes"]["1"]["clicks_raw_voxel"]
    assert np.allclose(raw, [target], atol=1e-6), "the world click maps onto the intended (z, y, x) voxel"
    out = SITK.ReadImage(str(tmp_path / "out" / "rot.nii.gz"))
    assert _same_geometry(out, src)
    seg = SITK.GetArrayFromImage(out)
    assert seg[target] == 1
    blobs = [_ball(shape, c, 5) for c in centres]
    assert (seg == 1)[blobs[1]].mean() > 0.8
    assert all(not (seg == 1)[b].any() for i, b in enumerate(blobs) if i != 1), "only the clicked blob"


def test_object_larger_than_one_patch_clicked_once_comes_back_whole(tmp_path):
    from sam3d_nnunet.commands.predict import predict_folder
    predictor = _oracle_predictor(patch=(16, 16, 16))
    shape = (48, 40, 36)
    img = np.full(shape, 10, np.int16)
    obj = _ball(shape, (24, 20, 18), 13)  # 27 voxels across, 16^3 windows
    img[obj] = 100
    img[_ball(shape, (5, 5, 5), 3)] = 100  # another bright object, not clicked
    _write(img, tmp_path / "in" / "big_0000.nii.gz", spacing=(1.0, 1.0, 1.0))
    clicks = _clicks(tmp_path / "clicks.json", {"big": {1: [((18, 20, 24), True)]}})  # (x, y, z)
    predict_folder(predictor, str(tmp_path / "in"), str(tmp_path / "out"), clicks_file=clicks, progress=False)
    seg = SITK.GetArrayFromImage(SITK.ReadImage(str(tmp_path / "out" / "big.nii.gz")))
    assert np.array_equal(seg == 1, obj), "the whole object, nothing else"
    report = predictor.last_report
    assert len(report.windows[1]) > 1 and not report.hit_window_limit[1]


def test_auto_and_empty_click_lists_use_the_automatic_mode(tmp_path):
    from sam3d_nnunet.commands.predict import predict_folder
    predictor = _oracle_predictor()
    shape = (30, 30, 40)
    img = np.full(shape, 10, np.int16)
    a, b = _ball(shape, (15, 15, 8), 5), _ball(shape, (15, 15, 30), 5)
    img[a | b] = 100
    _write(img, tmp_path / "in" / "two_0000.nii.gz")
    predict_folder(predictor, str(tmp_path / "in"), str(tmp_path / "auto"), auto=True, progress=False)
    seg = SITK.GetArrayFromImage(SITK.ReadImage(str(tmp_path / "auto" / "two.nii.gz")))
    assert np.array_equal(seg == 1, a | b)
    # class 1 automatic (empty list), class 2 clicked: the clicked object is class 2, the other one class 1
    clicks = _clicks(tmp_path / "clicks.json", {"two": {1: [], 2: [((30, 15, 15), True)]}})
    predict_folder(predictor, str(tmp_path / "in"), str(tmp_path / "mixed"), clicks_file=clicks, progress=False)
    seg = SITK.GetArrayFromImage(SITK.ReadImage(str(tmp_path / "mixed" / "two.nii.gz")))
    assert (seg == 2)[b].all() and (seg == 1)[a].all()
    assert json.loads((tmp_path / "mixed" / "prompts.json").read_text())["cases"]["two"]["classes"]["1"] == \
        {"auto": True}


def test_rerun_skips_finished_cases_and_writes_atomically(tmp_path, monkeypatch):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from sam3d_nnunet.commands.predict import predict_folder
    predictor = _oracle_predictor()
    shape = (24, 24, 24)
    for name in ("a", "b"):
        img = np.full(shape, 10, np.int16)
        img[_ball(shape, (12, 12, 12), 5)] = 100
        _write(img, tmp_path / "in" / f"{name}_0000.nii.gz")
    out = tmp_path / "out"
    first = predict_folder(predictor, str(tmp_path / "in"), str(out), auto=True, progress=False)
    assert first.predicted == ["a", "b"]
    assert sorted(os.listdir(out)) == ["a.nii.gz", "b.nii.gz", "dataset.json", "plans.json", "prompts.json"]
    (out / "b.nii.gz").unlink()
    second = predict_folder(predictor, str(tmp_path / "in"), str(out), auto=True, progress=False)
    assert second.predicted == ["b"] and second.skipped_finished == ["a"]
    assert set(json.loads((out / "prompts.json").read_text())["cases"]) == {"a", "b"}
    third = predict_folder(predictor, str(tmp_path / "in"), str(out), auto=True, overwrite=True, progress=False)
    assert third.predicted == ["a", "b"]
    # a writer that dies half way leaves neither a partial <case>.nii.gz nor a temporary file
    (out / "a.nii.gz").unlink()

    def dying_writer(self, seg, output_fname, properties):
        Path(output_fname).write_bytes(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(SimpleITKIO, "write_seg", dying_writer)
    with pytest.raises(RuntimeError, match="disk full"):
        predict_folder(predictor, str(tmp_path / "in"), str(out), auto=True, progress=False)
    assert sorted(os.listdir(out)) == ["b.nii.gz", "dataset.json", "plans.json", "prompts.json"]
    # --save_probabilities: nnU-Net's .npz and .pkl next to the segmentation, also renamed into place
    monkeypatch.undo()
    predict_folder(predictor, str(tmp_path / "in"), str(tmp_path / "prob"), auto=True, save_probabilities=True,
                   progress=False)
    assert sorted(p.name for p in (tmp_path / "prob").iterdir() if p.name.startswith("a.")) == \
        ["a.nii.gz", "a.npz", "a.pkl"]
    assert np.load(tmp_path / "prob" / "a.npz")["probabilities"].shape == (3, *shape)
    assert not [p for p in (tmp_path / "prob").iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------------ oracle: errors
def test_every_bad_input_gives_a_clear_error(tmp_path):
    from sam3d_nnunet.commands.predict import PredictWarning, predict_folder
    from sam3d_nnunet.inference import ImageReadError, InferenceInputError
    from sam3d_nnunet.prompts import ClickFileError
    predictor = _oracle_predictor()
    shape = (20, 24, 28)
    img = np.full(shape, 10, np.int16)
    img[_ball(shape, (10, 12, 14), 4)] = 100
    good = tmp_path / "in"
    _write(img, good / "c1_0000.nii.gz")
    _write(img, good / "c2_0000.nii.gz")

    def run(**kw):
        return predict_folder(predictor, str(kw.pop("inp", good)), str(tmp_path / "out"), progress=False, **kw)

    # corrupt / truncated image: the file is named
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x_0000.nii.gz").write_bytes(b"not an image" * 20)
    with pytest.raises(ImageReadError, match=r"x_0000\.nii\.gz"):
        run(inp=broken, auto=True)
    data = (good / "c1_0000.nii.gz").read_bytes()
    (broken / "x_0000.nii.gz").write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageReadError, match=r"x_0000\.nii\.gz.*truncated"):
        run(inp=broken, auto=True)
    # click outside the image: case and point named
    clicks = _clicks(tmp_path / "k1.json", {"c1": {1: [((14, 12, 10), True), ((40, 3, 3), True)]}, "c2": {1: []}})
    with pytest.raises(InferenceInputError, match=r"case 'c1', class 1: click 1 at voxel \(x, y, z\) "
                                                  r"\[40.0, 3.0, 3.0\] falls outside the image"):
        run(clicks_file=clicks)
    # a class the model does not know
    clicks = _clicks(tmp_path / "k2.json", {"c1": {5: [((14, 12, 10), True)]}, "c2": {}})
    with pytest.raises(InferenceInputError, match=r"case 'c1': class 5 is not a class of this model "
                                                  r"\(its classes: 1 \(organ\), 2 \(tumour\)\)"):
        run(clicks_file=clicks)
    # clicks for a case that has no image
    clicks = _clicks(tmp_path / "k3.json", {"c1": {1: []}, "c2": {1: []}, "ghost": {1: [((1, 1, 1), True)]}})
    with pytest.raises(InferenceInputError, match=r"case\(s\) \['ghost'\] have clicks but no image.*ghost_0000"):
        run(clicks_file=clicks)
    # an image without clicks: a warning, the case is skipped
    clicks = _clicks(tmp_path / "k4.json", {"c1": {1: [((14, 12, 10), True)]}})
    with pytest.warns(PredictWarning, match=r"no entry for 1 input case\(s\).*c2"):
        summary = run(clicks_file=clicks)
    assert summary.predicted == ["c1"] and summary.skipped_no_clicks == ["c2"]
    assert not (tmp_path / "out" / "c2.nii.gz").exists()
    # a malformed click file names the file and the place
    (tmp_path / "bad.json").write_text('{"coordinate_system": "voxel", "cases": {"c1": {"1": [{"point": [1, 2]}]}}}')
    with pytest.raises(ClickFileError, match=r"bad\.json.*case 'c1', class '1', click 0"):
        run(clicks_file=str(tmp_path / "bad.json"))
    # simulated clicks need a label per image
    (tmp_path / "labels").mkdir()
    _write((img > 50).astype(np.uint8), tmp_path / "labels" / "c1.nii.gz")
    with pytest.raises(InferenceInputError, match=r"no label file for 1 input case.*labels/c2\.nii\.gz"):
        run(simulate_labels=str(tmp_path / "labels"))
    with pytest.raises(InferenceInputError, match="labels folder .* does not exist"):
        run(simulate_labels=str(tmp_path / "nolabels"))
    # input folder problems
    with pytest.raises(InferenceInputError, match="input folder .*missing_in.* does not exist"):
        run(inp=tmp_path / "missing_in", auto=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InferenceInputError, match=r"holds no images named <case>_0000\.nii\.gz"):
        run(inp=tmp_path / "empty", auto=True)
    (tmp_path / "chan").mkdir()
    shutil.copy(good / "c1_0000.nii.gz", tmp_path / "chan" / "c1_0001.nii.gz")
    with pytest.raises(InferenceInputError, match=r"case 'c1'.*c1_0000\.nii\.gz'\] missing"):
        run(inp=tmp_path / "chan", auto=True)
    # a prompt-free model takes no clicks
    with pytest.raises(InferenceInputError, match="prompt-free"):
        predict_folder(_oracle_predictor(prompted=False), str(good), str(tmp_path / "out2"),
                       simulate_labels=str(tmp_path / "labels"), progress=False)
    assert not (tmp_path / "out2").exists(), "errors are raised before anything is written"


def _fake_model_folder(root: Path) -> Path:
    """Enough of a model folder for the checks that run before loading (plans, dataset.json, fold_0)."""
    folder = root / "nnUNetTrainerSAM3D__SAM3DPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(_plans()))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    return folder


def test_cli_model_errors_name_the_path(tmp_path, monkeypatch, capsys):
    from sam3d_nnunet.cli import main
    _write(np.zeros((8, 8, 8), np.int16), tmp_path / "in" / "a_0000.nii.gz")
    base = ["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--auto", "-device", "cpu",
            "--disable_progress_bar"]
    assert main(base + ["-m", str(tmp_path / "nowhere")]) == 1
    assert f"model folder '{tmp_path / 'nowhere'}' does not exist" in capsys.readouterr().err
    folder = _fake_model_folder(tmp_path / "results" / "Dataset997_Predict")
    assert main(base + ["-m", str(folder), "-f", "0", "3"]) == 1
    err = capsys.readouterr().err
    assert f"fold 3: '{folder / 'fold_3'}' does not exist (folds with checkpoint_final.pth: 0)" in err
    assert main(base + ["-m", str(folder), "-f", "0", "-chk", "checkpoint_best.pth"]) == 1
    assert f"checkpoint '{folder / 'fold_0' / 'checkpoint_best.pth'}' does not exist" in capsys.readouterr().err
    # nnU-Net's naming: -d/-c/-tr/-p under $nnUNet_results
    monkeypatch.delenv("nnUNet_results", raising=False)
    assert main(base + ["-d", "997"]) == 1
    assert "nnUNet_results is not set" in capsys.readouterr().err
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    assert main(base + ["-d", "996"]) == 1
    assert "no trained dataset 996" in capsys.readouterr().err
    assert main(base + ["-d", "997", "-tr", "nnUNetTrainerSAM3D_LoRA", "-f", "0"]) == 1
    missing = tmp_path / "results" / "Dataset997_Predict" / "nnUNetTrainerSAM3D_LoRA__SAM3DPlans__3d_fullres"
    assert f"model folder '{missing}' does not exist" in capsys.readouterr().err
    assert main(base + ["-d", "997", "-m", str(folder)]) == 1
    assert "either -m" in capsys.readouterr().err
    assert main(base + ["-m", str(folder), "-f", "0"]) == 1  # an empty checkpoint file
    assert f"cannot load the model in '{folder}' (folds [0], checkpoint_final.pth)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):  # exactly one prompt source
        main(["predict", "-i", "x", "-o", "y", "-m", "z", "--auto", "--clicks", "c.json"])


# ------------------------------------------------------------------------------------------------ a trained model
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny SAM3DNet trained for one epoch on 5 CT phantoms (48^3 at 3 mm, CT normalisation), in one
    subprocess (nnU-Net reads its folders from the environment at import time)."""
    root = tmp_path_factory.mktemp("predict_trained")
    model = train_phantoms(root, 951, "PredictPhantoms", 48, "nnUNetTrainerSAM3D_1epoch")
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()
    return root, model


@pytest.mark.slow
def test_real_ct_keeps_its_geometry(trained, shared_data, tmp_path):
    """The phantom-trained model on a real CT (3 mm, 122x101x112, flipped axes): one click in the middle of the
    volume; the output has exactly the input's size, spacing, origin and direction."""
    from sam3d_nnunet.cli import main
    ct = shared_data / TOTALSEG_CT
    if not ct.is_file():
        pytest.skip(f"real data not available: {ct} does not exist (the shared data folder is absent)")
    root, model = trained
    dj = json.loads((model / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "CT"}, "CT normalisation, so a real CT preprocesses sensibly"
    (tmp_path / "in").mkdir()
    os.symlink(ct, tmp_path / "in" / "totalseg_0000.nii.gz")
    src = SITK.ReadImage(str(ct))
    centre = [int(s // 2) for s in src.GetSize()]
    clicks = _clicks(tmp_path / "clicks.json", {"totalseg": {1: [(centre, True)]}})
    rc = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model), "-f", "0",
               "--clicks", clicks, "-device", "cpu", "--disable_progress_bar", "--max-windows", "3"])
    assert rc == 0
    out = SITK.ReadImage(str(tmp_path / "out" / "totalseg.nii.gz"))
    assert out.GetSize() == src.GetSize()
    assert out.GetSpacing() == src.GetSpacing()
    assert out.GetOrigin() == src.GetOrigin()
    assert out.GetDirection() == src.GetDirection()
    assert src.GetDirection() != (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), "a non-identity direction"
    assert set(np.unique(SITK.GetArrayFromImage(out))) <= {0, 1}


@pytest.mark.slow
def test_dataset_naming_simulated_clicks_auto_and_ensemble(trained, tmp_path, monkeypatch):
    """``-d/-tr/-p`` with ``$nnUNet_results``; ``--simulate-clicks`` gives exactly what the shared prediction path
    (``PromptedPredictor.predict_raw_case``, used by validation) gives with the same seeded clicks;
    ``--save_probabilities``; a rerun skips; ``--auto``. (Ensembles of two different folds:
    ``test_two_different_folds_ensemble_to_the_mean_of_their_probabilities``.)"""
    from sam3d_nnunet.cli import main
    from sam3d_nnunet.inference import PromptedPredictor, protocol_prompts_from_label
    root, model = trained
    raw = root / "raw" / "Dataset951_PredictPhantoms"
    (tmp_path / "in").mkdir()
    case = "predictphantoms_004"
    os.symlink(raw / "imagesTr" / f"{case}_0000.nii.gz", tmp_path / "in" / f"{case}_0000.nii.gz")
    monkeypatch.setenv("nnUNet_results", str(root / "res"))
    common = ["-i", str(tmp_path / "in"), "-device", "cpu", "--disable_progress_bar"]
    rc = main(["predict", *common, "-o", str(tmp_path / "sim"), "-d", "951", "-tr", "nnUNetTrainerSAM3D_1epoch",
               "-f", "0", "--simulate-clicks", str(raw / "labelsTr"), "--n-clicks", "2", "--seed", "3",
               "--save_probabilities"])
    assert rc == 0
    assert {p.name for p in (tmp_path / "sim").iterdir()} == \
        {f"{case}.nii.gz", f"{case}.npz", f"{case}.pkl", "dataset.json", "plans.json", "prompts.json"}
    seg = SITK.GetArrayFromImage(SITK.ReadImage(str(tmp_path / "sim" / f"{case}.nii.gz")))
    label = SITK.GetArrayFromImage(SITK.ReadImage(str(raw / "labelsTr" / f"{case}.nii.gz")))
    predictor = PromptedPredictor.from_trained_model_folder(str(model), (0,))
    prompts = protocol_prompts_from_label(label, case, (1, 2), n_clicks=2, seed=3)
    record = json.loads((tmp_path / "sim" / "prompts.json").read_text())
    assert record["cases"][case]["classes"]["1"]["clicks_raw_voxel"] == prompts[1].clicks.tolist()
    (tmp_path / "ref").mkdir()
    predictor.predict_raw_case([str(tmp_path / "in" / f"{case}_0000.nii.gz")], prompts, str(tmp_path / "ref" / case))
    ref = SITK.GetArrayFromImage(SITK.ReadImage(str(tmp_path / "ref" / f"{case}.nii.gz")))
    probabilities = np.load(tmp_path / "sim" / f"{case}.npz")["probabilities"]
    assert probabilities.shape == (3, *label.shape)
    # nnU-Net's --save_probabilities export takes the argmax of a softmax of the merged probabilities: where two
    # classes are equal to float32 rounding there, it keeps the lower label. Anywhere else the two paths agree.
    differ = seg != ref
    assert differ.mean() < 0.01, f"{differ.sum()} voxels differ"
    if differ.any():
        p_seg = np.take_along_axis(probabilities, seg[None].astype(np.int64), 0)[0][differ]
        p_ref = np.take_along_axis(probabilities, ref[None].astype(np.int64), 0)[0][differ]
        assert np.abs(p_seg - p_ref).max() <= 1e-6 and (seg[differ] < ref[differ]).all()
    # rerun: skipped
    mtime = (tmp_path / "sim" / f"{case}.nii.gz").stat().st_mtime_ns
    assert main(["predict", *common, "-o", str(tmp_path / "sim"), "-m", str(model), "-f", "0", "--simulate-clicks",
                 str(raw / "labelsTr"), "--n-clicks", "2", "--seed", "3", "--save_probabilities"]) == 0
    assert (tmp_path / "sim" / f"{case}.nii.gz").stat().st_mtime_ns == mtime
    # automatic mode
    assert main(["predict", *common, "-o", str(tmp_path / "auto"), "-m", str(model), "-f", "0", "--auto"]) == 0
    out = SITK.ReadImage(str(tmp_path / "auto" / f"{case}.nii.gz"))
    assert _same_geometry(out, SITK.ReadImage(str(tmp_path / "in" / f"{case}_0000.nii.gz")))


def _model_with_a_second_fold(model: Path, dest: Path, seed: int = 0, scale: float = 0.5) -> Path:
    """A copy of the trained model folder with a GENUINELY different ``fold_1``: fold 0's checkpoint with every
    trainable tensor (not frozen under the adapter policy) moved by ``scale`` x its own std of seeded noise."""
    from sam3d_nnunet.model.finetune import is_frozen
    from sam3d_nnunet.validation import load_checkpoint_safely
    shutil.copytree(model, dest, ignore=shutil.ignore_patterns("validation*", "*.png", "*.txt"))
    checkpoint = load_checkpoint_safely(dest / "fold_0" / "checkpoint_final.pth")
    generator = torch.Generator().manual_seed(seed)
    moved = 0
    for key, value in checkpoint["network_weights"].items():
        if value.is_floating_point() and value.numel() > 1 and not is_frozen(key, "adapter"):
            noise = torch.randn(value.shape, generator=generator, dtype=value.dtype)
            checkpoint["network_weights"][key] = value + scale * (value.std() + 1e-3) * noise
            moved += 1
    assert moved > 10
    (dest / "fold_1").mkdir()
    torch.save(checkpoint, dest / "fold_1" / "checkpoint_final.pth")
    return dest


@pytest.mark.slow
def test_two_different_folds_ensemble_to_the_mean_of_their_probabilities(trained, tmp_path):
    """Fold 1 is fold 0 with its trainable weights perturbed. For clicks (``predict_preprocessed``) and for the
    automatic mode of the prompted model (``predict_unprompted``), the two-fold predictor's class probabilities
    are the mean of the folds' probabilities, each fold predicted alone, and differ from either fold alone (so a
    predictor that used one fold only fails); the background follows the merge rule on those means; ``predict
    -f 0 1`` writes the same segmentation as the two-fold predictor's ``predict_raw_case`` (validation's path)."""
    from sam3d_nnunet.cli import main
    from sam3d_nnunet.inference import ClassPrompt, PromptedPredictor, protocol_prompts_from_label
    from sam3d_nnunet.inference.prompted_predictor import raw_to_preprocessed_coords
    from sam3d_nnunet.inference.session import predict_unprompted
    root, model = trained
    folder = _model_with_a_second_fold(model, tmp_path / "model")
    raw = root / "raw" / "Dataset951_PredictPhantoms"
    case = "predictphantoms_004"
    image = raw / "imagesTr" / f"{case}_0000.nii.gz"
    label = SITK.GetArrayFromImage(SITK.ReadImage(str(raw / "labelsTr" / f"{case}.nii.gz")))
    predictors = {folds: PromptedPredictor.from_trained_model_folder(str(folder), folds)
                  for folds in ((0,), (1,), (0, 1))}
    ensemble = predictors[(0, 1)]
    assert ensemble.list_of_parameters is not None and len(ensemble.list_of_parameters) == 2
    pre = ensemble.configuration_manager.preprocessor_class(verbose=False)
    data, _, properties = pre.run_case([str(image)], None, ensemble.plans_manager, ensemble.configuration_manager,
                                       ensemble.dataset_json)
    raw_prompts = protocol_prompts_from_label(label, case, (1, 2), n_clicks=2, seed=3)
    prompts = {c: ClassPrompt(raw_to_preprocessed_coords(p.clicks, properties,
                                                         ensemble.plans_manager.transpose_forward, data.shape[1:]),
                              p.labels) for c, p in raw_prompts.items()}
    assert sorted(prompts) == [1, 2]
    data = torch.from_numpy(np.ascontiguousarray(data)).float()

    def check(outputs, what):  # class probabilities [classes, *shape]
        one, other, both = outputs[(0,)], outputs[(1,)], outputs[(0, 1)]
        assert (one - other).abs().max() > 0.05, f"{what}: the two folds predict (nearly) the same"
        torch.testing.assert_close(both, (one + other) / 2, atol=1e-5, rtol=0, msg=f"{what}: not the fold mean")
        for single in (one, other):
            assert (both - single).abs().max() > 0.02, f"{what}: the ensemble equals one fold alone"

    clicked = {k: p.predict_preprocessed(data, prompts) for k, p in predictors.items()}
    check({k: v[1:] for k, v in clicked.items()}, "clicks")
    # background: the merge rule on the mean class probabilities (what predict's per-class merge gives)
    torch.testing.assert_close(clicked[(0, 1)][0], 1 - clicked[(0, 1)][1:].max(0).values, atol=1e-6, rtol=0)
    check({k: torch.stack([v for _, v in sorted(predict_unprompted(p, data, [1, 2]).items())])
           for k, p in predictors.items()}, "automatic")
    # the command line ensembles the same two folds: the same segmentation as the two-fold predictor
    (tmp_path / "in").mkdir()
    os.symlink(image, tmp_path / "in" / f"{case}_0000.nii.gz")
    assert main(["predict", "-i", str(tmp_path / "in"), "-device", "cpu", "--disable_progress_bar", "-o",
                 str(tmp_path / "ens"), "-m", str(folder), "-f", "0", "1", "--simulate-clicks",
                 str(raw / "labelsTr"), "--n-clicks", "2", "--seed", "3"]) == 0
    (tmp_path / "ref").mkdir()
    ensemble.predict_raw_case([str(image)], raw_prompts, str(tmp_path / "ref" / case))
    ens = SITK.GetArrayFromImage(SITK.ReadImage(str(tmp_path / "ens" / f"{case}.nii.gz")))
    assert np.array_equal(ens, SITK.GetArrayFromImage(SITK.ReadImage(str(tmp_path / "ref" / f"{case}.nii.gz"))))
