"""Any nnU-Net dataset, not only the paper's (issue 8).

* channels: 1 repeated, 2 -> (c0, c1, mean), 3 direct, more through a trainable mixer initialised to the channel
  mean; recorded in the plans; synthetic 2- and 4-channel (MRI-like) datasets plan, train and predict;
* spacing: the planner's decision between nnU-Net's anisotropic target spacing (+ per-axis token stride) and
  isotropic resampling is printed and recorded; real thick-slice CT (STS_CT, 0.98 x 0.98 x 3.27 mm) plans,
  trains and predicts at native geometry;
* classes: 12 labels plan, the network takes class ids up to 12, several classes of one case are predicted in
  one call with one encoder pass per window; the hippocampus (2 classes) with clicks on both;
* the ``ignore`` label works (loss, clicks, metrics); region-based datasets are refused at planning time;
* a trained model travels as nnU-Net's zip (``nnUNetv2_export_model_to_zip`` /
  ``nnUNetv2_install_pretrained_model_from_zip``) and predicts byte-identically without the SAM checkpoint.

Fast tests plan from hand-written fingerprints or use networks built from plans; slow ones (``slow``) run
nnU-Net's commands in subprocesses with the helpers of ``test_trainer_integration``. Real-data tests skip with a
reason when ``../shared/data`` is absent.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from msd_subset import msd_subset
from summary_checks import check_summary
from test_trainer_integration import Pipeline, _check_cv_result, _env, _exe, _run  # nnU-Net commands in subprocesses

SITK = pytest.importorskip("SimpleITK")

MRI_2CH = ("T1", "T2")
MRI_4CH = ("T1", "T1c", "T2", "FLAIR")

# trains the given datasets with nnUNetTrainerSAM3D_1epoch in ONE process (nnU-Net imported once); those listed
# in --validate=ID,ID also get the trainer's final validation (what nnUNetv2_train runs after training)
TRAIN_SCRIPT = r"""
import sys
import torch
from nnunetv2.run.run_training import get_trainer_from_args
validate = [a.split("=", 1)[1].split(",") for a in sys.argv[1:] if a.startswith("--validate=")]
validate = set(validate[0]) if validate else set()
for d in [a for a in sys.argv[1:] if not a.startswith("--")]:
    trainer = get_trainer_from_args(d, "3d_fullres", 0, "nnUNetTrainerSAM3D_1epoch", "SAM3DPlans",
                                    device=torch.device("cpu"))
    trainer.run_training()
    if d in validate:
        trainer.perform_actual_validation()
