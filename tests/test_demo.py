"""``sam3d-nnunet demo``: the orchestration end to end with a reduced budget, idempotent reruns, the short
trainers. The full demo (about 8 minutes alone on 2 CPU cores) is run by hand; see BENCHMARKS.md."""
from __future__ import annotations

import json
import os
import re

import pytest


# ---------------------------------------------------------------------------------------------------------
# fast
# ---------------------------------------------------------------------------------------------------------

def test_demo_is_registered_and_documents_itself():
    from sam3d_nnunet.cli import SUBCOMMANDS, build_parser
    assert SUBCOMMANDS["demo"] == "sam3d_nnunet.commands.demo"
    assert SUBCOMMANDS["benchmark"] == "sam3d_nnunet.commands.benchmark"
    args = build_parser(["demo"]).parse_args(["demo", "--workdir", "/tmp/x", "--device", "cpu"])
    assert args.workdir == "/tmp/x" and args.device == "cpu" and args.fast is False
    help_text = build_parser(["demo"])._subparsers._group_actions[0].choices["demo"].format_help()
    assert "--fast" not in help_text, "the reduced budget is for tests only"
    assert "random" in help_text.lower() and "offline" in help_text


def test_device_resolution(monkeypatch):
    import torch
    from sam3d_nnunet.commands.demo import DemoError, resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(DemoError):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


def test_budget_trainers_are_found_by_nnunet_and_read_their_budget(tmp_path, monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    import sam3d_nnunet.benchmark.budget_trainers as bt
    from sam3d_nnunet.commands.ext_trainer_dir import ext_trainer_dir
    folder = bt.write_ext_trainer_shim(tmp_path / "ext")
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([ext_trainer_dir(), str(folder)]))
    for name in ("nnUNetTrainer_budget", "nnUNetTrainer_budget_noTTA", "nnUNetTrainer_budget_noDA",
                 "nnUNetTrainerSAM3D_budget", "nnUNetTrainerSAM3D_budget_noDA",
                 "nnUNetTrainerSAM3D_allprompts_budget", "nnUNetTrainerSAM3D_allprompts_budget_noTTA"):
        cls = recursive_find_trainer_class_by_name(name)
        assert cls is getattr(bt, name) and cls.__module__ == "sam3d_nnunet.benchmark.budget_trainers"
    from sam3d_nnunet.trainers.nnUNetTrainerSAM3D import nnUNetTrainerSAM3D_allprompts
    assert issubclass(bt.nnUNetTrainerSAM3D_allprompts_budget_noTTA, nnUNetTrainerSAM3D_allprompts)
    assert bt.nnUNetTrainerSAM3D_allprompts_budget.prompt_mix == nnUNetTrainerSAM3D_allprompts.prompt_mix
    monkeypatch.setenv("SAM3D_BUDGET_SAM_ITERS", "7")
    assert bt._env_int("SAM3D_BUDGET_SAM_ITERS", 32) == 7
    monkeypatch.setenv("SAM3D_BUDGET_SAM_ITERS", "0")
    with pytest.raises(ValueError):
        bt._env_int("SAM3D_BUDGET_SAM_ITERS", 32)
    monkeypatch.delenv("SAM3D_BUDGET_SAM_ITERS")
    assert bt._env_int("SAM3D_BUDGET_SAM_ITERS", 32) == 32


def test_demo_trainers_train_without_data_augmentation():
    """The demo's pair (``*_budget_noDA``) trains on the validation transforms (nnU-Net's ``nnUNetTrainerNoDA``),
    the others keep nnU-Net's augmentation."""
    import sam3d_nnunet.benchmark.budget_trainers as bt
    from sam3d_nnunet.commands.demo import BASELINE_TRAINER, SAM_TRAINER

    def transforms(cls):
        compose = cls.get_training_transforms((32, 32, 32), (-0.5, 0.5), None, (0, 1, 2), False,
                                              foreground_labels=[1, 2])
        return {type(t).__name__ for t in compose.transforms}

    for name in (SAM_TRAINER, BASELINE_TRAINER):
        assert name.endswith("_noDA") and not {"SpatialTransform", "MirrorTransform"} & transforms(getattr(bt, name))
    assert {"SpatialTransform", "MirrorTransform"} <= transforms(bt.nnUNetTrainerSAM3D_budget)


def test_sam_budget_sets_learning_rate_and_training_clicks(monkeypatch):
    """The demo's SAM3D budget: the learning rate and the training clicks of each polarity come from the
    environment; unset, the trainer's own values stay."""
    import types

    import sam3d_nnunet.benchmark.budget_trainers as bt
    from sam3d_nnunet.trainers.nnUNetTrainerSAM3D import nnUNetTrainerSAM3D
    for name in ("SAM3D_BUDGET_SAM_LR", "SAM3D_BUDGET_SAM_MAX_CLICKS"):
        monkeypatch.delenv(name, raising=False)
    trainer = types.SimpleNamespace(initial_lr=4e-4, max_positive_clicks=nnUNetTrainerSAM3D.max_positive_clicks,
                                    max_negative_clicks=nnUNetTrainerSAM3D.max_negative_clicks)
    bt._apply_sam_budget(trainer)
    assert (trainer.initial_lr, trainer.max_positive_clicks, trainer.max_negative_clicks) == (4e-4, 10, 10)
    monkeypatch.setenv("SAM3D_BUDGET_SAM_LR", "3e-3")
    monkeypatch.setenv("SAM3D_BUDGET_SAM_MAX_CLICKS", "3")
    bt._apply_sam_budget(trainer)
    assert (trainer.initial_lr, trainer.max_positive_clicks, trainer.max_negative_clicks) == (3e-3, 3, 3)
    monkeypatch.setenv("SAM3D_BUDGET_SAM_MAX_CLICKS", "0")
    with pytest.raises(ValueError):
        bt._apply_sam_budget(trainer)
    from sam3d_nnunet.commands.demo import FULL, _Demo
    env = _Demo("/tmp/unused", "cpu", FULL, print).env()
    assert env["SAM3D_BUDGET_SAM_MAX_CLICKS"] == str(FULL.sam_max_clicks) == "3"


