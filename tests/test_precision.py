"""The precision policy (``sam3d_nnunet.model.precision``) and where it is consumed.

``"auto"`` must choose bf16 only where the hardware has fast bf16: the capability probes (CPU: oneDNN's
``torch.ops.mkldnn._is_mkldnn_bf16_supported``; CUDA: ``torch.cuda.is_bf16_supported``) are monkeypatched both
ways, so the tests do not depend on the machine they run on. ``"fp32"`` overrides the probe. The choice is then
observed where it matters, inside the computation: forward hooks on a real tiny SAM3DNet record the autocast
state and the dtype a linear layer produces, for the predictor (clicks and automatic mode), the interactive
session (which keeps the predictor's default, ``"auto"``) and the trainer's ``train_step``.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiny_plans import DATASET_JSON, tiny_plans


def _cpu_bf16(monkeypatch, supported: bool):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: supported)


def _cuda_bf16(monkeypatch, available: bool, supported: bool):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)


# ------------------------------------------------------------------------------------------------ the policy
@pytest.mark.parametrize("supported, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_the_cpu_follows_onednn_bf16_support(monkeypatch, supported, expected):
    from sam3d_nnunet.model.precision import autocast, bf16_is_fast, resolve_precision
    _cpu_bf16(monkeypatch, supported)
    assert bf16_is_fast("cpu") is supported
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32", "fp32 overrides auto"
    assert resolve_precision("bf16", "cpu") == "bf16", "bf16 is forced even without hardware support"
    ctx = autocast("cpu", "auto")
    if expected == "bf16":
        assert isinstance(ctx, torch.autocast) and ctx.device == "cpu" and ctx.fast_dtype == torch.bfloat16
    else:
        assert not isinstance(ctx, torch.autocast)
    assert not isinstance(autocast("cpu", "fp32"), torch.autocast)


def test_auto_on_the_cpu_without_onednn_is_fp32(monkeypatch):
    from sam3d_nnunet.model.precision import resolve_precision
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert resolve_precision("auto", "cpu") == "fp32"


@pytest.mark.parametrize("available, supported, expected",
                         [(True, True, "bf16"), (True, False, "fp32"), (False, True, "fp32")])
def test_auto_on_cuda_follows_the_gpu_bf16_support(monkeypatch, available, supported, expected):
    from sam3d_nnunet.model.precision import resolve_precision
    _cuda_bf16(monkeypatch, available, supported)
    _cpu_bf16(monkeypatch, not supported)  # the CPU's answer must not leak into the CUDA decision
    assert resolve_precision("auto", "cuda") == expected
    assert resolve_precision("auto", torch.device("cuda", 0)) == expected
    assert resolve_precision("fp32", "cuda") == "fp32"


def test_other_devices_and_unknown_names(monkeypatch):
    from sam3d_nnunet.model.precision import resolve_precision
    _cpu_bf16(monkeypatch, True)
    assert resolve_precision("auto", "mps") == "fp32"
    for bad in ("fp16", "BF16", "", None):
        with pytest.raises(ValueError, match="precision must be one of"):
            resolve_precision(bad, "cpu")


# ------------------------------------------------------------------------------------------------ consumers
def _network():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sam3d_nnunet.trainers.nnUNetTrainerSAM3D import nnUNetTrainerSAM3D
    torch.manual_seed(0)
    pm = PlansManager(tiny_plans((16, 16, 16)))
    cm = pm.get_configuration("3d_fullres")
    return nnUNetTrainerSAM3D.build_network_architecture(pm, cm, 1, 3, False), pm, cm


def _record_linear_dtypes(net: torch.nn.Module) -> list:
    """Hooks on every nn.Linear: (autocast enabled on the CPU, output dtype) of each call."""
    seen = []

    def hook(module, args, output):
        seen.append((torch.is_autocast_enabled("cpu"), output.dtype))

    n = 0
    for m in net.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(hook)
            n += 1
    assert n > 0
    return seen


def _expected(probe: bool, precision: str):
    bf16 = precision == "bf16" or (precision == "auto" and probe)
    return {(True, torch.bfloat16)} if bf16 else {(False, torch.float32)}


CASES = [(True, "auto"), (False, "auto"), (True, "fp32")]


@pytest.mark.parametrize("probe, precision", CASES)
def test_the_predictor_computes_at_the_resolved_precision(monkeypatch, probe, precision):
    from sam3d_nnunet.inference import ClassPrompt, PromptedPredictor
    from sam3d_nnunet.inference.session import predict_unprompted
    _cpu_bf16(monkeypatch, probe)
    net, pm, cm = _network()
    seen = _record_linear_dtypes(net)
    predictor = PromptedPredictor(net, pm, cm, DATASET_JSON, "cpu", precision=precision, max_windows_per_class=1)
    data = torch.randn(1, 20, 18, 16)
    out = predictor.predict_preprocessed(data, {1: ClassPrompt([[10, 9, 8]], [1])})
    assert seen and set(seen) == _expected(probe, precision), f"clicks: {set(seen)}"
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    seen.clear()
    auto = predict_unprompted(predictor, data, [1, 2])
    assert seen and set(seen) == _expected(probe, precision), f"automatic: {set(seen)}"
    assert all(v.dtype == torch.float32 for v in auto.values())


@pytest.mark.parametrize("probe", [True, False])
def test_the_interactive_session_uses_auto(monkeypatch, probe):
    import numpy as np

    from sam3d_nnunet.inference import InteractiveSession
    _cpu_bf16(monkeypatch, probe)
    net, pm, cm = _network()
    seen = _record_linear_dtypes(net)
    session = InteractiveSession(net, pm, cm, DATASET_JSON, "cpu")
    image = np.random.default_rng(0).normal(60, 30, (18, 16, 16)).astype(np.float32)
    session.set_image(image, spacing=(1.0, 1.0, 1.0))
    seen.clear()
    session.add_click((9, 8, 8), True, 1)
    assert seen and set(seen) == _expected(probe, "auto")


@pytest.mark.parametrize("probe, precision", CASES)
def test_the_trainer_steps_and_validates_at_the_resolved_precision(tmp_path, monkeypatch, probe, precision):
    from sam3d_nnunet.trainers.nnUNetTrainerSAM3D import nnUNetTrainerSAM3D
    _cpu_bf16(monkeypatch, probe)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, str(tmp_path / k))
    monkeypatch.setattr(nnUNetTrainerSAM3D, "precision", precision)
    torch.manual_seed(0)
    trainer = nnUNetTrainerSAM3D(dict(tiny_plans((16, 16, 16)), continue_training=False), "3d_fullres", 0,
                                 DATASET_JSON, torch.device("cpu"))
    # nnU-Net's initialize() infers the dataset format from the preprocessed folder's file endings
    Path(trainer.preprocessed_dataset_folder).mkdir(parents=True)
    (Path(trainer.preprocessed_dataset_folder) / "case.b2nd").touch()
    trainer.initialize()
    seen = _record_linear_dtypes(trainer._net())
    target = torch.zeros(2, 1, 16, 16, 16)
    target[:, :, 4:12, 4:12, 4:12] = 1
    target[:, :, 6:9, 6:9, 6:9] = 2
    result = trainer.train_step({"data": torch.randn(2, 1, 16, 16, 16), "target": target})
    assert seen and set(seen) == _expected(probe, precision), f"train_step: {set(seen)}"
    assert result["loss"].dtype.kind == "f" and float(result["loss"]) == float(result["loss"])  # not NaN
    assert trainer.make_predictor().precision == precision, "the final validation predicts at the same policy"


def test_each_fold_of_an_ensemble_computes_with_its_own_weights_under_bf16():
    """Autocast caches the bf16 copy of each trainable weight for the whole autocast region: an ensemble that loads
    fold after fold into the same tensors must not keep computing with the first fold's cached copies. Under bf16
    the two-fold class probabilities are the mean of the folds' probabilities, each fold predicted alone, and the
    background is 1 - the highest of those means (the merge rule applied to the ensemble, as ``predict`` does)."""
    from sam3d_nnunet.inference import ClassPrompt, PromptedPredictor
    net, pm, cm = _network()
    first = {k: v.clone() for k, v in net.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    second = {k: v + 0.5 * (v.std() + 1e-3) * torch.randn(v.shape, generator=generator)
              if k in dict(net.named_parameters()) and net.get_parameter(k).requires_grad and v.numel() > 1 else v
              for k, v in first.items()}
    data = torch.randn(1, 20, 18, 16, generator=generator)
    prompts = {1: ClassPrompt([[10, 9, 8]], [1]), 2: ClassPrompt([[5, 5, 5]], [1])}
    singles = []
    for params in (first, second):
        net.load_state_dict(params)
        singles.append(PromptedPredictor(net, pm, cm, DATASET_JSON, "cpu", precision="bf16")
                       .predict_preprocessed(data, prompts))
    assert (singles[0] - singles[1]).abs().max() > 0.05, "the folds differ"
    both = PromptedPredictor(net, pm, cm, DATASET_JSON, "cpu", precision="bf16", list_of_parameters=[first, second])
    ensemble = both.predict_preprocessed(data, prompts)
    mean = (singles[0][1:] + singles[1][1:]) / 2
    torch.testing.assert_close(ensemble[1:], mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(ensemble[0], 1 - mean.max(0).values, atol=1e-6, rtol=0)