"""


def _read(path):
    return SITK.GetArrayFromImage(SITK.ReadImage(str(path)))


def _same_geometry(a, b) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection()))


def _link_cases(raw: Path, cases, n_channels: int, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for case in cases:
        for k in range(n_channels):
            os.symlink(raw / "imagesTr" / f"{case}_{k:04d}.nii.gz", dest / f"{case}_{k:04d}.nii.gz")
    return dest


def _val_cases(preprocessed: Path, fold: int = 0):
    return sorted(json.loads((preprocessed / "splits_final.json").read_text())[fold]["val"])


# =================================================================================================== channels
@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_channel_mixer_maps_any_number_of_channels(n):
    """1 repeated, 2 -> (c0, c1, mean), 3 direct (all fixed, no parameter in the checkpoint); more than 3: a
    trainable 1x1x1 mixing whose three outputs start as the channel mean."""
    from sam3d_nnunet.model.channel_mixer import InputChannelMixer
    x = torch.randn(2, n, 3, 4, 5)
    mixer = InputChannelMixer(n)
    y = mixer(x)
    assert y.shape == (2, 3, 3, 4, 5)
    if n == 1:
        expected = x.repeat(1, 3, 1, 1, 1)
    elif n == 2:
        expected = torch.stack([x[:, 0], x[:, 1], x.mean(1)], 1)
    elif n == 3:
        expected = x
    else:
        expected = x.mean(1, keepdim=True).repeat(1, 3, 1, 1, 1)
    torch.testing.assert_close(y, expected)
    params = dict(mixer.named_parameters())
    if n <= 3:
        assert not params and not mixer.state_dict(), "fixed mapping: nothing to train or to store"
    else:
        assert list(params) == ["weight"] and params["weight"].requires_grad
        y.sum().backward()
        assert params["weight"].grad is not None and params["weight"].grad.abs().sum() > 0
    with pytest.raises(ValueError, match=f"expected {n} input channels"):
        mixer(torch.zeros(1, n + 1, 2, 2, 2))


def test_four_channel_network_trains_its_mixer():
    """In a SAM3DNet the >3-channel mixer trains under every fine-tuning policy and is saved in checkpoints."""
    from sam3d_nnunet.model import SAM3DNet
    kw = dict(variant="tiny", patch_size=(16, 16, 16), token_stride=4, window_size=4, adapter_dim=32, neck_dim=32)
    for policy in ("adapter", "lora", "full"):
        net = SAM3DNet(4, 3, finetune=policy, **kw)
        assert "input_mixer.weight" in net.trainable_parameter_names()
        assert "input_mixer.weight" in net.state_dict()
    net = SAM3DNet(2, 3, **kw)
    assert not any(k.startswith("input_mixer") for k in net.state_dict())


# =================================================================================================== planning
def _dataset_with_fingerprint(tmp_path, monkeypatch, spacings, shapes, dataset_id=970, channels=("CT",),
                              labels=None, regions_class_order=None):
    """A raw dataset (two tiny phantom cases with ``channels``, for the reader) whose fingerprint is written by
    hand, so that planning sees the given spacings and shapes."""
    from sam3d_nnunet.phantoms import generate_phantom_dataset
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    for k, v in {"nnUNet_raw": raw, "nnUNet_preprocessed": pre, "nnUNet_results": tmp_path / "res"}.items():
        monkeypatch.setenv(k, str(v))
    folder = generate_phantom_dataset(raw, dataset_id, "Plan", n_cases=2, shape=(16, 16, 16), seed=0,
                                      channel_names=channels)
    dj = json.loads((folder / "dataset.json").read_text())
    dj["numTraining"] = len(spacings)
    if labels is not None:
        dj["labels"] = labels
    if regions_class_order is not None:
        dj["regions_class_order"] = regions_class_order
    (folder / "dataset.json").write_text(json.dumps(dj))
    props = {"max": 300.0, "mean": 60.0, "median": 58.0, "min": -100.0, "percentile_00_5": -50.0,
             "percentile_99_5": 200.0, "std": 30.0}
    fp = {"spacings": [list(map(float, s)) for s in spacings], "shapes_after_crop": [list(map(int, s)) for s in shapes],
          "median_relative_size_after_cropping": 1.0,
          "foreground_intensity_properties_per_channel": {str(k): dict(props) for k in range(len(channels))}}
    (pre / folder.name).mkdir(parents=True)
    (pre / folder.name / "dataset_fingerprint.json").write_text(json.dumps(fp))
    return dataset_id


def _plan(dataset_id, **kw):
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset
    from sam3d_nnunet.planners import SAM3DPlanner
    kw.setdefault("sam_variant", "tiny")
    overwrite = kw.pop("overwrite_target_spacing", None)
    plans, _ = plan_experiment_dataset(dataset_id, functools.partial(SAM3DPlanner, **kw),
                                       overwrite_target_spacing=overwrite)
    return plans


def _decision_line(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith("SAM3DPlanner: median spacing") or
             ln.startswith("SAM3DPlanner: target spacing")]
    assert len(lines) == 1, out
    return lines[0]


def test_thick_slices_keep_nnunet_spacing_with_per_axis_stride(tmp_path, monkeypatch, capsys):
    """STS_CT-like CT (3.27 x 0.98 x 0.98 mm, ratio 3.3 > 3): nnU-Net's target spacing, stride [1, 4, 4]; the
    decision is printed on one line and stored in plans['sam3d']['spacing']."""
    from sam3d_nnunet.model import token_grid
    d = _dataset_with_fingerprint(tmp_path, monkeypatch, [(3.27, 0.98, 0.98)] * 10, [(60, 185, 185)] * 10)
    plans = _plan(d)
    line = _decision_line(capsys.readouterr().out)
    assert line == ("SAM3DPlanner: median spacing (3.27, 0.98, 0.98) mm is anisotropic (ratio 3.3 > 3): keeping "
                    "nnU-Net's target spacing (3.27, 0.98, 0.98) and token stride (1, 4, 4) -> tokens of "
                    "3.3 x 3.9 x 3.9 mm")
    cfg = plans["configurations"]["3d_fullres"]
    rec = plans["sam3d"]["spacing"]
    assert rec["decision"] == "nnunet_anisotropic" and rec["message"] == line
    assert rec["anisotropy_ratio"] == pytest.approx(3.27 / 0.98, abs=1e-3) and rec["anisotropy_threshold"] == 3
    assert cfg["spacing"] == pytest.approx([3.27, 0.98, 0.98]) == rec["target_spacing"]
    assert cfg["architecture"]["arch_kwargs"]["token_stride"] == [1, 4, 4] == rec["token_stride"]
    assert rec["token_size_mm"] == pytest.approx([3.27, 3.92, 3.92])
    kw = cfg["architecture"]["arch_kwargs"]
    token_grid(tuple(kw["patch_size"]), kw["token_stride"], kw["window_size"])  # window-aligned


def test_thick_axis_last_in_array_order_is_transposed_first(tmp_path, monkeypatch, capsys):
    """The thick axis where a (x, y, z)-ordered file puts it: nnU-Net's transpose moves it first, the decision
    and the stride follow the plans' (transposed) order."""
    d = _dataset_with_fingerprint(tmp_path, monkeypatch, [(0.8, 0.8, 2.5)] * 8, [(200, 200, 40)] * 8)
    plans = _plan(d)
    line = _decision_line(capsys.readouterr().out)
    assert "anisotropic (ratio 3.1 > 3)" in line and "token stride (1, 4, 4)" in line
    assert plans["transpose_forward"] == [2, 0, 1]
    cfg = plans["configurations"]["3d_fullres"]
    assert cfg["spacing"] == pytest.approx([2.5, 0.8, 0.8])
    assert cfg["architecture"]["arch_kwargs"]["token_stride"] == [1, 4, 4]


