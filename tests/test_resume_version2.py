"""Resuming (``--c``) and validating (``--val``) from a checkpoint of SAM3DNet architecture version 2 (before
boxes, scribbles, lassos and masks added three trainable prompt tensors): nnU-Net's ``load_checkpoint`` loads the
optimizer state too, and version 2's optimizer held three parameters fewer. ``nnUNetTrainerSAM3D.load_checkpoint``
moves each saved state to its parameter's new position; the new tensors start with fresh AdamW state."""
from __future__ import annotations

import pytest
import torch
from tiny_plans import DATASET_JSON, tiny_plans

from sam3d_nnunet.model.sam3d_net import _ADDED_IN_VERSION_3, IncompatibleCheckpointError

ARCH = {"variant": "tiny", "patch_size": [16, 16, 16], "token_stride": 4, "window_size": 2, "adapter_dim": 8,
        "neck_dim": 16, "finetune": "adapter"}


def _version2_checkpoint(trainer) -> dict:
    """What the version-2 trainer wrote after one optimizer step: weights without the new tensors (version 2),
    the state of an AdamW over the other trainable parameters."""
    net = trainer._net()
    v2_params = [p for n, p in net.named_parameters() if p.requires_grad and n not in _ADDED_IN_VERSION_3]
    optimizer = torch.optim.AdamW(v2_params, lr=1e-3)
    for i, p in enumerate(v2_params):
        p.grad = torch.full_like(p, 0.01 * (i + 1))
    optimizer.step()
    weights = {k: v for k, v in net.state_dict().items() if k not in _ADDED_IN_VERSION_3}
    weights["architecture_version"] = torch.tensor(2)
    return {"network_weights": weights, "optimizer_state": optimizer.state_dict(), "grad_scaler_state": None,
            "logging": trainer.logger.get_checkpoint(), "_best_ema": None, "current_epoch": 3,
            "init_args": trainer.my_init_kwargs, "trainer_name": type(trainer).__name__,
            "inference_allowed_mirroring_axes": (0, 1, 2)}


def test_a_version2_checkpoint_resumes_with_fresh_state_for_the_new_tensors(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    from sam3d_nnunet.trainers.nnUNetTrainerSAM3D import nnUNetTrainerSAM3D_1epoch as Trainer
    plans = tiny_plans((16, 16, 16), arch_kwargs=ARCH)
    preprocessed = tmp_path / "preprocessed" / "Dataset999_Fake" / "SAM3DPlans_3d_fullres"
    preprocessed.mkdir(parents=True)
    (preprocessed / "case.b2nd").touch()  # nnU-Net infers its dataset class from the file ending; never read

    def trainer():
        t = Trainer({**plans, "continue_training": True}, "3d_fullres", 0, DATASET_JSON,  # as run_training
                    device=torch.device("cpu"))
        t.initialize()
        return t

    old = trainer()
    checkpoint = _version2_checkpoint(old)
    path = tmp_path / "checkpoint_latest.pth"
    torch.save(checkpoint, path)
    # nnU-Net's own optimizer load refuses it: the reason for the upgrade
    with pytest.raises(ValueError):
        trainer().optimizer.load_state_dict(checkpoint["optimizer_state"])

    new = trainer()
    new.load_checkpoint(str(path))
    assert new.current_epoch == 3
    names = [n for n, p in new._net().named_parameters() if p.requires_grad]
    params = dict(new._net().named_parameters())
    assert set(_ADDED_IN_VERSION_3) <= set(names)
    for n in _ADDED_IN_VERSION_3:
        assert not params[n].any(), "version-2 weights: the new tensors are zero"
        assert not new.optimizer.state[params[n]], "fresh optimizer state for the new tensors"
    saved = checkpoint["optimizer_state"]["state"]
    v2_names = [n for n in names if n not in _ADDED_IN_VERSION_3]
    for i, n in enumerate(v2_names):
        assert torch.equal(new.optimizer.state[params[n]]["exp_avg"], saved[i]["exp_avg"]), n
        assert torch.equal(params[n].detach(), checkpoint["network_weights"][n])
    for p in new.optimizer.param_groups[0]["params"]:  # a step over every parameter works
        p.grad = torch.ones_like(p)
    new.optimizer.step()
    assert all(int(new.optimizer.state[params[n]]["step"]) == 1 for n in _ADDED_IN_VERSION_3)
    assert int(new.optimizer.state[params[v2_names[0]]]["step"]) == 2

    # an optimizer state of another parameter set: one line saying to start a new training
    wrong = dict(checkpoint, optimizer_state={**checkpoint["optimizer_state"], "param_groups": [
        {**checkpoint["optimizer_state"]["param_groups"][0],
         "params": checkpoint["optimizer_state"]["param_groups"][0]["params"][:-1]}]})
    torch.save(wrong, path)
    with pytest.raises(IncompatibleCheckpointError, match="start a new training") as info:
        trainer().load_checkpoint(str(path))
    assert "\n" not in str(info.value)
