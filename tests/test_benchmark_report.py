"""``report.md`` says what the compared models are: the SAM variant and whether its encoder started from SAM's
weights (read from the plans), as the demo's console does."""
from __future__ import annotations

import pytest

SAM = "nnUNetTrainerSAM3D_budget__SAM3DPlans__3d_fullres"
BASE = "nnUNetTrainer_budget__nnUNetPlans__3d_fullres"


def _plans(variant, checkpoint):
    return {"configurations": {"3d_fullres": {"architecture": {"arch_kwargs": {"variant": variant}}}},
            "sam3d": {"sam_variant": variant, "sam_checkpoint": checkpoint}}


@pytest.mark.parametrize("variant, checkpoint, pretrained", [
    ("tiny", "/w/sam_tiny_random_weights.pth", False),  # SAM has no tiny release: random weights in SAM format
    ("vit_b", None, False),                             # planned without --sam-checkpoint
    ("vit_b", "/w/sam_vit_b_01ec64.pth", True),
])
def test_sam_weights_are_read_from_the_plans(variant, checkpoint, pretrained):
    from sam3d_nnunet.benchmark.runner import sam_weights_context
    assert sam_weights_context(_plans(variant, checkpoint)) == {"variant": variant, "checkpoint": checkpoint,
                                                               "pretrained": pretrained}
    arch_only = _plans(variant, checkpoint)
    del arch_only["sam3d"]
    assert sam_weights_context(arch_only) == {"variant": variant, "checkpoint": None, "pretrained": False}


def _results(sam_weights):
    summary = {"mean": {"1": {"Dice": 0.5, "NSD@5mm": 0.6}}, "foreground_mean": {"Dice": 0.5, "NSD@5mm": 0.6},
               "time_per_case_s": 1.0}
    case = {"fold": 0, "protocols": {"clicks_1": {"metrics": {"1": {"Dice": 0.5}}},
                                     "nnunet": {"metrics": {"1": {"Dice": 0.7}}}}}
    sam = {"display": "SAM3D (nnUNetTrainerSAM3D_budget)", "trainer": "nnUNetTrainerSAM3D_budget",
           "summary": {"clicks_1": summary}, "per_case": {"c1": case},
           "parameters": {"total": 1_234_567, "total_trainable": 456_789, "tuned": 456_789}}
    if sam_weights is not None:
        sam["sam_weights"] = sam_weights
    return {"dataset": "Dataset990_SAM3DDemo", "configuration": "3d_fullres", "folds": [0], "seed": 0,
            "labels": {"1": "organ"}, "clicks": [1], "iterative_steps": 0, "tolerances_mm": [5.0], "device": "cpu",
            "baseline": BASE, "sam_methods": [SAM], "cases": {"c1": {"fold": 0}}, "protocols": {},
            "methods": {SAM: sam,
                        BASE: {"display": "nnU-Net (nnUNetTrainer_budget)", "trainer": "nnUNetTrainer_budget",
                               "summary": {"nnunet": summary}, "per_case": {"c1": case},
                               "parameters": {"total": 30_000_000, "tuned": 30_000_000}}}}


def test_report_says_the_tiny_model_started_from_random_weights():
    from sam3d_nnunet.benchmark.report import render_report
    report = render_report(_results({"variant": "tiny", "checkpoint": "/w/sam_tiny_random_weights.pth",
                                     "pretrained": False}))
    assert "## Models" in report
    assert "**Note:** SAM3D (nnUNetTrainerSAM3D_budget) did not start from SAM's pretrained weights" in report
    line = next(l for l in report.splitlines() if l.startswith("- SAM3D (nnUNetTrainerSAM3D_budget): "))
    assert "SAM variant `tiny`" in line and "1.23 M parameters, 0.46 M of them trained" in line, line
    assert "**random weights**" in line and "sam_tiny_random_weights.pth" in line, line
    assert "- nnU-Net (nnUNetTrainer_budget): nnU-Net's own network, trained from scratch (30.00 M parameters)" \
        in report


def test_report_names_the_sam_checkpoint_of_a_pretrained_model():
    from sam3d_nnunet.benchmark.report import render_report
    report = render_report(_results({"variant": "vit_b", "checkpoint": "/w/sam_vit_b_01ec64.pth",
                                     "pretrained": True}))
    assert "**Note:**" not in report and "random weights" not in report
    assert "SAM variant `vit_b`" in report and "encoder weights from the SAM checkpoint `sam_vit_b_01ec64.pth`" \
        in report
    unplanned = render_report(_results({"variant": "vit_b", "checkpoint": None, "pretrained": False}))
    assert "the plans name no SAM checkpoint" in unplanned and "**Note:**" in unplanned
    unknown = render_report(_results(None))  # a results.json written before the record existed
    assert "not recorded" in unknown and "**Note:**" not in unknown
