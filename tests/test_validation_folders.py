"""Cross-validation folders keep nnU-Net's contract (issue 16).

``fold_X/validation`` of a SAM3D model holds its AUTOMATIC predictions (nnU-Net's own validation, what
``nnUNetv2_predict`` gives), so ``nnUNetv2_find_best_configuration``, postprocessing and ensembling compare it like
with like with nnU-Net's models; the prompted cross-validation lives in ``fold_X/validation_clicks{N}_seed{S}``.

Fast tests: the folder names, the old-layout migration, the benchmark's and ``crossval-summary``'s refusals,
``crossval-summary`` on synthetic folds, the demo's "already validated" check. Slow
test (``slow``; skipped with a reason when ``../shared/data`` is absent): 10 hippocampus cases, the tiny SAM3D
variant (``nnUNetTrainerSAM3D_1epoch``) and nnU-Net's own trainer on a short budget (``nnUNetTrainer_budget_noTTA``,
1 epoch x 2 iterations, validated without test-time mirroring to save time) trained on fold 0, ``find_best_configuration`` over both, a fresh ``nnUNetv2_predict``,
``crossval-summary``, and an old-layout folder rewritten by ``nnUNetv2_train --val``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from msd_subset import msd_subset
from test_trainer_integration import _env, _exe, _run

DATASET_ID = 916
DATASET = "Dataset916_Hippocampus"
SAM = "nnUNetTrainerSAM3D_1epoch"
BASE = "nnUNetTrainer_budget_noTTA"  # nnU-Net's trainer, 1 epoch x 2 iterations, validation without mirroring
PROMPTED = "validation_clicks1_seed0"
OLD_PROTOCOL = ("1 uniformly random voxel(s) of each class present in the native ground truth, seed "
                "case_class_seed(case, class, 0)")


# ---------------------------------------------------------------------------------------------------------
# fast: names, old layout
# ---------------------------------------------------------------------------------------------------------

def _old_fold(root: Path, protocol: str, name: str = "fold_0") -> Path:
    fold = root / name
    (fold / "validation").mkdir(parents=True)
    (fold / "validation" / "case_1.nii.gz").write_bytes(b"x")
    (fold / "validation" / "prompts.json").write_text(json.dumps({"protocol": protocol, "cases": {}}))
    return fold


def test_folder_names_and_old_layout_migration(tmp_path):
    from sam3d_nnunet.evaluation.validation_folders import (is_old_layout, migrate_old_layout,
                                                            parse_prompted_folder_name, prompted_folder_name,
                                                            prompted_folders)
    assert prompted_folder_name(1, 0) == PROMPTED and parse_prompted_folder_name(PROMPTED) == (1, 0)
    assert parse_prompted_folder_name("validation_clicks10_seed7") == (10, 7)
    assert parse_prompted_folder_name("validation") is None and parse_prompted_folder_name("validation_x") is None
    logged = []
    # prompted predictions go to the folder their own protocol names
    fold = _old_fold(tmp_path / "a", OLD_PROTOCOL.replace("(case, class, 0)", "(case, class, 3)"))
    assert is_old_layout(str(fold))
    assert migrate_old_layout(str(fold), logged.append) == "validation_clicks1_seed3"
    assert not (fold / "validation").exists() and (fold / "validation_clicks1_seed3" / "case_1.nii.gz").is_file()
    assert prompted_folders(str(fold)) == [("validation_clicks1_seed3", 1, 3)] and not is_old_layout(str(fold))
    assert migrate_old_layout(str(fold), logged.append) is None, "the new layout is left alone"
    # that folder already there, or a protocol that cannot be read: kept aside, never overwritten
    fold = _old_fold(tmp_path / "b", OLD_PROTOCOL)
    (fold / PROMPTED).mkdir()
    assert migrate_old_layout(str(fold), logged.append) == "validation_old_layout"
    fold = _old_fold(tmp_path / "c", "something else")
    (fold / "validation_old_layout").mkdir()
    assert migrate_old_layout(str(fold), logged.append) == "validation_old_layout_2"
    # the old automatic variant's predictions (no mirroring) are replaced
    fold = _old_fold(tmp_path / "d", "automatic (no clicks)")
    assert migrate_old_layout(str(fold), logged.append) is None and not (fold / "validation").exists()
    assert len(logged) == 4 and all(line.startswith("old layout:") for line in logged)


def test_benchmark_and_crossval_summary_refuse_an_old_layout(tmp_path, monkeypatch, capsys):
    from sam3d_nnunet.benchmark.runner import BenchmarkError, MethodSpec, check_folds
    from sam3d_nnunet.cli import main
    results = tmp_path / "res" / DATASET
    base = MethodSpec.parse("nnUNetTrainerSAM3D_auto:SAM3DPlans", "3d_fullres", "baseline")
    sam = MethodSpec.parse(f"{SAM}:SAM3DPlans", "3d_fullres", "sam3d")
    for m in (base, sam):
        fold = _old_fold(results / m.key, OLD_PROTOCOL)
        (fold / "checkpoint_final.pth").write_bytes(b"x")
    splits = [{"train": [], "val": ["case_1"]}]
    with pytest.raises(BenchmarkError) as error:
        check_folds([sam, base], [0], splits, str(results), ".nii.gz", "checkpoint_final.pth")
    text = str(error.value)
    assert "\n" not in text and "cannot be the automatic baseline" in text and "prompts.json" in text
    assert "--val" in text
    # as SAM3D model (predicted again by the benchmark) the old folder only lends its case list
    shutil.rmtree(results / base.key)
    (results / base.key / "fold_0" / "validation").mkdir(parents=True)
    (results / base.key / "fold_0" / "validation" / "case_1.nii.gz").write_bytes(b"x")
    assert check_folds([sam, base], [0], splits, str(results), ".nii.gz", "checkpoint_final.pth") == {0: ["case_1"]}

    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(tmp_path / ("res" if var == "nnUNet_results" else "other")))
    argv = ["crossval-summary", "-d", DATASET, "-tr", SAM, "-p", "SAM3DPlans", "-c", "3d_fullres", "-f", "0"]
    (results / sam.key / "plans.json").write_text("{}")
    (results / sam.key / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz", "labels": {"background": 0,
                                                                                                      "a": 1}}))
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("sam3d-nnunet crossval-summary: error: ")
    assert "older sam3d_nnunet" in err and "--val" in err
    assert main(argv[:4] + ["nnUNetTrainerNone"] + argv[5:]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model folder not found" in err


def _write_label(path: Path, array: np.ndarray) -> None:
    import SimpleITK as sitk
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))


def test_crossval_summary_scores_both_folder_kinds(tmp_path, monkeypatch, capsys):
    """Synthetic folds: automatic predictions perfect in fold 0, a prompted folder in fold 0 only, an empty
    prediction in fold 1; the table and the JSON hold Dice and NSD per class, aggregated over the folds present."""
    from sam3d_nnunet.cli import main
    from tiny_plans import DATASET_JSON, tiny_plans
    for var, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "pre"), ("nnUNet_results", "res")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    label = np.zeros((12, 12, 12), np.uint8)
    label[2:6, 2:6, 2:6] = 1
    label[7:10, 7:10, 7:10] = 2
    model = tmp_path / "res" / DATASET / f"{SAM}__SAM3DPlans__3d_fullres"
    model.mkdir(parents=True)
    (model / "dataset.json").write_text(json.dumps(DATASET_JSON))
    (model / "plans.json").write_text(json.dumps(tiny_plans(dataset_name=DATASET)))
    for case in ("a", "b", "c"):
        _write_label(tmp_path / "pre" / DATASET / "gt_segmentations" / f"{case}.nii.gz", label)
    for case in ("a", "b"):
        _write_label(model / "fold_0" / "validation" / f"{case}.nii.gz", label)
        _write_label(model / "fold_0" / PROMPTED / f"{case}.nii.gz", np.where(label == 2, 0, label))
    _write_label(model / "fold_1" / "validation" / "c.nii.gz", np.zeros_like(label))
    out = tmp_path / "cv.json"
    assert main(["crossval-summary", "-d", DATASET, "-tr", SAM, "-p", "SAM3DPlans", "-c", "3d_fullres", "-f", "0", "1",
                 "4", "-o", str(out), "-np", "1"]) == 0
    text = capsys.readouterr().out
    assert "| folder | protocol | folds | cases | organ (1) | tumour (2) | mean |" in text
    assert "| `fold_X/validation` | automatic (what nnUNetv2_predict gives) | 0 1 | 3 |" in text
    assert f"| `fold_X/{PROMPTED}` | 1 random click per class, seed 0 | 0 | 2 | 100.00 / 100.00 | 0.00 / 0.00 |" \
        in text
    summary = json.loads(out.read_text())
    assert summary["folds"] == [0, 1] and list(summary["sources"]) == ["validation", PROMPTED]
    auto = summary["sources"]["validation"]
    assert auto["mean"]["1"]["Dice"] == pytest.approx(2 / 3) and auto["mean"]["1"]["NSD@1mm"] == pytest.approx(2 / 3)
    assert auto["per_case"]["c"]["fold"] == 1 and auto["per_case"]["c"]["metrics"]["2"]["Dice"] == 0.0
    assert summary["sources"][PROMPTED]["clicks_per_class"] == 1 and summary["sources"][PROMPTED]["seed"] == 0


def test_demo_validates_again_unless_the_current_layout_is_complete(tmp_path):
    from sam3d_nnunet.commands.demo import _validated
    fold = _old_fold(tmp_path, OLD_PROTOCOL)
    (fold / "validation" / "summary.json").write_text("{}")
    assert not _validated(fold, prompted=True) and not _validated(fold, prompted=False)
    (fold / "validation" / "prompts.json").rename(fold / "prompts.json")
    assert _validated(fold, prompted=False) and not _validated(fold, prompted=True)
    (fold / PROMPTED).mkdir()
    (fold / PROMPTED / "summary.json").write_text("{}")
    assert _validated(fold, prompted=True)


# ---------------------------------------------------------------------------------------------------------
# slow: SAM3D next to nnU-Net, find_best_configuration, nnUNetv2_predict, --val on an old layout
# ---------------------------------------------------------------------------------------------------------

FIND_BEST = """
import json, sys
from nnunetv2.evaluation.find_best_configuration import find_best_configuration
models = [{'plans': 'SAM3DPlans', 'configuration': '3d_fullres', 'trainer': sys.argv[2]},
          {'plans': 'nnUNetPlans', 'configuration': '3d_fullres', 'trainer': sys.argv[3]}]
