"""nnU-Net trainers for the SAM 3D adapter (``sam3d_nnunet.model.SAM3DNet``).

Use them with nnU-Net's own commands::

    sam3d-nnunet plan_and_preprocess -d ID -c 3d_fullres --sam-variant vit_b --sam-checkpoint sam_vit_b_01ec64.pth
    export nnUNet_extTrainer=$(sam3d-nnunet ext-trainer-dir)
    nnUNetv2_train ID 3d_fullres FOLD -tr nnUNetTrainerSAM3D -p SAM3DPlans [-device cpu] [--c]

What differs from ``nnUNetTrainer`` (everything else, data loading, nnU-Net's augmentation, foreground
oversampling, splits, logging, checkpoint schedule, is inherited unchanged):

* network: built by ``build_network_architecture`` from the plans' arch kwargs; the class attribute
  ``finetune_policy`` of a variant overrides the ``finetune`` kwarg (the predictor rebuilds a checkpoint's
  network with the same trainer class, so a variant's checkpoint predicts with the same variant). After
  building, ``initialize`` loads and converts the SAM checkpoint recorded in the plans (``plans['sam3d']
  ['sam_checkpoint']``; a loud warning and random weights if it is null). No deep supervision.
* optimiser: AdamW (lr 4e-4, weight decay 0) over the trainable tensors only, linear decay of the learning rate
  over the epochs (nnU-Net's PolyLRScheduler with exponent 1), gradient norm clipped to 1.0.
* loss: nnU-Net's Dice + CE (Dice without background) on the binary problem "target class vs rest".
* clicks: simulated inside ``train_step`` from the AUGMENTED target (``batch['target']``) with
  ``simulate_training_prompts`` (one target class per sample, uniform over the classes present; up to
  10 positive / 10 negative clicks; no click with probability 0.2), seeded by a trainer RNG re-seeded every
  epoch from (prompt_seed, fold, epoch). On a share ``p_correction`` (0.5) of the steps a correction pass runs
  first: a prediction without gradient, one correction click at the centre of the largest error region
  (``add_correction_clicks``), then the loss step with the extra click (one encoder pass serves both).
* other prompts: ``prompt_mix`` (default ``{'click': 1.0}``, the paper) weights the prompt each sample gets
  (``simulate_prompt_batch``: boxes, scribbles, lassos replace a sample's positive clicks; same RNG), and
  ``prompt_mix['mask']`` is the share of samples of a correction pass that also get its prediction as the
  previous mask (``add_correction_prompts``).
* online validation (pseudo-Dice): every foreground class present in a sample gets one random positive click
  (seeded), the per-class masks are merged (highest probability > 0.5 wins) and nnU-Net's TP/FP/FN are
  counted on the merged map.
* final validation (``perform_actual_validation``, also ``nnUNetv2_train ... --val``), two folders
  (``sam3d_nnunet.evaluation.validation_folders``):

  - ``fold_X/validation``: nnU-Net's own ``perform_actual_validation``, unchanged: the AUTOMATIC mode
    (``forward(image)`` without clicks, multi-class logits) through ``nnUNetPredictor``'s sliding window with
    test-time mirroring along ``inference_allowed_mirroring_axes``, i.e. exactly what ``nnUNetv2_predict -tr
    <this trainer>`` gives for those cases; ``summary.json`` (and ``.npz`` with ``--npz``). This is what
    ``nnUNetv2_find_best_configuration``, postprocessing and ``nnUNetv2_ensemble`` compare with nnU-Net's models.
  - ``fold_X/validation_clicks{N}_seed{S}`` (promptable variants only; N = ``val_clicks_per_class`` (1),
    S = ``val_click_seed`` (0)): every validation case of the fold is predicted over the whole volume by
    ``sam3d_nnunet.inference.PromptedPredictor`` with N uniformly random voxel(s) per class present in the
    native ground truth, seeded by ``case_class_seed(case_id, class_id, S)``, mapped into preprocessed space;
    exported with nnU-Net's ``export_prediction_from_logits`` and scored with ``compute_metrics_on_folder``
    (``summary.json``). The clicks used (raw voxel indices, reader array order) are in ``prompts.json``.

  A ``validation/`` of an older version (prompted predictions, recognised by its ``prompts.json``) is first
  moved to the prompted folder its protocol names (``migrate_old_layout``).
* a checkpoint of architecture version 2 (before boxes, scribbles, lassos and masks) resumes (``--c``) and
  validates (``--val``): the network fills the three new prompt tensors with zeros (``SAM3DNet.load_state_dict``)
  and ``load_checkpoint`` moves the optimizer's state to the new parameter order, the new tensors starting with
  fresh AdamW state (``upgrade_version2_optimizer_state``);
* checkpoints are written atomically (temporary file in the same folder, then ``os.replace``); slim (without
  the frozen SAM tensors, restored from the SAM checkpoint on load) with ``slim_checkpoints = True`` or
  ``SAM3D_SLIM_CHECKPOINTS=1`` (``sam3d_nnunet.model.slim_checkpoint``).

Variants (attributes only):

==================================  =====================================================================
``nnUNetTrainerSAM3D``              adapters (the plans' ``finetune``, 'adapter' by default), 500 epochs x 250
``nnUNetTrainerSAM3D_full``         full fine-tuning
``nnUNetTrainerSAM3D_LoRA``         LoRA (rank from the plans, 8 by default) instead of adapters
``nnUNetTrainerSAM3D_auto``         prompt-free: trains and validates without clicks (nnU-Net's multi-class
                                    Dice + CE on ``forward(image)``; only ``validation/``, no prompted folder)
``nnUNetTrainerSAM3D_allprompts``   every prompt type in training (``prompt_mix``: clicks 0.4, boxes, scribbles,
                                    lassos 0.2 each; previous masks in half the correction passes)
``nnUNetTrainerSAM3D_1epoch``       1 epoch x 5 iterations, 2 validation iterations (CI smoke runs)
``nnUNetTrainerSAM3D_5epochs``      5 epochs x 5 iterations, 2 validation iterations, a checkpoint every epoch
==================================  =====================================================================
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import tempfile
import warnings
from contextlib import nullcontext
from time import sleep
from typing import List, Optional

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p
from torch import nn
from torch import distributed as dist
from torch._dynamo import OptimizedModule

from nnunetv2.configuration import default_num_processes
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.inference.export_prediction import export_prediction_from_logits
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.file_path_utilities import check_workers_alive_and_busy
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from sam3d_nnunet.atomic import atomic_path, remove_stale_temporaries
from sam3d_nnunet.inference.prompted_predictor import (ClassPrompt, PromptedPredictor, protocol_prompts_from_label,
                                                       raw_to_preprocessed_coords)
from sam3d_nnunet.evaluation.validation_folders import migrate_old_layout, prompted_folder_name
from sam3d_nnunet.model.precision import autocast as precision_autocast
from sam3d_nnunet.model.precision import resolve_precision
from sam3d_nnunet.prompts.shape_simulation import (PromptBatch, add_correction_prompts, check_mix,
                                                   simulate_prompt_batch)
from sam3d_nnunet.prompts.simulation import protocol_clicks

CHECKPOINT_STEMS = ("checkpoint_latest", "checkpoint_best", "checkpoint_final")  # nnU-Net's checkpoint files


def _loud_warning(message: str, trainer: Optional[nnUNetTrainer] = None) -> None:
    import sys
    bar = "!" * 100
    text = f"\n{bar}\nWARNING: {message}\n{bar}\n"
    print(text, file=sys.stderr, flush=True)
    if trainer is not None:
        trainer.print_to_log_file(text, also_print_to_console=False, add_timestamp=False)
    warnings.warn(message, stacklevel=2)


def _is_version2(checkpoint) -> bool:
    """Whether a checkpoint's network weights are of SAM3DNet architecture version 2."""
    weights = checkpoint.get("network_weights") if isinstance(checkpoint, dict) else None
    version = weights.get("architecture_version", weights.get("module.architecture_version")) \
        if isinstance(weights, dict) else None
    return version is not None and int(version) == 2


