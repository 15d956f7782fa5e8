"""Dice (nnU-Net's) and normalised surface Dice of a folder of predictions against a folder of references.

What comes from nnU-Net (nnunetv2 2.8.1, ``nnunetv2.evaluation.evaluate_predictions``), unchanged:
labels vs regions and the ignore label (its ``LabelManager``, built from dataset.json and, when given, the
plans), the masks (``region_or_label_to_mask``), TP/FP/FN/TN (``compute_tp_fp_fn_tn``), Dice/IoU and their
empty-case convention (reference and prediction both empty -> Dice = IoU = NaN, left out of the means by
``np.nanmean``), the means (per class ``np.nanmean`` over cases; ``foreground_mean`` = ``np.mean`` of the
class means), the JSON clean-up (``recursive_fix_for_json_export``) and the writer (``save_summary_json``,
so ``load_summary_json`` reads our file back). nnU-Net's ``compute_metrics_on_folder`` itself cannot be
called because its per-case function is fixed; its aggregation (a dozen lines) is mirrored here.

Added: ``NSD@<t>mm`` for every tolerance, per class (or region) and case, computed on the images' real
spacing with ``surface-distance`` (see :mod:`sam3d_nnunet.evaluation.surface` for the NumPy 2 shim and the
empty-mask convention: both empty -> 1.0, one empty -> 0.0); voxels of the reference's ignore label are
removed from the prediction before the NSD, as they are left out of TP/FP/FN for the Dice. Plus checks
that name the file: missing prediction, unreadable image, geometry mismatch, label values that dataset.json
does not declare.

Images are read with SimpleITK (so any format it reads: .nii.gz, .nrrd, .mha, ...). Spacing: SimpleITK's
``GetSpacing()`` is (x, y, z) while ``GetArrayFromImage`` gives (z, y, x) arrays, so the NSD uses
``GetSpacing()[::-1]`` (nnU-Net's own readers report ``spacing`` already in that array order).
"""
from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

import numpy as np
import SimpleITK as sitk

from sam3d_nnunet.atomic import atomic_path
from sam3d_nnunet.evaluation.surface import nsd_at_tolerances, nsd_key

LabelOrRegion = Union[int, tuple]
DEFAULT_TOLERANCES_MM = (1.0, 2.0, 5.0)
DEFAULT_GEOMETRY_TOLERANCE = 1e-3


class EvaluationError(Exception):
    """A bad input (names the file); the command prints it as ``sam3d-nnunet evaluate: error: ...``."""


# ------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class Geometry:
    """An image's grid in SimpleITK's (x, y, z) order."""

    size: tuple
    spacing: tuple
    origin: tuple
    direction: tuple

    @property
    def array_spacing(self) -> tuple:
        """Spacing in the order of the axes of ``sitk.GetArrayFromImage`` (z, y, x)."""
        return tuple(reversed(self.spacing))


def _sitk_message(error: Exception) -> str:
    text = str(error)
    if "sitk::ERROR:" in text:
        text = text.split("sitk::ERROR:", 1)[1]
    return " ".join(text.split())


def read_segmentation(path: str) -> tuple[np.ndarray, Geometry]:
    """A label map as a (z, y, x) (or (y, x)) array and its geometry; EvaluationError if unreadable."""
    if not os.path.isfile(path):
        raise EvaluationError(f"file not found: {path}")
    from sam3d_nnunet.validation import check_image_file, check_spacing
    check_image_file(path, error=EvaluationError, what="segmentation")  # ITK zero-fills a truncated .nii.gz
    try:
        image = sitk.ReadImage(path)
        array = sitk.GetArrayFromImage(image)
    except (RuntimeError, OSError, ValueError, MemoryError) as error:
        raise EvaluationError(f"cannot read {path} (corrupt or not an image): {_sitk_message(error)}") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise EvaluationError(f"{path}: a segmentation must have one component per voxel, this image has "
                              f"{image.GetNumberOfComponentsPerPixel()}")
    if image.GetDimension() not in (2, 3):
        raise EvaluationError(f"{path}: only 2D and 3D segmentations are supported, this image is "
                              f"{image.GetDimension()}D")
    check_spacing(image.GetSpacing(), path, error=EvaluationError)  # the NSD measures in mm
    geometry = Geometry(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                        tuple(image.GetDirection()))
    return array, geometry


