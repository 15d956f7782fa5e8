"""nnUNetTrainerSAM3D inside nnU-Net's own commands, and the prompted whole-volume predictor.

Fast tests: trainer discovery through ``nnUNet_extTrainer``, the variants, the predictor's window logic with a
stand-in network, click mapping into preprocessed space. Slow tests (marked ``slow``; they run nnU-Net's
commands as subprocesses on temporary folders): plan + preprocess + ``nnUNetv2_train`` + automatic and prompted
cross-validation + ``nnUNetv2_find_best_configuration`` on synthetic phantoms, frozen tensors equal to the SAM
source. Real hippocampus cases go through the same checks in ``test_datasets``; killing a training and resuming it
with ``--c`` is ``test_reliability_faults``'s.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from summary_checks import check_summary
from tiny_plans import DATASET_JSON, tiny_plans

BIN = Path(sys.executable).parent
VARIANTS = ["nnUNetTrainerSAM3D", "nnUNetTrainerSAM3D_full", "nnUNetTrainerSAM3D_LoRA", "nnUNetTrainerSAM3D_auto",
            "nnUNetTrainerSAM3D_allprompts", "nnUNetTrainerSAM3D_1epoch", "nnUNetTrainerSAM3D_5epochs"]


def _exe(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


# ---------------------------------------------------------------------------------------------------------
# fast: discovery and variants
# ---------------------------------------------------------------------------------------------------------

def test_ext_trainer_dir_makes_every_variant_findable(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    import sam3d_nnunet.trainers.nnUNetTrainerSAM3D as real
    from sam3d_nnunet.commands.ext_trainer_dir import ext_trainer_dir
    folder = ext_trainer_dir()
    out = subprocess.run([_exe("sam3d-nnunet"), "ext-trainer-dir"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == folder and os.path.isdir(folder)
    monkeypatch.setenv("nnUNet_extTrainer", folder)
    for name in VARIANTS:
        cls = recursive_find_trainer_class_by_name(name)
        assert cls is getattr(real, name), f"{name}: nnU-Net found another class (name clash?)"
        assert cls.__module__ == "sam3d_nnunet.trainers.nnUNetTrainerSAM3D"
    assert "sam3d_nnunet_ext_trainers" not in sys.modules  # nnU-Net dropped the shim, the classes stay valid


def test_variants_only_change_attributes():
    import sam3d_nnunet.trainers.nnUNetTrainerSAM3D as m
    for name in VARIANTS[1:]:
        cls = getattr(m, name)
        assert cls.__bases__ == (m.nnUNetTrainerSAM3D,)
        own = {k for k, v in vars(cls).items() if not k.startswith("__")}
        assert own and not any(callable(getattr(cls, k)) and k in vars(cls) and callable(vars(cls)[k])
                               for k in own), f"{name} defines methods: {own}"
    assert m.nnUNetTrainerSAM3D_1epoch.sam_num_epochs == 1
    assert m.nnUNetTrainerSAM3D_1epoch.sam_iterations_per_epoch <= 10
    assert m.nnUNetTrainerSAM3D_5epochs.sam_num_epochs == 5 and m.nnUNetTrainerSAM3D_5epochs.sam_save_every == 1
    assert m.nnUNetTrainerSAM3D_auto.use_prompts is False






def test_variant_builds_its_own_network_and_checkpoints_do_not_mix():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    import sam3d_nnunet.trainers.nnUNetTrainerSAM3D as m
    pm = PlansManager(tiny_plans())
    cm = pm.get_configuration("3d_fullres")
    nets = {name: getattr(m, name).build_network_architecture(pm, cm, 1, 3, True)
            for name in ["nnUNetTrainerSAM3D", "nnUNetTrainerSAM3D_full", "nnUNetTrainerSAM3D_LoRA"]}
    assert [n.finetune for n in nets.values()] == ["adapter", "full", "lora"]
    assert all(n.deep_supervision is False for n in nets.values())
    n_train = {k: sum(p.numel() for p in n.parameters() if p.requires_grad) for k, n in nets.items()}
    assert n_train["nnUNetTrainerSAM3D_full"] == sum(p.numel() for p in nets["nnUNetTrainerSAM3D_full"].parameters())
    assert n_train["nnUNetTrainerSAM3D"] < n_train["nnUNetTrainerSAM3D_full"]
    assert any("lora" in k for k in nets["nnUNetTrainerSAM3D_LoRA"].state_dict())
    # a LoRA checkpoint cannot silently load into the adapter network (and vice versa)
    with pytest.raises(RuntimeError):
        nets["nnUNetTrainerSAM3D"].load_state_dict(nets["nnUNetTrainerSAM3D_LoRA"].state_dict())


# ---------------------------------------------------------------------------------------------------------
# fast: the prompted predictor with a stand-in network
# ---------------------------------------------------------------------------------------------------------

class _OracleNet(torch.nn.Module):
    """Stand-in for SAM3DNet: channel 0 of the image holds the label map; decode 'segments' the requested class
    everywhere in the window (confidence 0.9 for class 1, 0.8 for class 2), ignoring the clicks."""

    def __init__(self):
        super().__init__()
        self.encodes = 0

    def encode(self, image):
        self.encodes += 1
        return image

    def decode(self, features, clicks, click_labels, target_class):
        lab = features[:, 0].round().long()
        fg = (lab == target_class.view(-1, 1, 1, 1)).float()
        logit = np.log(9.0) if int(target_class[0]) == 1 else np.log(4.0)
        return torch.stack([torch.zeros_like(fg), torch.where(fg > 0, logit, -logit)], 1)


def _predictor(net, patch=(32, 32, 32), **kw):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from sam3d_nnunet.inference import PromptedPredictor
    pm = PlansManager(tiny_plans(patch))
    return PromptedPredictor(net, pm, pm.get_configuration("3d_fullres"), DATASET_JSON, "cpu", **kw)


def _sphere(shape, centre, radius):
    g = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((a - c) ** 2 for a, c in zip(g, centre)) <= radius ** 2


def test_windows_extend_until_the_mask_is_complete():
    from sam3d_nnunet.inference import ClassPrompt
    shape = (96, 64, 64)
    lab = np.zeros(shape, np.float32)
    lab[_sphere(shape, (48, 32, 32), 26)] = 1  # far larger than one 32^3 window
    lab[_sphere(shape, (10, 10, 10), 5)] = 2
    net = _OracleNet()
    pred = _predictor(net, max_windows_per_class=64)
    out = pred.predict_preprocessed(lab[None], {1: ClassPrompt([[48, 32, 32]], [1]),
                                                2: ClassPrompt([[10, 10, 10]], [1])})
    assert out.shape == (3, *shape)
    seg = out.argmax(0).numpy()
    assert np.array_equal(seg == 1, lab == 1), "the windows grew until the whole object was covered"
    assert np.array_equal(seg == 2, lab == 2)
    rep = pred.last_report
    assert 1 < len(rep.windows[1]) <= 64 and not rep.hit_window_limit[1]
    assert len(rep.windows[2]) == 1, "an object inside its first window needs no extension"
    # the documented bound stops the growth; outside the visited windows everything is background
    pred = _predictor(_OracleNet(), max_windows_per_class=1)
    seg = pred.predict_preprocessed(lab[None], {1: ClassPrompt([[48, 32, 32]], [1])}).argmax(0).numpy()
    assert pred.last_report.hit_window_limit[1]
    assert 0 < (seg == 1).sum() < (lab == 1).sum() and (seg == 1).sum() <= 32 ** 3
    assert not (seg == 2).any(), "classes without prompt are background"


def test_small_image_is_padded_and_unprompted_case_is_empty():
    from sam3d_nnunet.inference import ClassPrompt
    shape = (20, 24, 18)
    lab = np.zeros(shape, np.float32)
    lab[_sphere(shape, (10, 12, 9), 6)] = 2
    net = _OracleNet()
    out = _predictor(net).predict_preprocessed(lab[None], {2: ClassPrompt([[10, 12, 9]], [1])})
    assert out.shape == (3, *shape)
    assert np.array_equal(out.argmax(0).numpy() == 2, lab == 2)
    empty = _predictor(net).predict_preprocessed(lab[None], {})
    assert (empty.argmax(0) == 0).all()


def test_classes_share_encoder_passes_and_higher_probability_wins():
    from sam3d_nnunet.inference import ClassPrompt, merge_class_probabilities
    shape = (32, 32, 32)
    lab = np.zeros(shape, np.float32)
    lab[:16] = 1
    lab[16:] = 2
    net = _OracleNet()
    _predictor(net).predict_preprocessed(lab[None], {1: ClassPrompt([[8, 16, 16]], [1]),
                                                     2: ClassPrompt([[24, 16, 16]], [1])})
    assert net.encodes == 1, "both classes use the same (only) window: one encoder pass"
    p1 = torch.tensor([0.9, 0.6, 0.3, 0.7])
    p2 = torch.tensor([0.8, 0.7, 0.2, 0.0])
    merged = merge_class_probabilities({1: p1, 2: p2}, 3, (4,))
    assert merged.argmax(0).tolist() == [1, 2, 0, 1]


def test_raw_clicks_map_into_preprocessed_space(tmp_path):
    """A raw label voxel, mapped with transpose + crop + scale, lands on the same class in nnU-Net's
    preprocessed (transposed, cropped, resampled) label."""
    import SimpleITK as sitk
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sam3d_nnunet.inference import raw_to_preprocessed_coords
    from sam3d_nnunet.phantoms import make_phantom_case
    from sam3d_nnunet.prompts import protocol_clicks
    img, lab = make_phantom_case((48, 40, 30), (1.0, 1.0, 2.0), np.random.default_rng(3))
    img[:3] = 0  # a zero border so nnU-Net's crop to nonzero really crops
    img[:, :, -2:] = 0
    lab[:3] = 0
    lab[:, :, -2:] = 0
    for arr, name in ((img, "img_0000.nii.gz"), (lab, "lab.nii.gz")):
        itk = sitk.GetImageFromArray(arr)
        itk.SetSpacing((2.0, 1.0, 1.0))
        sitk.WriteImage(itk, str(tmp_path / name))
    # target spacing 1.5 x 0.8 x 0.8 after transposing the thick axis (array axis 2) first
    pm = PlansManager(tiny_plans(spacing=(1.5, 0.8, 0.8), transpose=(2, 0, 1)))
    cm = pm.get_configuration("3d_fullres")
    pre = cm.preprocessor_class(verbose=False)
    data, seg, props = pre.run_case([str(tmp_path / "img_0000.nii.gz")], str(tmp_path / "lab.nii.gz"), pm, cm,
                                    DATASET_JSON)
    assert tuple(props["bbox_used_for_cropping"][0]) != (0, lab.shape[2])  # cropped along the first axis
    hits, total = 0, 0
    for c in (1, 2):
        raw = protocol_clicks(lab, c, 20, 0)
        mapped = raw_to_preprocessed_coords(raw, props, pm.transpose_forward, data.shape[1:])
        for p in np.rint(mapped).astype(int):
            total += 1
            hits += int(seg[0][tuple(p)] == c)
    assert hits / total > 0.85, f"{hits}/{total} mapped clicks on their class"


# ---------------------------------------------------------------------------------------------------------
# slow: nnU-Net's commands end to end
# ---------------------------------------------------------------------------------------------------------

def _env(root: Path) -> dict:
    from sam3d_nnunet.commands.ext_trainer_dir import ext_trainer_dir
    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"), nnUNet_results=str(root / "res"),
               nnUNet_def_n_proc="2", nnUNet_n_proc_DA="2", nnUNet_extTrainer=ext_trainer_dir(),
               nnUNet_compile="false", PYTHONUNBUFFERED="1")
    return env


def _run(cmd, env, timeout=600):
    t0 = time.time()
    p = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    print(f"[{time.time() - t0:6.1f} s] {' '.join(map(str, cmd[:6]))}")
    return p


class Pipeline:
    def __init__(self, root: Path, dataset_id: int, dataset_name: str, sam_ckpt: Path):
        self.root, self.id, self.name, self.sam_ckpt = root, dataset_id, dataset_name, sam_ckpt
        self.env = _env(root)

    def plan(self):
        return _run([_exe("sam3d-nnunet"), "plan_and_preprocess", "-d", self.id, "-pl", "SAM3DPlanner", "-c",
                     "3d_fullres", "--sam-variant", "tiny", "--sam-checkpoint", self.sam_ckpt, "-npfp", "2", "-np", "2",
                     "--no_pbar"], self.env)

    def train(self, trainer, *extra):
        return _run([_exe("nnUNetv2_train"), self.id, "3d_fullres", "0", "-tr", trainer, "-p", "SAM3DPlans",
                     "-device", "cpu", *extra], self.env)

    def results(self, trainer) -> Path:
        return self.root / "res" / self.name / f"{trainer}__SAM3DPlans__3d_fullres"

    @property
    def preprocessed(self) -> Path:
        return self.root / "pre" / self.name


def _check_cv_result(pipe: Pipeline, trainer: str, labels=("1", "2")):
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    fold = pipe.results(trainer) / "fold_0"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    # same split as nnU-Net's default trainer would create, unchanged on disk
    ids = sorted(p.name[:-len(".nii.gz")] for p in (pipe.preprocessed / "gt_segmentations").iterdir())
    expected = generate_crossval_split(ids, seed=12345, n_splits=5)
    splits = json.loads((pipe.preprocessed / "splits_final.json").read_text())
    assert splits == expected
    predicted = sorted(p.name[:-len(".nii.gz")] for p in (fold / "validation").glob("*.nii.gz"))
    assert predicted == sorted(expected[0]["val"])
    # no Dice floor (a few iterations of one epoch; whether training learns is the learning tests' subject), but
    # every validation case is scored and every class's Dice is there and finite (None / NaN or a missing case fail)
    check_summary(summary, predicted, labels)
    # validation/ holds the automatic predictions (nnU-Net's own validation); the prompted ones are next to it
    assert not list((fold / "validation").glob("prompts*.json"))
    prompted = fold / "validation_clicks1_seed0"
    assert sorted(p.name[:-len(".nii.gz")] for p in prompted.glob("*.nii.gz")) == predicted
    check_summary(json.loads((prompted / "summary.json").read_text()), predicted, labels)
    prompts = json.loads((prompted / "prompts.json").read_text())
    assert sorted(prompts["cases"]) == predicted
    # native geometry: same size and spacing as the ground truth
    import SimpleITK as sitk
    for case in predicted[:2]:
        a = sitk.ReadImage(str(fold / "validation" / f"{case}.nii.gz"))
        b = sitk.ReadImage(str(pipe.preprocessed / "gt_segmentations" / f"{case}.nii.gz"))
        assert a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
    # nnU-Net's model selection accepts the result
    _run([_exe("nnUNetv2_find_best_configuration"), pipe.id, "-c", "3d_fullres", "-tr", trainer, "-p", "SAM3DPlans",
          "-f", "0", "-np", "2"], pipe.env)
    info = json.loads((pipe.root / "res" / pipe.name / "inference_information.json").read_text())
    assert info["best_model_or_ensemble"]["selected_model_or_models"][0]["trainer"] == trainer
    return summary


@pytest.fixture(scope="module")
def phantom_pipeline(tmp_path_factory):
    from sam3d_nnunet.model import write_random_sam_checkpoint
    from sam3d_nnunet.phantoms import generate_phantom_dataset
    root = tmp_path_factory.mktemp("sam3d_phantoms")
    generate_phantom_dataset(root / "raw", 901, "Phantoms", n_cases=10, shape=(48, 48, 48), seed=0)
    ckpt = write_random_sam_checkpoint("tiny", root / "sam_tiny.pth", seed=1)
    pipe = Pipeline(root, 901, "Dataset901_Phantoms", ckpt)
    pipe.plan()
    plans = json.loads((pipe.preprocessed / "SAM3DPlans.json").read_text())
    assert plans["sam3d"]["sam_checkpoint"] == str(ckpt.resolve())
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [48, 48, 48]
    return pipe


@pytest.mark.slow
def test_phantoms_train_validate_select(phantom_pipeline):
    pipe = phantom_pipeline
    trainer = "nnUNetTrainerSAM3D_1epoch"
    pipe.train(trainer)
    _check_cv_result(pipe, trainer)
    fold = pipe.results(trainer) / "fold_0"
    assert not list(fold.glob(".*tmp*")), "no temporary checkpoint files left"

    # every frozen tensor in the checkpoint equals the SAM source; the trainable ones moved
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sam3d_nnunet.model import load_sam_checkpoint
    from sam3d_nnunet.trainers.nnUNetTrainerSAM3D import nnUNetTrainerSAM3D_1epoch
    # a checkpoint this test's own training wrote (nnU-Net's format holds a few non-tensor objects)
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == trainer and ckpt["current_epoch"] == 1
    pm = PlansManager(str(pipe.results(trainer) / "plans.json"))
    ref = nnUNetTrainerSAM3D_1epoch.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 3, False)
    initial = {k: v.clone() for k, v in ref.state_dict().items()}
    load_sam_checkpoint(ref, pipe.sam_ckpt)
    trained = ckpt["network_weights"]
    frozen = [n for n, p in ref.named_parameters() if not p.requires_grad]
    assert len(frozen) > 10
    sam_source = ref.state_dict()
    for name in frozen:
        assert torch.equal(trained[name], sam_source[name]), f"frozen tensor {name} changed"
        assert not torch.equal(sam_source[name], initial[name]) or sam_source[name].abs().sum() == 0
    moved = [n for n, p in ref.named_parameters() if p.requires_grad and not torch.equal(trained[n], sam_source[n])]
    assert len(moved) > 10, "the trainable tensors were optimised"

    # the checkpoint predicts with the same variant, through the same path as validation: same output file
    import SimpleITK as sitk

    from sam3d_nnunet.inference import ClassPrompt, PromptedPredictor
    pred = PromptedPredictor.from_trained_model_folder(str(pipe.results(trainer)), (0,))
    assert pred.trainer_name == trainer and pred.prompted and pred.network.finetune == "adapter"
    prompts = json.loads((fold / "validation_clicks1_seed0" / "prompts.json").read_text())
    case = sorted(prompts["cases"])[0]
    raw_prompts = {int(c): ClassPrompt(v["clicks_raw_voxel"], v["labels"])
                   for c, v in prompts["cases"][case]["classes"].items()}
    out = pipe.root / "predict_check" / case
    out.parent.mkdir()
    pred.predict_raw_case([str(pipe.root / "raw" / pipe.name / "imagesTr" / f"{case}_0000.nii.gz")], raw_prompts,
                          str(out))
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(out) + ".nii.gz"))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(fold / "validation_clicks1_seed0" / f"{case}.nii.gz")))
    assert np.array_equal(a, b), "predict path and prompted validation path disagree"

    # slim checkpoints: the trainer writes one without the frozen SAM tensors and reads it back exactly; the
    # predictor restores it from the SAM checkpoint and predicts the same file
    slim_folder = pipe.root / "slim_model"
    shutil.copytree(pipe.results(trainer), slim_folder, ignore=shutil.ignore_patterns("validation*", "*.png"))
    out = _run([sys.executable, "-c", SLIM_ROUNDTRIP, str(pipe.results(trainer)),
                str(slim_folder / "fold_0" / "checkpoint_final.pth")], pipe.env).stdout
    assert "slim checkpoint OK" in out
    assert (slim_folder / "fold_0" / "checkpoint_final.pth").stat().st_size < (fold / "checkpoint_final.pth").stat().st_size
    slim_pred = PromptedPredictor.from_trained_model_folder(str(slim_folder), (0,))
    slim_out = pipe.root / "predict_check" / f"{case}_slim"
    slim_pred.predict_raw_case([str(pipe.root / "raw" / pipe.name / "imagesTr" / f"{case}_0000.nii.gz")],
                               raw_prompts, str(slim_out))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(slim_out) + ".nii.gz")), a)


SLIM_ROUNDTRIP = """
import sys, torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from sam3d_nnunet.model.slim_checkpoint import SLIM_KEY
from sam3d_nnunet.trainers.nnUNetTrainerSAM3D import nnUNetTrainerSAM3D_1epoch as Trainer
folder, out = sys.argv[1], sys.argv[2]
dataset_json = load_json(folder + '/dataset.json')
plans = lambda: {**load_json(folder + '/plans.json'), 'continue_training': True}  # nnU-Net 2.8's run_training sets it
full = Trainer(plans(), '3d_fullres', 0, dataset_json, device=torch.device('cpu'))
full.load_checkpoint(folder + '/fold_0/checkpoint_final.pth')
full.slim_checkpoints = True
full.save_checkpoint(out)
written = torch.load(out, weights_only=False)  # written just above by this script
omitted = written[SLIM_KEY]['omitted_keys']
assert len(omitted) > 10 and not set(omitted) & set(written['network_weights'])
again = Trainer(plans(), '3d_fullres', 0, dataset_json, device=torch.device('cpu'))
again.load_checkpoint(out)
a, b = full._net().state_dict(), again._net().state_dict()
assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
print('slim checkpoint OK', len(omitted))
"""


@pytest.mark.slow
def test_variants_train_and_reload_with_their_policy(phantom_pipeline, monkeypatch):
    """_auto, _LoRA and _full each train a couple of steps in-process; a checkpoint is rebuilt by its own
    variant (policy, LoRA tensors); the automatic variant validates without clicks."""
    import sam3d_nnunet.trainers.nnUNetTrainerSAM3D as m
    from sam3d_nnunet.inference import PromptedPredictor
    pipe = phantom_pipeline
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(key, pipe.env[key])
    plans = json.loads((pipe.preprocessed / "SAM3DPlans.json").read_text())
    dataset_json = json.loads((pipe.preprocessed / "dataset.json").read_text())
    for name, policy in (("nnUNetTrainerSAM3D_auto", "adapter"), ("nnUNetTrainerSAM3D_LoRA", "lora"),
                         ("nnUNetTrainerSAM3D_full", "full")):
        trainer = getattr(m, name)(dict(plans, continue_training=False), "3d_fullres", 0, dataset_json,
                                   device=torch.device("cpu"))
        trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, 2, 1
        trainer.run_training()
        assert np.isfinite(trainer.logger.get_value("train_losses", -1))
        if name.endswith("_auto"):
            trainer.perform_actual_validation()
            summary = json.loads((Path(trainer.output_folder) / "validation" / "summary.json").read_text())
            assert {"1", "2"} <= set(summary["mean"])
        pred = PromptedPredictor.from_trained_model_folder(trainer.output_folder_base, (0,))
        assert pred.trainer_name == name and pred.network.finetune == policy
        assert pred.prompted == (not name.endswith("_auto"))
