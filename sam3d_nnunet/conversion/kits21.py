"""KiTS21 (``case_XXXXX/imaging.nii.gz`` + ``case_XXXXX/aggregated_MAJ_seg.nii.gz``) -> nnU-Net raw format.

Case ids stay as in KiTS21 (``case_00012``). Labels: background 0, kidney 1, tumour 2, cyst 3; with
``tumour_only`` just the tumour, relabelled to 1. The image is copied byte for byte (after a full read that
checks it); the label is rewritten as uint8 with the image's geometry.
"""
from __future__ import annotations

import os
import re
import shutil

from sam3d_nnunet.atomic import copy_file_atomic, write_image_atomic

from .common import (FILE_ENDING, ConversionError, Geometry, check_geometry, finish_dataset, label_image_like,
                     make_staging_folder, outputs_exist, prepare_label, prepare_target, read_sitk, run_cases)

IMAGE_FILE = "imaging.nii.gz"
LABEL_FILE = "aggregated_MAJ_seg.nii.gz"
LABELS = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
TUMOUR_VALUE = 2
_CASE_RE = re.compile(r"^case_\d{5}$")


def find_case_folders(folder: str) -> list[str]:
    """Case folders in `folder`, or in its ``data`` subfolder (the kits21 repository's layout)."""
    for candidate in (folder, os.path.join(folder, "data"), os.path.join(folder, "kits21", "data")):
        if os.path.isdir(candidate):
            cases = sorted(d for d in os.listdir(candidate)
                           if _CASE_RE.match(d) and os.path.isdir(os.path.join(candidate, d)))
            if cases:
                return [os.path.join(candidate, c) for c in cases]
    raise ConversionError(f"no KiTS21 case folders (case_XXXXX/) found in {folder} or {folder}/data")


def convert_case(case_folder: str, target: str, staging: str, tumour_only: bool) -> None:
    case = os.path.basename(case_folder)
    image_path = os.path.join(case_folder, IMAGE_FILE)
    label_path = os.path.join(case_folder, LABEL_FILE)
    if not os.path.isfile(image_path):
        raise ConversionError(f"case {case}: image file missing: {image_path} (KiTS21 ships the imaging "
                              f"separately, see the kits21 repository's get_imaging script)")
    if not os.path.isfile(label_path):
        raise ConversionError(f"case {case}: label file missing: {label_path}")
    image = read_sitk(case, image_path, "image")
    if image.GetDimension() != 3:
        raise ConversionError(f"case {case}: expected a 3D image, {image_path} has {image.GetDimension()} dims")
    label = read_sitk(case, label_path, "label")
    check_geometry(case, Geometry.of(image), Geometry.of(label), image_path, label_path)
    import SimpleITK as sitk
    arr = prepare_label(case, sitk.GetArrayViewFromImage(label), LABELS.values(), label_path,
                        TUMOUR_VALUE if tumour_only else None)
    copy_file_atomic(image_path, os.path.join(target, "imagesTr", f"{case}_0000{FILE_ENDING}"), staging)
    write_image_atomic(label_image_like(arr, image), os.path.join(target, "labelsTr", f"{case}{FILE_ENDING}"),
                       staging)


def convert_kits21(source: str, dataset_id: int, name: str | None = None, tumour_only: bool = False,
                   num_processes: int = 1) -> str:
    """Convert a KiTS21 folder; returns the nnU-Net raw dataset folder."""
    case_folders = find_case_folders(source)
    for c in case_folders:  # fail before converting anything
        for f, what in ((IMAGE_FILE, "image"), (LABEL_FILE, "label")):
            if not os.path.isfile(os.path.join(c, f)):
                raise ConversionError(f"case {os.path.basename(c)}: {what} file missing: {os.path.join(c, f)}")
    name = name or ("KiTS21Tumour" if tumour_only else "KiTS21")
    settings = {"converter": "kits21", "tumour_only": bool(tumour_only)}
    target = prepare_target(dataset_id, name, settings)
    staging = make_staging_folder(target)
    try:
        jobs = [(c, target, staging, bool(tumour_only)) for c in case_folders]
        run_cases(convert_case, jobs, lambda j: outputs_exist(target, os.path.basename(j[0])), "KiTS21",
                  num_processes)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    labels = {"background": 0, "tumor": 1} if tumour_only else dict(LABELS)
    return finish_dataset(target, [os.path.basename(c) for c in case_folders], {0: "CT"}, labels, settings,
                          dataset_name=os.path.basename(target),
                          reference="https://kits-challenge.org/kits21/",
                          description="KiTS21 converted by sam3d-nnunet convert kits21"
                                      + (" (tumour only)" if tumour_only else ""),
                          license="see https://kits-challenge.org/kits21/",
                          converted_by="sam3d-nnunet convert kits21")
