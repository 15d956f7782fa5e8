"""InteractiveSession: click-by-click segmentation with cached encoder features, in the input's geometry.

Most tests use ``ThresholdOracleNet``, a deterministic TEST DOUBLE with SAM3DNet's interface (``encode``,
``decode``, ``forward``, ``patch_size``, ``num_classes``) that really "segments": the voxels above an intensity
threshold connected to a positive click inside the window, minus a ball around each negative click. It makes the
session's behaviour checkable (the object comes back, a negative click removes voxels) without a trained model.
The tests of ``from_trained_model_folder`` use a real tiny SAM3DNet with random weights written as an nnU-Net
model folder (loading does not care whether the weights were trained).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from tiny_plans import DATASET_JSON, tiny_plans

SITK = pytest.importorskip("SimpleITK")


# ------------------------------------------------------------------------------------------------ test doubles
class ThresholdOracleNet(torch.nn.Module):
    """TEST DOUBLE for SAM3DNet (not a model). ``decode``: logit +10 for the voxels of channel 0 above
    ``threshold`` that are 6-connected (inside the window) to a positive click, minus the voxels within
    ``negative_radius`` voxels of a negative click; -10 elsewhere. ``forward(image)`` (automatic mode): every
    above-threshold voxel is class 1 (margin 4, less sure than a clicked object's 10), nothing is class
    2 (nnU-Net-style margins, channel 0 = 0)."""

    def __init__(self, patch_size=(32, 32, 32), num_classes: int = 3, threshold: float = 50.0,
                 negative_radius: float = 3.0):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.num_classes = num_classes
        self.threshold = threshold
        self.negative_radius = negative_radius
        self.weight = torch.nn.Parameter(torch.zeros(1))  # so state_dict / load_state_dict / .to work
        self.encode_calls = 0
        self.decoded_clicks = []  # (clicks, labels) per decode, window coordinates

    def encode(self, image):
        self.encode_calls += 1
        return image.clone()

    def decode(self, features, clicks=None, click_labels=None, target_class=1):
        out = []
        for b in range(features.shape[0]):
            fg = features[b, 0].cpu().numpy() > self.threshold
            keep = np.zeros_like(fg)
            components, _ = ndimage.label(fg)
            pts = [] if clicks is None else clicks[b].cpu().numpy()
            labs = [] if click_labels is None else click_labels[b].cpu().numpy()
            self.decoded_clicks.append((np.array(pts), np.array(labs)))
            for p, lab in zip(pts, labs):
                idx = tuple(np.clip(np.rint(p).astype(int), 0, np.array(fg.shape) - 1))
                if lab == 1 and components[idx] > 0:
                    keep |= components == components[idx]
            grid = np.indices(fg.shape).astype(np.float32)
            for p, lab in zip(pts, labs):
                if lab == 0:
                    d2 = sum((grid[i] - p[i]) ** 2 for i in range(3))
                    keep &= d2 > self.negative_radius ** 2
            margin = torch.from_numpy(np.where(keep, 10.0, -10.0).astype(np.float32))
            out.append(torch.stack([-margin / 2, margin / 2]))
        return torch.stack(out).to(features.device)

    def forward(self, image, clicks=None, click_labels=None, target_class=None):
        feats = self.encode(image)
        if target_class is not None:
            return self.decode(feats, clicks, click_labels, target_class)
        fg = (feats[:, 0] > self.threshold).float()
        m1 = fg * 8 - 4  # less sure than a click
        return torch.stack([torch.zeros_like(m1), m1] + [torch.full_like(m1, -10.0)] * (self.num_classes - 2), 1)


def _plans(patch=(32, 32, 32), norm="NoNormalization", **kwargs):
    return tiny_plans(patch, norm=norm, dataset_name="Dataset998_Session", **kwargs)




def _oracle_session(patch=(32, 32, 32), max_windows=64, **plan_kwargs):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sam3d_nnunet.inference import InteractiveSession
    pm = PlansManager(_plans(patch, **plan_kwargs))
    net = ThresholdOracleNet(patch)
    return InteractiveSession(net, pm, pm.get_configuration("3d_fullres"), DATASET_JSON, "cpu",
                              max_windows_per_class=max_windows), net


def _ball(shape, centre, radius):
    g = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((a - c) ** 2 for a, c in zip(g, centre)) <= radius ** 2


def _write(array, path, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    img = SITK.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    SITK.WriteImage(img, str(path), True)
    return img


def _rotation():
    a = np.deg2rad(30)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
    return tuple((rz @ rx).ravel().tolist())


# ------------------------------------------------------------------------------------------------ behaviour
def test_clicks_reuse_encoder_features_and_segment_the_object():
    session, net = _oracle_session()
    shape = (40, 36, 30)
    img = np.full(shape, 10.0, np.float32)
    obj = _ball(shape, (20, 18, 15), 7)
    img[obj] = 100
    session.set_image(img, spacing=(1.0, 1.0, 1.0))
    mask = session.add_click((20, 18, 15), positive=True, class_id=1)
    assert mask.shape == shape and mask.dtype == np.uint8
    assert np.array_equal(mask == 1, obj), "the positive click finds the whole object"
    first = net.encode_calls
    assert first >= 1
    mask = session.add_click((20, 18, 9), positive=False)  # a correction near the object's edge
    assert net.encode_calls == first, "the second click must not run the encoder again"
    near = _ball(shape, (20, 18, 9), 3)
    assert not (mask == 1)[near].any() and ((mask == 1) == (obj & ~near)).all()
    assert session.clicks() == [((20.0, 18.0, 15.0), True), ((20.0, 18.0, 9.0), False)]
    assert session.network.cache_hits >= 1 and session.network.encoder_runs == first
    # undo restores the previous mask without predicting again
    decodes = len(net.decoded_clicks)
    assert np.array_equal(session.undo() == 1, obj)
    assert len(net.decoded_clicks) == decodes and net.encode_calls == first
    # a new image empties the cache: its first click encodes again
    session.set_image(img + 1, spacing=(1.0, 1.0, 1.0))
    session.add_click((20, 18, 15))
    assert net.encode_calls > first


def test_object_larger_than_one_patch_comes_back_whole_and_encoder_runs_once_per_window():
    session, net = _oracle_session(patch=(16, 16, 16))
    shape = (48, 40, 36)
    img = np.full(shape, 10.0, np.float32)
    obj = _ball(shape, (24, 20, 18), 14)  # 29 voxels across: several 16^3 windows
    img[obj] = 100
    session.set_image(img, spacing=(1.0, 1.0, 1.0))
    mask = session.add_click((24, 20, 18))
    assert np.array_equal(mask == 1, obj)
    windows = len(session.predictor.last_report.windows[1])
    assert windows > 1 and net.encode_calls == windows and not session.predictor.last_report.hit_window_limit[1]
    session.add_click((24, 20, 18), positive=True)  # same object again: the same windows, all cached
    assert net.encode_calls == windows


def test_classes_keep_their_own_clicks_undo_reset_and_auto():
    session, net = _oracle_session()
    shape = (32, 32, 40)
    img = np.full(shape, 10.0, np.float32)
    a = _ball(shape, (16, 16, 8), 5)
    b = _ball(shape, (16, 16, 30), 4)
    img[a | b] = 100
    session.set_image(img, spacing=(1.0, 1.0, 1.0))
    assert session.current_class == 1
    session.add_click((16, 16, 8))
    session.set_class(2)
    m = session.add_click((16, 16, 30))
    assert np.array_equal(m == 1, a) and np.array_equal(m == 2, b)
    assert session.clicks(1) == [((16.0, 16.0, 8.0), True)] and len(session.clicks(2)) == 1
    m = session.undo()
    assert np.array_equal(m == 1, a) and not (m == 2).any()
    m = session.reset(class_id=1)
    assert not m.any() and session.clicks(1) == []
    assert np.array_equal(session.undo() == 1, a)
    # automatic mode (the network's no-click output over a sliding window): every bright voxel is class 1
    m = session.auto(class_id=1)
    assert np.array_equal(m == 1, a | b) and session.clicks(1) == []
    m = session.reset(all_classes=True)
    assert not m.any()
    assert session.can_undo


def test_world_click_lands_on_the_intended_voxel_and_mask_keeps_geometry(tmp_path):
    # anisotropic spacing, rotated direction, arbitrary origin; resampled + transposed by the plans
    session, net = _oracle_session(spacing=(1.5, 1.2, 1.0), transpose=(2, 0, 1))
    shape = (30, 48, 44)
    img = np.full(shape, 10, np.int16)
    centres = [(8, 12, 11), (20, 34, 31), (8, 34, 31), (22, 12, 11)]
    for c in centres:
        img[_ball(shape, c, 5)] = 100
    _write(img, tmp_path / "case_0000.nii.gz", spacing=(0.8, 1.1, 2.5), origin=(12.5, -40.0, 7.0),
           direction=_rotation())
    src = SITK.ReadImage(str(tmp_path / "case_0000.nii.gz"))
    session.set_image(tmp_path / "case_0000.nii.gz")
    target = centres[1]
    world = src.TransformIndexToPhysicalPoint(tuple(int(v) for v in target[::-1]))
    mask = session.add_click_world(world, class_id=1)
    (clicked, positive), = session.clicks(1)
    assert np.allclose(clicked, target, atol=1e-6) and positive
    assert mask[target] == 1
    blobs = [_ball(shape, c, 5) for c in centres]
    assert (mask == 1)[blobs[1]].mean() > 0.8
    for i, blob in enumerate(blobs):
        if i != 1:
            assert not (mask == 1)[blob].any(), f"blob {i} was not clicked"
    out = session.save_mask(tmp_path / "out" / "mask.nii.gz")
    written = SITK.ReadImage(out)
    assert written.GetSize() == src.GetSize() and written.GetSpacing() == src.GetSpacing()
    assert written.GetOrigin() == src.GetOrigin() and written.GetDirection() == src.GetDirection()
    assert np.array_equal(SITK.GetArrayFromImage(written), mask)
    assert os.listdir(tmp_path / "out") == ["mask.nii.gz"], "no temporary file left"
    # the same click through a numpy array with the same geometry gives the same mask
    session.set_image(img, spacing=(2.5, 1.1, 0.8), origin=(12.5, -40.0, 7.0), direction=_rotation())
    assert np.array_equal(session.add_click_world(world), mask)


def test_session_matches_the_predict_command(tmp_path):
    """A click in the session and the same click in a click file through ``predict_folder`` give the same mask."""
    from sam3d_nnunet.commands.predict import predict_folder
    from sam3d_nnunet.prompts import Click, ClickFile, write_click_file
    session, net = _oracle_session(spacing=(2.0, 1.0, 1.0))
    shape = (20, 40, 40)
    img = np.full(shape, 10, np.int16)
    img[_ball(shape, (10, 20, 20), 6)] = 100
    (tmp_path / "in").mkdir()
    _write(img, tmp_path / "in" / "c1_0000.nii.gz", spacing=(0.9, 0.9, 1.7))
    write_click_file(tmp_path / "clicks.json", ClickFile("voxel", {"c1": {1: [Click((20, 20, 10), True)]}}))
    predict_folder(session.predictor, str(tmp_path / "in"), str(tmp_path / "out"),
                   clicks_file=str(tmp_path / "clicks.json"), progress=False)
    cli = SITK.GetArrayFromImage(SITK.ReadImage(str(tmp_path / "out" / "c1.nii.gz")))
    session.set_image(tmp_path / "in" / "c1_0000.nii.gz")
    assert np.array_equal(session.add_click((10, 20, 20)), cli) and cli.any()


# ------------------------------------------------------------------------------------------------ errors
def test_clear_errors(tmp_path):
    from sam3d_nnunet.inference import ImageReadError, InferenceInputError
    session, net = _oracle_session()
    with pytest.raises(InferenceInputError, match="set_image"):
        session.add_click((1, 1, 1))
    bad = tmp_path / "broken_0000.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file" * 10)
    with pytest.raises(ImageReadError, match="broken_0000.nii.gz"):
        session.set_image(bad)
    good = tmp_path / "good_0000.nii.gz"
    _write(np.random.default_rng(0).integers(0, 1000, (20, 20, 20)).astype(np.int16), good)
    truncated = tmp_path / "truncated_0000.nii.gz"
    truncated.write_bytes(good.read_bytes()[:good.stat().st_size // 2])  # ITK would read it, zero-filled
    with pytest.raises(ImageReadError, match="truncated_0000.nii.gz"):
        session.set_image(truncated)
    with pytest.raises(ImageReadError, match="missing_0000.nii.gz.*does not exist"):
        session.set_image(tmp_path / "missing_0000.nii.gz")
    with pytest.raises(InferenceInputError, match="spacing"):
        session.set_image(np.zeros((20, 20, 20)))
    with pytest.raises(InferenceInputError, match="2 channel"):
        session.set_image(np.zeros((2, 20, 20, 20)), spacing=(1, 1, 1))
    session.set_image(np.zeros((20, 24, 28)), spacing=(1, 1, 1))
    with pytest.raises(InferenceInputError, match=r"\[20.0, 3.0, 3.0\].*outside the image.*\[20, 24, 28\]"):
        session.add_click((20, 3, 3))
    with pytest.raises(InferenceInputError, match="outside the image"):
        session.add_click_world((-5.0, 3.0, 3.0))
    with pytest.raises(InferenceInputError, match=r"class 7 is not a class of this model.*1 \(organ\), 2 \(tumour\)"):
        session.add_click((3, 3, 3), class_id=7)
    with pytest.raises(InferenceInputError, match="class 0 is not a class"):
        session.set_class(0)
    with pytest.raises(InferenceInputError, match="finite"):
        session.add_click((np.nan, 1, 1))
    assert session.current_class == 1 and not session.can_undo, "failed calls change nothing"


# ------------------------------------------------------------------------------------------------ model folders
def _write_model_folder(root: Path, folds=(0,), patch=(32, 32, 32), trainer="nnUNetTrainerSAM3D") -> Path:
    """An nnU-Net model folder holding a tiny SAM3DNet with random weights per fold (seeded)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sam3d_nnunet.trainers.nnUNetTrainerSAM3D import nnUNetTrainerSAM3D
    plans = _plans(patch, norm="CTNormalization")
    folder = root / f"{trainer}__SAM3DPlans__3d_fullres"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    pm = PlansManager(plans)
    for f in folds:
        torch.manual_seed(100 + int(f))
        net = nnUNetTrainerSAM3D.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 3, False)
        (folder / f"fold_{f}").mkdir()
        torch.save({"network_weights": net.state_dict(), "trainer_name": trainer,
                    "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": f,
                                  "dataset_json": DATASET_JSON, "device": "cpu"},
                    "inference_allowed_mirroring_axes": (0, 1, 2), "current_epoch": 0},
                   folder / f"fold_{f}" / "checkpoint_final.pth")
    return folder


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return _write_model_folder(tmp_path_factory.mktemp("session_model"), folds=(0, 1))