def test_mildly_anisotropic_data_is_resampled_isotropically(tmp_path, monkeypatch, capsys):
    """Ratio <= 3: isotropic voxels at the finest median axis (the paper's choice), one stride for all axes."""
    d = _dataset_with_fingerprint(tmp_path, monkeypatch, [(1.5, 0.8, 0.8)] * 8, [(100, 200, 200)] * 8)
    plans = _plan(d)
    line = _decision_line(capsys.readouterr().out)
    assert line == ("SAM3DPlanner: median spacing (1.5, 0.8, 0.8) mm is not anisotropic (ratio 1.9 <= 3): "
                    "resampling isotropically to (0.8, 0.8, 0.8) mm (the paper's choice; nnU-Net's target spacing "
                    "would be (1.5, 0.8, 0.8)), token stride (4, 4, 4) -> tokens of 3.2 x 3.2 x 3.2 mm")
    cfg = plans["configurations"]["3d_fullres"]
    assert cfg["spacing"] == pytest.approx([0.8, 0.8, 0.8])
    assert cfg["architecture"]["arch_kwargs"]["token_stride"] == 4
    assert plans["sam3d"]["spacing"]["decision"] == "isotropic"
    assert plans["sam3d"]["spacing"]["nnunet_target_spacing"] == pytest.approx([1.5, 0.8, 0.8])
    # the median shape follows the new spacing (1.5 mm slices -> 0.8 mm: about 1.9x as many)
    assert cfg["median_image_size_in_voxels"][0] == pytest.approx(100 * 1.5 / 0.8, abs=1)


def test_isotropic_data_and_user_spacing(tmp_path, monkeypatch, capsys):
    d = _dataset_with_fingerprint(tmp_path, monkeypatch, [(1.0, 1.0, 1.0)] * 6, [(60, 60, 60)] * 6)
    plans = _plan(d)
    assert _decision_line(capsys.readouterr().out) == (
        "SAM3DPlanner: median spacing (1, 1, 1) mm is isotropic: target spacing (1, 1, 1), token stride (4, 4, 4) "
        "-> tokens of 4 x 4 x 4 mm")
    assert plans["configurations"]["3d_fullres"]["spacing"] == [1.0, 1.0, 1.0]
    # -overwrite_target_spacing (nnU-Net's option) wins: e.g. the isotropic alternative on thick-slice data
    shutil.rmtree(tmp_path / "raw")
    shutil.rmtree(tmp_path / "pre")
    d = _dataset_with_fingerprint(tmp_path, monkeypatch, [(3.27, 0.98, 0.98)] * 10, [(60, 185, 185)] * 10)
    plans = _plan(d, overwrite_target_spacing=[0.98, 0.98, 0.98])
    line = _decision_line(capsys.readouterr().out)
    assert line.startswith("SAM3DPlanner: target spacing (0.98, 0.98, 0.98) mm set by -overwrite_target_spacing")
    assert line.endswith("token stride (4, 4, 4) -> tokens of 3.9 x 3.9 x 3.9 mm")
    assert plans["sam3d"]["spacing"]["decision"] == "user"
    assert plans["configurations"]["3d_fullres"]["spacing"] == pytest.approx([0.98] * 3)


@pytest.mark.parametrize("channels, mapping", [(("CT",), "repeat"), (MRI_2CH, "c0_c1_mean"),
                                               (("T1", "T2", "FLAIR"), "direct"), (MRI_4CH, "trainable_mixer")])
def test_plans_record_the_channel_handling(tmp_path, monkeypatch, capsys, channels, mapping):
    d = _dataset_with_fingerprint(tmp_path, monkeypatch, [(1, 1, 1)] * 4, [(32, 32, 32)] * 4, channels=channels)
    plans = _plan(d)
    rec = plans["sam3d"]["input_channels"]
    assert rec["count"] == len(channels) and rec["mapping"] == mapping
    assert rec["names"] == {str(k): c for k, c in enumerate(channels)}
    out = capsys.readouterr().out
    assert f"SAM3DPlanner: {len(channels)} input channel(s) {list(channels)}: {rec['description']}" in out
    assert ("trainable" in rec["description"]) == (len(channels) > 3)
    # MRI-like channels get nnU-Net's per-image z-score, CT its CT normalisation
    expected = ["CTNormalization" if c == "CT" else "ZScoreNormalization" for c in channels]
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == expected


