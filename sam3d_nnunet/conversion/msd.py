"""Any Medical Segmentation Decathlon task folder (``TaskXX_Name`` with ``dataset.json``, ``imagesTr``,
``labelsTr``, optionally ``imagesTs``) -> nnU-Net raw format.

This wraps nnU-Net's own MSD converter: images go through its ``split_4d_nifti`` (3D images are copied,
4D multi-modal ones split into ``_0000``, ``_0001``, ...) and ``dataset.json`` is rebuilt the same way
(``labels`` inverted to name -> value, ``modality`` -> ``channel_names``). Unlike nnU-Net's
``nnUNetv2_convert_MSD_dataset`` every case is validated first, outputs are written atomically, a rerun
resumes, ``imagesTs`` is optional, and ``tumour_only`` keeps only the tumour label (relabelled to 1): the one
label whose name contains "tumour", "tumor" or "cancer" (colon's only label is its tumour), or the value
given as ``tumour_label``. Case ids stay as in MSD (``pancreas_001``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

from sam3d_nnunet.atomic import write_image_atomic

from .common import (FILE_ENDING, ConversionError, Geometry, check_geometry, finish_dataset, label_image_like,
                     make_staging_folder, outputs_exist, prepare_label, prepare_target, read_sitk, run_cases)

TUMOUR_WORDS = ("tumour", "tumor", "cancer")


def load_msd_json(folder: str) -> dict:
    path = os.path.join(folder, "dataset.json")
    if not os.path.isfile(path):
        raise ConversionError(f"{path} missing: not an MSD task folder")
    try:
        with open(path) as f:
            js = json.load(f)
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read {path}: {e}") from None
    for key in ("labels", "modality"):
        if not isinstance(js.get(key), dict) or not js[key]:
            raise ConversionError(f"{path} has no '{key}' mapping")
    try:
        js["labels"] = {int(k): str(v) for k, v in js["labels"].items()}
        js["modality"] = {int(k): str(v) for k, v in js["modality"].items()}
    except ValueError:
        raise ConversionError(f"{path}: 'labels' and 'modality' keys must be integers") from None
    if sorted(js["labels"]) != list(range(len(js["labels"]))):
        raise ConversionError(f"{path}: labels must be 0, 1, 2, ... (got {sorted(js['labels'])})")
    return js


def find_tumour_label(labels: dict[int, str], override: int | None = None) -> tuple[int, str]:
    """(value, name) of the tumour label of an MSD task."""
    if override is not None:
        if int(override) not in labels or int(override) == 0:
            raise ConversionError(f"--tumour-label {override} is not a foreground label of this task: {labels}")
        return int(override), labels[int(override)]
    hits = [(v, n) for v, n in labels.items() if v != 0 and any(w in n.lower() for w in TUMOUR_WORDS)]
    if len(hits) != 1:
        what = "no label" if not hits else f"several labels ({hits})"
        raise ConversionError(f"{what} of {labels} name(s) a tumour ('tumour'/'tumor'/'cancer'); "
                              f"choose one with --tumour-label")
    return hits[0]


def _case_id(path: str) -> str:
    base = os.path.basename(path)
    if not base.endswith(FILE_ENDING):
        raise ConversionError(f"{path}: MSD images must be {FILE_ENDING} files")
    return base[: -len(FILE_ENDING)]


def _scan(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.endswith(FILE_ENDING) and not f.startswith((".", "_")))


def find_cases(folder: str, js: dict) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """([(case, image, label)] for training, [(case, image)] for imagesTs)."""
    training = []
    if isinstance(js.get("training"), list) and js["training"]:
        for entry in js["training"]:
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise ConversionError(f"{folder}/dataset.json: malformed 'training' entry {entry!r}")
            image = os.path.normpath(os.path.join(folder, entry["image"]))
            label = os.path.normpath(os.path.join(folder, entry["label"]))
            training.append((_case_id(image), image, label))
    else:
        for image in _scan(os.path.join(folder, "imagesTr")):
            training.append((_case_id(image), image, os.path.join(folder, "labelsTr", os.path.basename(image))))
    if not training:
        raise ConversionError(f"no training cases found in {folder}")
    seen = set()
    for case, image, label in training:
        if case in seen:
            raise ConversionError(f"case {case}: listed twice in {folder}/dataset.json")
        seen.add(case)
        if not os.path.isfile(image):
            raise ConversionError(f"case {case}: image file missing: {image}")
        if not os.path.isfile(label):
            raise ConversionError(f"case {case}: label file missing: {label}")
    test = [(_case_id(i), i) for i in _scan(os.path.join(folder, "imagesTs"))]
    return sorted(training), test


def _split_channels(case: str, image_path: str, image, out_folder: str, staging: str, num_channels: int) -> None:
    """Check the (already read) image, split it with nnU-Net's split_4d_nifti, move the channels into place."""
    from nnunetv2.dataset_conversion.convert_MSD_dataset import split_4d_nifti
    dim = image.GetDimension()
    if dim not in (3, 4):
        raise ConversionError(f"case {case}: {image_path} has {dim} dimensions, expected 3 or 4")
    channels = 1 if dim == 3 else image.GetSize()[3]
    if channels != num_channels:
        raise ConversionError(f"case {case}: {image_path} has {channels} channel(s), dataset.json's "
                              f"'modality' lists {num_channels}")
    case_staging = tempfile.mkdtemp(dir=staging)
    try:
        split_4d_nifti(image_path, case_staging)
        for c in range(channels):
            name = f"{case}_{c:04d}{FILE_ENDING}"
            os.replace(os.path.join(case_staging, name), os.path.join(out_folder, name))
    finally:
        shutil.rmtree(case_staging, ignore_errors=True)