def check_same_geometry(ref: Geometry, pred: Geometry, reference_file: str, prediction_file: str,
                        tolerance: float = DEFAULT_GEOMETRY_TOLERANCE) -> None:
    """Size must match exactly; spacing to ``tolerance`` relative, origin to ``tolerance`` x the voxel
    spacing (per axis), direction cosines to ``tolerance`` absolute. Raises EvaluationError otherwise."""
    def fmt(values):
        return "(" + ", ".join(f"{v:g}" for v in values) + ")"

    problem = None
    if ref.size != pred.size:
        problem = f"size (x, y, z) {fmt(ref.size)} vs {fmt(pred.size)}"
    elif any(abs(a - b) > tolerance * max(abs(a), abs(b)) for a, b in zip(ref.spacing, pred.spacing)):
        problem = f"spacing (x, y, z) {fmt(ref.spacing)} vs {fmt(pred.spacing)}"
    elif any(abs(a - b) > tolerance * s for a, b, s in zip(ref.origin, pred.origin, ref.spacing)):
        problem = f"origin (x, y, z) {fmt(ref.origin)} vs {fmt(pred.origin)}"
    elif any(abs(a - b) > tolerance for a, b in zip(ref.direction, pred.direction)):
        problem = f"direction {fmt(ref.direction)} vs {fmt(pred.direction)}"
    if problem:
        raise EvaluationError(f"geometry mismatch between reference {reference_file} and prediction "
                              f"{prediction_file}: {problem}")


def label_values(array: np.ndarray) -> np.ndarray:
    """The distinct values of a label map (bincount for small non-negative integers, else np.unique)."""
    if array.size == 0:
        return np.zeros(0, dtype=array.dtype)
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        lo, hi = int(array.min()), int(array.max())
        if lo >= 0 and hi < 1 << 16:
            return np.flatnonzero(np.bincount(array.ravel(), minlength=hi + 1))
    return np.unique(array)


def _check_labels(array: np.ndarray, path: str, allowed: Sequence[int] | None, dataset_json_name: str) -> None:
    if allowed is None:
        return
    values = label_values(array)
    bad = [v for v in values.tolist() if v not in set(allowed)]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
        raise EvaluationError(f"{path}: label value(s) {shown} not declared in {dataset_json_name} "
                              f"(allowed: {', '.join(str(a) for a in sorted(allowed))})")


# ------------------------------------------------------------------------------------------ per case
def compute_case_metrics(reference_file: str, prediction_file: str, labels_or_regions: Sequence[LabelOrRegion],
                         tolerances_mm: Iterable[float] = DEFAULT_TOLERANCES_MM, ignore_label: int | None = None,
                         allowed_labels: Sequence[int] | None = None,
                         geometry_tolerance: float = DEFAULT_GEOMETRY_TOLERANCE, nsd_both_empty: float = 1.0,
                         dataset_json_name: str = "dataset.json") -> dict:
    """nnU-Net's ``compute_metrics`` result for one case, each class's metrics extended with ``NSD@<t>mm``.

    ``{'reference_file', 'prediction_file', 'metrics': {label_or_region: {'Dice', 'IoU', 'FP', 'TP', 'FN',
    'TN', 'n_pred', 'n_ref', 'NSD@1mm', ...}}}``; Dice/IoU exactly as nnU-Net computes them.
    """
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn, region_or_label_to_mask

    tolerances = [float(t) for t in tolerances_mm]
    seg_ref, geo_ref = read_segmentation(reference_file)
    seg_pred, geo_pred = read_segmentation(prediction_file)
    check_same_geometry(geo_ref, geo_pred, reference_file, prediction_file, geometry_tolerance)
    _check_labels(seg_ref, reference_file, allowed_labels, dataset_json_name)
    _check_labels(seg_pred, prediction_file, allowed_labels, dataset_json_name)

    ignore_mask = seg_ref == ignore_label if ignore_label is not None else None
    results = {"reference_file": reference_file, "prediction_file": prediction_file, "metrics": {}}
    for r in labels_or_regions:
        m = results["metrics"][r] = {}
        mask_ref = region_or_label_to_mask(seg_ref, r)
        mask_pred = region_or_label_to_mask(seg_pred, r)
        tp, fp, fn, tn = compute_tp_fp_fn_tn(mask_ref, mask_pred, ignore_mask)
        if tp + fp + fn == 0:
            m["Dice"] = np.nan
            m["IoU"] = np.nan
        else:
            m["Dice"] = 2 * tp / (2 * tp + fp + fn)
            m["IoU"] = tp / (tp + fp + fn)
        m["FP"], m["TP"], m["FN"], m["TN"] = fp, tp, fn, tn
        m["n_pred"] = fp + tp
        m["n_ref"] = fn + tp
        if ignore_mask is not None:
            mask_pred = mask_pred & ~ignore_mask
        values = nsd_at_tolerances(mask_ref, mask_pred, geo_ref.array_spacing, tolerances, nsd_both_empty)
        for t in tolerances:
            m[nsd_key(t)] = values[t]
    return results