def test_ignore_label_is_planned_and_region_based_datasets_are_refused(tmp_path, monkeypatch):
    d = _dataset_with_fingerprint(tmp_path, monkeypatch, [(1, 1, 1)] * 4, [(32, 32, 32)] * 4,
                                  labels={"background": 0, "organ": 1, "tumour": 2, "ignore": 3})
    labels = _plan(d)["sam3d"]["labels"]
    assert labels["ignore_label"] == 3 and labels["foreground_labels"] == [1, 2]
    assert labels["num_classes_with_background"] == 3
    shutil.rmtree(tmp_path / "raw")
    shutil.rmtree(tmp_path / "pre")
    d = _dataset_with_fingerprint(tmp_path, monkeypatch, [(1, 1, 1)] * 4, [(32, 32, 32)] * 4, dataset_id=971,
                                  labels={"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=[1, 2])
    with pytest.raises(ValueError, match=r"Dataset971_Plan is region-based .*prompted for ONE integer class at a "
                                         r"time.*write the labels as plain integer classes"):
        _plan(d)
    assert not (tmp_path / "pre" / "Dataset971_Plan" / "SAM3DPlans.json").exists()
    # the trainers refuse region-based plans as well (a plans file made by another planner)
    from sam3d_nnunet.trainers.nnUNetTrainerSAM3D import nnUNetTrainerSAM3D
    from tiny_plans import tiny_plans
    dj = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "whole": [1, 2], "core": 2},
          "regions_class_order": [1, 2], "numTraining": 4, "file_ending": ".nii.gz"}
    with pytest.raises(NotImplementedError, match="region-based"):
        nnUNetTrainerSAM3D(dict(tiny_plans(), continue_training=False), "3d_fullres", 0, dj, torch.device("cpu"))


# =================================================================================================== ignore label
def test_ignore_label_is_never_clicked_and_masked_out_of_the_loss(tmp_path, monkeypatch):
    """The trainer's loss (nnU-Net's Dice + CE built with the ignore label) does not see ignore voxels: changing
    the logits there changes neither the loss nor its gradient elsewhere; simulated and correction clicks never
    land on them."""
    from sam3d_nnunet.prompts.simulation import add_correction_clicks, simulate_training_prompts
    from sam3d_nnunet.trainers.nnUNetTrainerSAM3D import nnUNetTrainerSAM3D
    from tiny_plans import tiny_plans
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, str(tmp_path / k))
    dj = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1, "tumour": 2, "ignore": 3},
          "numTraining": 4, "file_ending": ".nii.gz"}
    trainer = nnUNetTrainerSAM3D(dict(tiny_plans((16, 16, 16)), continue_training=False), "3d_fullres", 0, dj,
                                 torch.device("cpu"))
    assert trainer.label_manager.ignore_label == 3 and list(trainer.label_manager.foreground_labels) == [1, 2]
    loss_fn = trainer._build_loss()

    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.integers(0, 3, (2, 1, 16, 16, 16))).float()
    target[:, :, 12:] = 3  # the last slices are not annotated
    ignored = target == 3
    for seed in range(20):
        clicks, labels, cls, bin_t = simulate_training_prompts(target, [1, 2], seed, 10, 10, 0.0, ignore_label=3)
        for b in range(2):
            for p, lab in zip(clicks[b], labels[b]):
                if lab >= 0:
                    assert target[b, 0][tuple(p.long())] != 3, "a click on an ignore voxel"
        assert torch.equal(bin_t == 3, ignored), "ignore voxels keep the ignore value in the binary target"
    for seed in range(5):
        prediction = (torch.from_numpy(np.random.default_rng(seed).random((2, 1, 16, 16, 16))) > 0.5).long()
        new_clicks, new_labels = add_correction_clicks(prediction, bin_t, clicks, labels, ignore_label=3)
        for b in range(2):
            if new_labels[b, -1] >= 0:
                assert not ignored[b, 0][tuple(new_clicks[b, -1].long())], "a correction click on an ignore voxel"

    logits = torch.randn(2, 2, 16, 16, 16, requires_grad=True)
    loss = loss_fn(logits, bin_t)
    loss.backward()
    assert torch.isfinite(loss)
    grad = logits.grad.clone()
    assert grad[ignored.expand_as(grad)].abs().max() == 0, "no gradient from ignore voxels"
    assert grad[~ignored.expand_as(grad)].abs().max() > 0
    changed = logits.detach().clone()
    changed[ignored.expand_as(changed)] = 100.0
    assert loss_fn(changed, bin_t).item() == pytest.approx(loss.item(), rel=1e-6)


