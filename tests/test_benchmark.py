"""``sam3d-nnunet benchmark``: click protocols, fold checks, and a real run on a small phantom setup.

Fast tests: the seeded, nested click protocols, correction clicks in native space, the Dice-curve AUC, the fold
check. Slow tests (marked ``slow``) use the reduced demo's work folder (``sam3d-nnunet demo --fast``: 10 phantoms,
SAM3D and nnU-Net trained for a few iterations on fold 0, benchmark run), shared by the session and by
``tests/test_demo.py`` (the demo is idempotent: whichever module comes second finds it finished).
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

BIN = Path(sys.executable).parent


def _exe(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


# ---------------------------------------------------------------------------------------------------------
# fast: protocols
# ---------------------------------------------------------------------------------------------------------

def _label():
    lab = np.zeros((30, 32, 28), np.uint8)
    lab[5:25, 6:26, 4:24] = 1
    lab[12:17, 12:18, 10:15] = 2
    return lab


def test_clicks_are_seeded_nested_and_on_their_class():
    from sam3d_nnunet.benchmark.protocols import is_subset, nested_click_prompts
    from sam3d_nnunet.inference import protocol_prompts_from_label
    lab = _label()
    a = nested_click_prompts(lab, "case_001", [1, 2], [10, 1, 3], seed=0)
    b = nested_click_prompts(lab, "case_001", [1, 2], [1, 3, 10], seed=0)
    assert sorted(a) == [1, 3, 10]
    for k in (1, 3, 10):
        for c in (1, 2):
            assert np.array_equal(a[k][c].clicks, b[k][c].clicks), "same seed, same clicks"
            assert len(a[k][c].clicks) == k and (a[k][c].labels == 1).all()
            assert all(lab[tuple(p.astype(int))] == c for p in a[k][c].clicks)
    assert is_subset(a[1], a[3]) and is_subset(a[3], a[10]) and not is_subset(a[10], a[1])
    for c in (1, 2):
        assert np.array_equal(a[3][c].clicks, a[10][c].clicks[:3])
    # other seed or other case: other clicks
    other = nested_click_prompts(lab, "case_001", [1, 2], [3], seed=1)
    assert not np.array_equal(other[3][1].clicks, a[3][1].clicks)
    other_case = nested_click_prompts(lab, "case_002", [1, 2], [3], seed=0)
    assert not np.array_equal(other_case[3][1].clicks, a[3][1].clicks)
    # the 1-click protocol is the trainer's validation protocol (same seed -> same click)
    val = protocol_prompts_from_label(lab, "case_001", [1, 2], 1, 0)
    for c in (1, 2):
        assert np.array_equal(val[c].clicks, a[1][c].clicks)
    # an absent class gets no prompt
    lab2 = lab.copy()
    lab2[lab2 == 2] = 1
    assert sorted(nested_click_prompts(lab2, "x", [1, 2], [1], 0)[1]) == [1]
    with pytest.raises(ValueError):
        nested_click_prompts(lab, "x", [1], [0], 0)


def test_correction_clicks_in_native_space():
    from sam3d_nnunet.benchmark.protocols import add_correction_clicks_native, nested_click_prompts
    lab = _label()
    start = nested_click_prompts(lab, "c", [1, 2], [1], 0)[1]
    pred = lab.copy()
    pred[5:25, 6:26, 4:12][pred[5:25, 6:26, 4:12] == 1] = 0  # half the organ missed
    pred[0:4, 0:4, 0:4] = 2  # a small false-positive tumour blob; the tumour itself is right
    nxt = add_correction_clicks_native(start, pred, lab, spacing=(1.0, 1.0, 1.0))
    organ, tumour = nxt[1], nxt[2]
    assert len(organ.clicks) == 2 and organ.labels[-1] == 1
    p = organ.clicks[-1].astype(int)
    assert lab[tuple(p)] == 1 and pred[tuple(p)] != 1, "positive click inside the missed region"
    assert len(tumour.clicks) == 2 and tumour.labels[-1] == 0
    q = tumour.clicks[-1].astype(int)
    assert pred[tuple(q)] == 2 and lab[tuple(q)] != 2, "negative click inside the false positive"
    assert np.array_equal(organ.clicks[:1], start[1].clicks), "earlier clicks are kept"
    # a perfect prediction gets no new click
    same = add_correction_clicks_native(start, lab, lab, spacing=(1.0, 1.0, 1.0))
    assert all(len(same[c].clicks) == 1 for c in (1, 2))


def test_box_protocol_is_the_bounding_box_of_each_class_and_jitter_is_seeded():
    from sam3d_nnunet.benchmark.protocols import bounding_box_prompts, prompts_from_json, prompts_to_json
    from sam3d_nnunet.prompts.shapes import BoxPrompt, encode_prompts
    lab = _label()
    boxes = bounding_box_prompts(lab, "case_001", [1, 2], seed=0)
    assert sorted(boxes) == [1, 2]
    for c, (lo, hi) in {1: ((5, 6, 4), (24, 25, 23)), 2: ((12, 12, 10), (16, 17, 14))}.items():
        (box,) = boxes[c]
        assert isinstance(box, BoxPrompt) and box.positive
        assert tuple(box.lo) == lo and tuple(box.hi) == hi, "the exact bounding box, no jitter by default"
        dense = encode_prompts([box], lab.shape).dense
        assert dense[1][lab == c].all(), "the box covers every voxel of its class"
    assert bounding_box_prompts(lab, "other", [1, 2], seed=7) == boxes, "no jitter: no seed involved"
    a = bounding_box_prompts(lab, "case_001", [1, 2], seed=0, jitter=0.3)
    assert a == bounding_box_prompts(lab, "case_001", [1, 2], seed=0, jitter=0.3), "seeded"
    assert a != bounding_box_prompts(lab, "case_001", [1, 2], seed=1, jitter=0.3)
    for c in (1, 2):
        assert np.all(a[c][0].lo <= boxes[c][0].lo) and np.all(a[c][0].hi >= boxes[c][0].hi), "jitter widens"
        assert np.all(a[c][0].lo >= 0) and np.all(a[c][0].hi <= np.array(lab.shape) - 1), "inside the image"
    lab2 = np.where(lab == 2, 1, lab)
    assert sorted(bounding_box_prompts(lab2, "x", [1, 2], 0)) == [1], "an absent class gets no box"
    assert prompts_from_json(prompts_to_json(boxes)) == boxes, "JSON round trip"


def test_scribble_protocol_is_seeded_and_on_its_class():
    from sam3d_nnunet.benchmark.protocols import prompts_from_json, prompts_to_json, scribble_prompts
    from sam3d_nnunet.prompts.shapes import ClickPrompt, ScribblePrompt, prompt_points
    lab = _label()
    a = scribble_prompts(lab, "case_001", [1, 2], seed=0)
    assert sorted(a) == [1, 2]
    for c in (1, 2):
        (s,) = a[c]
        assert isinstance(s, ScribblePrompt) and s.positive and len(s.points) >= 2
        pts = np.round(np.asarray(s.points)).astype(int)
        assert (lab[tuple(pts.T)] == c).all(), "every vertex on its class"
        sampled = np.round(prompt_points(s, lab.shape)).astype(int)
        assert (lab[tuple(sampled.T)] == c).all(), "the points the sampler reads too"
    b = scribble_prompts(lab, "case_001", [1, 2], seed=0)
    assert prompts_to_json(a) == prompts_to_json(b), "same seed, same scribbles"
    assert prompts_to_json(scribble_prompts(lab, "case_001", [1, 2], seed=1)) != prompts_to_json(a)
    assert prompts_to_json(prompts_from_json(prompts_to_json(a))) == prompts_to_json(a)
    single = np.zeros((8, 8, 8), np.uint8)
    single[3, 4, 5] = 1
    (only,) = scribble_prompts(single, "x", [1], 0)[1]
    assert isinstance(only, ClickPrompt) and only.point == (3.0, 4.0, 5.0), "no room for a walk: a click"


def test_box_then_correction_clicks_in_native_space():
    from sam3d_nnunet.benchmark.protocols import add_correction_click_prompts, bounding_box_prompts
    from sam3d_nnunet.prompts.shapes import BoxPrompt, ClickPrompt
    lab = _label()
    boxes = bounding_box_prompts(lab, "c", [1, 2], 0)
    pred = lab.copy()
    pred[5:25, 6:26, 4:12][pred[5:25, 6:26, 4:12] == 1] = 0  # half the organ missed
    nxt = add_correction_click_prompts(boxes, pred, lab, spacing=(1.0, 1.0, 1.0))
    assert isinstance(nxt[1][0], BoxPrompt) and nxt[1][0] == boxes[1][0], "the box is kept"
    click = nxt[1][1]
    assert isinstance(click, ClickPrompt) and click.positive
    assert lab[tuple(np.array(click.point, int))] == 1 and pred[tuple(np.array(click.point, int))] != 1
    assert nxt[2] == boxes[2], "an exact class gets no click"
    assert len(boxes[1]) == 1, "the input is not changed"


def test_area_under_dice_curve():
    from sam3d_nnunet.benchmark.protocols import area_under_curve
    assert area_under_curve([0.5, 0.7, 0.9]) == pytest.approx(0.7)
    assert area_under_curve([1.0, 1.0]) == 1.0
    assert area_under_curve([0.2, float("nan"), 0.4]) == pytest.approx(0.3)
    assert np.isnan(area_under_curve([float("nan")]))


def test_fold_check_refuses_different_validation_cases(tmp_path):
    from sam3d_nnunet.benchmark.runner import BenchmarkError, MethodSpec, check_folds
    splits = [{"train": ["c", "d"], "val": ["a", "b"]}, {"train": ["a", "b"], "val": ["c", "d"]}]
    sam = MethodSpec.parse("nnUNetTrainerSAM3D:SAM3DPlans", "3d_fullres", "sam3d")
    base = MethodSpec.parse("nnUNetTrainer:nnUNetPlans", "3d_fullres", "baseline")

    def make(method, fold, cases):
        folder = tmp_path / method.key / f"fold_{fold}"
        (folder / "validation").mkdir(parents=True, exist_ok=True)
        (folder / "checkpoint_final.pth").write_bytes(b"x")
        for c in cases:
            (folder / "validation" / f"{c}.nii.gz").write_bytes(b"x")

    make(sam, 0, ["a", "b"])
    make(base, 0, ["a", "b"])
    assert check_folds([sam, base], [0], splits, str(tmp_path), ".nii.gz", "checkpoint_final.pth") == {0: ["a", "b"]}
    with pytest.raises(BenchmarkError, match="does not exist"):  # fold 1 never trained
        check_folds([sam, base], [0, 1], splits, str(tmp_path), ".nii.gz", "checkpoint_final.pth")
    make(sam, 1, ["c", "d"])
    make(base, 1, ["c", "e"])  # the baseline's fold 1 came from another split
    with pytest.raises(BenchmarkError, match=r"nnU-Net \(nnUNetTrainer\): fold 1 was validated on different cases"):
        check_folds([sam, base], [0, 1], splits, str(tmp_path), ".nii.gz", "checkpoint_final.pth")
    with pytest.raises(BenchmarkError, match="fold 7 does not exist"):
        check_folds([sam, base], [7], splits, str(tmp_path), ".nii.gz", "checkpoint_final.pth")
    with pytest.raises(BenchmarkError, match="TRAINER:PLANS"):
        MethodSpec.parse("nnUNetTrainer", "3d_fullres", "baseline")


# ---------------------------------------------------------------------------------------------------------
# slow: a real benchmark on the reduced demo's phantoms
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def demo_workdir(tmp_path_factory) -> Path:
    """The reduced demo's work folder (trained SAM3D + nnU-Net on fold 0, benchmark run); see test_demo.py."""
    from sam3d_nnunet.commands.demo import FAST, run_demo
    root = tmp_path_factory.getbasetemp() / "sam3d_demo_fast"
    run_demo(str(root), device="cpu", budget=FAST)
    return root


