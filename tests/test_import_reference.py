"""``sam3d-nnunet import-reference``: an authors'-format checkpoint becomes an nnU-Net model folder that
``sam3d-nnunet predict`` runs on a raw CT in native geometry, computing exactly what the imported network
computes on the same preprocessed crop; bad files are refused in one line and nothing is written."""
from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from sam3d_nnunet.cli import main

FIDELITY = Path(__file__).resolve().parents[2] / "shared" / "fidelity"
CASE = "sts_002"
# blocks of the generated reference checkpoint: 4 in CI; SAM3D_REFERENCE_DEPTH=12 runs the full vit_b (minutes)
DEPTH = int(os.environ.get("SAM3D_REFERENCE_DEPTH", "4"))


def _generator():
    if not (FIDELITY / "make_reference_checkpoint.py").is_file():
        pytest.skip(f"the fidelity fixture {FIDELITY} is absent (../shared/fidelity)")
    spec = importlib.util.spec_from_file_location("make_reference_checkpoint", FIDELITY / "make_reference_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory) -> Path:
    """A checkpoint in train.py's layout (``DEPTH`` blocks), optimiser states included, saved as train.py saves it."""
    checkpoint = _generator().make_checkpoint(0, DEPTH)
    checkpoint.update(epoch=12, best_val_loss=0.3,
                      encoder_opt={"state": {}, "param_groups": [{"lr": 4e-4, "betas": (0.9, 0.999), "params": [0]}]})
    path = tmp_path_factory.mktemp("reference") / "best.pth.tar"
    torch.save(checkpoint, path)
    return path


def _import(tmp_path: Path, checkpoint: Path, capsys, monkeypatch, *extra: str) -> tuple[int, str]:
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    code = main(["import-reference", "--checkpoint", str(checkpoint), "--task", "lits", "-d", "901", *extra])
    return code, capsys.readouterr().err


def test_imported_model_predicts_a_real_ct_as_the_network_does(reference_file, shared_data, tmp_path, capsys,
                                                               monkeypatch):
    image_file = shared_data / "STS_CT" / "imagesTr" / f"{CASE}_0000.nii.gz"
    label_file = shared_data / "STS_CT" / "labelsTr" / f"{CASE}.nii.gz"
    if not image_file.is_file():
        pytest.skip(f"real CT {image_file} is absent (../shared/data)")
    code, err = _import(tmp_path, reference_file, capsys, monkeypatch)
    assert code == 0, err
    folder = tmp_path / "results" / "Dataset901_3DSAMAdapterLiTS" / "nnUNetTrainerSAM3D__3DSAMReferencePlans__3d_fullres"
    plans = json.loads((folder / "plans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["spacing"] == [1.0, 1.0, 1.0]
    assert plans["foreground_intensity_properties_per_channel"]["0"]["percentile_00_5"] == -48.0

    # one click on the tumour: the label voxel nearest its centre of mass, (x, y, z) index of the raw image
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
    voxels = np.argwhere(label == 1)
    zyx = voxels[np.argmin(((voxels - voxels.mean(0)) ** 2).sum(1))]
    inputs = tmp_path / "in"
    inputs.mkdir()
    os.symlink(image_file, inputs / image_file.name)
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps({"coordinate_system": "voxel", "cases": {
        CASE: {"1": [{"point": [int(zyx[2]), int(zyx[1]), int(zyx[0])], "positive": True}]}}}))
    code = main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(folder), "-f", "all",
                 "--clicks", str(clicks), "--max-windows", "1", "-device", "cpu", "--disable_progress_bar"])
    assert code == 0, capsys.readouterr().err
    predicted = sitk.ReadImage(str(tmp_path / "out" / f"{CASE}.nii.gz"))
    raw = sitk.ReadImage(str(image_file))
    assert predicted.GetSize() == raw.GetSize()
    np.testing.assert_allclose(predicted.GetSpacing(), raw.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(predicted.GetOrigin(), raw.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(predicted.GetDirection(), raw.GetDirection(), atol=1e-6)

    # the same case through nnU-Net's preprocessing and the imported network called directly on the crop
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sam3d_nnunet.inference.prompted_predictor import raw_to_preprocessed_coords
    from sam3d_nnunet.model import autocast, from_reference_checkpoint

    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration("3d_fullres")
    dataset_json = json.loads((folder / "dataset.json").read_text())
    data, _, properties = configuration.preprocessor_class(verbose=False).run_case(
        [str(image_file)], None, plans_manager, configuration, dataset_json)
    click = raw_to_preprocessed_coords(zyx[None].astype(np.float64), properties, plans_manager.transpose_forward,
                                       data.shape[1:])
    padded, slicer = pad_nd_image(torch.from_numpy(data).float(), (128, 128, 128), "constant", {"value": 0}, True)
    click = click + np.array([s.start or 0 for s in slicer[1:]])[None]
    start = np.clip(np.round(click[0] - 64), 0, np.array(padded.shape[1:]) - 128).astype(int)
    crop = padded[(slice(None),) + tuple(slice(a, a + 128) for a in start)][None]
    network = from_reference_checkpoint(reference_file)
    with torch.no_grad(), autocast("cpu", "auto"):  # the predictor's precision policy (bf16 where it is fast)
        logits = network.decode(network.encode(crop), torch.from_numpy((click - start).astype(np.float32))[None],
                                torch.ones(1, 1, dtype=torch.long), 1)[0].float()
    probability = torch.zeros(padded.shape[1:])
    probability[tuple(slice(a, a + 128) for a in start)] = torch.softmax(logits, 0)[1]
    probability = probability[tuple(slicer[1:])]
    assert 0.01 < float((probability > 0.5).float().mean()) < 0.99  # a mixed mask: the comparison means something
    merged = torch.stack([1 - probability, probability])
    export_prediction_from_logits(merged, properties, configuration, plans_manager, dataset_json,
                                  str(tmp_path / "direct"), False)
    direct = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "direct.nii.gz")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(predicted), direct)


def test_bad_reference_files_are_refused_in_one_line_and_write_nothing(reference_file, tmp_path, capsys,
                                                                       monkeypatch):
    checkpoint = torch.load(reference_file, weights_only=True)
    del checkpoint["feature_dict"][3]["transformer.layers.1.norm4.weight"]
    missing = tmp_path / "missing.pth.tar"
    torch.save(checkpoint, missing)
    checkpoint = torch.load(reference_file, weights_only=True)
    checkpoint["encoder_dict"]["neck_3d.2.2.weight"] = torch.zeros(256, 768, 3, 3, 3)
    misshapen = tmp_path / "misshapen.pth.tar"
    torch.save(checkpoint, misshapen)

    class Hostile:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    hostile = tmp_path / "hostile.pth.tar"
    torch.save({"encoder_dict": Hostile(), "decoder_dict": {}, "feature_dict": []}, hostile)
    sam_format = tmp_path / "sam.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1)}, sam_format)
    expected = {missing: r"missing tensor feature_dict\[3\]\['transformer\.layers\.1\.norm4\.weight'\]",
                misshapen: r"encoder_dict\['neck_3d\.2\.2\.weight'\] has shape \(256, 768, 3, 3, 3\)",
                hostile: "refused: its pickle needs Python objects",
                sam_format: "missing encoder_dict, decoder_dict, feature_dict"}
    for path, pattern in expected.items():
        code, err = _import(tmp_path, path, capsys, monkeypatch)
        assert code == 1
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sam3d-nnunet import-reference: error:"), err
        assert str(path) in lines[0]
        assert re.search(pattern, lines[0]), lines[0]
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "pwned").exists()
