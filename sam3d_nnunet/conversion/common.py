"""Shared machinery of the dataset converters.

Every converter writes nnU-Net v2's raw format, ``$nnUNet_raw/DatasetXXX_Name/{imagesTr,labelsTr}`` plus a
``dataset.json`` written by nnU-Net's ``generate_dataset_json``, and follows the same rules:

* every case is validated before anything is written for it (readable image, label file present, label values
  in the dataset's label set, image/label geometry equal within :data:`GEOMETRY_TOLERANCE`); a failure raises
  :class:`ConversionError` whose message names the case and the file;
* every output file is written under a temporary name in a hidden staging folder inside the target dataset
  folder (same file system) and moved to its final name with ``os.replace`` (:mod:`sam3d_nnunet.atomic`), so
  an interrupted conversion never leaves a partial file under a final name, nor a temporary one where nnU-Net
  lists the cases;
* a case whose output files all exist is skipped, so rerunning the same command resumes an interrupted
  conversion; the conversion settings are stored in ``.sam3d_conversion.json`` in the dataset folder and a
  rerun with different settings (say with and without ``--tumour-only``) into the same folder is refused;
* labels are always rewritten as unsigned integers carrying the IMAGE's geometry, so that nnU-Net sees
  exactly equal geometry even where the source label header differed from the image's within the tolerance.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from sam3d_nnunet.atomic import save_json_atomic

FILE_ENDING = ".nii.gz"
SETTINGS_FILE = ".sam3d_conversion.json"
STAGING_PREFIX = ".partial-"

#: image/label geometry tolerance: spacing relative, origin in mm, direction cosines absolute
GEOMETRY_TOLERANCE = {"spacing_rtol": 1e-4, "origin_atol_mm": 1e-3, "direction_atol": 1e-4}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


class ConversionError(RuntimeError):
    """A source case or file that cannot be converted; the message names the case and/or file."""


# --------------------------------------------------------------------------------------------- paths
def env_folder(variable: str) -> str:
    """An nnU-Net path variable, read when called (not at import time)."""
    value = os.environ.get(variable)
    if not value:
        raise ConversionError(f"the environment variable {variable} is not set; nnU-Net needs it "
                              f"(see nnU-Net's documentation/setting_up_paths.md)")
    return value


def check_dataset_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ConversionError(f"invalid dataset name {name!r}: use letters, digits, '_' and '-' only")
    return name


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= int(dataset_id) <= 999:
        raise ConversionError(f"dataset id must lie in 1..999, got {dataset_id}")
    return f"Dataset{int(dataset_id):03d}_{check_dataset_name(name)}"


# ---------------------------------------------------------------------------------- staging folders
def make_staging_folder(target: str) -> str:
    """A hidden staging folder inside `target`; stale ones left by dead processes are removed first."""
    for entry in os.listdir(target):
        m = re.fullmatch(re.escape(STAGING_PREFIX) + r"(\d+)-\w+", entry)
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(os.path.join(target, entry), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=target)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours
        return True
    return True


# ------------------------------------------------------------------------------------------ geometry
@dataclass(frozen=True)
class Geometry:
    size: tuple            # (x, y, z), SimpleITK order
    spacing: tuple
    origin: tuple
    direction: tuple       # 9 numbers, row-major

    @classmethod
    def of(cls, image) -> "Geometry":
        """Geometry of a SimpleITK image; the spatial (first three) axes of a 4D image."""
        dim = image.GetDimension()
        d = np.asarray(image.GetDirection(), dtype=float).reshape(dim, dim)[:3, :3]
        return cls(tuple(image.GetSize()[:3]), tuple(image.GetSpacing()[:3]), tuple(image.GetOrigin()[:3]),
                   tuple(d.ravel()))


def check_geometry(case: str, image: Geometry, label: Geometry, image_path: str, label_path: str) -> None:
    tol = GEOMETRY_TOLERANCE
    problems = []
    if tuple(image.size) != tuple(label.size):
        problems.append(f"size {image.size} vs {label.size}")
    else:
        s_i, s_l = np.asarray(image.spacing), np.asarray(label.spacing)
        if not np.all(np.abs(s_i - s_l) <= tol["spacing_rtol"] * np.maximum(np.abs(s_i), np.abs(s_l))):
            problems.append(f"spacing {image.spacing} vs {label.spacing}")
        if not np.all(np.abs(np.subtract(image.origin, label.origin)) <= tol["origin_atol_mm"]):
            problems.append(f"origin {image.origin} vs {label.origin}")
        if not np.all(np.abs(np.subtract(image.direction, label.direction)) <= tol["direction_atol"]):
            problems.append(f"direction {image.direction} vs {label.direction}")
    if problems:
        raise ConversionError(f"case {case}: image/label geometry mismatch ({'; '.join(problems)}) "
                              f"between {image_path} and {label_path} (image vs label)")


# ------------------------------------------------------------------------------------------ reading
def check_nifti_complete(case: str, path: str, what: str) -> None:
    """Refuse a truncated or corrupt NIfTI file.

    SimpleITK (2.5) reads a truncated ``.nii.gz`` without complaint, zero-filling the missing voxels, so the
    gzip stream is decompressed to its end (which checks its CRC) and its length compared with the header's.
    """
    lower = path.lower()
    if not lower.endswith((".nii", ".nii.gz")):
        return
    import nibabel as nib
    try:
        header = nib.load(path).header  # lazy: reads the header only
        expected = int(header.get_data_offset()) + \
            int(np.prod(header.get_data_shape(), dtype=np.int64)) * header.get_data_dtype().itemsize
        if lower.endswith(".gz"):
            size = 0
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    size += len(chunk)
        else:
            size = os.path.getsize(path)
    except Exception as e:  # nibabel/gzip/zlib raise many kinds
        raise ConversionError(f"case {case}: cannot read {what} {path}: {type(e).__name__}: {e}") from None
    if size < expected:
        raise ConversionError(f"case {case}: cannot read {what} {path}: truncated ({size} of {expected} bytes)")


def read_sitk(case: str, path: str, what: str):
    """Read a whole image with SimpleITK, after checking that a NIfTI file is complete."""
    import SimpleITK as sitk
    from sam3d_nnunet.validation import check_image_file, check_sitk_image
    if not os.path.isfile(path):
        raise ConversionError(f"case {case}: {what} file missing: {path}")
    check_image_file(path, error=ConversionError, context=f"case {case}: ", what=what)  # complete, spacing > 0
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as e:
        raise ConversionError(f"case {case}: cannot read {what} {path}: {_error_text(e)}") from None
    check_sitk_image(image, path, error=ConversionError, context=f"case {case}: ", require_3d=False,
                     check_values=what == "image")  # finite intensities, spacing > 0
    return image


def _error_text(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    # SimpleITK puts the useful text on the last lines
    return " ".join(lines[-2:]) if lines else type(e).__name__


# ------------------------------------------------------------------------------------------- labels
def prepare_label(case: str, arr: np.ndarray, allowed: Iterable[int], path: str,
                  tumour_value: int | None = None) -> np.ndarray:
    """Validate label values and return an unsigned-integer array.

    `allowed`: the dataset's label values. With `tumour_value`, only that label is kept, as 1, everything else 0.
    """
    allowed = sorted(int(v) for v in allowed)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ConversionError(f"case {case}: label file {path} holds NaN/inf values")
        rounded = np.round(arr)
        if not np.array_equal(rounded, arr):
            raise ConversionError(f"case {case}: label file {path} holds non-integer values")
        arr = rounded
    elif arr.dtype.kind not in "iub":
        raise ConversionError(f"case {case}: label file {path} has unsupported pixel type {arr.dtype}")
    values = np.unique(arr)
    unexpected = [v.item() for v in values if int(v) not in allowed]
    if unexpected:
        shown = [int(v) for v in unexpected[:10]]
        raise ConversionError(f"case {case}: unexpected label value(s) {shown} in {path}; "
                              f"the dataset's labels are {allowed}")
    if tumour_value is not None:
        return (arr == tumour_value).astype(np.uint8)
    return arr.astype(np.uint8 if max(allowed) < 256 else np.uint16)


def label_image_like(arr_zyx: np.ndarray, reference):
    """A SimpleITK label image from a (z, y, x) array carrying the geometry of the 3D `reference` image."""
    import SimpleITK as sitk
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr_zyx))
    g = Geometry.of(reference)
    out.SetSpacing(g.spacing)
    out.SetOrigin(g.origin)
    out.SetDirection(g.direction)
    return out


# ------------------------------------------------------------------------------------ target folder
def prepare_target(dataset_id: int, name: str, settings: dict) -> str:
    """Create (or reopen, for a rerun) the raw dataset folder; refuse id clashes and changed settings."""
    from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets
    raw = env_folder("nnUNet_raw")
    target_name = dataset_folder_name(dataset_id, name)
    others = [str(c) for c in find_candidate_datasets(int(dataset_id)) if str(c) != target_name]
    if others:
        raise ConversionError(f"dataset id {int(dataset_id)} is already used by {others} (nnUNet_raw, "
                              f"nnUNet_preprocessed or nnUNet_results); choose another -d")
    target = os.path.join(raw, target_name)
    settings_path = os.path.join(target, SETTINGS_FILE)
    if os.path.isdir(target):
        if os.path.isfile(settings_path):
            with open(settings_path) as f:
                previous = json.load(f)
            if previous != settings:
                raise ConversionError(
                    f"{target} was converted with different settings ({previous}, now {settings}); "
                    f"delete it or use another dataset id/name")
        elif os.listdir(target):
            raise ConversionError(f"{target} exists and was not written by this converter; "
                                  f"delete it or use another dataset id/name")
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(target, sub), exist_ok=True)
    if not os.path.isfile(settings_path):
        save_json_atomic(settings, settings_path)
    return target


def run_cases(worker: Callable, jobs: Sequence[tuple], is_done: Callable[[tuple], bool], desc: str,
              num_processes: int = 1) -> int:
    """Run `worker(*job)` for every job not yet done, with a tqdm bar; returns the number converted."""
    from tqdm import tqdm
    todo = [j for j in jobs if not is_done(j)]
    skipped = len(jobs) - len(todo)
    if skipped:
        print(f"{desc}: {skipped} of {len(jobs)} cases already converted, skipped")
    if not todo:
        return 0
    if num_processes <= 1 or len(todo) == 1:
        for job in tqdm(todo, desc=desc, unit="case"):
            worker(*job)
    else:
        # concurrent.futures rather than multiprocessing.Pool: a worker killed from outside (say by the OOM
        # killer) raises BrokenProcessPool here instead of hanging the conversion forever
        import multiprocessing
        from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
        executor = ProcessPoolExecutor(min(num_processes, len(todo)), mp_context=multiprocessing.get_context("spawn"))
        try:
            pending = {executor.submit(worker, *job) for job in todo}
            with tqdm(total=len(todo), desc=desc, unit="case") as bar:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in done:
                        future.result()  # re-raises a worker's error (ConversionError names the case)
                        bar.update(1)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
    return len(todo)


def finish_dataset(target: str, case_ids: Sequence[str], channel_names: dict, labels: dict, settings: dict,
                   **dataset_json_extra) -> str:
    """Check the outputs and write dataset.json (nnU-Net's generate_dataset_json, moved into place)."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    label_dir = os.path.join(target, "labelsTr")
    present = {f[: -len(FILE_ENDING)] for f in os.listdir(label_dir) if f.endswith(FILE_ENDING)}
    extra = sorted(present - set(case_ids))
    if extra:
        raise ConversionError(f"{label_dir} holds cases that are not in the source: {extra[:10]}; "
                              f"delete them or convert into a new dataset id")
    missing = sorted(set(case_ids) - present)
    if missing:  # cannot happen unless files were removed during the run
        raise ConversionError(f"cases {missing[:10]} have no label in {label_dir}")
    staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=target)
    try:
        generate_dataset_json(staging, channel_names=channel_names, labels=labels,
                              num_training_cases=len(case_ids), file_ending=FILE_ENDING,
                              sam3d_conversion=settings, **dataset_json_extra)
        os.replace(os.path.join(staging, "dataset.json"), os.path.join(target, "dataset.json"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def outputs_exist(target: str, case_id: str, num_channels: int = 1) -> bool:
    files = [os.path.join(target, "imagesTr", f"{case_id}_{c:04d}{FILE_ENDING}") for c in range(num_channels)]
    files.append(os.path.join(target, "labelsTr", f"{case_id}{FILE_ENDING}"))
    return all(os.path.isfile(f) for f in files)
