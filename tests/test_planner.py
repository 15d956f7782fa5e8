"""SAM3DPlanner and `sam3d-nnunet plan_and_preprocess`: ViT-compatible patches within the memory budget,
nnU-Net's spacing and normalisation kept, plans that nnU-Net and the network both accept."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from sam3d_nnunet.phantoms import generate_phantom_dataset


def _dataset(tmp_path, monkeypatch, spacings, shapes, dataset_id=960, channel="CT"):
    """A raw dataset (2 real phantom files, for the reader) with a hand-written fingerprint."""
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "res"))
    folder = generate_phantom_dataset(raw, dataset_id, "Plan", n_cases=2, shape=(16, 16, 16), seed=0)
    dj = json.loads((folder / "dataset.json").read_text())
    dj["channel_names"] = {"0": channel}
    dj["numTraining"] = len(spacings)
    (folder / "dataset.json").write_text(json.dumps(dj))
    fp = {"spacings": [list(map(float, s)) for s in spacings], "shapes_after_crop": [list(map(int, s)) for s in shapes],
          "median_relative_size_after_cropping": 1.0,
          "foreground_intensity_properties_per_channel": {"0": {"max": 300.0, "mean": 60.0, "median": 58.0,
                                                                "min": -100.0, "percentile_00_5": -50.0,
                                                                "percentile_99_5": 200.0, "std": 30.0}}}
    (pre / folder.name).mkdir(parents=True)
    (pre / folder.name / "dataset_fingerprint.json").write_text(json.dumps(fp))
    return dataset_id


FIDELITY_KEYS = Path(__file__).resolve().parents[2] / "shared" / "fidelity" / "reference_keys.json"


def _plan(dataset_id, **kw):
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset
    from sam3d_nnunet.planners import SAM3DPlanner
    gpu = kw.pop("gpu_memory_target_in_gb", None)
    plans, ident = plan_experiment_dataset(dataset_id, functools.partial(SAM3DPlanner, **kw),
                                           gpu_memory_target_in_gb=gpu)
    return plans, ident


def test_small_images_covered_by_one_patch(tmp_path, monkeypatch):
    # hippocampus-like: about 36 x 50 x 35 voxels at 1 mm
    rng = np.random.default_rng(0)
    shapes = [(int(34 + rng.integers(5)), int(48 + rng.integers(5)), int(33 + rng.integers(5))) for _ in range(20)]
    d = _dataset(tmp_path, monkeypatch, [(1, 1, 1)] * 20, shapes)
    plans, ident = _plan(d, sam_variant="tiny")
    assert ident == "SAM3DPlans"
    cfg = plans["configurations"]["3d_fullres"]
    arch = cfg["architecture"]["arch_kwargs"]
    assert (arch["token_stride"], arch["window_size"]) == (4, 4)
    median = np.median(shapes, 0)
    assert cfg["patch_size"] == [int(np.ceil(m / 16) * 16) for m in median] == [48, 64, 48]
    assert arch["patch_size"] == cfg["patch_size"]
    # vit_b: stride 4, window 8 -> multiples of 32
    plans, _ = _plan(d, sam_variant="vit_b")
    cfg = plans["configurations"]["3d_fullres"]
    assert cfg["patch_size"] == [64, 64, 64]
    assert cfg["architecture"]["arch_kwargs"]["adapter_dim"] == 384


def test_large_ct_gets_paper_setting_within_budget(tmp_path, monkeypatch):
    from sam3d_nnunet.model import estimate_training_memory_gb
    d = _dataset(tmp_path, monkeypatch, [(1.0, 1.0, 1.0)] * 10, [(300, 400, 400)] * 10)
    plans, _ = _plan(d)  # vit_b, 12 GB default
    cfg = plans["configurations"]["3d_fullres"]
    arch = cfg["architecture"]["arch_kwargs"]
    # 128^3 with 2 samples needs about 24.6 GB without activation checkpointing: it is switched on, and the
    # batch stays at nnU-Net's minimum of 2 (checkpointing is not used to grow the batch)
    assert arch == {"variant": "vit_b", "patch_size": cfg["patch_size"], "token_stride": 4, "window_size": 8,
                    "adapter_dim": 384, "neck_dim": 256, "finetune": "adapter", "decoder": "mla",
                    "gradient_checkpointing": True}
    assert cfg["patch_size"] == [128, 128, 128] and cfg["batch_size"] == 2
    assert plans["sam3d"]["gpu_memory_target_gb"] == 12.0
    est = estimate_training_memory_gb("vit_b", cfg["patch_size"], 4, cfg["batch_size"], 384, 256,
                                      gradient_checkpointing=True)
    assert est <= 12.0 and plans["sam3d"]["estimated_training_memory_gb"] == pytest.approx(est, abs=0.01)
    assert estimate_training_memory_gb("vit_b", cfg["patch_size"], 4, 2, 384, 256) > 12.0
    # nnU-Net's target spacing and CT normalisation are kept
    assert cfg["spacing"] == pytest.approx([1.0, 1.0, 1.0])
    assert cfg["normalization_schemes"] == ["CTNormalization"]
    assert list(plans["configurations"]) == ["3d_fullres"]
    # a budget where 2 samples of 128^3 fit without checkpointing: it stays off
    plans40, _ = _plan(d, gpu_memory_target_in_gb=40)
    arch40 = plans40["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert arch40["gradient_checkpointing"] is False and arch40["patch_size"] == [128, 128, 128]
    assert plans40["configurations"]["3d_fullres"]["batch_size"] >= 2
    # a budget below even the checkpointed 128^3 gives a smaller (still window-aligned) patch that fits
    plans3, _ = _plan(d, gpu_memory_target_in_gb=3)
    cfg3 = plans3["configurations"]["3d_fullres"]
    assert np.prod(cfg3["patch_size"]) < 128 ** 3
    assert all(p % 32 == 0 for p in cfg3["patch_size"])
    assert plans3["sam3d"]["estimated_training_memory_gb"] <= 3.0
    # the trainer builds, from these plans, the authors' network: the same tensors, in name and shape, as the
    # network an authors' vit_b checkpoint imports into
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from sam3d_nnunet.model import SAM3DNet
    from sam3d_nnunet.model.reference_checkpoint import reference_architecture
    from sam3d_nnunet.trainers.nnUNetTrainerSAM3D import nnUNetTrainerSAM3D
    manager = PlansManager(plans)
    with torch.device("meta"):
        trained = nnUNetTrainerSAM3D.build_network_architecture(manager, manager.get_configuration("3d_fullres"),
                                                                1, 2, enable_deep_supervision=False)
        layout = json.loads(FIDELITY_KEYS.read_text()) if FIDELITY_KEYS.is_file() else None
        if layout is not None:
            shapes = {part: {k: torch.empty(v["shape"]) for k, v in layout[part].items()}
                      for part in ("encoder_dict", "decoder_dict")}
            shapes["feature_dict"] = [{k: torch.empty(v["shape"]) for k, v in d.items()} for d in layout["feature_dict"]]
            imported = SAM3DNet(1, 2, **reference_architecture(shapes))
    if layout is not None:
        assert {k: tuple(v.shape) for k, v in trained.state_dict().items()} == \
            {k: tuple(v.shape) for k, v in imported.state_dict().items()}


def test_anisotropic_spacing_gives_non_cubic_aligned_patch(tmp_path, monkeypatch):
    # soft-tissue-sarcoma-like CT: 0.98 x 0.98 x 3.27 mm; nnU-Net transposes the coarse axis first
    d = _dataset(tmp_path, monkeypatch, [(3.27, 0.98, 0.98)] * 10, [(60, 200, 200)] * 10, channel="MRI")
    from sam3d_nnunet.model import token_grid
    plans, _ = _plan(d, sam_variant="vit_b")
    cfg = plans["configurations"]["3d_fullres"]
    arch = cfg["architecture"]["arch_kwargs"]
    ps = cfg["patch_size"]
    # one token per slice across the thick slices, 4 voxels in-plane: tokens about 3.3 x 3.9 x 3.9 mm
    assert arch["token_stride"] == [1, 4, 4]
    grid = token_grid(tuple(ps), arch["token_stride"], arch["window_size"])  # raises if misaligned
    assert ps[0] < ps[1] == ps[2], ps  # fewer voxels along the thick-slice axis
    extent = np.array(ps) * np.array(cfg["spacing"])
    assert extent.max() / extent.min() < 1.6, f"physically about cubic: {extent} mm"
    assert np.prod(grid) <= 1.25 * 32 ** 3  # the reference 32^3 tokens, rounded to whole windows
    assert cfg["spacing"][0] == pytest.approx(3.27)
    # the SAM3DNet builds with these kwargs
    import torch
    from sam3d_nnunet.model import SAM3DNet
    with torch.device("meta"):
        SAM3DNet(1, 3, **arch)
    assert cfg["normalization_schemes"] == ["ZScoreNormalization"]


@pytest.mark.parametrize("variant", ["tiny", "vit_b", "vit_l", "vit_h"])
def test_every_variant_plans_window_aligned_patches(tmp_path, monkeypatch, variant):
    from sam3d_nnunet.model import token_grid
    d = _dataset(tmp_path, monkeypatch, [(1, 1, 1)] * 10, [(150, 170, 190)] * 10)
    plans, _ = _plan(d, sam_variant=variant)
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"] == "sam3d_nnunet.model.SAM3DNet" and arch["_kw_requires_import"] == []
    kw = arch["arch_kwargs"]
    token_grid(tuple(kw["patch_size"]), kw["token_stride"], kw["window_size"])  # raises if misaligned
    assert plans["sam3d"]["estimated_training_memory_gb"] <= 12.0
    json.dumps(plans)  # plain JSON


def test_checkpoint_recorded_and_network_builds_from_plans(tmp_path, monkeypatch):
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from sam3d_nnunet.model import write_random_sam_checkpoint
    d = _dataset(tmp_path, monkeypatch, [(1, 1, 1)] * 4, [(30, 30, 30)] * 4)
    plans, _ = _plan(d, sam_variant="tiny")
    assert plans["sam3d"]["sam_checkpoint"] is None and plans["sam3d"]["sam_variant"] == "tiny"
    ckpt = write_random_sam_checkpoint("tiny", tmp_path / "sam_tiny.pth")
    plans, _ = _plan(d, sam_variant="tiny", sam_checkpoint=str(ckpt))
    assert plans["sam3d"]["sam_checkpoint"] == str(ckpt.resolve())
    saved = json.loads((tmp_path / "pre" / "Dataset960_Plan" / "SAM3DPlans.json").read_text())
    assert saved["sam3d"]["sam_checkpoint"] == str(ckpt.resolve())
    arch = saved["configurations"]["3d_fullres"]["architecture"]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                 1, 3, allow_init=True, deep_supervision=False)
    assert not hasattr(net, "initialize")
    x = torch.zeros(1, 1, *saved["configurations"]["3d_fullres"]["patch_size"])
    with torch.no_grad():
        assert net(x).shape == (1, 3, *x.shape[2:])
    with pytest.raises(FileNotFoundError):
        _plan(d, sam_variant="tiny", sam_checkpoint=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError):
        _plan(d, sam_variant="vit_x")


def _subparser(name):
    from sam3d_nnunet.cli import build_parser
    parser = build_parser([name])
    action = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    return action.choices[name]


def test_cli_takes_nnunet_arguments_plus_sam_options():
    from sam3d_nnunet.commands.plan_and_preprocess import nnunet_plan_and_preprocess_parser
    nn = {s for a in nnunet_plan_and_preprocess_parser()._actions for s in a.option_strings}
    ours = _subparser("plan_and_preprocess")
    mine = {s for a in ours._actions for s in a.option_strings}
    assert nn <= mine
    assert mine - nn == {"--sam-variant", "--sam-checkpoint", "--decoder", "--click-maps"}
    args = ours.parse_args(["-d", "5", "-c", "3d_fullres", "--sam-variant", "tiny", "-np", "2"])
    assert args.d == [5] and args.pl == "SAM3DPlanner" and args.sam_variant == "tiny" and args.c == ["3d_fullres"]
    assert args.sam_checkpoint is None and args.overwrite_plans_name is None and args.decoder == "mla"
    assert args.click_maps is False
    assert ours.parse_args(["-d", "5", "--click-maps"]).click_maps is True
    with pytest.raises(SystemExit):
        ours.parse_args(["-d", "5", "--sam-variant", "vit_x"])


def test_cli_plans_through_nnunet_entry(tmp_path, monkeypatch, capsys):
    """`sam3d-nnunet plan_and_preprocess ... --no_pp` runs nnU-Net's fingerprint + planning with our planner."""
    from sam3d_nnunet.cli import main
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    for k, v in {"nnUNet_raw": raw, "nnUNet_preprocessed": pre, "nnUNet_results": tmp_path / "res"}.items():
        monkeypatch.setenv(k, str(v))
    generate_phantom_dataset(raw, 961, "Cli", n_cases=2, shape=(20, 24, 20), seed=0)
    rc = main(["plan_and_preprocess", "-d", "961", "--sam-variant", "tiny", "--no_pp", "-npfp", "1",
               "-overwrite_plans_name", "SAM3DPlansX"])
    assert rc == 0
    plans = json.loads((pre / "Dataset961_Cli" / "SAM3DPlansX.json").read_text())
    assert plans["experiment_planner_used"] == "SAM3DPlanner"
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [32, 32, 32]
    assert plans["sam3d"]["sam_checkpoint"] is None
    assert "RANDOM weights" in capsys.readouterr().err  # the loud warning
    # a non-SAM planner still goes to nnU-Net unchanged
    rc = main(["plan_and_preprocess", "-d", "961", "-pl", "ExperimentPlanner", "--no_pp", "-npfp", "1"])
    assert rc == 0 and (pre / "Dataset961_Cli" / "nnUNetPlans.json").is_file()