def _count_encodes(session):
    inner = session.network.network
    calls = []
    original = inner.encode

    def counting(image):
        calls.append(tuple(image.shape))
        return original(image)

    inner.encode = counting
    return calls


def test_trained_model_folder_second_click_does_not_encode(model_folder, tmp_path):
    from sam3d_nnunet.inference import InteractiveSession
    from sam3d_nnunet.phantoms import make_phantom_case
    image, label = make_phantom_case((32, 32, 32), (1.0, 1.0, 1.0), np.random.default_rng(5))
    _write(image, tmp_path / "ph_0000.nii.gz")
    session = InteractiveSession.from_trained_model_folder(model_folder, folds=(0,), device="cpu")
    assert session.predictor.prompted and session.predictor.trainer_name == "nnUNetTrainerSAM3D"
    calls = _count_encodes(session)
    session.set_image(str(tmp_path / "ph_0000.nii.gz"))
    organ = np.argwhere(label == 1)[0]
    m1 = session.add_click(organ, positive=True, class_id=1)
    assert len(calls) == 1, "one window (image = patch): one encoder pass"
    m2 = session.add_click(np.argwhere(label == 0)[0], positive=False)
    assert len(calls) == 1, "the second click must not run the encoder again"
    assert m1.shape == m2.shape == image.shape
    # two folds: one encoder pass per fold for the first click, none for the next
    ensemble = InteractiveSession.from_trained_model_folder(model_folder, folds=(0, 1), device="cpu")
    calls = _count_encodes(ensemble)
    ensemble.set_image(str(tmp_path / "ph_0000.nii.gz"))
    ensemble.add_click(organ, class_id=1)
    assert len(calls) == 2
    ensemble.add_click(organ + 1, class_id=1)
    ensemble.add_click(organ, class_id=2)
    assert len(calls) == 2, "cached per fold and shared between classes"


