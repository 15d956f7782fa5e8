"""A tiny SAM3DNet trained on CT phantoms in a subprocess (nnU-Net reads its folders from the environment at
import time): phantoms generated, planned with the SAM3D planner (tiny variant, random SAM weights), trained in
process with ``run_training`` (nnUNetv2_train without its final validation). Shared by the slow test modules that
need a trained model folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TRAIN_SCRIPT = r"""
import sys
from pathlib import Path
import torch
root, dataset_id, name, size, trainer_name, epochs = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), \
    sys.argv[5], int(sys.argv[6])
from sam3d_nnunet.model import write_random_sam_checkpoint
from sam3d_nnunet.phantoms import generate_phantom_dataset
generate_phantom_dataset(root / "raw", int(dataset_id), name, n_cases=5, shape=(size,) * 3, seed=0,
                         spacing=(3.0, 3.0, 3.0))
ckpt = write_random_sam_checkpoint("tiny", root / "sam_tiny.pth", seed=1)
from sam3d_nnunet.cli import main
assert main(["plan_and_preprocess", "-d", dataset_id, "-c", "3d_fullres", "--sam-variant", "tiny", "--sam-checkpoint",
             str(ckpt), "-npfp", "2", "-np", "2", "--no_pbar"]) == 0
from nnunetv2.run.run_training import get_trainer_from_args
trainer = get_trainer_from_args(dataset_id, "3d_fullres", 0, trainer_name, "SAM3DPlans", device=torch.device("cpu"))
if epochs > 0:
    trainer.num_epochs = epochs  # fewer than the trainer's own: a run stopped early
trainer.run_training()
"""


def phantom_env(root: Path, **extra: str) -> dict:
    from sam3d_nnunet.commands.ext_trainer_dir import ext_trainer_dir
    return dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
                nnUNet_results=str(root / "res"), nnUNet_def_n_proc="2", nnUNet_n_proc_DA="2",
                nnUNet_extTrainer=ext_trainer_dir(), nnUNet_compile="false", **extra)


def train_phantoms(root: Path, dataset_id: int, name: str, size: int, trainer: str, epochs: int = 0,
                   **env: str) -> Path:
    """5 CT phantoms of ``size``^3 voxels at 3 mm as ``Dataset<id>_<name>``, ``trainer`` trained on fold 0 (for
    ``epochs`` epochs if > 0); returns the model folder (``nnUNet_results/.../<trainer>__SAM3DPlans__3d_fullres``)."""
    p = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, str(root), str(dataset_id), name, str(size), trainer,
                        str(epochs)], env=phantom_env(root, **env), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"training failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return root / "res" / f"Dataset{dataset_id:03d}_{name}" / f"{trainer}__SAM3DPlans__3d_fullres"
