"""``sam3d_nnunet.atomic``: the one implementation of write-to-a-temporary-name-then-rename."""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from sam3d_nnunet import atomic

PACKAGE = Path(atomic.__file__).resolve().parent
ROOT = PACKAGE.parent


def test_temporary_names_are_hidden_unique_and_keep_the_ending(tmp_path):
    names = {atomic.temporary_sibling(tmp_path / "case_001.nii.gz") for _ in range(20)}
    assert len(names) == 20
    for name in names:
        assert re.fullmatch(r"\.case_001\.[0-9a-f]{10}\.tmp\.nii\.gz", os.path.basename(name)), name
        assert os.path.dirname(name) == str(tmp_path)
    ckpt = os.path.basename(atomic.temporary_sibling(tmp_path / "checkpoint_latest.pth"))
    assert re.fullmatch(r"\.checkpoint_latest\.[0-9a-f]{10}\.tmp\.pth", ckpt)
    staged = atomic.temporary_sibling(tmp_path / "a.json", folder=tmp_path / "staging")
    assert os.path.dirname(staged) == str(tmp_path / "staging")


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    atomic.save_json_atomic({"version": 1}, path)
    with pytest.raises(ZeroDivisionError):
        with atomic.atomic_path(path) as tmp:
            Path(tmp).write_text("half")
            1 / 0
    assert json.loads(path.read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    with pytest.raises(RuntimeError, match="nothing was written"):
        with atomic.atomic_path(tmp_path / "never.txt"):
            pass
    assert not (tmp_path / "never.txt").exists()


def test_writers_keep_an_existing_files_mode_and_create_folders(tmp_path):
    path = tmp_path / "sub" / "clicks.json"
    atomic.save_json_atomic({"a": 1}, path, durable=True)
    assert path.read_text() == '{\n  "a": 1\n}\n'
    os.chmod(path, 0o640)
    atomic.write_text_atomic(path, "x")
    assert path.read_text() == "x" and (os.stat(path).st_mode & 0o777) == 0o640
    atomic.write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_image_checkpoint_and_figure_writers(tmp_path):
    import numpy as np
    import SimpleITK as sitk
    import torch
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    atomic.write_image_atomic(image, tmp_path / "img.nii.gz", folder=tmp_path)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "img.nii.gz"))).tolist() == \
        sitk.GetArrayFromImage(image).tolist()
    atomic.copy_file_atomic(tmp_path / "img.nii.gz", tmp_path / "copy.nii.gz")
    assert (tmp_path / "copy.nii.gz").read_bytes() == (tmp_path / "img.nii.gz").read_bytes()
    atomic.torch_save_atomic({"w": torch.ones(2)}, tmp_path / "c.pth")
    assert torch.load(tmp_path / "c.pth", weights_only=True)["w"].tolist() == [1.0, 1.0]
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    fig = plt.figure()
    atomic.savefig_atomic(fig, tmp_path / "f.png")
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_stale_temporaries_are_removed_only_when_old_enough(tmp_path):
    fresh = tmp_path / ".case.0123456789.tmp.nii.gz"
    old = tmp_path / ".case.abcdef0123.tmp.nii.gz"
    other_case = tmp_path / ".case2.abcdef0123.tmp.nii.gz"
    final = tmp_path / "case.nii.gz"
    for p in (fresh, old, other_case, final):
        p.write_bytes(b"x")
    t = time.time() - 7200
    os.utime(old, (t, t))
    os.utime(other_case, (t, t))
    assert atomic.remove_stale_temporaries(tmp_path, "case") == 1
    assert fresh.exists() and not old.exists() and other_case.exists() and final.exists()
    assert atomic.remove_stale_temporaries(tmp_path, ["case", "case2"], min_age_s=0) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.nii.gz"]
    assert atomic.remove_stale_temporaries(tmp_path / "missing", "case") == 0


# Renames that are not a write-to-temporary-then-rename of a file of our own: folders, or files that nnU-Net's functions write under
# fixed names into a staging folder (or, for an export, under one temporary stem with several endings).
ALLOWED_RENAMES = {
    "sam3d_nnunet/atomic.py": 1,
    "sam3d_nnunet/conversion/common.py": 1,   # nnU-Net's generate_dataset_json writes <staging>/dataset.json
    "sam3d_nnunet/conversion/msd.py": 1,      # nnU-Net's split_4d_nifti writes <staging>/<case>_XXXX.nii.gz
    "sam3d_nnunet/inference/io.py": 1,        # nnU-Net's export: .npz, .pkl, then the segmentation
    # whole folders: a complete prompted validation folder swapped in, an old-layout validation/ moved aside
    "trainers/nnUNetTrainerSAM3D.py": 1,
    "sam3d_nnunet/evaluation/validation_folders.py": 1,
}


def test_the_package_renames_into_place_only_through_the_helper():
    """One implementation: no other module writes a temporary file and renames it itself."""
    files = {p.resolve() for folder in (PACKAGE, ROOT / "trainers", ROOT / "planners") for p in folder.rglob("*.py")}
    found = {}
    for path in sorted(files):
        n = len(re.findall(r"\bos\.(?:replace|rename)\(|\.rename\(", path.read_text()))
        if n:
            found[str(path.relative_to(ROOT))] = n
    assert found == ALLOWED_RENAMES