def _env(root: Path) -> dict:
    from sam3d_nnunet.commands.ext_trainer_dir import ext_trainer_dir
    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "nnUNet_raw"), nnUNet_preprocessed=str(root / "nnUNet_preprocessed"),
               nnUNet_results=str(root / "nnUNet_results"), nnUNet_def_n_proc="2", nnUNet_n_proc_DA="2",
               nnUNet_extTrainer=os.pathsep.join([ext_trainer_dir(), str(root / "ext_trainers")]))
    return env


NAME = "Dataset990_SAM3DDemo"
SAM = "nnUNetTrainerSAM3D_budget_noDA__SAM3DPlans__3d_fullres"
BASE = "nnUNetTrainer_budget_noDA__nnUNetPlans__3d_fullres"


@pytest.mark.slow
def test_benchmark_outputs_on_phantoms(demo_workdir):
    out = demo_workdir / "nnUNet_results" / NAME / "benchmark"
    results = json.loads((out / "results.json").read_text())
    splits = json.loads((demo_workdir / "nnUNet_preprocessed" / NAME / "splits_final.json").read_text())
    cases = sorted(splits[0]["val"])
    assert sorted(results["cases"]) == cases
    assert results["baseline"] == BASE and results["sam_methods"] == [SAM]
    sam, base = results["methods"][SAM], results["methods"][BASE]
    assert sorted(sam["per_case"]) == sorted(base["per_case"]) == cases, "both methods on the same cases"
    protocols = ["auto", "clicks_1", "clicks_3", "iterative_step_1", "iterative_step_2", "iterative_step_3"]
    metrics = ["Dice", "NSD@1mm", "NSD@2mm", "NSD@5mm"]
    for case in cases:
        assert base["per_case"][case]["protocols"]["nnunet"]["prediction_file"].endswith(
            f"{BASE}/fold_0/validation/{case}.nii.gz")
        # every phantom holds an organ and a tumour, so every score exists (Dice and NSD are only undefined,
        # None in results.json, where reference and prediction are both empty)
        for c in ("1", "2"):
            m = base["per_case"][case]["protocols"]["nnunet"]["metrics"][c]
            assert m["n_ref"] > 0, (case, c)
            for k in metrics:
                assert m[k] is not None and 0.0 <= m[k] <= 1.0, ("nnunet", case, c, k, m[k])
        for p in protocols:
            entry = sam["per_case"][case]["protocols"][p]
            for c in ("1", "2"):
                assert entry["metrics"][c]["n_ref"] > 0, (case, c)
                for k in metrics:
                    v = entry["metrics"][c][k]
                    assert v is not None and 0.0 <= v <= 1.0, (p, case, c, k, v)
            assert os.path.isfile(entry["prediction_file"])
            t = entry["time_breakdown_s"]
            assert entry["time_s"] == pytest.approx(t["preprocess"] + t["predict"] + t["export"])
        # iterative: step 1 is the 1-click prediction, every step adds at most one click per class
        it = sam["per_case"][case]["protocols"]
        assert it["iterative_step_1"]["same_as"] == "clicks_1"
        for s in (2, 3):
            for c, v in it[f"iterative_step_{s}"]["prompts"].items():
                prev = it[f"iterative_step_{s - 1}"]["prompts"][c]
                assert len(v["clicks_raw_voxel"]) - len(prev["clicks_raw_voxel"]) in (0, 1)
                assert v["clicks_raw_voxel"][: len(prev["clicks_raw_voxel"])] == prev["clicks_raw_voxel"]
        curve = sam["iterative"]["per_case"][case]["1"]["curves"]["Dice"]
        auc = sam["iterative"]["per_case"][case]["1"]["auc"]["Dice"]
        assert None not in curve, curve
        assert auc == pytest.approx(np.mean(curve)) and 0 <= auc <= 1
        assert sam["iterative"]["per_case"][case]["1"]["final"]["Dice"] == curve[-1]
    assert sam["parameters"]["tuned"] > 0 and sam["parameters"]["encoder_frozen"] > 0
    assert base["parameters"]["tuned"] > sam["parameters"]["tuned"]
    assert sam["summary"]["clicks_1"]["time_per_case_s"] > 0 and base["summary"]["nnunet"]["time_per_case_s"] > 0
    for proto in ["nnunet"]:
        for c in ("1", "2"):
            assert all(base["summary"][proto]["mean"][c][k] is not None for k in metrics), base["summary"][proto]
    for proto in protocols:
        for c in ("1", "2"):
            assert all(sam["summary"][proto]["mean"][c][k] is not None for k in metrics), (proto, c)
    assert sam["sam_weights"] == {"variant": "tiny", "checkpoint": str(demo_workdir / "sam_tiny_random_weights.pth"),
                                  "pretrained": False}

    # the clicks are the seeded protocol: recomputed from the ground truth they are the same; 1 within 3
    import SimpleITK as sitk
    from sam3d_nnunet.benchmark.protocols import nested_click_prompts, prompts_to_json
    for case in cases:
        gt = sitk.GetArrayFromImage(sitk.ReadImage(str(demo_workdir / "nnUNet_preprocessed" / NAME /
                                                       "gt_segmentations" / f"{case}.nii.gz")))
        again = nested_click_prompts(gt, case, [1, 2], [1, 3], seed=0)
        assert results["cases"][case]["clicks"]["clicks_1"] == prompts_to_json(again[1])
        assert results["cases"][case]["clicks"]["clicks_3"] == prompts_to_json(again[3])
        for c, v in results["cases"][case]["clicks"]["clicks_1"].items():
            three = results["cases"][case]["clicks"]["clicks_3"][c]["clicks_raw_voxel"]
            assert all(p in three for p in v["clicks_raw_voxel"])

    report = (out / "report.md").read_text()
    assert "## Dice / NSD@5mm (%), the paper's format" in report
    assert "| method | clicks per class | organ (1) | tumour (2) | mean | tuned params | s / case |" in report
    for row in ("| nnU-Net (nnUNetTrainer_budget_noDA) |",
                "| SAM3D (nnUNetTrainerSAM3D_budget_noDA) | 0 (automatic) |",
                "|  | 1 random |", "|  | 3 random |", "|  | 3 iterative (final) |"):
        assert row in report, row
    assert "## Iterative correction" in report and "AUC" in report
    assert "## Models" in report and "SAM variant `tiny`" in report and "**random weights**" in report
    assert "**Note:** SAM3D (nnUNetTrainerSAM3D_budget_noDA) did not start from SAM's pretrained weights" in report
    import matplotlib.image as mpimg
    for name in ("dice_vs_clicks", "nsd_vs_clicks", "scatter_dice", "iterative_dice", "overlay_best",
                 "overlay_median", "overlay_worst"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        img = mpimg.imread(str(png))
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300 and img.std() > 0.01, name
        assert f"({name}.png)" in report
    assert not list(out.rglob(".*tmp*")), "no temporary files left"


def _config(out: Path, **overrides):
    from sam3d_nnunet.benchmark.runner import BenchmarkConfig
    settings = dict(dataset="990", folds=[0], sam=["nnUNetTrainerSAM3D_budget_noDA:SAM3DPlans"],
                    baseline="nnUNetTrainer_budget_noDA:nnUNetPlans", clicks=[1], iterative=2, auto=True, seed=0,
                    output_dir=str(out), baseline_timing_cases=0, progress=False, plots=False)
    return BenchmarkConfig(**{**settings, **overrides})


def _scores(results: dict) -> dict:
    """{(method, case, protocol, class, metric): value} of every Dice / NSD in a results.json."""
    return {(method, case, protocol, c, k): value
            for method, m in results["methods"].items() for case, v in m["per_case"].items()
            for protocol, entry in v["protocols"].items() for c, metrics in entry["metrics"].items()
            for k, value in metrics.items() if k == "Dice" or k.startswith("NSD@")}


def _mask(path: str) -> np.ndarray:
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


@pytest.mark.slow
def test_benchmark_is_deterministic_in_fresh_folders_and_a_rerun_reuses_predictions(demo_workdir, tmp_path,
                                                                                  monkeypatch):
    """Two runs into two fresh folders predict everything anew and agree exactly (clicks, masks, scores); a
    third run into the first folder predicts nothing again and agrees too. (The tiny demo model, fold 0's two
    validation cases, automatic + 1 click + 2 iterative steps.)"""
    from sam3d_nnunet.benchmark.runner import run_benchmark
    for k, v in _env(demo_workdir).items():
        monkeypatch.setenv(k, v)
    a = run_benchmark(_config(tmp_path / "a"))
    b = run_benchmark(_config(tmp_path / "b"))
    assert a["cases"] == b["cases"] and len(a["cases"]) >= 2, "the same cases and clicks"
    runs = (a["methods"][SAM]["per_case"], b["methods"][SAM]["per_case"])
    assert sorted(runs[0]) == sorted(runs[1])
    n_predicted = 0
    for case in runs[0]:
        protocols = runs[0][case]["protocols"]
        assert set(protocols) == set(runs[1][case]["protocols"]) == {"auto", "clicks_1", "iterative_step_1",
                                                                     "iterative_step_2"}
        for p, first in protocols.items():
            second = runs[1][case]["protocols"][p]
            assert not first["reused"] and not second["reused"], f"{case} {p}: a fresh folder reused a prediction"
            assert first["prediction_file"] != second["prediction_file"]
            assert first["prediction_file"].startswith(str(tmp_path / "a"))
            assert np.array_equal(_mask(first["prediction_file"]), _mask(second["prediction_file"])), (case, p)
            assert first["metrics"] == second["metrics"], (case, p)
            assert first.get("prompts") == second.get("prompts"), (case, p)
            n_predicted += "same_as" not in first
    assert n_predicted >= 6, "auto, clicks_1 and iterative_step_2 predicted for each case"
    def means(results):  # the summaries without the wall times
        return {p: {k: v for k, v in s.items() if k != "time_per_case_s"}
                for p, s in results["methods"][SAM]["summary"].items()}
    assert means(a) == means(b)
    assert a["methods"][SAM]["iterative"] == b["methods"][SAM]["iterative"]
    assert a["methods"][BASE]["per_case"] == b["methods"][BASE]["per_case"]
    # the results.json files of the two fresh folders hold the same Dice / NSD per method, case, protocol and
    # class, and those are numbers: two runs whose scores are all None (or NaN) would also compare equal
    scores = [_scores(json.loads((tmp_path / run / "results.json").read_text())) for run in ("a", "b")]
    assert scores[0] == scores[1]
    assert len(scores[0]) >= 2 * 2 * 5 * 4, "cases x classes x (nnunet, auto, clicks_1, 2 iterative steps) x 4"
    assert all(isinstance(v, float) and np.isfinite(v) and 0.0 <= v <= 1.0 for v in scores[0].values()), \
        {k: v for k, v in scores[0].items() if not (isinstance(v, float) and np.isfinite(v))}

    again = run_benchmark(_config(tmp_path / "a"))
    for case, v in again["methods"][SAM]["per_case"].items():
        for p, entry in v["protocols"].items():
            assert entry["reused"], f"{case} {p} was predicted again"
            assert entry["metrics"] == runs[0][case]["protocols"][p]["metrics"]

    # another seed: other clicks
    other = run_benchmark(_config(tmp_path / "seed5", clicks=[1], iterative=0, auto=False, seed=5,
                                  dataset="Dataset990_SAM3DDemo"))
    case = sorted(other["cases"])[0]
    assert other["cases"][case]["clicks"]["clicks_1"] != a["cases"][case]["clicks"]["clicks_1"]
    assert set(other["methods"][SAM]["summary"]) == {"clicks_1"}
    assert (tmp_path / "seed5" / "report.md").is_file()


@pytest.mark.slow
def test_benchmark_box_and_scribble_protocols_on_phantoms(demo_workdir, tmp_path, monkeypatch):
    """1 box, box + 2 correction clicks and 1 scribble per class on the reduced demo's validation cases: seeded
    prompts recomputable from the ground truth and on their class, a curve of N + 1 points, finite scores, the
    report's rows and table, the plot."""
    import SimpleITK as sitk
    from sam3d_nnunet.benchmark.protocols import bounding_box_prompts, prompts_to_json, scribble_prompts
    from sam3d_nnunet.benchmark.runner import run_benchmark
    for k, v in _env(demo_workdir).items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "shapes"
    r = run_benchmark(_config(out, clicks=[1], iterative=0, auto=False, box_iterative=2, scribble=True, plots=True))
    sam = r["methods"][SAM]
    assert r["box"] is True and r["box_iterative_steps"] == 2 and r["scribble"] is True
    steps = ["box_iterative_step_0", "box_iterative_step_1", "box_iterative_step_2"]
    for case in r["cases"]:
        protocols = sam["per_case"][case]["protocols"]
        assert set(protocols) == {"clicks_1", "box", "scribble", *steps}
        assert protocols["box_iterative_step_0"]["same_as"] == "box"
        for p, entry in protocols.items():
            for c in ("1", "2"):
                for k in ("Dice", "NSD@1mm", "NSD@5mm"):
                    v = entry["metrics"][c][k]
                    assert v is not None and np.isfinite(v) and 0.0 <= v <= 1.0, (case, p, c, k, v)
        gt = sitk.GetArrayFromImage(sitk.ReadImage(str(demo_workdir / "nnUNet_preprocessed" / NAME /
                                                       "gt_segmentations" / f"{case}.nii.gz")))
        recorded = r["cases"][case]["prompts"]
        assert recorded["box"] == prompts_to_json(bounding_box_prompts(gt, case, [1, 2], 0)), "seeded, recomputable"
        assert recorded["scribble"] == prompts_to_json(scribble_prompts(gt, case, [1, 2], 0))
        for c in ("1", "2"):
            (box,) = recorded["box"][c]["prompts"]
            lo, hi = np.array(box["corners_zyx"], int)
            assert (gt[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] == int(c)).sum() == (gt == int(c)).sum()
            (scribble,) = recorded["scribble"][c]["prompts"]
            pts = np.round(np.array(scribble.get("points_zyx", [scribble.get("point_zyx")]))).astype(int)
            assert (gt[tuple(pts.T)] == int(c)).all(), "the scribble lies on its class"
        for s in (1, 2):  # every step keeps the box and adds at most one click per class
            for c, v in protocols[steps[s]]["prompts"].items():
                prev = protocols[steps[s - 1]]["prompts"][c]["prompts"]
                assert v["prompts"][: len(prev)] == prev and len(v["prompts"]) - len(prev) in (0, 1)
                assert v["prompts"][0]["type"] == "box" and all(q["type"] == "click" for q in v["prompts"][1:])
        for c in ("1", "2"):
            curve = sam["box_iterative"]["per_case"][case][c]["curves"]["Dice"]
            assert len(curve) == 3 and all(np.isfinite(curve)), curve
            assert sam["box_iterative"]["per_case"][case][c]["auc"]["Dice"] == pytest.approx(np.mean(curve))
    for p in ("box", "scribble", "box_iterative_step_2"):
        for c in ("1", "2"):
            assert all(np.isfinite(sam["summary"][p]["mean"][c][k]) for k in ("Dice", "NSD@5mm")), (p, c)
    assert len(sam["box_iterative"]["per_class"]["1"]["mean_curve"]["Dice"]) == 3
    report = (out / "report.md").read_text()
    for row in ("|  | 1 box |", "|  | box + 2 corrections (final) |", "|  | 1 scribble |",
                "## Box then correction clicks (box + 2 clicks per class)", "| box | +1 click | +2 clicks |"):
        assert row in report, row
    assert (out / "dice_vs_clicks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "results.json").read_text())
    assert saved["methods"][SAM]["summary"].keys() == sam["summary"].keys()


@pytest.mark.slow
def test_benchmark_refuses_mismatched_folds(demo_workdir, tmp_path):
    res = demo_workdir / "nnUNet_results" / NAME
    fake = res / "nnUNetTrainer_otherSplit__nnUNetPlans__3d_fullres"
    if fake.exists():
        shutil.rmtree(fake)
    shutil.copytree(res / BASE, fake)
    val = fake / "fold_0" / "validation"
    first = sorted(val.glob("*.nii.gz"))[0]
    first.rename(val / "sam3ddemo_999.nii.gz")  # validated on a case that is not in the split
    cmd = [_exe("sam3d-nnunet"), "benchmark", "-d", "990", "-f", "0",
           "--sam", "nnUNetTrainerSAM3D_budget_noDA:SAM3DPlans",
           "--baseline", "nnUNetTrainer_otherSplit:nnUNetPlans", "--clicks", "1", "--iterative", "0", "-o",
           str(tmp_path / "refused"), "--no-progress"]
    p = subprocess.run(cmd, env=_env(demo_workdir), capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "refusing to compare" in p.stderr and "nnUNetTrainer_otherSplit" in p.stderr
    assert "sam3ddemo_999" in p.stderr
    assert not (tmp_path / "refused" / "report.md").exists()
    # a missing fold is refused as well
    p = subprocess.run(cmd[:5] + ["0", "1"] + cmd[6:], env=_env(demo_workdir), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 1 and "fold_1" in p.stderr
    shutil.rmtree(fake)


@pytest.mark.slow
def test_a_given_model_folder_is_benchmarked_as_a_method(demo_workdir, tmp_path, monkeypatch):
    """``--sam-model FOLDER[:FOLD]`` (e.g. the authors' model from import-reference, ``fold_all``): the folder is used
    as it is for every fold's cases. Given the demo's own fold-0 model, it scores exactly what ``--sam`` scores."""
    from sam3d_nnunet.benchmark.runner import BenchmarkError, run_benchmark
    for k, v in _env(demo_workdir).items():
        monkeypatch.setenv(k, v)
    folder = demo_workdir / "nnUNet_results" / NAME / SAM
    settings = dict(clicks=[1], iterative=0, auto=False)
    trained = run_benchmark(_config(tmp_path / "trained", **settings))
    given = run_benchmark(_config(tmp_path / "given", sam=[], sam_models=[f"{folder}:0"], **settings))
    (key,) = given["sam_methods"]
    assert key != SAM and given["methods"][key]["model_folder"] == str(folder)
    ours, theirs = given["methods"][key]["per_case"], trained["methods"][SAM]["per_case"]
    assert sorted(ours) == sorted(theirs) and len(ours) >= 2
    for case in ours:
        assert ours[case]["protocols"]["clicks_1"]["metrics"] == theirs[case]["protocols"]["clicks_1"]["metrics"]
    with pytest.raises(BenchmarkError, match="not a trained model folder"):
        run_benchmark(_config(tmp_path / "x", sam=[], sam_models=[str(folder / "..")], **settings))
    with pytest.raises(BenchmarkError, match="does not exist"):
        run_benchmark(_config(tmp_path / "y", sam=[], sam_models=[f"{folder}:3"], **settings))