# =================================================================================================== many classes
class _CountingNet(torch.nn.Module):
    """Wraps a SAM3DNet and counts encoder and decoder calls."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.encode_calls = 0
        self.decoded_classes = []

    def encode(self, image):
        self.encode_calls += 1
        return self.net.encode(image)

    def decode(self, features, clicks=None, click_labels=None, target_class=1):
        self.decoded_classes.extend(int(c) for c in torch.as_tensor(target_class).reshape(-1))
        return self.net.decode(features, clicks, click_labels, target_class)

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)


def test_twelve_classes_plan_and_predict_in_one_call_sharing_the_encoder(tmp_path, monkeypatch):
    """A 12-label synthetic dataset plans; SAM3DNet built from the plans takes class ids 1..12 (and refuses 13);
    ``predict`` with clicks on all 12 classes of one case runs in one call and encodes the (single) window once."""
    from sam3d_nnunet.cli import main
    from sam3d_nnunet.commands.predict import predict_folder
    from sam3d_nnunet.inference import PromptedPredictor
    from sam3d_nnunet.phantoms import generate_phantom_dataset
    from sam3d_nnunet.trainers.nnUNetTrainerSAM3D import nnUNetTrainerSAM3D
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    for k, v in {"nnUNet_raw": "raw", "nnUNet_preprocessed": "pre", "nnUNet_results": "res"}.items():
        monkeypatch.setenv(k, str(tmp_path / v))
    raw = generate_phantom_dataset(tmp_path / "raw", 972, "Many", n_cases=2, shape=(32, 32, 32), seed=0,
                                   n_classes=12)
    assert main(["plan_and_preprocess", "-d", "972", "-c", "3d_fullres", "--sam-variant", "tiny", "--no_pp",
                 "-npfp", "1"]) == 0
    plans = json.loads((tmp_path / "pre" / raw.name / "SAM3DPlans.json").read_text())
    assert plans["sam3d"]["labels"]["foreground_labels"] == list(range(1, 13))
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [32, 32, 32]
    dj = json.loads((raw / "dataset.json").read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    torch.manual_seed(0)
    net = nnUNetTrainerSAM3D.build_network_architecture(pm, cm, 1, 13, False)
    assert net.num_classes == 13
    # class ids up to 12: a loss on class 12 reaches its own class embedding only
    feats = net.encode(torch.randn(1, 1, 32, 32, 32))
    out = net.decode(feats, torch.tensor([[[16.0, 16.0, 16.0]]]), torch.tensor([[1]]), 12)
    assert out.shape == (1, 2, 32, 32, 32)
    out[:, 1].mean().backward()
    grad = net.prompt_encoder.class_embed.weight.grad
    assert grad[11].abs().sum() > 0 and grad[:11].abs().sum() == 0
    with pytest.raises(ValueError, match=r"target_class must lie in 1\.\.12"):
        net.decode(feats, None, None, 13)
    net.zero_grad(set_to_none=True)

    counting = _CountingNet(net.eval())
    predictor = PromptedPredictor(counting, pm, cm, dj, "cpu")
    (tmp_path / "in").mkdir()
    os.symlink(raw / "imagesTr" / "many_000_0000.nii.gz", tmp_path / "in" / "many_000_0000.nii.gz")
    summary = predict_folder(predictor, str(tmp_path / "in"), str(tmp_path / "out"),
                             simulate_labels=str(raw / "labelsTr"), n_clicks=1, seed=0, progress=False)
    assert summary.predicted == ["many_000"]
    record = json.loads((tmp_path / "out" / "prompts.json").read_text())
    assert sorted(int(c) for c in record["cases"]["many_000"]["classes"]) == list(range(1, 13))
    assert sorted(counting.decoded_classes) == list(range(1, 13)), "one decoder pass per class"
    assert counting.encode_calls == 1, "the 12 classes share the window's encoder features"
    out = SITK.ReadImage(str(tmp_path / "out" / "many_000.nii.gz"))
    assert _same_geometry(out, SITK.ReadImage(str(raw / "imagesTr" / "many_000_0000.nii.gz")))
    assert set(np.unique(SITK.GetArrayFromImage(out))) <= set(range(13))


# =================================================================================================== trained models
class Trained:
    """The datasets of the slow tests, planned in ONE ``sam3d-nnunet plan_and_preprocess`` call and trained for one
    epoch in ONE process: 911 = MRI-like (T1, T2); 912 = (T1, T1c, T2, FLAIR) with an ``ignore`` label; and, when
    ``../shared/data`` is there, 914 = 6 hippocampus cases (MSD layout, converted with nnU-Net's converter) and
    915 = 6 STS_CT cases (thick-slice CT). 911, 912 and 914 also get the trainer's final validation."""

    def __init__(self, root: Path, pipes: dict, plan_stdout: str, missing: dict):
        self.root, self.pipes, self.plan_stdout, self.missing = root, pipes, plan_stdout, missing

    def get(self, dataset_id: int) -> Pipeline:
        if dataset_id not in self.pipes:
            pytest.skip(self.missing[dataset_id])
        return self.pipes[dataset_id]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
    from sam3d_nnunet.model import write_random_sam_checkpoint
    from sam3d_nnunet.phantoms import generate_phantom_dataset
    root = tmp_path_factory.mktemp("sam3d_datasets")
    env = _env(root)
    ckpt = write_random_sam_checkpoint("tiny", root / "sam_tiny.pth", seed=1)
    generate_phantom_dataset(root / "raw", 911, "MRI2ch", n_cases=5, shape=(32, 32, 32), seed=0,
                             channel_names=MRI_2CH)
    generate_phantom_dataset(root / "raw", 912, "MRI4chIgnore", n_cases=5, shape=(32, 32, 32), seed=1,
                             channel_names=MRI_4CH, ignore_label=True)
    names = {911: "Dataset911_MRI2ch", 912: "Dataset912_MRI4chIgnore"}
    missing = {}
    hippocampus = shared_data / "Task04_Hippocampus"
    if (hippocampus / "dataset.json").is_file():
        msd = msd_subset(hippocampus, root, 6)
        _run([_exe("nnUNetv2_convert_MSD_dataset"), "-i", msd, "-overwrite_id", "914", "-np", "2"], env)
        names[914] = "Dataset914_Hippocampus"
    else:
        missing[914] = f"real data not available: {hippocampus} does not exist (the shared data folder is absent)"
    sts = shared_data / "STS_CT"
    if (sts / "dataset.json").is_file():
        raw = root / "raw" / "Dataset915_STS"
        (raw / "imagesTr").mkdir(parents=True)
        (raw / "labelsTr").mkdir()
        cases = sorted(p.name[:-len(".nii.gz")] for p in (sts / "labelsTr").glob("*.nii.gz"))[:6]
        for case in cases:
            os.symlink(sts / "imagesTr" / f"{case}_0000.nii.gz", raw / "imagesTr" / f"{case}_0000.nii.gz")
            os.symlink(sts / "labelsTr" / f"{case}.nii.gz", raw / "labelsTr" / f"{case}.nii.gz")
        dj = json.loads((sts / "dataset.json").read_text())
        dj["numTraining"] = len(cases)
        (raw / "dataset.json").write_text(json.dumps(dj))
        names[915] = raw.name
    else:
        missing[915] = f"real data not available: {sts} does not exist (the shared data folder is absent)"
    pipes = {i: Pipeline(root, i, name, ckpt) for i, name in names.items()}
    plan = _run([_exe("sam3d-nnunet"), "plan_and_preprocess", "-d", *sorted(names), "-pl", "SAM3DPlanner", "-c",
                 "3d_fullres", "--sam-variant", "tiny", "--sam-checkpoint", ckpt, "-npfp", "2", "-np", "2",
                 "--no_pbar"], env)
    if 915 in pipes:  # CPU smoke run: the planner's batch (5% of this dataset's voxels, 8 here) lowered to 2
        plans_file = pipes[915].preprocessed / "SAM3DPlans.json"
        plans = json.loads(plans_file.read_text())
        plans["configurations"]["3d_fullres"]["batch_size"] = 2
        plans_file.write_text(json.dumps(plans, indent=1))
    _run([sys.executable, "-c", TRAIN_SCRIPT, *map(str, sorted(names)), "--validate=911,912,914"], env, timeout=1800)
    return Trained(root, pipes, plan.stdout, missing)


@pytest.mark.slow
def test_two_and_four_channel_datasets_plan_train_and_predict(trained, tmp_path):
    """Synthetic MRI-like datasets with 2 and 4 channels (the 4-channel one with an ignore label): the plans record
    the channel handling, the 4-channel mixer trains, the final validation scores both classes, and ``predict``
    with one click per class returns masks in the inputs' geometry (never the ignore label), scored by
    ``evaluate``."""
    from sam3d_nnunet.cli import main
    assert "SAM3DPlanner: 2 input channel(s) ['T1', 'T2']: SAM's 3 inputs are (channel 0, channel 1" in \
        trained.plan_stdout
    assert "SAM3DPlanner: 4 input channel(s) ['T1', 'T1c', 'T2', 'FLAIR']: a trainable" in trained.plan_stdout
    trainer = "nnUNetTrainerSAM3D_1epoch"
    for n, pipe in ((2, trained.get(911)), (4, trained.get(912))):
        plans = json.loads((pipe.preprocessed / "SAM3DPlans.json").read_text())
        assert plans["sam3d"]["input_channels"]["count"] == n
        assert plans["sam3d"]["labels"]["ignore_label"] == (3 if n == 4 else None)
        model = pipe.results(trainer)
        # a checkpoint this test's own training wrote (nnU-Net's format holds non-tensor objects)
        weights = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                             weights_only=False)["network_weights"]
        if n == 4:  # the mixer trained away from its channel-mean start
            w = weights["input_mixer.weight"]
            assert w.shape == (3, 4) and not torch.equal(w, torch.full((3, 4), 0.25))
        else:
            assert "input_mixer.weight" not in weights
        raw = pipe.root / "raw" / pipe.name
        cases = _val_cases(pipe.preprocessed)
        # the final validation scored both classes on every validation case (one epoch: no Dice threshold)
        check_summary(json.loads((model / "fold_0" / "validation" / "summary.json").read_text()), cases)
        inp = _link_cases(raw, cases, n, tmp_path / f"in{n}")
        out = tmp_path / f"out{n}"
        assert main(["predict", "-i", str(inp), "-o", str(out), "-m", str(model), "-f", "0", "-device", "cpu",
                     "--simulate-clicks", str(raw / "labelsTr"), "--n-clicks", "1", "--seed", "0",
                     "--disable_progress_bar"]) == 0
        record = json.loads((out / "prompts.json").read_text())
        for case in cases:
            pred = SITK.ReadImage(str(out / f"{case}.nii.gz"))
            assert _same_geometry(pred, SITK.ReadImage(str(inp / f"{case}_0000.nii.gz")))
            assert set(np.unique(SITK.GetArrayFromImage(pred))) <= {0, 1, 2}, "never the ignore label"
            label = _read(raw / "labelsTr" / f"{case}.nii.gz")
            assert record["cases"][case]["classes"], "clicks for the classes present"
            for c, v in record["cases"][case]["classes"].items():
                for p in v["clicks_raw_voxel"]:
                    assert label[tuple(int(i) for i in p)] == int(c), "clicks on their class, never on ignore"
        assert main(["evaluate", "-ref", str(raw / "labelsTr"), "-pred", str(out), "-djfile",
                     str(raw / "dataset.json"), "--chill", "--no-progress", "-np", "1"]) == 0
        check_summary(json.loads((out / "summary.json").read_text()), cases,
                      metrics=("Dice", "NSD@1mm", "NSD@2mm", "NSD@5mm"))