def test_training_log_is_condensed_to_one_line_per_epoch():
    from sam3d_nnunet.commands.demo import _TrainFilter
    f = _TrainFilter(5)
    lines = ["2026-11-28 13:40:09.792554: Epoch 2", "2026-11-28 13:40:09.79: Current learning rate: 0.0003",
             "2026-11-28 13:40:09.792554: train_loss 0.258", "2026-11-28 13:40:09.792554: val_loss 0.1",
             "2026-11-28 13:40:09.792806: Pseudo dice [np.float32(0.7628), np.float32(0.0359)]",
             "2026-11-28 13:40:09.792875: Epoch time: 25.16 s"]
    shown = [s for s in map(f, lines) if s]
    assert shown == ["epoch 3/5: train_loss 0.258, val_loss 0.1, pseudo Dice [0.7628, 0.0359], epoch time: 25.16 s"]


# ---------------------------------------------------------------------------------------------------------
# slow: the orchestration with a reduced budget
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def demo_fast_run(tmp_path_factory):
    """Runs ``sam3d-nnunet demo --fast``'s orchestration once (shared with test_benchmark.py's fixture: same
    folder; if that one ran first, this run finds every step finished). Returns (workdir, console lines)."""
    from sam3d_nnunet.commands.demo import FAST, run_demo
    root = tmp_path_factory.getbasetemp() / "sam3d_demo_fast"
    lines = []
    report = run_demo(str(root), device="cpu", budget=FAST, out=lines.append)
    return root, lines, report


@pytest.mark.slow
def test_demo_runs_end_to_end(demo_fast_run):
    root, lines, report = demo_fast_run
    text = "\n".join(lines)
    for i in range(1, 8):
        assert re.search(rf"^\[{i}/7\] ", text, re.M), f"step {i} announced"
    assert "[5/7] Training SAM3D (nnUNetTrainerSAM3D_budget_noDA" in text and "on fold 0" in text
    assert "[6/7] Training the nnU-Net baseline (nnUNetTrainer_budget_noDA" in text
    assert "not available offline" in text and "RANDOM weights" in text
    assert report == root / "nnUNet_results" / "Dataset990_SAM3DDemo" / "benchmark" / "report.md"
    assert report.is_file() and f"Report: {report}" in text
    assert "| method | clicks per class |" in text, "the main table is printed"
    res = root / "nnUNet_results" / "Dataset990_SAM3DDemo"
    for trainer, plans in (("nnUNetTrainerSAM3D_budget_noDA", "SAM3DPlans"),
                           ("nnUNetTrainer_budget_noDA", "nnUNetPlans")):
        fold = res / f"{trainer}__{plans}__3d_fullres" / "fold_0"
        assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()
        assert not (fold / "validation" / "prompts.json").exists(), "validation/ holds automatic predictions"
        assert (fold / "validation_clicks1_seed0" / "summary.json").is_file() == (plans == "SAM3DPlans")
    plans = json.loads((root / "nnUNet_preprocessed" / "Dataset990_SAM3DDemo" / "SAM3DPlans.json").read_text())
    assert plans["sam3d"]["sam_variant"] == "tiny"
    assert plans["sam3d"]["sam_checkpoint"] == str(root / "sam_tiny_random_weights.pth")
    results = json.loads((report.parent / "results.json").read_text())
    assert results["device"] == "cpu" and results["folds"] == [0]
    assert (root / "logs" / "5_train_nnUNetTrainerSAM3D_budget_noDA.log").is_file()


@pytest.mark.slow
def test_demo_rerun_skips_finished_steps(demo_fast_run):
    from sam3d_nnunet.commands.demo import FAST, run_demo
    root, _, report = demo_fast_run
    lines = []
    assert run_demo(str(root), device="cpu", budget=FAST, out=lines.append) == report
    text = "\n".join(lines)
    assert "already there" in text and "already preprocessed (SAM3DPlans)" in text
    assert "already preprocessed (nnUNetPlans)" in text
    assert text.count("already trained and validated") == 2
    assert "nnUNetv2_train" not in text and "plan_and_preprocess -d" not in text
    results = json.loads((report.parent / "results.json").read_text())
    sam = results["methods"]["nnUNetTrainerSAM3D_budget_noDA__SAM3DPlans__3d_fullres"]["per_case"]
    assert all(e["reused"] for v in sam.values() for e in v["protocols"].values())


@pytest.mark.slow
def test_demo_refuses_a_workdir_made_with_another_budget(demo_fast_run):
    from sam3d_nnunet.commands.demo import FULL, DemoError, run_demo
    root, _, _ = demo_fast_run
    with pytest.raises(DemoError, match="other settings"):
        run_demo(str(root), device="cpu", budget=FULL, out=lambda s: None)