def upgrade_version2_optimizer_state(optimizer_state: dict, trainable_names: List[str], name: str = "<checkpoint>"
                                     ) -> dict:
    """The optimizer state of a version-2 checkpoint for this network's trainable parameters ``trainable_names``
    (in the optimizer's order): version 2's optimizer held the same parameters without the three version 3 added
    (``sam3d_nnunet.model.sam3d_net._ADDED_IN_VERSION_3``), so each saved state moves to its parameter's new
    position and the new tensors start with fresh state (AdamW initialises it at their first step). A state that
    does not fit (another fine-tuning policy) raises ``IncompatibleCheckpointError`` in one line."""
    from sam3d_nnunet.model.sam3d_net import _ADDED_IN_VERSION_3, IncompatibleCheckpointError

    groups = optimizer_state.get("param_groups", [])
    old_names = [n for n in trainable_names if n not in _ADDED_IN_VERSION_3]
    saved = [i for g in groups for i in g["params"]]
    if len(groups) != 1 or len(saved) != len(old_names):
        raise IncompatibleCheckpointError(
            f"{name}: its optimizer state ({len(saved)} parameters in {len(groups)} group(s)) does not match this "
            f"network's version-2 trainable parameters ({len(old_names)}, another fine-tuning policy?); start a new "
            f"training (without --c)")
    if len(old_names) == len(trainable_names):  # the new tensors are frozen here: nothing moved
        return optimizer_state
    position = {n: i for i, n in enumerate(trainable_names)}
    state = {position[n]: optimizer_state.get("state", {})[old] for n, old in zip(old_names, saved)
             if old in optimizer_state.get("state", {})}
    return {"state": state, "param_groups": [{**groups[0], "params": list(range(len(trainable_names)))}]}