@pytest.mark.slow
def test_exported_model_installs_into_empty_results_and_predicts_identically(trained, tmp_path):
    """nnU-Net's own ``nnUNetv2_export_model_to_zip`` / ``nnUNetv2_install_pretrained_model_from_zip`` carry a
    SAM3D model; on "another machine" (an empty nnUNet_results, the SAM checkpoint gone, nnUNet_extTrainer set)
    ``sam3d-nnunet predict`` gives byte-identical masks, and nnU-Net's own ``nnUNetv2_predict`` (automatic mode)
    runs on the installed model."""
    pipe = trained.get(911)
    trainer = "nnUNetTrainerSAM3D_1epoch"
    raw = pipe.root / "raw" / pipe.name
    cases = _val_cases(pipe.preprocessed)
    inp = _link_cases(raw, cases, 2, tmp_path / "in")
    zip_file = tmp_path / "model.zip"
    _run([_exe("nnUNetv2_export_model_to_zip"), "-d", pipe.id, "-o", zip_file, "-c", "3d_fullres", "-tr", trainer,
          "-p", "SAM3DPlans", "-f", "0"], pipe.env)
    predict = [_exe("sam3d-nnunet"), "predict", "-i", inp, "-d", pipe.id, "-tr", trainer, "-p", "SAM3DPlans",
               "-f", "0", "-device", "cpu", "--simulate-clicks", raw / "labelsTr", "--seed", "0",
               "--disable_progress_bar"]
    _run(predict + ["-o", tmp_path / "here"], pipe.env)

    other = dict(pipe.env, nnUNet_results=str(tmp_path / "elsewhere" / "results"))
    (tmp_path / "elsewhere" / "results").mkdir(parents=True)
    sam_ckpt = Path(json.loads((pipe.results(trainer) / "plans.json").read_text())["sam3d"]["sam_checkpoint"])
    hidden = sam_ckpt.with_name(sam_ckpt.name + ".moved")
    sam_ckpt.rename(hidden)
    try:
        _run([_exe("nnUNetv2_install_pretrained_model_from_zip"), zip_file], other)
        installed = tmp_path / "elsewhere" / "results" / pipe.name / f"{trainer}__SAM3DPlans__3d_fullres"
        assert (installed / "fold_0" / "checkpoint_final.pth").is_file() and (installed / "plans.json").is_file()
        assert not sam_ckpt.exists()
        _run(predict + ["-o", tmp_path / "there"], other)
        _run([_exe("nnUNetv2_predict"), "-i", inp, "-o", tmp_path / "nnunet_auto", "-d", pipe.id, "-c", "3d_fullres",
              "-tr", trainer, "-p", "SAM3DPlans", "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
              "--disable_tta"], other)
    finally:
        hidden.rename(sam_ckpt)
    for case in cases:
        a = (tmp_path / "here" / f"{case}.nii.gz").read_bytes()
        b = (tmp_path / "there" / f"{case}.nii.gz").read_bytes()
        assert a == b, f"{case}: the installed model predicts differently"
        auto = SITK.ReadImage(str(tmp_path / "nnunet_auto" / f"{case}.nii.gz"))
        assert _same_geometry(auto, SITK.ReadImage(str(inp / f"{case}_0000.nii.gz")))
    assert json.loads((tmp_path / "here" / "prompts.json").read_text()) == \
        json.loads((tmp_path / "there" / "prompts.json").read_text())


