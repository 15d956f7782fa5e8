"""Short-budget trainers for CPU runs (``sam3d-nnunet demo``, the CPU benchmarks of BENCHMARKS.md).

nnU-Net finds trainers by class name; ``sam3d-nnunet demo`` writes a one-line shim module importing this module
into ``<workdir>/ext_trainers`` and lists that folder in ``nnUNet_extTrainer`` next to ``sam3d-nnunet
ext-trainer-dir``, so the stock ``nnUNetv2_train`` finds the classes while their ``__module__`` stays
``sam3d_nnunet.benchmark.budget_trainers`` (any other run can do the same: see :func:`write_ext_trainer_shim`).

The budget (epochs x iterations per epoch) is read from environment variables when a trainer is constructed, so
one class serves every budget; nnU-Net records the values in ``fold_X/debug.json`` and the training log:

==================================  ===============================================  ==========================
class                               variables (default)                              what
==================================  ===============================================  ==========================
``nnUNetTrainer_budget``            ``SAM3D_BUDGET_NNUNET_EPOCHS`` (5),              nnU-Net's default trainer
                                    ``SAM3D_BUDGET_NNUNET_ITERS`` (32)
``nnUNetTrainer_budget_noTTA``      same                                             same, validation and
                                                                                     inference without mirroring
                                                                                     (training augmentation
                                                                                     unchanged)
``nnUNetTrainerSAM3D_budget``       ``SAM3D_BUDGET_SAM_EPOCHS`` (5),                 SAM3D adapters
                                    ``SAM3D_BUDGET_SAM_ITERS`` (32),
                                    ``SAM3D_BUDGET_SAM_LR`` (the trainer's 4e-4),
                                    ``SAM3D_BUDGET_SAM_MAX_CLICKS`` (the
                                    trainer's 10 positive, 10 negative)
``nnUNetTrainer_budget_noDA``,      as above                                         the same trainers without
``nnUNetTrainerSAM3D_budget_noDA``                                                   data augmentation
                                                                                     (nnU-Net's
                                                                                     ``nnUNetTrainerNoDA``) nor
                                                                                     test-time mirroring: the
                                                                                     demo's pair
``nnUNetTrainerSAM3D_allprompts_``  same                                             SAM3D adapters trained with
``budget``                                                                           every prompt type
                                                                                     (``nnUNetTrainerSAM3D_``
                                                                                     ``allprompts``)
``..._allprompts_budget_noTTA``     same                                             same, automatic validation
                                                                                     without mirroring
==================================  ===============================================  ==========================

All validate on 2 batches per epoch and write ``checkpoint_latest.pth`` every epoch (``--c`` resumes).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA import nnUNetTrainerNoDA

from sam3d_nnunet.trainers.nnUNetTrainerSAM3D import nnUNetTrainerSAM3D, nnUNetTrainerSAM3D_allprompts

SHIM_MODULE = "sam3d_budget_ext_trainers.py"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    number = int(value)
    if number < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return number


def _apply_budget(trainer: nnUNetTrainer, prefix: str) -> None:
    """Epochs and iterations from ``<prefix>_EPOCHS`` / ``<prefix>_ITERS``; 2 validation batches, a checkpoint
    every epoch."""
    trainer.num_epochs = _env_int(f"{prefix}_EPOCHS", 5)
    trainer.num_iterations_per_epoch = _env_int(f"{prefix}_ITERS", 32)
    trainer.num_val_iterations_per_epoch = 2
    trainer.save_every = 1


def _apply_sam_budget(trainer: nnUNetTrainerSAM3D) -> None:
    """The SAM3D budget: ``SAM3D_BUDGET_SAM_EPOCHS`` / ``_ITERS``; if set, ``SAM3D_BUDGET_SAM_LR`` (a short
    schedule from random weights learns faster with a larger step than the paper's 4e-4) and
    ``SAM3D_BUDGET_SAM_MAX_CLICKS`` (at most that many positive and negative training clicks: with up to 10 of
    each, a few hundred iterations rarely show the network the 1-click case that it is scored on)."""
    _apply_budget(trainer, "SAM3D_BUDGET_SAM")
    lr = os.environ.get("SAM3D_BUDGET_SAM_LR", "").strip()
    if lr:
        trainer.initial_lr = float(lr)
    if os.environ.get("SAM3D_BUDGET_SAM_MAX_CLICKS", "").strip():
        trainer.max_positive_clicks = trainer.max_negative_clicks = _env_int("SAM3D_BUDGET_SAM_MAX_CLICKS", 10)


def write_ext_trainer_shim(folder) -> Path:
    """Write the one-line module that makes these trainers visible to nnU-Net when ``folder`` is listed in
    ``nnUNet_extTrainer``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = ('"""nnU-Net imports this folder (nnUNet_extTrainer) to find the short-budget trainers by name."""\n'
            "from sam3d_nnunet.benchmark.budget_trainers import *  # noqa: F401,F403\n")
    shim = folder / SHIM_MODULE
    if not shim.is_file() or shim.read_text() != text:
        from sam3d_nnunet.atomic import write_text_atomic
        write_text_atomic(shim, text)
    return folder


class nnUNetTrainer_budget(nnUNetTrainer):
    """nnU-Net's default trainer with a short budget (see the module docstring)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _apply_budget(self, "SAM3D_BUDGET_NNUNET")


class _NoTestTimeMirroring:
    """Validation/inference without test-time mirroring (8x cheaper in 3D; the SAM3D predictor does not mirror
    either). Training augmentation keeps nnU-Net's mirroring."""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        out = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return out


class nnUNetTrainer_budget_noTTA(_NoTestTimeMirroring, nnUNetTrainer_budget):
    """As ``nnUNetTrainer_budget``, but validation/inference without test-time mirroring (8x cheaper in 3D;
    the SAM3D predictor does not mirror either). Training augmentation keeps nnU-Net's mirroring."""


class nnUNetTrainerSAM3D_budget(nnUNetTrainerSAM3D):
    """The SAM3D adapter trainer with a short budget (see the module docstring)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _apply_sam_budget(self)


class _NoDataAugmentation(_NoTestTimeMirroring):
    """nnU-Net's ``nnUNetTrainerNoDA`` as a mixin: training batches get the validation transforms (no spatial,
    intensity or mirroring augmentation), the patch is sampled at its final size, and inference does not mirror."""

    get_training_transforms = staticmethod(nnUNetTrainerNoDA.get_training_transforms)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, _, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        return rotation, dummy_2d, self.configuration_manager.patch_size, None


class nnUNetTrainer_budget_noDA(_NoDataAugmentation, nnUNetTrainer_budget):
    """As ``nnUNetTrainer_budget``, without data augmentation (``nnUNetTrainerNoDA``); the demo's baseline."""


