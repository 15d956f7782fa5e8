"""Hostile files (issue 7, part 3): pickles that would run code, and names that would write outside the output.

Policy (README "Guarantees"):

* SAM checkpoints are read with ``torch.load(weights_only=True)`` (``sam3d_nnunet.model.sam_checkpoint``).
* Trained-model checkpoints (``fold_X/checkpoint_*.pth``): nnU-Net 2.8.1's predictor and trainer unpickle them
  with ``torch.load(weights_only=False)``, i.e. a crafted file runs code (the control test below shows it). So
  ``PromptedPredictor.from_trained_model_folder`` (``sam3d-nnunet predict``, the interactive session, the napari
  plugin) and ``nnUNetTrainerSAM3D.load_checkpoint`` (``nnUNetv2_train --c`` / ``--val``) first read the file with
  ``weights_only=True`` plus an allow-list of the numpy scalar/dtype/array globals nnU-Net's checkpoints hold
  (``sam3d_nnunet.validation.load_checkpoint_safely``) and refuse anything else before nnU-Net sees it.
* split pickles go through a restricted unpickler (lists, dicts, strings, tuples, ints).
* case ids (input file names, click files, dataset.json's ``dataset`` keys) and dataset.json's ``file_ending``
  must be plain names: nothing can be written outside the output folder.

Every payload creates a marker file when it runs; the tests assert the marker never appears.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reliability_helpers import (DATASET_JSON, Payload, assert_clean_cli_error, cli_env, files_outside,
                                 make_model_folder, nnunet_checkpoint, record, run_cli, tiny_plans, write_image)

SUITE = "hostile"
HOWS = ["system", "exec", "eval"]


def _sam_state(variant: str = "tiny") -> dict:
    from sam3d_nnunet.model.sam_checkpoint import build_random_sam
    return build_random_sam(variant, 0).state_dict()


def _hostile_sam_checkpoint(path: Path, marker: Path, how: str, legacy: bool = False) -> Path:
    state = dict(_sam_state())
    state["image_encoder.extra"] = Payload(marker, how)  # hidden among real tensors
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


def test_payloads_are_live_control(tmp_path):
    """Control: nnU-Net's own loader (weights_only=False) DOES run each payload, so a missing marker below means
    the code was refused, not that the payload was broken."""
    paths = [_hostile_sam_checkpoint(tmp_path / f"{how}.pth", tmp_path / f"ran_{how}", how) for how in HOWS]
    subprocess.run([sys.executable, "-c", "import sys, torch\nfor p in sys.argv[1:]: torch.load(p, weights_only=False)",
                    *map(str, paths)], check=True, timeout=180, capture_output=True)
    for how in HOWS:
        assert (tmp_path / f"ran_{how}").exists(), f"the {how} payload did not run under weights_only=False"


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("how", HOWS)
def test_sam_checkpoint_that_would_run_code_is_refused(tmp_path, how, legacy):
    from sam3d_nnunet.model import SAM3DNet, SAMCheckpointError, load_sam_checkpoint, read_sam_state_dict
    marker = tmp_path / "ran"
    path = _hostile_sam_checkpoint(tmp_path / "sam.pth", marker, how, legacy)
    with pytest.raises(SAMCheckpointError, match=r"sam\.pth: refused"):
        read_sam_state_dict(path)
    net = SAM3DNet(1, 3, variant="tiny", patch_size=(32, 32, 32), token_stride=4, window_size=4)
    with pytest.raises(SAMCheckpointError, match="refused"):
        load_sam_checkpoint(net, path)  # what the trainer's initialize() calls
    assert not marker.exists()
    record(SUITE, "SAM checkpoint", "pickle payload (os.system / exec / eval; zip and legacy torch.save format)",
           "refused, code not run", detail=f"{how}, {'legacy' if legacy else 'zip'}")


def test_model_summary_cli_refuses_hostile_sam_checkpoint(tmp_path):
    marker = tmp_path / "ran"
    path = _hostile_sam_checkpoint(tmp_path / "sam.pth", marker, "system")
    p = run_cli(["model-summary", "--variant", "tiny", "--patch-size", "32", "32", "32", "--window-size", "4",
                 "--checkpoint", path], timeout=180)
    assert_clean_cli_error(p, str(path), "refused")
    assert not marker.exists()
    record(SUITE, "SAM checkpoint", "pickle payload, command line (model-summary --checkpoint)",
           "refused (error: line), code not run")


# ------------------------------------------------------------------------------------------ trained models
def _hostile_model(root: Path, marker: Path, how: str, where: str = "logging") -> Path:
    plans = tiny_plans()
    ckpt = nnunet_checkpoint(plans, DATASET_JSON)
    if where == "logging":
        ckpt["logging"]["note"] = Payload(marker, how)
    elif where == "weights":
        ckpt["network_weights"]["evil"] = Payload(marker, how)
    else:
        ckpt = Payload(marker, how)  # the whole file
    return make_model_folder(root, ckpt, plans=plans)


def test_real_nnunet_checkpoint_layout_loads(tmp_path):
    """The allow-list is enough for nnU-Net's checkpoint layout (numpy scalars in the log): the model loads."""
    from sam3d_nnunet.inference import PromptedPredictor
    folder = make_model_folder(tmp_path)
    pred = PromptedPredictor.from_trained_model_folder(str(folder), (0,))
    assert pred.trainer_name == "nnUNetTrainerSAM3D" and pred.prompted
    pred = PromptedPredictor.from_trained_model_folder(str(folder), None)  # nnU-Net's fold auto-detection
    assert len(pred.list_of_parameters) == 1