# =================================================================================================== real data
@pytest.mark.slow
def test_hippocampus_both_classes_in_one_call(trained):
    """MSD Task04 (MRI, anterior 1 + posterior 2), 6 cases converted with nnU-Net's MSD converter, planned (a
    16-divisible patch covering the median image, z-score normalisation), trained for one epoch and cross-validated
    on fold 0 as nnU-Net does; ``predict`` with one click on each class predicts both in one call, with one encoder
    pass per case (the image fits one window)."""
    from sam3d_nnunet.commands.predict import predict_folder
    from sam3d_nnunet.inference import PromptedPredictor
    pipe = trained.get(914)
    plans = json.loads((pipe.preprocessed / "SAM3DPlans.json").read_text())
    assert plans["sam3d"]["spacing"]["decision"] == "isotropic"
    assert plans["sam3d"]["labels"]["foreground_labels"] == [1, 2]
    cfg = plans["configurations"]["3d_fullres"]
    assert all(p % 16 == 0 for p in cfg["patch_size"])
    assert all(p >= m for p, m in zip(cfg["patch_size"], cfg["median_image_size_in_voxels"])), \
        "the patch covers the median image"
    assert cfg["normalization_schemes"] == ["ZScoreNormalization"]  # MRI
    # nnU-Net's own 5-fold split, the final validation (automatic and 1-click) of fold 0, native geometry
    _check_cv_result(pipe, "nnUNetTrainerSAM3D_1epoch")
    raw = pipe.root / "raw" / pipe.name
    cases = _val_cases(pipe.preprocessed)
    inp = _link_cases(raw, cases, 1, pipe.root / "in_hippocampus")
    out = pipe.root / "out_hippocampus"
    predictor = PromptedPredictor.from_trained_model_folder(str(pipe.results("nnUNetTrainerSAM3D_1epoch")), (0,))
    counting = _CountingNet(predictor.network)
    predictor.network = counting
    summary = predict_folder(predictor, str(inp), str(out), simulate_labels=str(raw / "labelsTr"), n_clicks=1,
                             seed=0, progress=False)
    assert summary.predicted == cases
    record = json.loads((out / "prompts.json").read_text())
    for case in cases:
        assert sorted(record["cases"][case]["classes"]) == ["1", "2"], "a click on each class"
        pred = SITK.ReadImage(str(out / f"{case}.nii.gz"))
        assert _same_geometry(pred, SITK.ReadImage(str(inp / f"{case}_0000.nii.gz")))
        assert set(np.unique(SITK.GetArrayFromImage(pred))) <= {0, 1, 2}
    assert counting.decoded_classes == [1, 2] * len(cases)
    assert counting.encode_calls == len(cases), "both classes of a case share one encoder pass"