class nnUNetTrainerSAM3D(nnUNetTrainer):
    """SAM 3D adapter, prompted with simulated clicks (see the module docstring)."""

    # ---- what the variants change ---------------------------------------------------------------
    finetune_policy: Optional[str] = None  # None: the plans' arch kwarg 'finetune' ('adapter' by default)
    use_prompts: bool = True  # False: automatic (prompt-free) training and validation
    sam_num_epochs: int = 500
    sam_iterations_per_epoch: int = 250
    sam_val_iterations_per_epoch: int = 50
    sam_save_every: int = 50

    # ---- optimisation ----------------------------------------------------------------------------
    sam_initial_lr: float = 4e-4
    sam_weight_decay: float = 0.0
    lr_decay_exponent: float = 1.0  # 1.0 = linear decay to 0 over num_epochs
    grad_clip: float = 1.0
    # 'auto': bf16 autocast where the hardware has fast bf16 (CUDA with bf16, CPUs with AVX512-BF16/AMX), fp32
    # elsewhere; bf16 needs no GradScaler. 'fp32' / 'bf16' force it. Validation predicts at the same precision.
    precision: str = "auto"
    # True (or the environment variable SAM3D_SLIM_CHECKPOINTS=1): checkpoints leave out the frozen SAM tensors
    # and name the SAM checkpoint that restores them (sam3d_nnunet.model.slim_checkpoint)
    slim_checkpoints: bool = False

    # ---- click simulation ------------------------------------------------------------------------
    max_positive_clicks: int = 10
    max_negative_clicks: int = 10
    p_no_click: float = 0.2
    p_correction: float = 0.5  # share of training steps with a correction pass
    prompt_seed: int = 12345
    # which prompt each sample gets (sam3d_nnunet.prompts.shape_simulation): weights of 'click', 'box', 'scribble',
    # 'lasso', and 'mask' = probability that a correction pass also passes its own prediction as the previous mask.
    # {'click': 1.0}: clicks only, the paper (and exactly the click simulation of earlier versions)
    prompt_mix: dict = {"click": 1.0}

    # ---- validation -----------------------------------------------------------------------------
    val_clicks_per_class: int = 1
    val_click_seed: int = 0
    max_windows_per_class: int = 8
    # folds with at most this many validation cases export their prompted predictions in the trainer's process: a
    # spawned export worker re-imports nnU-Net (5-10 s of CPU), more than exporting a handful of cases costs
    in_process_export_max_cases: int = 8

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.sam_initial_lr
        self.weight_decay = self.sam_weight_decay
        self.num_epochs = self.sam_num_epochs
        self.num_iterations_per_epoch = self.sam_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.sam_val_iterations_per_epoch
        self.save_every = self.sam_save_every
        self.enable_deep_supervision = False
        if resolve_precision(self.precision, self.device) == "bf16":
            self.grad_scaler = None  # nnU-Net's fp16 loss scaling is not needed in bf16
        if self.label_manager.has_regions:
            raise NotImplementedError("region-based training is not supported by the SAM3D trainers")
        self.prompt_rng = np.random.default_rng(self._rng_seed(0))
        self.prompt_mix = check_mix(self.prompt_mix)
        self.val_rng = np.random.default_rng(self._rng_seed(0, validation=True))
        self._trainable: List[nn.Parameter] = []

    # ------------------------------------------------------------------ network
    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager,
                                   configuration_manager: ConfigurationManager,
                                   num_input_channels: int,
                                   num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """The plans' network (``sam3d_nnunet.model.SAM3DNet``) with the variant's fine-tuning policy; no deep
        supervision. A classmethod (nnU-Net calls it on the class or the instance with the same arguments)
        so that variants only change the ``finetune_policy`` attribute."""
        arch_kwargs = dict(configuration_manager.network_arch_init_kwargs)
        if cls.finetune_policy is not None:
            arch_kwargs['finetune'] = cls.finetune_policy
        return get_network_from_plans(configuration_manager.network_arch_class_name, arch_kwargs,
                                      configuration_manager.network_arch_init_kwargs_req_import,
                                      num_input_channels, num_output_channels, allow_init=False,
                                      deep_supervision=False)

    def _net(self) -> nn.Module:
        mod = self.network.module if self.is_ddp else self.network
        if isinstance(mod, OptimizedModule):
            mod = mod._orig_mod
        return mod

    def initialize(self):
        super().initialize()
        self.load_sam_weights()

    def sam_checkpoint_path(self) -> Optional[str]:
        return (self.plans_manager.plans.get('sam3d') or {}).get('sam_checkpoint')

    def load_sam_weights(self) -> None:
        """Load and convert the plans' SAM checkpoint into the network (before any resume checkpoint)."""
        from sam3d_nnunet.model import load_sam_checkpoint
        path = self.sam_checkpoint_path()
        if path is None:
            _loud_warning("no SAM checkpoint in the plans (plans['sam3d']['sam_checkpoint'] is null): the ViT "
                          "starts from RANDOM weights. Re-plan with `sam3d-nnunet plan_and_preprocess "
                          "--sam-checkpoint PATH` for real use.", self)
            return
        if not os.path.isfile(path):
            raise FileNotFoundError(f"the SAM checkpoint recorded in the plans does not exist: {path}")
        report = load_sam_checkpoint(self._net(), path)
        summary = report.as_dict() if hasattr(report, 'as_dict') else str(report)
        self.print_to_log_file(f"Loaded SAM checkpoint {path}: {summary}")

    def set_deep_supervision_enabled(self, enabled: bool):
        """SAM3DNet has a single output scale: nothing to switch."""
        return None

    def configure_optimizers(self):
        self._trainable = [p for p in self.network.parameters() if p.requires_grad]
        n_train = sum(p.numel() for p in self._trainable)
        n_all = sum(p.numel() for p in self.network.parameters())
        self.print_to_log_file(f"Trainable parameters: {n_train:,} of {n_all:,} "
                               f"(fine-tuning policy {getattr(self._net(), 'finetune', '?')})")
        optimizer = torch.optim.AdamW(self._trainable, lr=self.initial_lr, weight_decay=self.weight_decay)
        lr_scheduler = PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, exponent=self.lr_decay_exponent)
        return optimizer, lr_scheduler

    # ------------------------------------------------------------------ RNG
    def _rng_seed(self, epoch: int, validation: bool = False) -> list:
        fold = self.fold if isinstance(self.fold, int) else 1000
        return [int(self.prompt_seed), int(fold), int(epoch), 1 if validation else 0]

    def on_train_epoch_start(self):
        self.prompt_rng = np.random.default_rng(self._rng_seed(self.current_epoch))
        super().on_train_epoch_start()

    def on_validation_epoch_start(self):
        self.val_rng = np.random.default_rng(self._rng_seed(self.current_epoch, validation=True))
        super().on_validation_epoch_start()

    # ------------------------------------------------------------------ training
    def _autocast(self):
        return precision_autocast(self.device, self.precision)

    def _prompted_forward(self, data: torch.Tensor, target: torch.Tensor, correction: bool):
        """Prompts of ``prompt_mix`` from the augmented target, optional correction pass (a correction click and,
        with probability ``prompt_mix['mask']``, its own prediction as the previous mask); returns (logits,
        binary target)."""
        net = self._net()
        prompts = simulate_prompt_batch(target, self.label_manager.foreground_labels, self.prompt_rng,
                                        self.prompt_mix, self.max_positive_clicks, self.max_negative_clicks,
                                        self.p_no_click, self.label_manager.ignore_label)
        prompts = PromptBatch(*(None if t is None else t.to(self.device, non_blocking=True) for t in prompts))
        data = data.to(self.device, non_blocking=True)
        features = net.encode(data)
        if correction:
            with torch.no_grad():
                first = net.decode(features, *prompts[:2], prompts.target_class, *prompts[2:4])
            prompts = add_correction_prompts(first.argmax(1, keepdim=True), prompts, self.prompt_rng,
                                             self.prompt_mix.get("mask", 0.0),
                                             ignore_label=self.label_manager.ignore_label)
        return net.decode(features, *prompts[:2], prompts.target_class, *prompts[2:4]), prompts.binary_target

    def train_step(self, batch: dict) -> dict:
        data, target = batch['data'], batch['target']
        if isinstance(target, list):
            target = target[0]
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            if self.use_prompts:
                correction = bool(self.prompt_rng.random() < self.p_correction)
                output, target = self._prompted_forward(data, target, correction)
            else:
                data = data.to(self.device, non_blocking=True)
                target = target.to(self.device, non_blocking=True)
                output = self.network(data)  # automatic: multi-class logits for every class
            loss = self.loss(output.float(), target)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self._trainable, self.grad_clip)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self._trainable, self.grad_clip)
            self.optimizer.step()
        return {'loss': loss.detach().cpu().numpy()}

    def validation_step(self, batch: dict) -> dict:
        if not self.use_prompts:
            return super().validation_step(batch)
        data, target = batch['data'], batch['target']
        if isinstance(target, list):
            target = target[0]
        net = self._net()
        fg = list(self.label_manager.foreground_labels)
        ignore = self.label_manager.ignore_label
        target_np = target.cpu().numpy()
        data = data.to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
        b = data.shape[0]
        with self._autocast():
            features = net.encode(data)
            probs = torch.zeros((b, len(fg), *data.shape[2:]), device=self.device, dtype=torch.float32)
            losses = []
            for i, c in enumerate(fg):
                pts = [protocol_clicks(target_np[s, 0], c, 1, self.val_rng) for s in range(b)]
                clicks = torch.zeros((b, 1, 3), dtype=torch.float32)
                labels = torch.full((b, 1), -1, dtype=torch.int64)
                for s, p in enumerate(pts):
                    if len(p):
                        clicks[s, 0] = torch.from_numpy(p[0].astype(np.float32))
                        labels[s, 0] = 1
                logits = net.decode(features, clicks.to(self.device), labels.to(self.device),
                                    torch.full((b,), c, dtype=torch.int64, device=self.device))
                bin_t = (target == c).to(target.dtype)
                if ignore is not None:
                    bin_t = torch.where(target == ignore, torch.full_like(target, ignore), bin_t)
                losses.append(self.loss(logits.float(), bin_t))
                p_c = torch.softmax(logits.float(), 1)[:, 1]
                # a class without any click in a sample is not predicted there (as in the final validation)
                probs[:, i] = p_c * (labels[:, 0] == 1).to(self.device).view(-1, *[1] * (p_c.ndim - 1))
            loss = torch.stack(losses).mean()
        best, arg = probs.max(1)
        fg_t = torch.tensor(fg, device=self.device)
        seg = torch.where(best > 0.5, fg_t[arg], torch.zeros_like(arg))
        num_heads = self.label_manager.num_segmentation_heads
        onehot = torch.zeros((b, num_heads, *seg.shape[1:]), device=self.device, dtype=torch.float32)
        onehot.scatter_(1, seg[:, None].long(), 1)
        if ignore is not None:
            mask = (target != ignore).float()
            target = torch.where(target == ignore, torch.zeros_like(target), target)
        else:
            mask = None
        axes = [0] + list(range(2, onehot.ndim))
        tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, target, axes=axes, mask=mask)
        return {'loss': loss.detach().cpu().numpy(), 'tp_hard': tp.detach().cpu().numpy()[1:],
                'fp_hard': fp.detach().cpu().numpy()[1:], 'fn_hard': fn.detach().cpu().numpy()[1:]}

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written to a temporary name in the same folder and moved into place with
        ``os.replace`` (``sam3d_nnunet.atomic``): an interrupted save never leaves a truncated
        ``checkpoint_*.pth``. Slim if asked."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:  # nnU-Net writes nothing, only logs that
            return super().save_checkpoint(filename)
        with atomic_path(filename) as tmp:
            super().save_checkpoint(tmp)
            if self.wants_slim_checkpoints():
                self._make_slim(tmp)

    def wants_slim_checkpoints(self) -> bool:
        return self.slim_checkpoints or os.environ.get("SAM3D_SLIM_CHECKPOINTS", "0").lower() in ("1", "true", "yes")

    def _make_slim(self, path: str) -> None:
        """Rewrite the checkpoint just saved at ``path`` without the frozen SAM tensors."""
        from sam3d_nnunet.model.slim_checkpoint import SLIM_KEY, omitted_keys, slim_weights
        sam_path = self.sam_checkpoint_path()
        if sam_path is None:
            if not getattr(self, "_warned_slim", False):
                self._warned_slim = True
                self.print_to_log_file("slim checkpoints asked for, but the plans name no SAM checkpoint (random "
                                       "initial weights cannot be restored): writing full checkpoints")
            return
        if getattr(self, "_slim_keys", None) is None:
            self._slim_keys = omitted_keys(self._net(), sam_path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # written by this trainer just now
        checkpoint["network_weights"], checkpoint[SLIM_KEY] = slim_weights(checkpoint["network_weights"],
                                                                          self._slim_keys, sam_path)
        torch.save(checkpoint, path)

    def on_train_start(self):
        # temporary files of a save that a killed run left behind
        if self.output_folder is not None:
            remove_stale_temporaries(self.output_folder, CHECKPOINT_STEMS, min_age_s=0)
        super().on_train_start()

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's, after reading the file with ``weights_only=True`` (``sam3d_nnunet.validation``): a
        checkpoint whose pickle would run code is refused (``--c``, ``--val``) before nnU-Net unpickles it. A slim
        checkpoint gets its frozen SAM tensors back from the SAM checkpoint it names; a version-2 checkpoint gets
        its optimizer state moved to this network's parameters (``upgrade_version2_optimizer_state``)."""
        from sam3d_nnunet.model.slim_checkpoint import SLIM_KEY, complete_slim_weights
        name = "<checkpoint>"
        if isinstance(filename_or_checkpoint, (str, os.PathLike)):
            from sam3d_nnunet.validation import load_checkpoint_safely
            name = os.fspath(filename_or_checkpoint)
            checkpoint = load_checkpoint_safely(filename_or_checkpoint)
            filename_or_checkpoint = checkpoint if SLIM_KEY in checkpoint or _is_version2(checkpoint) else name
        if isinstance(filename_or_checkpoint, dict) and (SLIM_KEY in filename_or_checkpoint or
                                                         _is_version2(filename_or_checkpoint)):
            if not self.was_initialized:
                self.initialize()
            checkpoint = dict(filename_or_checkpoint)
            if SLIM_KEY in checkpoint:
                checkpoint["network_weights"] = complete_slim_weights(checkpoint["network_weights"],
                                                                      checkpoint.pop(SLIM_KEY), self._net(), name)
            if _is_version2(checkpoint) and checkpoint.get("optimizer_state") is not None:
                trainable = [n for n, p in self._net().named_parameters() if p.requires_grad]
                checkpoint["optimizer_state"] = upgrade_version2_optimizer_state(checkpoint["optimizer_state"],
                                                                                 trainable, name)
            # nnU-Net 2.8's load_checkpoint only reads files (a dict argument fails there): a temporary full copy
            handle, full = tempfile.mkstemp(prefix="sam3d_full_", suffix=".pth")
            os.close(handle)
            try:
                torch.save(checkpoint, full)
                super().load_checkpoint(full)
            finally:
                os.remove(full)
            return
        super().load_checkpoint(filename_or_checkpoint)

    # ------------------------------------------------------------------ final validation
    def make_predictor(self) -> PromptedPredictor:
        return PromptedPredictor(self._net(), self.plans_manager, self.configuration_manager, self.dataset_json,
                                 self.device, prompted=True, max_windows_per_class=self.max_windows_per_class,
                                 allowed_mirroring_axes=self.inference_allowed_mirroring_axes,
                                 trainer_name=self.__class__.__name__, precision=self.precision)

    @property
    def prompted_validation_folder(self) -> str:
        """``fold_X/validation_clicks{N}_seed{S}`` (N = ``val_clicks_per_class``, S = ``val_click_seed``)."""
        return join(self.output_folder, prompted_folder_name(self.val_clicks_per_class, self.val_click_seed))

    def validation_prompts(self, case_id: str, properties: dict, preprocessed_shape) -> tuple:
        """(prompts in preprocessed coordinates, the same clicks in raw voxel indices as JSON-able dict)."""
        rw = self.plans_manager.image_reader_writer_class()
        gt_file = join(self.preprocessed_dataset_folder_base, 'gt_segmentations',
                       case_id + self.dataset_json['file_ending'])
        seg, _ = rw.read_seg(gt_file)
        raw = protocol_prompts_from_label(seg[0], case_id, self.label_manager.foreground_labels,
                                          self.val_clicks_per_class, self.val_click_seed)
        prompts = {c: ClassPrompt(raw_to_preprocessed_coords(p.clicks, properties,
                                                             self.plans_manager.transpose_forward,
                                                             preprocessed_shape), p.labels)
                   for c, p in raw.items()}
        record = {'classes': {str(c): {'clicks_raw_voxel': p.clicks.tolist(), 'labels': p.labels.tolist()}
                              for c, p in raw.items()}}
        return prompts, record

    def perform_actual_validation(self, save_probabilities: bool = False):
        """``fold_X/validation``: nnU-Net's own validation (automatic mode, what ``nnUNetv2_predict`` gives);
        then, for a promptable model, the prompted one in ``fold_X/validation_clicks{N}_seed{S}``. An old-layout
        ``validation/`` (prompted predictions with prompts.json) is moved out of the way first."""
        if self.local_rank == 0:
            migrate_old_layout(self.output_folder, lambda text: self.print_to_log_file(text,
                                                                                      also_print_to_console=True))
        if self.is_ddp:
            dist.barrier()
        super().perform_actual_validation(save_probabilities)
        if self.use_prompts:
            self.perform_prompted_validation(save_probabilities)

    def perform_prompted_validation(self, save_probabilities: bool = False) -> None:
        """Every validation case of the fold predicted over the whole volume by ``PromptedPredictor`` with the
        seeded clicks of ``validation_prompts``, exported to ``validation_clicks{N}_seed{S}`` with ``prompts.json``
        and ``summary.json`` (the predictions are written to a hidden folder that replaces the old one when
        complete; ``summary.json`` is written last). ``save_probabilities`` (``--npz``): the predictor's merged
        class probabilities as ``.npz`` too (see ``PromptedPredictor``: not calibrated softmax)."""
        self.network.eval()
        predictor = self.make_predictor()
        final_folder = self.prompted_validation_folder
        name = os.path.basename(final_folder)
        output_folder = join(self.output_folder, f".{name}.partial")
        if self.local_rank == 0 and os.path.isdir(output_folder):
            shutil.rmtree(output_folder)
        if self.is_ddp:
            dist.barrier()
        maybe_mkdir_p(output_folder)
        _, val_keys = self.do_split()
        if self.is_ddp:
            val_keys = val_keys[self.local_rank:: dist.get_world_size()]
        dataset_val = self.dataset_class(self.preprocessed_dataset_folder, val_keys,
                                         folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        protocol = {'protocol': f'{self.val_clicks_per_class} uniformly random voxel(s) of each class present '
                                f'in the native ground truth, seed case_class_seed(case, class, '
                                f'{self.val_click_seed})',
                    'clicks_per_class': int(self.val_clicks_per_class), 'seed': int(self.val_click_seed),
                    'coordinates': 'raw image voxel indices, reader array order', 'cases': {}}
        use_pool = len(dataset_val.identifiers) > self.in_process_export_max_cases
        with (multiprocessing.get_context("spawn").Pool(default_num_processes) if use_pool else nullcontext()) \
                as export_pool:
            worker_list = list(export_pool._pool) if use_pool else []
            results = []
            for k in dataset_val.identifiers:
                while use_pool and check_workers_alive_and_busy(export_pool, worker_list, results,
                                                                allowed_num_queued=2):
                    sleep(0.1)
                self.print_to_log_file(f"predicting {k} ({name})")
                data, _, _, properties = dataset_val.load_case(k)
                data = np.asarray(data[:])
                prompts, record = self.validation_prompts(k, properties, data.shape[1:])
                protocol['cases'][k] = record
                prediction = predictor.predict_preprocessed(data, prompts)
                if predictor.last_report is not None:
                    record['windows_per_class'] = {str(c): len(w) for c, w in predictor.last_report.windows.items()}
                export_args = (prediction, properties, self.configuration_manager, self.plans_manager,
                               self.dataset_json, join(output_folder, k), save_probabilities)
                if use_pool:
                    results.append(export_pool.starmap_async(export_prediction_from_logits, (export_args,)))
                else:
                    export_prediction_from_logits(*export_args)
            _ = [r.get() for r in results]
        with open(join(output_folder, f'prompts_rank{self.local_rank}.json' if self.is_ddp else 'prompts.json'),
                  'w') as f:
            json.dump(protocol, f, indent=1)
        if self.is_ddp:
            dist.barrier()
        if self.local_rank == 0:
            if self.is_ddp:  # one prompts.json for the fold
                for r in range(1, dist.get_world_size()):
                    with open(join(output_folder, f'prompts_rank{r}.json')) as f:
                        protocol['cases'].update(json.load(f)['cases'])
                    os.remove(join(output_folder, f'prompts_rank{r}.json'))
                os.remove(join(output_folder, 'prompts_rank0.json'))
                with open(join(output_folder, 'prompts.json'), 'w') as f:
                    json.dump(protocol, f, indent=1)
            if os.path.isdir(final_folder):
                shutil.rmtree(final_folder)
            os.rename(output_folder, final_folder)  # before scoring: summary.json names the final files
            metrics = compute_metrics_on_folder(join(self.preprocessed_dataset_folder_base, 'gt_segmentations'),
                                                final_folder, join(final_folder, 'summary.json'),
                                                self.plans_manager.image_reader_writer_class(),
                                                self.dataset_json["file_ending"],
                                                self.label_manager.foreground_labels,
                                                self.label_manager.ignore_label, chill=True,
                                                num_processes=default_num_processes * dist.get_world_size() if
                                                self.is_ddp else default_num_processes)
            for label in metrics["mean"]:
                self.logger.log_summary(f"final_{name}/class_{label}_dice", metrics["mean"][label]["Dice"])
            self.logger.log_summary(f"final_{name}/foreground_dice", metrics['foreground_mean']["Dice"])
            self.print_to_log_file(f"Prompted validation complete ({self.val_clicks_per_class} click(s) per class, "
                                   f"seed {self.val_click_seed}): {final_folder}", also_print_to_console=True)
            self.print_to_log_file(f"Mean Validation Dice ({name}): ", (metrics['foreground_mean']["Dice"]),
                                   also_print_to_console=True)
        if self.is_ddp:
            dist.barrier()
        compute_gaussian.cache_clear()


class nnUNetTrainerSAM3D_full(nnUNetTrainerSAM3D):
    """Full fine-tuning: every tensor trains, SAM's included."""
    finetune_policy = "full"


class nnUNetTrainerSAM3D_LoRA(nnUNetTrainerSAM3D):
    """LoRA on every block's qkv and output projection instead of adapters; SAM's tensors frozen."""
    finetune_policy = "lora"


class nnUNetTrainerSAM3D_auto(nnUNetTrainerSAM3D):
    """Prompt-free: trains without clicks on all classes at once, validates with nnU-Net's sliding window."""
    use_prompts = False


class nnUNetTrainerSAM3D_allprompts(nnUNetTrainerSAM3D):
    """Trains with every prompt type: clicks, boxes, scribbles, lassos, and previous masks in correction passes."""
    prompt_mix = {"click": 0.4, "box": 0.2, "scribble": 0.2, "lasso": 0.2, "mask": 0.5}


class nnUNetTrainerSAM3D_1epoch(nnUNetTrainerSAM3D):
    """Smoke test: 1 epoch of 5 iterations (2 validation iterations)."""
    sam_num_epochs = 1
    sam_iterations_per_epoch = 5
    sam_val_iterations_per_epoch = 2


class nnUNetTrainerSAM3D_5epochs(nnUNetTrainerSAM3D):
    """Short run: 5 epochs of 5 iterations (2 validation iterations), a checkpoint every epoch."""
    sam_num_epochs = 5
    sam_iterations_per_epoch = 5
    sam_val_iterations_per_epoch = 2
    sam_save_every = 1


__all__ = ["nnUNetTrainerSAM3D", "nnUNetTrainerSAM3D_full", "nnUNetTrainerSAM3D_LoRA", "nnUNetTrainerSAM3D_auto",
           "nnUNetTrainerSAM3D_allprompts",
           "nnUNetTrainerSAM3D_1epoch", "nnUNetTrainerSAM3D_5epochs"]