def convert_case(case: str, image_path: str, label_path: str, target: str, staging: str, num_channels: int,
                 allowed: list[int], tumour_value: int | None) -> None:
    import SimpleITK as sitk
    label = read_sitk(case, label_path, "label")
    if label.GetDimension() != 3:
        raise ConversionError(f"case {case}: label {label_path} is not 3D")
    arr = prepare_label(case, sitk.GetArrayViewFromImage(label), allowed, label_path, tumour_value)
    image = read_sitk(case, image_path, "image")
    check_geometry(case, Geometry.of(image), Geometry.of(label), image_path, label_path)
    out_label = label_image_like(arr, image)
    del label
    _split_channels(case, image_path, image, os.path.join(target, "imagesTr"), staging, num_channels)
    write_image_atomic(out_label, os.path.join(target, "labelsTr", f"{case}{FILE_ENDING}"), staging)


def convert_test_case(case: str, image_path: str, target: str, staging: str, num_channels: int) -> None:
    image = read_sitk(case, image_path, "image")
    _split_channels(case, image_path, image, os.path.join(target, "imagesTs"), staging, num_channels)


def default_name(folder: str, js: dict) -> str:
    m = re.fullmatch(r"Task\d+_(.+)", os.path.basename(os.path.normpath(folder)))
    raw = m.group(1) if m else (js.get("name") or os.path.basename(os.path.normpath(folder)))
    return re.sub(r"[^A-Za-z0-9_\-]", "", str(raw)) or "MSD"


def convert_msd(source: str, dataset_id: int, name: str | None = None, tumour_only: bool = False,
                tumour_label: int | None = None, num_processes: int = 1) -> str:
    """Convert an MSD task folder; returns the nnU-Net raw dataset folder."""
    js = load_msd_json(source)
    tumour = find_tumour_label(js["labels"], tumour_label) if tumour_only else None
    training, test = find_cases(source, js)
    num_channels = len(js["modality"])
    name = name or (default_name(source, js) + ("Tumour" if tumour_only else ""))
    settings = {"converter": "msd", "tumour_only": bool(tumour_only),
                "tumour_label": tumour[0] if tumour else None}
    target = prepare_target(dataset_id, name, settings)
    allowed = sorted(js["labels"])
    staging = make_staging_folder(target)
    try:
        jobs = [(case, img, lbl, target, staging, num_channels, allowed, tumour[0] if tumour else None)
                for case, img, lbl in training]
        run_cases(convert_case, jobs, lambda j: outputs_exist(target, j[0], num_channels),
                  f"MSD {os.path.basename(os.path.normpath(source))} train", num_processes)
        if test:
            os.makedirs(os.path.join(target, "imagesTs"), exist_ok=True)
            test_jobs = [(case, img, target, staging, num_channels) for case, img in test]
            run_cases(convert_test_case, test_jobs,
                      lambda j: all(os.path.isfile(os.path.join(target, "imagesTs", f"{j[0]}_{c:04d}{FILE_ENDING}"))
                                    for c in range(num_channels)),
                      f"MSD {os.path.basename(os.path.normpath(source))} test", num_processes)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if tumour:
        labels = {"background": 0, tumour[1]: 1}
    else:
        labels = {"background": 0, **{n: v for v, n in sorted(js["labels"].items()) if v != 0}}
    extra = {k: js[k] for k in ("description", "reference", "release", "tensorImageSize") if k in js}
    return finish_dataset(target, [c[0] for c in training], {str(k): v for k, v in js["modality"].items()},
                          labels, settings, dataset_name=js.get("name", os.path.basename(target)),
                          license=js.get("licence", js.get("license", "see the MSD task's dataset.json")),
                          converted_by="sam3d-nnunet convert msd", **extra)