@pytest.mark.slow
def test_sts_ct_thick_slices_reduced(trained):
    """Real thick-slice CT (STS_CT, 0.98 x 0.98 x 3.27 mm), 6 cases: the planner prints its spacing decision
    (nnU-Net's spacing, stride [1, 4, 4]); one epoch (batch lowered to 2 for the CPU); one click per validation
    case; outputs in the inputs' geometry; Dice and NSD computed. (The 30-case measurement is in BENCHMARKS.md,
    "Other datasets".)"""
    from sam3d_nnunet.cli import main
    pipe = trained.get(915)
    assert ("SAM3DPlanner: median spacing (3.27, 0.977, 0.977) mm is anisotropic (ratio 3.3 > 3): keeping nnU-Net's "
            "target spacing (3.27, 0.977, 0.977) and token stride (1, 4, 4) -> tokens of 3.3 x 3.9 x 3.9 mm") \
        in trained.plan_stdout
    plans = json.loads((pipe.preprocessed / "SAM3DPlans.json").read_text())
    cfg = plans["configurations"]["3d_fullres"]
    assert cfg["architecture"]["arch_kwargs"]["token_stride"] == [1, 4, 4]
    assert cfg["patch_size"][0] < cfg["patch_size"][1] == cfg["patch_size"][2]
    assert cfg["spacing"] == pytest.approx([3.27, 0.9766, 0.9766], abs=1e-3), "nnU-Net's (native) spacing"
    raw = pipe.root / "raw" / pipe.name
    val = _val_cases(pipe.preprocessed)
    inp = _link_cases(raw, val, 1, pipe.root / "in_sts")
    out = pipe.root / "out_sts"
    assert main(["predict", "-i", str(inp), "-o", str(out), "-m", str(pipe.results("nnUNetTrainerSAM3D_1epoch")),
                 "-f", "0", "-device", "cpu", "--simulate-clicks", str(raw / "labelsTr"), "--n-clicks", "1",
                 "--seed", "0", "--max-windows", "4", "--disable_progress_bar"]) == 0
    for case in val:
        pred = SITK.ReadImage(str(out / f"{case}.nii.gz"))
        assert _same_geometry(pred, SITK.ReadImage(str(inp / f"{case}_0000.nii.gz"))), "native geometry"
    assert main(["evaluate", "-ref", str(raw / "labelsTr"), "-pred", str(out), "-djfile", str(raw / "dataset.json"),
                 "--chill", "--no-progress", "-np", "1"]) == 0
    check_summary(json.loads((out / "summary.json").read_text()), val, labels=("1",), metrics=("Dice", "NSD@2mm"))