@pytest.mark.parametrize("where", ["logging", "weights", "whole file"])
@pytest.mark.parametrize("how", HOWS)
def test_trained_model_checkpoint_that_would_run_code_is_refused(tmp_path, how, where):
    from sam3d_nnunet.inference import InferenceInputError, PromptedPredictor
    from sam3d_nnunet.inference.session import load_predictor
    from sam3d_nnunet.trainers.nnUNetTrainerSAM3D import nnUNetTrainerSAM3D
    from sam3d_nnunet.validation import UnsafeCheckpointError
    marker = tmp_path / "ran"
    folder = _hostile_model(tmp_path, marker, how, where)
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    for folds in [(0,), None]:
        with pytest.raises(UnsafeCheckpointError, match="refused"):
            PromptedPredictor.from_trained_model_folder(str(folder), folds)
    with pytest.raises(InferenceInputError, match=rf"{ckpt}' refused"):
        load_predictor(folder, (0,))  # predict and the interactive session
    with pytest.raises(UnsafeCheckpointError, match="refused"):  # nnUNetv2_train --c / --val
        nnUNetTrainerSAM3D.load_checkpoint(object.__new__(nnUNetTrainerSAM3D), str(ckpt))
    assert not marker.exists()
    record(SUITE, "trained-model checkpoint", "pickle payload (os.system / exec / eval; in the log, in the weights, "
           "the whole file)", "refused by predict, the session and the trainer's --c; code not run",
           detail=f"{how}, {where}")


@pytest.mark.slow
def test_predict_cli_refuses_hostile_model_checkpoint(tmp_path):
    marker = tmp_path / "ran"
    folder = _hostile_model(tmp_path / "model", marker, "system")
    write_image(np.zeros((16, 16, 16), np.int16), tmp_path / "in" / "a_0000.nii.gz")
    p = run_cli(["predict", "-i", tmp_path / "in", "-o", tmp_path / "out", "-m", folder, "-f", "0", "--auto",
                 "-device", "cpu", "--disable_progress_bar"], timeout=300)
    assert_clean_cli_error(p, str(folder / "fold_0" / "checkpoint_final.pth"), "refused")
    assert not marker.exists() and not (tmp_path / "out").exists()
    record(SUITE, "trained-model checkpoint", "pickle payload, command line (predict -m)",
           "refused (error: line), code not run")


@pytest.mark.parametrize("how", HOWS)
def test_split_pickle_that_would_run_code_is_refused(tmp_path, how):
    import pickle

    from sam3d_nnunet.conversion import ConversionError, load_split_pickle
    marker = tmp_path / "ran"
    folds = [{"train": ["a"], "val": ["b"], "test": [Payload(marker, how)]} for _ in range(5)]
    path = tmp_path / "split.pkl"
    path.write_bytes(pickle.dumps(folds))
    with pytest.raises(ConversionError, match="refusing"):
        load_split_pickle(str(path))
    assert not marker.exists()
    if how == "system":
        p = run_cli(["convert", "splits", path, "-d", "999"], env=cli_env(nnUNet_preprocessed=tmp_path,
                                                                          nnUNet_raw=tmp_path), timeout=180)
        assert_clean_cli_error(p, str(path), "refusing")
        assert not marker.exists()
    record(SUITE, "split pickle", "pickle payload (os.system / exec / eval; one also on the command line)",
           "refused, code not run", detail=how)


# ------------------------------------------------------------------------------------------ paths
ESCAPING_CASE_IDS = ["../escape", "../../tmp/escape", "/tmp/escape_abs", "a/b", "..", "x\\y", "a..b", ""]


@pytest.mark.parametrize("case", ESCAPING_CASE_IDS)
def test_click_file_case_ids_cannot_write_outside(tmp_path, case):
    from test_predict import _oracle_predictor

    from sam3d_nnunet.commands.predict import predict_folder
    from sam3d_nnunet.prompts import ClickFileError, read_click_file
    write_image(np.zeros((16, 16, 16), np.int16), tmp_path / "in" / "a_0000.nii.gz")
    path = tmp_path / "clicks.json"
    path.write_text(json.dumps({"coordinate_system": "voxel", "cases": {
        "a": {"1": [{"point": [8, 8, 8], "positive": True}]},
        case: {"1": [{"point": [8, 8, 8], "positive": True}]}}}))
    with pytest.raises(ClickFileError, match="case id"):
        read_click_file(path)
    with pytest.raises(ClickFileError):
        predict_folder(_oracle_predictor(), str(tmp_path / "in"), str(tmp_path / "out" / "o"),
                       clicks_file=str(path), progress=False)
    assert not files_outside(tmp_path, [tmp_path / "in", path])
    record(SUITE, "paths", "click-file case id that leaves the folder ('../x', '/abs', 'a/b', '..', 'a..b', '')",
           "clear error, nothing written", detail=repr(case))


