"""Helpers shared by the reliability tests (``test_reliability_{faults,inputs,hostile}.py``); not a test module.

* ``record(...)``: every injected fault, bad input and hostile file a test tries is appended as one JSON line to
  ``$SAM3D_RELIABILITY_LOG`` (default ``/tmp/sam3d_reliability/records.jsonl``), tagged with this pytest
  session; ``benchmarks/reliability_table.py`` turns the latest session into the table of BENCHMARKS.md.
* ``run_cli``: a command in a subprocess with a timeout (a hang fails the test instead of blocking CI).
* ``assert_clean_cli_error``: exit status 1, ``error:`` on stderr naming the file, no ``Traceback``.
* ``assert_complete_images``: every ``*.nii.gz`` under a folder reads completely (gzip CRC, NIfTI length).
* ``write_image`` / ``patch_nifti_pixdim``: image files, including ones SimpleITK and nibabel refuse to write
  (zero, negative, NaN voxel sizes are patched into the header bytes).
* ``make_model_folder``: a trained-model folder (plans.json, dataset.json, fold_0/checkpoint_final.pth in
  nnU-Net's checkpoint layout) with a tiny SAM3DNet of seeded random weights, built in a second.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tiny_plans import DATASET_JSON, tiny_plans  # noqa: F401  (re-exported to the reliability tests)

BIN = Path(sys.executable).parent
LOG = Path(os.environ.get("SAM3D_RELIABILITY_LOG", "/tmp/sam3d_reliability/records.jsonl"))
# one id per pytest session: the first reliability module imported sets it, the others inherit it
SESSION = os.environ.setdefault("SAM3D_RELIABILITY_SESSION", f"{int(time.time())}-{os.getpid()}")


def exe(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def record(suite: str, stage: str, fault: str, outcome: str, *, lost: int = 0, detail: str = "") -> None:
    """Append one tried fault / bad input / hostile file and what happened to the reliability log."""
    LOG.parent.mkdir(parents=True, exist_ok=True)
    entry = {"session": SESSION, "time": time.time(), "suite": suite, "stage": stage, "fault": fault,
             "outcome": outcome, "lost": int(lost), "detail": detail}
    with open(LOG, "a", encoding="utf-8") as f:  # one short write per line: safe with O_APPEND
        f.write(json.dumps(entry) + "\n")


def cli_env(**extra) -> dict:
    env = dict(os.environ, nnUNet_def_n_proc="2", nnUNet_n_proc_DA="2", nnUNet_compile="false",
               PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(args: Sequence, env: Optional[dict] = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """``sam3d-nnunet ARGS`` in a subprocess; a hang raises ``subprocess.TimeoutExpired`` (test failure)."""
    return subprocess.run([exe("sam3d-nnunet"), *[str(a) for a in args]], env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_cli_error(p: subprocess.CompletedProcess, *names: str, rc: int = 1) -> str:
    err = p.stderr
    assert p.returncode == rc, f"exit status {p.returncode}, expected {rc}\nstdout:\n{p.stdout[-2000:]}\n" \
                               f"stderr:\n{err[-3000:]}"
    assert "error:" in err, err[-3000:]
    assert "Traceback" not in err and "Traceback" not in p.stdout, err[-3000:]
    for n in names:
        assert str(n) in err, f"{n!r} not named in the error:\n{err[-3000:]}"
    return err


def image_is_complete(path) -> bool:
    """True if a ``.nii.gz`` decompresses completely and holds the bytes its header promises."""
    from sam3d_nnunet.validation import InputFileError, check_image_file
    try:
        check_image_file(path)
    except InputFileError:
        return False
    return True


def assert_complete_images(folder) -> list:
    """Every ``*.nii.gz`` under ``folder`` (hidden temporaries excluded) is complete and readable."""
    import SimpleITK as sitk
    files = sorted(p for p in Path(folder).rglob("*.nii.gz") if not p.name.startswith("."))
    for p in files:
        assert image_is_complete(p), f"{p} is incomplete (a partial file under a final name)"
        sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
    return files


def write_image(array, path, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> str:
    import SimpleITK as sitk
    img = sitk.GetImageFromArray(np.asarray(array))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        img.SetDirection(direction)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)
    return str(path)


def patch_nifti_pixdim(path, axis: int, value: float) -> None:
    """Overwrite ``pixdim[axis + 1]`` (NIfTI-1, x = axis 0) in the header bytes of a ``.nii``/``.nii.gz``:
    writers refuse such values, real files from broken converters carry them."""
    path = str(path)
    raw = gzip.decompress(Path(path).read_bytes()) if path.endswith(".gz") else Path(path).read_bytes()
    b = bytearray(raw)
    endian = "<" if struct.unpack("<i", bytes(b[:4]))[0] == 348 else ">"
    off = 76 + 4 * (axis + 1)
    b[off:off + 4] = struct.pack(endian + "f", float(value))
    Path(path).write_bytes(gzip.compress(bytes(b)) if path.endswith(".gz") else bytes(b))


def truncate(path, fraction: float) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(1, int(len(data) * fraction))])


def files_outside(root: Path, allowed: Sequence[Path]) -> list:
    """Files under ``root`` that are in none of the ``allowed`` folders."""
    allowed = [Path(a).resolve() for a in allowed]
    out = []
    for p in Path(root).rglob("*"):
        if p.is_file() and not any(a == p.resolve() or a in p.resolve().parents for a in allowed):
            out.append(p)
    return out


# --------------------------------------------------------------------------------------------- model folders
TINY_PATCH = (32, 32, 32)


def nnunet_checkpoint(plans: dict, dataset_json: dict, trainer: str = "nnUNetTrainerSAM3D", seed: int = 0) -> dict:
    """A checkpoint in nnU-Net's layout (``nnUNetTrainer.save_checkpoint``), numpy scalars included as nnU-Net
    logs them, with a tiny SAM3DNet of seeded random weights."""
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    import sam3d_nnunet.trainers.nnUNetTrainerSAM3D as m
    pm = PlansManager(plans)
    torch.manual_seed(seed)
    net = getattr(m, trainer).build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1,
                                                          len(dataset_json["labels"]), False)
    return {"network_weights": net.state_dict(), "optimizer_state": {"state": {}, "param_groups": []},
            "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float32(0.1)], "ema_fg_dice": [np.float32(0.1)],
                        "dice_per_class_or_region": [[np.float32(0.1), np.float32(0.0)]],
                        "train_losses": [np.float32(0.9)], "val_losses": [np.float32(0.8)], "lrs": [4e-4],
                        "epoch_start_timestamps": [0.0], "epoch_end_timestamps": [1.0]},
            "_best_ema": np.float32(0.1), "current_epoch": 1,
            "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset_json,
                          "device": torch.device("cpu")},
            "trainer_name": trainer, "inference_allowed_mirroring_axes": (0, 1, 2)}


def make_model_folder(root, checkpoint: Optional[dict] = None, dataset_json: Optional[dict] = None,
                      plans: Optional[dict] = None) -> Path:
    import torch
    plans = plans or tiny_plans()
    dataset_json = dataset_json or DATASET_JSON
    folder = Path(root) / "nnUNetTrainerSAM3D__SAM3DPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    torch.save(checkpoint if checkpoint is not None else nnunet_checkpoint(plans, dataset_json),
               folder / "fold_0" / "checkpoint_final.pth")
    return folder


class Payload:
    """A pickle payload: unpickling it creates ``marker`` (via os.system, exec or eval), i.e. runs code."""

    def __init__(self, marker, how: str = "system"):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "system":
            return os.system, (f"touch '{self.marker}'",)
        if self.how == "exec":
            return exec, (f"open({self.marker!r}, 'w').close()",)
        return eval, (f"open({self.marker!r}, 'w').close()",)


def sphere(shape, centre, radius):
    g = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((a - c) ** 2 for a, c in zip(g, centre)) <= radius ** 2