def _case_worker(job: tuple) -> dict:
    return compute_case_metrics(*job)


# ------------------------------------------------------------------------------------------ aggregation
def aggregate(results: list[dict], labels_or_regions: Sequence[LabelOrRegion]) -> dict:
    """nnU-Net's summary: ``{'metric_per_case', 'mean', 'foreground_mean'}`` (as compute_metrics_on_folder)."""
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export

    metric_list = list(results[0]["metrics"][labels_or_regions[0]].keys())
    means = {}
    with warnings.catch_warnings():  # np.nanmean of all-NaN columns: NaN, as in nnU-Net, without the warning
        warnings.simplefilter("ignore", RuntimeWarning)
        for r in labels_or_regions:
            means[r] = {m: np.nanmean([case["metrics"][r][m] for case in results]) for m in metric_list}
        foreground_mean = {m: np.mean([means[k][m] for k in means if not (k == 0 or k == "0")])
                           for m in metric_list}
    for case in results:
        recursive_fix_for_json_export(case)
    recursive_fix_for_json_export(means)
    recursive_fix_for_json_export(foreground_mean)
    return {"metric_per_case": results, "mean": means, "foreground_mean": foreground_mean}


# ------------------------------------------------------------------------------------------ output
def case_id(reference_file: str, file_ending: str) -> str:
    name = os.path.basename(reference_file)
    return name[: -len(file_ending)] if file_ending and name.endswith(file_ending) else name


def csv_columns(tolerances_mm: Iterable[float]) -> list[str]:
    return ["case", "class", "class_name", "Dice", "IoU", *[nsd_key(t) for t in tolerances_mm], "n_ref", "n_pred"]


def write_summary_csv(result: dict, csv_file: str, tolerances_mm: Iterable[float], file_ending: str = ".nii.gz",
                      class_names: dict | None = None) -> None:
    """One row per case and class (label or region): case, class, class_name, Dice, IoU, NSD@..., n_ref,
    n_pred; ``class`` is nnU-Net's key (``1`` or ``(1, 2)``), NaN written as ``nan``. Atomic."""
    from nnunetv2.evaluation.evaluate_predictions import label_or_region_to_key

    columns = csv_columns(tolerances_mm)
    class_names = class_names or {}

    with atomic_path(csv_file) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for case in result["metric_per_case"]:
            for r, metrics in case["metrics"].items():
                key = label_or_region_to_key(r)
                row = {"case": case_id(case["reference_file"], file_ending), "class": key,
                       "class_name": class_names.get(key, ""), **metrics}
                writer.writerow([row.get(c, "") for c in columns])


def write_summary_json(result: dict, output_file: str) -> None:
    """nnU-Net's ``save_summary_json`` (tuple keys as strings, sorted keys), written atomically."""
    from nnunetv2.evaluation.evaluate_predictions import save_summary_json

    with atomic_path(output_file) as tmp:
        save_summary_json(result, tmp)