result = find_best_configuration(int(sys.argv[1]), models, allow_ensembling=True, num_processes=1, folds=(0,))
json.dump(result, open(sys.argv[4], 'w'), default=str)
"""


class Trained:
    def __init__(self, root: Path, env: dict):
        self.root, self.env = root, env
        self.results = root / "res" / DATASET
        self.preprocessed = root / "pre" / DATASET

    def fold(self, trainer: str, plans: str) -> Path:
        return self.results / f"{trainer}__{plans}__3d_fullres" / "fold_0"

    def val_cases(self):
        return sorted(json.loads((self.preprocessed / "splits_final.json").read_text())[0]["val"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data) -> Trained:
    source = shared_data / "Task04_Hippocampus"
    if not (source / "dataset.json").is_file():
        pytest.skip(f"real data not available: {source} does not exist (the shared data folder is absent)")
    from sam3d_nnunet.benchmark.budget_trainers import write_ext_trainer_shim
    from sam3d_nnunet.model import write_random_sam_checkpoint
    root = tmp_path_factory.mktemp("validation_folders")
    env = _env(root)
    env["nnUNet_extTrainer"] = os.pathsep.join([env["nnUNet_extTrainer"], str(write_ext_trainer_shim(root / "ext"))])
    env.update(SAM3D_BUDGET_NNUNET_EPOCHS="1", SAM3D_BUDGET_NNUNET_ITERS="2")
    # 2 cases per fold: one worker per nnU-Net pool spares the 2-core machine a dozen process starts
    env.update(nnUNet_def_n_proc="1")
    (root / "raw").mkdir()
    _run([_exe("nnUNetv2_convert_MSD_dataset"), "-i", msd_subset(source, root, 10), "-overwrite_id", DATASET_ID,
          "-np", "1"], env)
    sam_ckpt = write_random_sam_checkpoint("tiny", root / "sam.pth")
    _run([_exe("sam3d-nnunet"), "plan_and_preprocess", "-d", DATASET_ID, "-pl", "SAM3DPlanner", "-c", "3d_fullres",
          "--sam-variant", "tiny", "--sam-checkpoint", sam_ckpt, "-npfp", "1", "-np", "1", "--no_pbar"], env)
    _run([_exe("nnUNetv2_plan_and_preprocess"), "-d", DATASET_ID, "-c", "3d_fullres", "-npfp", "1", "-np", "1",
          "--no_pbar"], env)
    for trainer, plans in ((SAM, "SAM3DPlans"), (BASE, "nnUNetPlans")):
        _train(env, trainer, plans, "--npz")
    return Trained(root, env)


def _train(env: dict, trainer: str, plans: str, *extra):
    """nnUNetv2_train on fold 0 (one data-augmentation worker for a handful of iterations)."""
    return _run([_exe("nnUNetv2_train"), DATASET_ID, "3d_fullres", "0", "-tr", trainer, "-p", plans, "-device", "cpu",
                 *extra], dict(env, nnUNet_n_proc_DA="1"))


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def _per_case_dice(summary: dict) -> str:
    """Dice per case file and class, as JSON text (so that NaN, both masks empty, compares equal)."""
    return json.dumps({Path(c["prediction_file"]).name: {k: v["Dice"] for k, v in c["metrics"].items()}
                       for c in summary["metric_per_case"]}, sort_keys=True)


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.slow
def test_find_best_configuration_compares_automatic_predictions(trained, tmp_path, monkeypatch, capsys):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    sam_fold, base_fold = trained.fold(SAM, "SAM3DPlans"), trained.fold(BASE, "nnUNetPlans")
    cases = trained.val_cases()
    auto = _summary(sam_fold / "validation")

    # the automatic folder is what nnUNetv2_predict gives: same files, same Dice
    inp = tmp_path / "in"
    inp.mkdir()
    for case in cases:
        os.symlink(trained.root / "raw" / DATASET / "imagesTr" / f"{case}_0000.nii.gz", inp / f"{case}_0000.nii.gz")
    _run([_exe("nnUNetv2_predict"), "-i", inp, "-o", tmp_path / "predicted", "-d", DATASET_ID, "-c", "3d_fullres",
          "-f", "0", "-tr", SAM, "-p", "SAM3DPlans", "-device", "cpu", "-npp", "1", "-nps", "1",
          "--disable_progress_bar"], trained.env)
    fresh = compute_metrics_on_folder(str(trained.preprocessed / "gt_segmentations"), str(tmp_path / "predicted"),
                                      str(tmp_path / "predicted" / "summary.json"), SimpleITKIO(), ".nii.gz", [1, 2],
                                      None, num_processes=1)
    assert sorted(p.name for p in (sam_fold / "validation").glob("*.nii.gz")) == [f"{c}.nii.gz" for c in cases]
    assert _per_case_dice(json.loads((tmp_path / "predicted" / "summary.json").read_text())) == _per_case_dice(auto)
    assert fresh["foreground_mean"]["Dice"] == auto["foreground_mean"]["Dice"]
    for case in cases:
        assert np.array_equal(_read(tmp_path / "predicted" / f"{case}.nii.gz"),
                              _read(sam_fold / "validation" / f"{case}.nii.gz")), case
    assert not list((sam_fold / "validation").glob("prompts*.json")), "no clicks in the automatic folder"
    assert len(list((sam_fold / "validation").glob("*.npz"))) == len(cases), "--npz: probabilities to ensemble"

    # the prompted cross-validation is next to it, with its own summary and clicks, and differs
    prompted = _summary(sam_fold / PROMPTED)
    prompts = json.loads((sam_fold / PROMPTED / "prompts.json").read_text())
    assert sorted(prompts["cases"]) == cases and (prompts["clicks_per_class"], prompts["seed"]) == (1, 0)
    for case in cases:
        label = _read(trained.preprocessed / "gt_segmentations" / f"{case}.nii.gz")
        for c, v in prompts["cases"][case]["classes"].items():
            assert [label[tuple(int(i) for i in p)] for p in v["clicks_raw_voxel"]] == [int(c)], "on its class"
    assert all(Path(c["prediction_file"]).parent == sam_fold / PROMPTED for c in prompted["metric_per_case"])
    # other predictions (compared as probabilities: a model this short may predict almost no foreground either way)
    assert all(not np.allclose(np.load(sam_fold / PROMPTED / f"{c}.npz")["probabilities"],
                               np.load(sam_fold / "validation" / f"{c}.npz")["probabilities"]) for c in cases)

    # nnU-Net's model selection: every compared summary comes from automatic predictions
    out = tmp_path / "find_best.json"
    _run([sys.executable, "-c", FIND_BEST, DATASET_ID, SAM, BASE, out], trained.env)
    result = json.loads(out.read_text())
    results = result["all_results"]
    sam_key, base_key = f"{SAM}__SAM3DPlans__3d_fullres", f"{BASE}__nnUNetPlans__3d_fullres"
    assert set(results) == {sam_key, base_key, f"ensemble___{sam_key}___{base_key}___0"}
    assert results[sam_key] == auto["foreground_mean"]["Dice"] == fresh["foreground_mean"]["Dice"]
    assert results[base_key] == _summary(base_fold / "validation")["foreground_mean"]["Dice"]
    merged = trained.results / sam_key / "crossval_results_folds_0"
    assert _per_case_dice(_summary(merged)) == _per_case_dice(auto)

    # crossval-summary: both folder kinds in one table, the same Dice as nnU-Net's summaries (in this process)
    from sam3d_nnunet.cli import main
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, trained.env[var])
    cv = tmp_path / "cv.json"
    capsys.readouterr()
    assert main(["crossval-summary", "-d", str(DATASET_ID), "-tr", SAM, "-p", "SAM3DPlans", "-c", "3d_fullres",
                 "-f", "0", "1", "-o", str(cv), "-np", "1"]) == 0
    stdout = capsys.readouterr().out
    table = json.loads(cv.read_text())
    assert list(table["sources"]) == ["validation", PROMPTED] and table["folds"] == [0]
    for name, reference in (("validation", auto), (PROMPTED, prompted)):
        s = table["sources"][name]
        assert s["n_cases"] == len(cases) and s["folds"] == [0]
        for c in ("1", "2"):
            assert s["mean"][c]["Dice"] == pytest.approx(reference["mean"][c]["Dice"], nan_ok=True)
            assert 0.0 <= s["mean"][c]["NSD@5mm"] <= 1.0
    assert "| `fold_X/validation` | automatic (what nnUNetv2_predict gives) | 0 | 2 |" in stdout
    assert f"| `fold_X/{PROMPTED}` | 1 random click per class, seed 0 | 0 | 2 |" in stdout


@pytest.mark.slow
def test_val_rewrites_an_old_layout(trained):
    """A fold validated by an older version (prompted predictions and prompts.json in validation/) is refused by
    the benchmark as automatic, and ``nnUNetv2_train --val`` rewrites it in the current layout."""
    from sam3d_nnunet.benchmark.runner import BenchmarkError, MethodSpec, check_folds
    fold = trained.fold(SAM, "SAM3DPlans")
    auto_before, prompted_before = _summary(fold / "validation"), _summary(fold / PROMPTED)
    shutil.rmtree(fold / "validation")
    (fold / PROMPTED).rename(fold / "validation")  # the old layout: the clicked predictions in validation/
    splits = json.loads((trained.preprocessed / "splits_final.json").read_text())
    with pytest.raises(BenchmarkError, match="cannot be the automatic baseline"):
        check_folds([MethodSpec.parse(f"{SAM}:SAM3DPlans", "3d_fullres", "baseline")], [0], splits,
                    str(trained.results), ".nii.gz", "checkpoint_final.pth")
    p = _train(trained.env, SAM, "SAM3DPlans", "--val", "--npz")
    assert "old layout: the prompted predictions" in p.stdout
    assert not list((fold / "validation").glob("prompts*.json"))
    assert _per_case_dice(_summary(fold / "validation")) == _per_case_dice(auto_before)
    assert (fold / PROMPTED / "prompts.json").is_file()
    assert _summary(fold / PROMPTED)["foreground_mean"] == prompted_before["foreground_mean"]
    assert not [p.name for p in fold.iterdir() if p.name.startswith(".")], "no partial folder left"
