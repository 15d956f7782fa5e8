"""``sam3d-nnunet import-reference``: the authors' trained 3DSAM-adapter models as nnU-Net model folders.

    sam3d-nnunet import-reference --checkpoint best.pth.tar --task kits|pancreas|lits|colon -d DATASET_ID
                                  [--name NAME] [--fold all] [--overwrite]

Reads the file the reference ``train.py`` writes (``encoder_dict``, ``decoder_dict``, ``feature_dict``; optimiser
states ignored) with ``torch.load(weights_only=True)`` and writes
``$nnUNet_results/DatasetXXX_NAME/nnUNetTrainerSAM3D__3DSAMReferencePlans__3d_fullres/`` with ``plans.json``,
``dataset.json`` and ``fold_<fold>/checkpoint_final.pth``. Its plans reproduce the reference's preprocessing for
the task: 1 mm isotropic spacing (linear resampling), the task's fixed intensity window and z-score
(nnU-Net's ``CTNormalization``: clip, then subtract the mean and divide by the std, as the reference does), the
reference's axis order (``transpose_forward``), one input channel, labels background / tumour. Nothing is
written unless the whole checkpoint converts; files are written under temporary names and renamed.

Then ``sam3d-nnunet predict -d DATASET_ID -tr nnUNetTrainerSAM3D -p 3DSAMReferencePlans -f all --clicks ...``
(and the interactive session, the napari plug-in) run the authors' model on raw images in native geometry.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass

PLANS_NAME = "3DSAMReferencePlans"
TRAINER_NAME = "nnUNetTrainerSAM3D"
CONFIGURATION = "3d_fullres"


@dataclass(frozen=True)
class ReferenceTask:
    """One task of the reference's dataset definitions (med-air/3DSAM-adapter ``dataset/datasets.py``)."""

    name: str
    label_name: str
    window: tuple[float, float]  # intensity clip (HU)
    mean: float
    std: float
    # SimpleITK's array axes (z, y, x) -> the reference's array axes (nibabel's order, then its spatial_index)
    transpose: tuple[int, int, int]


REFERENCE_TASKS = {
    # KiTS21 keeps nibabel's (i, j, k) order: SimpleITK's (k, j, i) reversed
    "kits": ReferenceTask("KiTS21", "kidney tumour", (-54.0, 247.0), 59.53867, 55.457336, (2, 1, 0)),
    # the others transpose nibabel's order to (k, j, i): SimpleITK's order
    "lits": ReferenceTask("LiTS", "liver tumour", (-48.0, 163.0), 60.057533, 40.198017, (0, 1, 2)),
    "pancreas": ReferenceTask("MSD pancreas", "pancreas tumour", (-39.0, 204.0), 68.45214, 63.422806, (0, 1, 2)),
    "colon": ReferenceTask("MSD colon", "colon cancer", (-57.0, 175.0), 65.175035, 32.651197, (0, 1, 2)),
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-reference", help="import an authors' 3DSAM-adapter checkpoint as an nnU-Net model folder",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="the reference's best.pth.tar or last.pth.tar")
    parser.add_argument("--task", required=True, choices=sorted(REFERENCE_TASKS),
                        help="the task the checkpoint was trained on (sets the preprocessing)")
    parser.add_argument("-d", dest="dataset_id", type=int, required=True, help="nnU-Net dataset id to write")
    parser.add_argument("--name", default=None, help="dataset name after the id (default 3DSAMAdapter<Task>)")
    parser.add_argument("--fold", default="all", help="fold folder to write (default all: fold_all)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing imported checkpoint")
    parser.set_defaults(func=run)


def reference_plans(task: ReferenceTask, arch_kwargs: dict, dataset_name: str) -> dict:
    """nnU-Net plans that reproduce the reference's preprocessing for ``task`` and build its network."""
    linear = {"is_seg": False, "order": 1, "order_z": 1, "force_separate_z": False}
    crop = list(arch_kwargs["patch_size"])
    low, high = task.window
    return {
        "dataset_name": dataset_name,
        "plans_name": PLANS_NAME,
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": crop,
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(task.transpose),
        "transpose_backward": [list(task.transpose).index(i) for i in range(3)],
        "configurations": {CONFIGURATION: {
            "data_identifier": f"{PLANS_NAME}_{CONFIGURATION}",
            "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 1,
            "patch_size": crop,
            "median_image_size_in_voxels": crop,
            "spacing": [1.0, 1.0, 1.0],
            "normalization_schemes": ["CTNormalization"],
            "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": linear,
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": False},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": linear,
            "architecture": {"network_class_name": "sam3d_nnunet.model.SAM3DNet", "arch_kwargs": arch_kwargs,
                             "_kw_requires_import": []},
            "batch_dice": False,
        }},
        "experiment_planner_used": "sam3d-nnunet import-reference",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "mean": task.mean, "std": task.std, "percentile_00_5": low, "percentile_99_5": high,
            "min": low, "max": high, "median": task.mean}},
        "sam3d": {"sam_variant": arch_kwargs["variant"], "sam_checkpoint": None,
                  "reference_task": task.name,
                  "note": "imported from the authors' 3DSAM-adapter checkpoint (sam3d-nnunet import-reference); "
                          "preprocessing as the reference's: 1 mm, clip to the task window, fixed z-score"},
    }