# ------------------------------------------------------------------------------------------ folders
def _load_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise EvaluationError(f"{what} not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise EvaluationError(f"cannot read {what} {path}: {error}") from None


def load_label_manager(dataset_json: str | dict, plans: str | dict | None = None):
    """(dataset_json dict, nnU-Net LabelManager) exactly as nnU-Net builds it (the plans pick the class)."""
    name = dataset_json if isinstance(dataset_json, str) else "dataset.json"
    dj = _load_json(dataset_json, "dataset.json") if isinstance(dataset_json, str) else dataset_json
    for key in ("labels", "file_ending"):
        if key not in dj:
            raise EvaluationError(f"{name}: no '{key}' entry")
    try:
        if plans is None:
            from nnunetv2.utilities.label_handling.label_handling import LabelManager
            lm = LabelManager(label_dict=dj["labels"], regions_class_order=dj.get("regions_class_order"))
        else:
            from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
            plans_dict = _load_json(plans, "plans file") if isinstance(plans, str) else plans
            lm = PlansManager(plans_dict).get_label_manager(dj)
    except EvaluationError:
        raise
    except Exception as error:  # nnU-Net validates with assert / RuntimeError / KeyError
        raise EvaluationError(f"{name}: invalid labels for nnU-Net: {error!r}") from None
    return dj, lm


def _class_names(dj: dict) -> dict:
    from nnunetv2.evaluation.evaluate_predictions import label_or_region_to_key

    names = {}
    for name, value in dj["labels"].items():
        key = tuple(value) if isinstance(value, (list, tuple)) else value
        if isinstance(key, tuple) and len(key) == 1:
            names.setdefault(label_or_region_to_key(key), name)
            key = key[0]
        names.setdefault(label_or_region_to_key(key), name)
    return names


def _list_files(folder: str, file_ending: str, what: str) -> list[str]:
    if not os.path.isdir(folder):
        raise EvaluationError(f"{what} folder not found: {folder}")
    return sorted(f for f in os.listdir(folder)
                  if f.endswith(file_ending) and not f.startswith(".") and os.path.isfile(os.path.join(folder, f)))


def _evaluation_targets(dataset_json: str | dict, plans: str | dict | None) -> tuple:
    """(dataset_json dict, label manager, labels or regions to score, label values allowed in the files)."""
    dj, lm = load_label_manager(dataset_json, plans)
    labels_or_regions = [tuple(int(i) for i in r) if isinstance(r, (tuple, list)) else int(r)
                         for r in (lm.foreground_regions if lm.has_regions else lm.foreground_labels)]
    if not labels_or_regions:
        name = dataset_json if isinstance(dataset_json, str) else "dataset.json"
        raise EvaluationError(f"{name}: no foreground label to evaluate")
    allowed = [int(v) for v in lm.all_labels] + ([int(lm.ignore_label)] if lm.ignore_label is not None else [])
    return dj, lm, labels_or_regions, allowed


def evaluate_file_pairs(pairs: Sequence[tuple], dataset_json: str | dict, plans: str | dict | None = None,
                        tolerances_mm: Iterable[float] = DEFAULT_TOLERANCES_MM, num_processes: int | None = None,
                        progress: bool = True, geometry_tolerance: float = DEFAULT_GEOMETRY_TOLERANCE,
                        nsd_both_empty: float = 1.0) -> tuple[list[dict], list[LabelOrRegion]]:
    """:func:`compute_case_metrics` of every (reference file, prediction file) pair, in worker processes
    (``num_processes``: default ``$nnUNet_def_n_proc``; <= 1 runs in this process). Returns (per-case results in
    the order of ``pairs``, the labels or regions evaluated) for :func:`aggregate`."""
    dj_name = dataset_json if isinstance(dataset_json, str) else "dataset.json"
    _, lm, labels_or_regions, allowed = _evaluation_targets(dataset_json, plans)
    tolerances = sorted({float(t) for t in tolerances_mm})
    jobs = [(ref, pred, labels_or_regions, tolerances, lm.ignore_label, allowed, geometry_tolerance, nsd_both_empty,
             dj_name) for ref, pred in pairs]
    if num_processes is None:
        from nnunetv2.configuration import default_num_processes
        num_processes = default_num_processes
    num_processes = max(1, min(int(num_processes), len(jobs)))

    from tqdm import tqdm
    bar = dict(total=len(jobs), desc="evaluate", unit="case", disable=not progress)
    if num_processes == 1:
        results = [_case_worker(job) for job in tqdm(jobs, **bar)]
    else:
        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            results = list(tqdm(pool.imap(_case_worker, jobs), **bar))
    return results, labels_or_regions


def evaluate_folders(folder_ref: str, folder_pred: str, dataset_json: str | dict, plans: str | dict | None = None,
                     output_file: str | None = None, tolerances_mm: Iterable[float] = DEFAULT_TOLERANCES_MM,
                     num_processes: int | None = None, chill: bool = False, csv_file: str | None = None,
                     progress: bool = True, geometry_tolerance: float = DEFAULT_GEOMETRY_TOLERANCE,
                     nsd_both_empty: float = 1.0) -> dict:
    """Evaluate every reference case of ``folder_ref`` against the same file name in ``folder_pred``.

    Returns nnU-Net's summary dict (``metric_per_case``, ``mean``, ``foreground_mean``; keys are labels or
    region tuples) whose metrics include ``NSD@<t>mm``. With ``output_file`` (must end in .json) it is
    written in nnU-Net's summary.json layout, and a per-case CSV next to it (``csv_file``, default the
    output's name with .csv). ``chill``: evaluate only the reference cases that have a prediction (and ignore
    predictions without a reference) instead of raising. ``num_processes``: default ``$nnUNet_def_n_proc``
    (nnU-Net's default_num_processes); <= 1 runs in this process.
    """
    tolerances = sorted({float(t) for t in tolerances_mm})
    if not tolerances or any(not (math.isfinite(t) and t >= 0) for t in tolerances):
        raise EvaluationError(f"NSD tolerances must be finite numbers >= 0 mm, got {list(tolerances_mm)}")
    if output_file is not None and not output_file.endswith(".json"):
        raise EvaluationError(f"output file must end with .json: {output_file}")
    dj = _evaluation_targets(dataset_json, plans)[0]
    file_ending = dj["file_ending"]

    files_ref = _list_files(folder_ref, file_ending, "reference")
    files_pred = set(_list_files(folder_pred, file_ending, "prediction"))
    if not files_ref:
        raise EvaluationError(f"no reference segmentation ending in {file_ending} in {folder_ref}")
    missing = [f for f in files_ref if f not in files_pred]
    extra = sorted(files_pred.difference(files_ref))
    if missing and not chill:
        shown = ", ".join(os.path.join(folder_pred, f) for f in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise EvaluationError(f"prediction missing for {len(missing)} of {len(files_ref)} reference case(s): "
                              f"{shown} (--chill evaluates only the cases present)")
    if extra and not chill:
        shown = ", ".join(os.path.join(folder_pred, f) for f in extra[:5]) + (" ..." if len(extra) > 5 else "")
        raise EvaluationError(f"{len(extra)} prediction(s) without a reference in {folder_ref}: {shown}")
    cases = [f for f in files_ref if f in files_pred]
    if chill and (missing or extra):
        print(f"sam3d-nnunet evaluate: note: --chill: {len(missing)} reference case(s) without a prediction and "
              f"{len(extra)} prediction(s) without a reference are skipped", file=sys.stderr)
    if not cases:
        raise EvaluationError(f"none of the {len(files_ref)} reference case(s) has a prediction in {folder_pred}")

    results, labels_or_regions = evaluate_file_pairs(
        [(os.path.join(folder_ref, f), os.path.join(folder_pred, f)) for f in cases], dataset_json, plans,
        tolerances, num_processes, progress, geometry_tolerance, nsd_both_empty)
    result = aggregate(results, labels_or_regions)
    if output_file is not None:
        if csv_file is None:
            csv_file = output_file[: -len(".json")] + ".csv"
        try:
            write_summary_json(result, output_file)
            write_summary_csv(result, csv_file, tolerances, file_ending, _class_names(dj))
        except OSError as error:
            raise EvaluationError(f"cannot write {error.filename or output_file}: {error.strerror or error}") \
                from None
    return result
