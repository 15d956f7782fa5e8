"""LiTS release (``volume-N.nii`` + ``segmentation-N.nii``, plain NIfTI, possibly in subfolders such as
"Training Batch 1") -> nnU-Net raw format.

Case ids: ``volume-N`` becomes ``lits_NNNN`` (``volume-12`` -> ``lits_0012``; :func:`lits_case_id`).
Labels: background 0, liver 1, tumour 2; with ``tumour_only`` just the tumour, relabelled to 1.

Files are read with nibabel (SimpleITK refuses some of the release's plain ``.nii`` headers), using nibabel's
affine (the sform when set, else the qform); it becomes ITK geometry as spacing = column norms, direction =
normalised columns, and RAS -> LPS (x and y negated) for direction and origin. Direction cosines that are
not orthonormal within 1e-3 (a sheared affine) are refused, smaller deviations are orthonormalised. Images
are written as ``.nii.gz`` with SimpleITK (int16 when the values are integers in int16 range, else float32),
labels as uint8 with the image's geometry.
"""
from __future__ import annotations

import os
import re
import shutil

import numpy as np

from sam3d_nnunet.atomic import write_image_atomic

from .common import (FILE_ENDING, ConversionError, Geometry, check_geometry, finish_dataset, label_image_like,
                     make_staging_folder, outputs_exist, prepare_label, prepare_target, run_cases)

LABELS = {"background": 0, "liver": 1, "tumor": 2}
TUMOUR_VALUE = 2
_FILE_RE = re.compile(r"^(volume|segmentation)-(\d+)\.nii(\.gz)?$")


def lits_case_id(number: int) -> str:
    """The nnU-Net case id of LiTS ``volume-<number>``."""
    return f"lits_{int(number):04d}"


def find_cases(folder: str) -> list[tuple[str, str, str | None]]:
    """(case id, volume path, segmentation path) for every ``volume-N`` below `folder`."""
    found: dict[str, dict[int, str]] = {"volume": {}, "segmentation": {}}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            m = _FILE_RE.match(f)
            if not m:
                continue
            kind, number = m.group(1), int(m.group(2))
            path = os.path.join(root, f)
            if number in found[kind]:
                raise ConversionError(f"case {lits_case_id(number)}: two {kind} files for number {number}: "
                                      f"{found[kind][number]} and {path}")
            found[kind][number] = path
    if not found["volume"]:
        raise ConversionError(f"no LiTS volume-N.nii files found below {folder}")
    orphans = sorted(set(found["segmentation"]) - set(found["volume"]))
    if orphans:
        n = orphans[0]
        raise ConversionError(f"case {lits_case_id(n)}: {found['segmentation'][n]} has no volume-{n}.nii "
                              f"(image file missing)")
    unlabelled = sorted(set(found["volume"]) - set(found["segmentation"]))
    if unlabelled:
        n = unlabelled[0]
        raise ConversionError(f"case {lits_case_id(n)}: label file missing: no segmentation-{n}.nii for "
                              f"{found['volume'][n]}")
    return [(lits_case_id(n), found["volume"][n], found["segmentation"][n]) for n in sorted(found["volume"])]


def read_nifti(case: str, path: str, what: str):
    """(data array (i, j, k), ITK-style Geometry) of a NIfTI file read with nibabel."""
    import nibabel as nib
    if not os.path.isfile(path):
        raise ConversionError(f"case {case}: {what} file missing: {path}")
    try:
        img = nib.load(path, mmap=False)
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=float)
    except Exception as e:  # nibabel raises many kinds (ImageFileError, EOFError, ValueError, OSError, ...)
        raise ConversionError(f"case {case}: cannot read {what} {path}: {type(e).__name__}: {e}") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ConversionError(f"case {case}: expected a 3D {what}, {path} has shape {data.shape}")
    m = affine[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if not (np.all(np.isfinite(affine)) and np.all(spacing > 0)):
        raise ConversionError(f"case {case}: invalid affine in {path}: {affine.tolist()}")
    rot = m / spacing
    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-3):
        raise ConversionError(f"case {case}: the affine of {path} is sheared (direction cosines not "
                              f"orthonormal); cannot express it as ITK geometry")
    u, _, vt = np.linalg.svd(rot)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    direction = ras_to_lps @ (u @ vt)
    origin = ras_to_lps @ affine[:3, 3]
    geometry = Geometry(tuple(int(s) for s in data.shape), tuple(float(s) for s in spacing),
                        tuple(float(o) for o in origin), tuple(float(d) for d in direction.ravel()))
    return data, geometry


def to_sitk(data_ijk: np.ndarray, geometry: Geometry):
    import SimpleITK as sitk
    image = sitk.GetImageFromArray(np.ascontiguousarray(data_ijk.transpose(2, 1, 0)))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def _image_dtype(case: str, path: str, data: np.ndarray) -> np.ndarray:
    if data.dtype.kind in "iu" and data.dtype.itemsize <= 2:
        return data
    if not np.all(np.isfinite(data)):
        raise ConversionError(f"case {case}: image {path} holds NaN/inf values")
    if data.size and np.array_equal(data, np.round(data)) and data.min() >= -32768 and data.max() <= 32767:
        return data.astype(np.int16)
    return data.astype(np.float32)


def convert_case(case: str, volume: str, segmentation: str, target: str, staging: str,
                 tumour_only: bool) -> None:
    data, geometry = read_nifti(case, volume, "image")
    seg, seg_geometry = read_nifti(case, segmentation, "label")
    check_geometry(case, geometry, seg_geometry, volume, segmentation)
    arr = prepare_label(case, seg, LABELS.values(), segmentation, TUMOUR_VALUE if tumour_only else None)
    image = to_sitk(_image_dtype(case, volume, data), geometry)
    del data
    write_image_atomic(image, os.path.join(target, "imagesTr", f"{case}_0000{FILE_ENDING}"), staging)
    write_image_atomic(label_image_like(arr.transpose(2, 1, 0), image),
                       os.path.join(target, "labelsTr", f"{case}{FILE_ENDING}"), staging)


def convert_lits(source: str, dataset_id: int, name: str | None = None, tumour_only: bool = False,
                 num_processes: int = 1) -> str:
    """Convert the LiTS training release; returns the nnU-Net raw dataset folder."""
    cases = find_cases(source)
    name = name or ("LiTSTumour" if tumour_only else "LiTS")
    settings = {"converter": "lits", "tumour_only": bool(tumour_only)}
    target = prepare_target(dataset_id, name, settings)
    staging = make_staging_folder(target)
    try:
        jobs = [(case, vol, seg, target, staging, bool(tumour_only)) for case, vol, seg in cases]
        run_cases(convert_case, jobs, lambda j: outputs_exist(target, j[0]), "LiTS", num_processes)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    labels = {"background": 0, "tumor": 1} if tumour_only else dict(LABELS)
    return finish_dataset(target, [c[0] for c in cases], {0: "CT"}, labels, settings,
                          dataset_name=os.path.basename(target),
                          reference="https://competitions.codalab.org/competitions/17094",
                          description="LiTS training release converted by sam3d-nnunet convert lits "
                                      "(volume-N -> lits_NNNN)" + (" (tumour only)" if tumour_only else ""),
                          license="see the LiTS challenge terms",
                          converted_by="sam3d-nnunet convert lits")
