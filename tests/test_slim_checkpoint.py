"""Slim checkpoints: the frozen SAM tensors left out and restored, exactly, from the SAM checkpoint.

Slow tests (``slow``): a tiny model trained with ``SAM3D_SLIM_CHECKPOINTS=1`` through nnU-Net's own commands
(interrupted, resumed with ``--c``, validated with ``--val``), predicted by ``sam3d-nnunet predict`` and loaded
by the napari plug-in's loader, against a full checkpoint of the same weights.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from phantom_training import phantom_env, train_phantoms
from sam3d_nnunet.model import SAM3DNet, SAMCheckpointError, load_sam_checkpoint, write_random_sam_checkpoint
from sam3d_nnunet.model.finetune import is_frozen
from sam3d_nnunet.model.slim_checkpoint import complete_slim_weights, omitted_keys, slim_weights


def _net(finetune="adapter"):
    torch.manual_seed(0)
    return SAM3DNet(1, 3, variant="tiny", patch_size=(32, 32, 32), window_size=4, finetune=finetune)


@pytest.mark.parametrize("finetune", ["adapter", "lora"])
def test_slim_weights_restore_the_full_state_exactly(tmp_path, finetune):
    sam = write_random_sam_checkpoint("tiny", tmp_path / "sam.pth", seed=3)
    trained = _net(finetune)
    load_sam_checkpoint(trained, sam)
    with torch.no_grad():  # "training": every trainable tensor moves
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    full = {k: v.clone() for k, v in trained.state_dict().items()}
    keys = omitted_keys(trained, sam)
    assert len(keys) > 10 and all(is_frozen(k, finetune) for k in keys)
    slim, record = slim_weights(full, keys, sam)
    assert not set(keys) & set(slim) and len(slim) == len(full) - len(keys)
    assert sum(v.numel() for v in slim.values()) < sum(v.numel() for v in full.values())
    restored = complete_slim_weights(slim, record, _net(finetune))  # a fresh, differently initialised network
    assert set(restored) == set(full)
    for k in full:
        assert torch.equal(restored[k], full[k]), k


def test_full_policy_omits_nothing(tmp_path):
    sam = write_random_sam_checkpoint("tiny", tmp_path / "sam.pth", seed=3)
    assert omitted_keys(_net("full"), sam) == []


def test_changed_or_missing_sam_checkpoint_is_refused(tmp_path):
    sam = write_random_sam_checkpoint("tiny", tmp_path / "sam.pth", seed=3)
    net = _net()
    load_sam_checkpoint(net, sam)
    slim, record = slim_weights(net.state_dict(), omitted_keys(net, sam), sam)
    shutil.move(sam, tmp_path / "moved.pth")
    with pytest.raises(SAMCheckpointError, match="does not exist"):
        complete_slim_weights(slim, record, _net(), "fold_0/checkpoint_final.pth")
    write_random_sam_checkpoint("tiny", sam, seed=4)  # same path and size, other weights
    with pytest.raises(SAMCheckpointError, match=r"checkpoint_final.pth is a slim checkpoint .* has changed"):
        complete_slim_weights(slim, record, _net(), "fold_0/checkpoint_final.pth")


# ------------------------------------------------------------------------------------------------ slow: a round trip
SLIM_TRAINER = "nnUNetTrainerSAM3D_5epochs"


def _nnunet_train(root, *extra):
    exe = Path(sys.executable).parent / "nnUNetv2_train"
    p = subprocess.run([str(exe), "952", "3d_fullres", "0", "-tr", SLIM_TRAINER, "-p", "SAM3DPlans", "-device", "cpu",
                        *extra], env=phantom_env(root, SAM3D_SLIM_CHECKPOINTS="1", PYTHONUNBUFFERED="1"),
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"nnUNetv2_train {' '.join(extra)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


@pytest.fixture(scope="module")
def slim_trained(tmp_path_factory):
    """A tiny SAM3DNet trained with SAM3D_SLIM_CHECKPOINTS=1 on 5 CT phantoms (32^3 at 3 mm): 2 epochs of
    ``nnUNetTrainerSAM3D_5epochs`` (their slim checkpoint renamed to ``checkpoint_latest.pth``, as a killed run
    leaves it, and kept as ``interrupted.pth``), then ``nnUNetv2_train ... --c`` to the end, with nnU-Net's final
    validation. Returns (root, model folder, the training log of the --c run)."""
    root = tmp_path_factory.mktemp("slim_trained")
    model = train_phantoms(root, 952, "SlimPhantoms", 32, SLIM_TRAINER, epochs=2, SAM3D_SLIM_CHECKPOINTS="1")
    fold = model / "fold_0"
    # what a run killed after epoch 2 leaves behind: checkpoint_latest.pth of epoch 2 (save_every = 1)
    os.replace(fold / "checkpoint_final.pth", fold / "checkpoint_latest.pth")
    shutil.copy(fold / "checkpoint_latest.pth", root / "interrupted.pth")
    assert not (fold / "checkpoint_final.pth").exists()
    logs_before = set(fold.glob("training_log_*.txt"))
    time.sleep(1.1)  # nnU-Net names its log files by the second
    _nnunet_train(root, "--c")
    (new_log,) = set(fold.glob("training_log_*.txt")) - logs_before
    return root, model, new_log.read_text()


def _checkpoint(path):
    from sam3d_nnunet.validation import load_checkpoint_safely
    return load_checkpoint_safely(path)


def _full_copy(model, dest):
    """The model folder with fold 0's slim checkpoint_final.pth written as a full one (the same weights)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sam3d_nnunet.model.slim_checkpoint import SLIM_KEY
    from sam3d_nnunet.trainers.nnUNetTrainerSAM3D import nnUNetTrainerSAM3D_5epochs
    shutil.copytree(model, dest, ignore=shutil.ignore_patterns("validation*", "*.png", "*.txt"))
    checkpoint = _checkpoint(dest / "fold_0" / "checkpoint_final.pth")
    pm = PlansManager(str(model / "plans.json"))
    net = nnUNetTrainerSAM3D_5epochs.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 3, False)
    checkpoint["network_weights"] = complete_slim_weights(checkpoint["network_weights"], checkpoint.pop(SLIM_KEY),
                                                          net)
    torch.save(checkpoint, dest / "fold_0" / "checkpoint_final.pth")
    return dest