def test_missing_model_folder_or_fold_names_the_path(model_folder, tmp_path):
    from sam3d_nnunet.inference import InferenceInputError, InteractiveSession
    with pytest.raises(InferenceInputError, match=f"model folder '{tmp_path / 'nope'}' does not exist"):
        InteractiveSession.from_trained_model_folder(tmp_path / "nope")
    with pytest.raises(InferenceInputError, match=r"fold 3: '.*fold_3' does not exist \(folds with "
                                                  r"checkpoint_final.pth: 0, 1\)"):
        InteractiveSession.from_trained_model_folder(model_folder, folds=(0, 3))
    with pytest.raises(InferenceInputError, match=r"checkpoint '.*fold_0/checkpoint_best.pth' does not exist"):
        InteractiveSession.from_trained_model_folder(model_folder, folds=(0,), checkpoint_name="checkpoint_best.pth")


def test_prompt_free_model_only_runs_auto(tmp_path):
    from sam3d_nnunet.inference import InferenceInputError, InteractiveSession
    folder = _write_model_folder(tmp_path, trainer="nnUNetTrainerSAM3D_auto")
    session = InteractiveSession.from_trained_model_folder(folder, folds=(0,))
    assert not session.predictor.prompted
    session.set_image(np.full((24, 24, 24), 40.0), spacing=(1, 1, 1))
    with pytest.raises(InferenceInputError, match="prompt-free"):
        session.add_click((5, 5, 5))
    m = session.auto()
    assert m.shape == (24, 24, 24) and m.dtype == np.uint8
    assert not session.undo().any()