class nnUNetTrainerSAM3D_budget_noDA(_NoDataAugmentation, nnUNetTrainerSAM3D_budget):
    """As ``nnUNetTrainerSAM3D_budget``, without data augmentation (``nnUNetTrainerNoDA``); the demo's SAM3D."""


class nnUNetTrainerSAM3D_allprompts_budget(nnUNetTrainerSAM3D_allprompts):
    """``nnUNetTrainerSAM3D_allprompts`` (clicks, boxes, scribbles, lassos, previous masks) with the SAM3D short
    budget (``SAM3D_BUDGET_SAM_*``, see the module docstring)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _apply_sam_budget(self)


class nnUNetTrainerSAM3D_allprompts_budget_noTTA(_NoTestTimeMirroring, nnUNetTrainerSAM3D_allprompts_budget):
    """As ``nnUNetTrainerSAM3D_allprompts_budget``, but the automatic validation (``fold_X/validation``) without
    test-time mirroring; the prompted validation never mirrors."""


__all__ = ["nnUNetTrainer_budget", "nnUNetTrainer_budget_noTTA", "nnUNetTrainer_budget_noDA",
           "nnUNetTrainerSAM3D_budget", "nnUNetTrainerSAM3D_budget_noDA", "nnUNetTrainerSAM3D_allprompts_budget",
           "nnUNetTrainerSAM3D_allprompts_budget_noTTA", "write_ext_trainer_shim"]