@pytest.mark.slow
def test_trainer_writes_slim_checkpoints_and_resumes_from_one_with_c(slim_trained):
    from sam3d_nnunet.model.slim_checkpoint import SLIM_KEY
    root, model, resume_log = slim_trained
    fold = model / "fold_0"
    sam = root / "sam_tiny.pth"
    interrupted, final = _checkpoint(root / "interrupted.pth"), _checkpoint(fold / "checkpoint_final.pth")
    for checkpoint in (interrupted, final):
        record = checkpoint[SLIM_KEY]
        assert record["path"] == str(sam.resolve()) and record["size"] == sam.stat().st_size
        omitted = record["omitted_keys"]
        assert len(omitted) > 10 and all(is_frozen(k, "adapter") for k in omitted)
        assert not set(omitted) & set(checkpoint["network_weights"]), "frozen SAM tensors were written"
        assert any(not is_frozen(k, "adapter") for k in checkpoint["network_weights"])
    assert interrupted["current_epoch"] == 2 and final["current_epoch"] == 5
    # --c read the slim checkpoint_latest.pth and continued at epoch 2, not from scratch
    assert [int(e) for e in re.findall(r": Epoch (\d+)\s*$", resume_log, re.M)] == [2, 3, 4]
    assert len(final["logging"]["epoch_end_timestamps"]) == 5
    assert not (fold / "checkpoint_latest.pth").exists()
    # the trainable tensors moved on after the resume; the frozen ones are not in either file
    moved = [k for k, v in interrupted["network_weights"].items()
             if v.is_floating_point() and not torch.equal(v, final["network_weights"][k])]
    assert len(moved) > 10
    assert (fold / "validation" / "summary.json").is_file()
    assert (fold / "validation_clicks1_seed0" / "summary.json").is_file()


@pytest.mark.slow
def test_validation_only_reads_the_slim_final_checkpoint(slim_trained):
    root, model, _ = slim_trained
    fold = model / "fold_0"
    before = (fold / "checkpoint_final.pth").read_bytes()
    for folder in ("validation", "validation_clicks1_seed0"):
        shutil.rmtree(fold / folder)
    _nnunet_train(root, "--val")
    for folder in ("validation", "validation_clicks1_seed0"):
        summary = json.loads((fold / folder / "summary.json").read_text())
        assert {"1", "2"} <= set(summary["mean"]), folder
        assert all(summary["mean"][c]["Dice"] == summary["mean"][c]["Dice"] for c in ("1", "2")), "Dice is NaN"
    assert (fold / "checkpoint_final.pth").read_bytes() == before, "validation left the checkpoint as it was"


@pytest.mark.slow
def test_slim_and_full_checkpoints_of_the_same_weights_predict_the_same(slim_trained, tmp_path):
    """``sam3d-nnunet predict`` (clicks and automatic mode) and the napari plug-in's loader
    (``SessionAdapter.from_model_folder``) give identical results from the slim checkpoint and from a full
    checkpoint of the same weights."""
    import numpy as np
    import SimpleITK as sitk

    from sam3d_nnunet.cli import main
    from sam3d_nnunet.napari_plugin.session_adapter import SessionAdapter
    root, model, _ = slim_trained
    full = _full_copy(model, tmp_path / "full_model")
    slim_size = (model / "fold_0" / "checkpoint_final.pth").stat().st_size
    assert slim_size < (full / "fold_0" / "checkpoint_final.pth").stat().st_size
    raw = root / "raw" / "Dataset952_SlimPhantoms"
    case = "slimphantoms_004"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / f"{case}_0000.nii.gz").symlink_to(raw / "imagesTr" / f"{case}_0000.nii.gz")
    for name, folder in (("slim", model), ("full", full)):
        common = ["predict", "-i", str(tmp_path / "in"), "-m", str(folder), "-f", "0", "-device", "cpu",
                  "--disable_progress_bar"]
        assert main(common + ["-o", str(tmp_path / f"{name}_clicks"), "--simulate-clicks", str(raw / "labelsTr"),
                              "--save_probabilities"]) == 0
        assert main(common + ["-o", str(tmp_path / f"{name}_auto"), "--auto"]) == 0
    for mode in ("clicks", "auto"):
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{n}_{mode}" / f"{case}.nii.gz")))
                for n in ("slim", "full"))
        assert np.array_equal(a, b), mode
    p_slim, p_full = (np.load(tmp_path / f"{n}_clicks" / f"{case}.npz")["probabilities"] for n in ("slim", "full"))
    assert np.array_equal(p_slim, p_full) and p_slim[1:].max() > 0
    # the napari plug-in's model loader
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{case}.nii.gz")))
    point = tuple(float(v) for v in np.argwhere(label == 1).mean(0).round())
    maps = []
    for folder in (model, full):
        adapter = SessionAdapter.from_model_folder(folder, (0,))
        adapter.set_image_file(tmp_path / "in" / f"{case}_0000.nii.gz")
        maps.append(adapter.add_click(point, True, 1).label_map)
    assert maps[0].shape == label.shape and np.array_equal(maps[0], maps[1])