@pytest.mark.parametrize("ending", ["/../../escape.nii.gz", "../escape.nii.gz", ".nii.gz/../../x", "", ".."])
def test_model_file_ending_cannot_write_outside(tmp_path, ending):
    from test_predict import _oracle_predictor

    from sam3d_nnunet.commands.predict import predict_folder
    from sam3d_nnunet.inference import InferenceInputError
    write_image(np.zeros((16, 16, 16), np.int16), tmp_path / "in" / "a_0000.nii.gz")
    predictor = _oracle_predictor()
    predictor.dataset_json = dict(predictor.dataset_json, file_ending=ending)
    with pytest.raises(InferenceInputError, match="file_ending"):
        predict_folder(predictor, str(tmp_path / "in"), str(tmp_path / "work" / "out"), auto=True, progress=False)
    assert not files_outside(tmp_path, [tmp_path / "in"])
    record(SUITE, "paths", "model dataset.json file_ending with a path in it", "clear error, nothing written",
           detail=repr(ending))


def test_input_names_cannot_write_outside(tmp_path):
    from test_predict import _oracle_predictor

    from sam3d_nnunet.commands.predict import predict_folder
    from sam3d_nnunet.inference import InferenceInputError
    write_image(np.zeros((16, 16, 16), np.int16), tmp_path / "in" / "a..b_0000.nii.gz")
    with pytest.raises(InferenceInputError, match="a..b"):
        predict_folder(_oracle_predictor(), str(tmp_path / "in"), str(tmp_path / "out"), auto=True, progress=False)
    assert not (tmp_path / "out").exists()
    record(SUITE, "paths", "input image whose case id holds '..'", "clear error, nothing written")


def _raw(root: Path, dataset_json: dict) -> Path:
    folder = root / "Dataset604_Hostile"
    img = np.zeros((12, 12, 12), np.float32)
    for case in ("a", "b"):
        write_image(img, folder / "imagesTr" / f"{case}_0000.nii.gz")
        write_image(np.zeros((12, 12, 12), np.uint8), folder / "labelsTr" / f"{case}.nii.gz")
    dj = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "x": 1}, "numTraining": 2,
          "file_ending": ".nii.gz", **dataset_json}
    (folder / "dataset.json").write_text(json.dumps(dj))
    return folder


@pytest.mark.parametrize("hostile", [
    {"dataset": {"../../escape": {"images": ["imagesTr/a_0000.nii.gz"], "label": "labelsTr/a.nii.gz"}}},
    {"dataset": {"/tmp/escape_abs": {"images": ["imagesTr/a_0000.nii.gz"], "label": "labelsTr/a.nii.gz"}}},
    {"file_ending": "/../../escape.nii.gz"},
], ids=["case_dotdot", "case_absolute", "file_ending"])
def test_raw_dataset_json_names_cannot_write_outside(tmp_path, hostile):
    from sam3d_nnunet.validation import InputFileError, validate_raw_dataset
    folder = _raw(tmp_path, hostile)
    with pytest.raises(InputFileError, match="plain"):
        validate_raw_dataset(folder)
    record(SUITE, "paths", "raw dataset.json case id or file_ending with a path in it",
           "clear error before planning", detail=json.dumps(hostile)[:80])


@pytest.mark.slow
def test_plan_cli_refuses_escaping_case_name(tmp_path):
    hostile = {"dataset": {"../../../escape": {"images": ["imagesTr/a_0000.nii.gz"], "label": "labelsTr/a.nii.gz"},
                           "b": {"images": ["imagesTr/b_0000.nii.gz"], "label": "labelsTr/b.nii.gz"}}}
    _raw(tmp_path / "raw", hostile)
    (tmp_path / "pre").mkdir()
    env = cli_env(nnUNet_raw=tmp_path / "raw", nnUNet_preprocessed=tmp_path / "pre", nnUNet_results=tmp_path / "res")
    p = run_cli(["plan_and_preprocess", "-d", "604", "-c", "3d_fullres", "--sam-variant", "tiny", "-npfp", "1",
                 "-np", "1", "--no_pbar"], env=env, timeout=300)
    assert_clean_cli_error(p, "../../../escape", "plain")
    assert not any((tmp_path / "pre").iterdir())
    assert not files_outside(tmp_path, [tmp_path / "raw"])
    record(SUITE, "paths", "raw dataset.json case id '../../../escape', command line (plan_and_preprocess)",
           "clear error, nothing written")