def reference_dataset_json(task: ReferenceTask) -> dict:
    return {"channel_names": {"0": "CT"}, "labels": {"background": 0, task.label_name.replace(" ", "_"): 1},
            "numTraining": 0, "file_ending": ".nii.gz",
            "description": f"authors' 3DSAM-adapter model for {task.name} (imported)"}


def import_reference(checkpoint_path: str, task_key: str, dataset_id: int, name: str | None = None,
                     fold: str = "all", overwrite: bool = False, results_dir: str | None = None) -> str:
    """Convert and write the model folder; returns its path. Raises with a one-line message on bad input."""
    import torch

    from sam3d_nnunet.atomic import save_json_atomic, torch_save_atomic
    from sam3d_nnunet.model.reference_checkpoint import (convert_reference_checkpoint, read_reference_checkpoint,
                                                         reference_architecture)
    from sam3d_nnunet.model.sam3d_net import SAM3DNet

    task = REFERENCE_TASKS[task_key]
    results_dir = results_dir or os.environ.get("nnUNet_results")
    if not results_dir:
        raise ValueError("nnUNet_results is not set: it says where the model folder goes")
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset id must lie in 1..999, got {dataset_id}")
    dataset_name = f"Dataset{dataset_id:03d}_{name or '3DSAMAdapter' + task.name.replace(' ', '')}"
    existing = [d for d in (os.listdir(results_dir) if os.path.isdir(results_dir) else [])
                if d.startswith(f"Dataset{dataset_id:03d}_") and d != dataset_name]
    if existing:
        raise ValueError(f"{results_dir}: dataset id {dataset_id} is already used by {existing[0]}")
    checkpoint = read_reference_checkpoint(checkpoint_path)
    arch_kwargs = reference_architecture(checkpoint, checkpoint_path)
    network = SAM3DNet(1, 2, **arch_kwargs)
    weights = convert_reference_checkpoint(checkpoint, network, checkpoint_path)
    network.load_state_dict(weights)  # the same check the predictor will make
    folder = os.path.join(results_dir, dataset_name, f"{TRAINER_NAME}__{PLANS_NAME}__{CONFIGURATION}")
    target = os.path.join(folder, f"fold_{fold}", "checkpoint_final.pth")
    if os.path.exists(target) and not overwrite:
        raise ValueError(f"{target} exists; pass --overwrite to replace it")
    plans = reference_plans(task, arch_kwargs, dataset_name)
    dataset_json = reference_dataset_json(task)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    save_json_atomic(plans, os.path.join(folder, "plans.json"))
    save_json_atomic(dataset_json, os.path.join(folder, "dataset.json"))
    torch_save_atomic({
        "network_weights": {k: v.contiguous() for k, v in weights.items()},
        "init_args": {"plans": plans, "configuration": CONFIGURATION, "fold": fold, "dataset_json": dataset_json,
                      "device": "cpu"},
        "trainer_name": TRAINER_NAME,
        "inference_allowed_mirroring_axes": None,  # the reference predicts without test-time mirroring
        "current_epoch": 0, "optimizer_state": None, "grad_scaler_state": None, "logging": {}, "_best_ema": None,
        "sam3d_reference_import": {"source": os.path.abspath(checkpoint_path), "task": task_key,
                                   "torch": str(torch.__version__)},
    }, target)
    return folder


def run(args: argparse.Namespace) -> int:
    from sam3d_nnunet.model.reference_checkpoint import ReferenceCheckpointError
    from sam3d_nnunet.model.sam3d_net import IncompatibleCheckpointError

    try:
        folder = import_reference(args.checkpoint, args.task, args.dataset_id, args.name, args.fold, args.overwrite)
    except (ReferenceCheckpointError, IncompatibleCheckpointError, ValueError, OSError) as error:
        print(f"sam3d-nnunet import-reference: error: {error}", file=sys.stderr)
        return 1
    print(f"imported {args.checkpoint} ({REFERENCE_TASKS[args.task].name}) -> {folder}")
    print(f"predict with: sam3d-nnunet predict -i IMAGES -o OUT -d {args.dataset_id} -tr {TRAINER_NAME} "
          f"-p {PLANS_NAME} -f {args.fold} --clicks clicks.json")
    print(json.dumps({"model_folder": folder}))
    return 0
