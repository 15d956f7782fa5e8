"""Shared input checks: image files, raw datasets, names that become paths, and trained-model checkpoints.

Every check raises an exception whose message names the file and the problem. The exception class is the
caller's (``error=``), so each command keeps its own error type and its one-line ``error:`` output
(``ConversionError`` in ``convert``, ``ImageReadError`` in ``predict``, ``EvaluationError`` in ``evaluate``);
the default is :class:`InputFileError`.

Images (``check_image_file``, ``read_image_checked``), before and after SimpleITK reads them:

* the file exists, is a regular file and is not empty;
* a ``.gz`` stream is decompressed to its end (which checks its CRC): SimpleITK 2.5 reads a TRUNCATED
  ``.nii.gz`` without complaint, filling the missing voxels with zeros;
* a NIfTI file (``.nii``, ``.nii.gz``; NIfTI-1 and NIfTI-2, either byte order) holds as many bytes as its
  header promises (``vox_offset`` + voxels x bytes per voxel), its spatial ``pixdim`` are finite and
  positive (ITK silently reads a zero, NaN or infinite pixdim as 1 mm and a negative one as a flipped axis),
  and its float voxels are finite, counted in the raw bytes: SimpleITK 2.5's NIfTI reader silently replaces
  NaN and infinity (a file written by SimpleITK with one NaN voxel even reads back as all zeros), so a check
  after reading cannot see them;
* a MetaImage header (``.mha``, ``.mhd``) has finite, positive ``ElementSpacing`` (ITK silently reads a negative
  spacing as 1 mm);
* after reading: the spacing SimpleITK reports is finite and positive, the image is 3D (``require_3d``), and
  the intensities are finite (no NaN, no infinity) for floating-point images.

Raw datasets (``validate_raw_dataset``, run by ``sam3d-nnunet plan_and_preprocess`` before nnU-Net's
fingerprint): ``dataset.json`` has ``channel_names``, ``labels`` and a plain ``file_ending``; every case id is a
plain name; every case has all its channel files and its label; every image and label passes the checks
above; the channels and the label of a case share one geometry (size exactly; spacing, origin and direction
within :data:`GEOMETRY_TOLERANCE`); label values are whole numbers declared in ``dataset.json``. An EMPTY label
(background only) is valid: training uses it as a "no object" sample (``sam3d_nnunet.prompts.simulation.
sample_training_prompt``), evaluation scores it with nnU-Net's empty-case convention.

Checkpoints (``load_checkpoint_safely``, ``check_model_checkpoints``): a trained nnU-Net checkpoint
(``fold_X/checkpoint_final.pth``) is read with ``torch.load(weights_only=True)`` and an allow-list of the few
non-tensor globals nnU-Net checkpoints hold (numpy scalars, dtypes and arrays, see
:data:`CHECKPOINT_SAFE_GLOBALS`). A file that needs anything else (which is how a pickle runs code) is refused
with :class:`UnsafeCheckpointError` before nnU-Net's own loader (``weights_only=False``) can see it. Called by
``PromptedPredictor.from_trained_model_folder`` (``predict``, the interactive session, the napari plug-in) and
``nnUNetTrainerSAM3D.load_checkpoint`` (``nnUNetv2_train --c`` / ``--val``). The file is read twice (here, then by
nnU-Net), so a file swapped in between by someone who can write the model folder is not covered.
"""
from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
import zlib
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Type, Union

import numpy as np

PathLike = Union[str, os.PathLike]

#: image/label geometry tolerance of ``validate_raw_dataset`` (the converters' values): spacing relative,
#: origin in mm, direction cosines absolute
GEOMETRY_TOLERANCE = {"spacing_rtol": 1e-4, "origin_atol_mm": 1e-3, "direction_atol": 1e-4}

#: file endings whose files SimpleITK reads (nnU-Net's SimpleITKIO); images of other endings (nnU-Net's
#: 2D/tif readers) only get the existence and gzip checks
SITK_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".gipl", ".gipl.gz")

_CHUNK = 1 << 22


class InputFileError(ValueError):
    """A bad input file or name; the message names the file and the problem."""


class CheckpointError(pickle.UnpicklingError):
    """A checkpoint that cannot be read (missing, truncated, corrupt). A subclass of ``UnpicklingError`` so the
    callers that already turn unpickling errors into clear messages (``predict``'s model loading) catch it."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle needs Python objects outside the allow-list: it could run code when loaded,
    so it is refused (nothing in it has run)."""


def _fail(error: Type[Exception], context: str, message: str) -> Exception:
    return error(f"{context}{message}")


# ============================================================================================ names
def check_plain_name(name: str, what: str = "name", *, error: Type[Exception] = InputFileError,
                     context: str = "") -> str:
    """``name`` if it can be used as (part of) a file name inside an output folder: not empty, no path
    separator, no NUL, not '.'/'..' and no '..' (so it cannot climb out of the folder)."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
            or "\x00" in name or ".." in name:
        raise _fail(error, context, f"{what} {name!r} is not a plain file name (no path separators, no '..'): "
                                    f"it would be written outside its folder")
    return name


def check_file_ending(ending: str, where: str = "dataset.json", *, error: Type[Exception] = InputFileError,
                      context: str = "") -> str:
    """dataset.json's ``file_ending``: a plain suffix starting with '.', such as ``.nii.gz``."""
    if not isinstance(ending, str) or not re.fullmatch(r"\.[A-Za-z0-9][A-Za-z0-9._-]*", ending) or ".." in ending:
        raise _fail(error, context, f"{where}: file_ending {ending!r} is not a plain file ending such as '.nii.gz' "
                                    f"(case file names are built from it, so it must not hold path separators "
                                    f"or '..')")
    return ending


# ============================================================================================ image files
class _NonFiniteCounter:
    """Counts NaN / infinite values of a float voxel block while its bytes stream past (any chunking)."""

    def __init__(self, dtype: np.dtype, start: int, n_bytes: int):
        self.dtype, self.start, self.end = dtype, int(start), int(start) + int(n_bytes)
        self.pos, self.rest, self.count = 0, b"", 0

    def feed(self, chunk: bytes) -> None:
        lo, hi = self.pos, self.pos + len(chunk)
        self.pos = hi
        a, b = max(lo, self.start), min(hi, self.end)
        if a >= b:
            return
        data = self.rest + chunk[a - lo:b - lo]
        k = len(data) // self.dtype.itemsize * self.dtype.itemsize
        if k:
            values = np.frombuffer(data[:k], dtype=self.dtype)
            self.count += int(values.size - np.count_nonzero(np.isfinite(values)))
        self.rest = data[k:]


# NIfTI datatype code -> numpy type of the values to check (complex: its float parts)
_NIFTI_FLOATS = {16: "f4", 64: "f8", 32: "f4", 1792: "f8"}


def _scan(path: str, check_values: bool) -> Tuple[bytes, int, Optional[dict], int]:
    """(header bytes, decompressed length, NIfTI header or None, number of non-finite float voxels). A ``.gz``
    stream is read to its end (which raises for a truncated or corrupt one); so is a NIfTI file whose float
    voxels are counted."""
    is_gz = path.lower().endswith(".gz")
    with (gzip.open(path, "rb") if is_gz else open(path, "rb")) as f:
        head = f.read(1 << 16)
        header = _nifti_header(head)
        counter = None
        if check_values and header is not None and header["datatype"] in _NIFTI_FLOATS:
            n_vox = int(np.prod([max(int(d), 1) for d in header["dim"][1:int(header["dim"][0]) + 1]],
                                dtype=np.int64)) if 1 <= int(header["dim"][0]) <= 7 else 0
            dtype = np.dtype(header["endian"] + _NIFTI_FLOATS[header["datatype"]])
            counter = _NonFiniteCounter(dtype, int(header["offset"]), n_vox * int(header["bitpix"]) // 8)
            counter.feed(head)
        if not is_gz and counter is None:
            return head, os.path.getsize(path), header, 0
        size = len(head)
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if counter is not None:
                counter.feed(chunk)
    return head, size, header, (counter.count if counter is not None else 0)


def _nifti_header(head: bytes) -> Optional[dict]:
    """dims, datatype, pixdim, scaling, bytes per voxel and data offset of a NIfTI-1/-2 header, or None."""
    for endian in ("<", ">"):
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            return {"version": 1, "endian": endian,
                    "dim": struct.unpack(endian + "8h", head[40:56]),
                    "datatype": struct.unpack(endian + "h", head[70:72])[0],
                    "bitpix": struct.unpack(endian + "h", head[72:74])[0],
                    "pixdim": struct.unpack(endian + "8f", head[76:108]),
                    "offset": struct.unpack(endian + "f", head[108:112])[0],
                    "scl": struct.unpack(endian + "2f", head[112:120])}
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            return {"version": 2, "endian": endian,
                    "datatype": struct.unpack(endian + "h", head[12:14])[0],
                    "bitpix": struct.unpack(endian + "h", head[14:16])[0],
                    "dim": struct.unpack(endian + "8q", head[16:80]),
                    "pixdim": struct.unpack(endian + "8d", head[104:168]),
                    "offset": struct.unpack(endian + "q", head[168:176])[0],
                    "scl": struct.unpack(endian + "2d", head[176:192])}
    return None


def check_spacing(spacing: Sequence[float], path: str, *, error: Type[Exception] = InputFileError,
                  context: str = "", source: str = "spacing") -> None:
    values = [float(s) for s in spacing]
    if not values or not all(np.isfinite(v) and v > 0 for v in values):
        raise _fail(error, context, f"image '{path}': {source} {tuple(values)} is not finite and positive "
                                    f"(zero, negative or NaN voxel sizes cannot be resampled or measured)")


def _check_nifti(path: str, header: Optional[dict], size: int, n_nonfinite: int, error, context: str,
                 what: str = "image", require_3d: bool = False) -> None:
    if header is None:
        raise _fail(error, context, f"cannot read {what} '{path}': not a NIfTI file (no NIfTI-1/-2 header)")
    ndim = int(header["dim"][0])
    if not 1 <= ndim <= 7 or any(int(d) < 1 for d in header["dim"][1:ndim + 1]) or header["bitpix"] <= 0:
        raise _fail(error, context, f"cannot read {what} '{path}': invalid NIfTI header (dim "
                                    f"{header['dim'][:max(ndim, 0) + 1]}, bitpix {header['bitpix']})")
    if require_3d:
        dims = [int(d) for d in header["dim"][1:ndim + 1]]
        while len(dims) > 3 and dims[-1] == 1:  # trailing singleton axes are still a volume
            dims.pop()
        if len(dims) != 3:
            raise _fail(error, context, f"{what} '{path}' is {len(dims)}D (size {tuple(dims)}); a 3D volume is "
                                        f"expected")
    n_vox = int(np.prod([int(d) for d in header["dim"][1:ndim + 1]], dtype=np.int64))
    expected = int(header["offset"]) + n_vox * int(header["bitpix"]) // 8
    if size < expected:
        raise _fail(error, context, f"cannot read {what} '{path}': the file is truncated ({size} of {expected} "
                                    f"bytes of image data after decompression)")
    check_spacing(header["pixdim"][1:min(ndim, 3) + 1], path, error=error, context=context,
                  source="voxel size (NIfTI pixdim)")
    if n_nonfinite:
        raise _fail(error, context, f"{what} '{path}' contains {n_nonfinite} NaN or infinite value(s) (SimpleITK's "
                                    f"NIfTI reader would silently replace them)")
    slope, inter = header["scl"]
    if np.isinf(slope) or (np.isfinite(slope) and slope != 0 and not np.isfinite(inter)):
        raise _fail(error, context, f"{what} '{path}': the NIfTI intensity scaling (scl_slope {slope}, scl_inter "
                                    f"{inter}) gives NaN or infinite values")


def _check_metaimage(path: str, head: bytes, error, context: str) -> None:
    text = head.split(b"ElementDataFile", 1)[0].decode("latin-1", "replace")
    m = re.search(r"^\s*ElementSpacing\s*=\s*(.+)$", text, re.M)
    if m:
        try:
            values = [float(v) for v in m.group(1).split()]
        except ValueError:
            raise _fail(error, context, f"image '{path}': unreadable ElementSpacing {m.group(1).strip()!r}") from None
        check_spacing(values, path, error=error, context=context, source="voxel size (MetaImage ElementSpacing)")


def check_image_file(path: PathLike, *, error: Type[Exception] = InputFileError, context: str = "",
                     what: str = "image", require_3d: bool = False, check_values: bool = True) -> None:
    """The checks that need no image reader (see the module docstring): existence, a complete gzip stream, a
    complete NIfTI data block, positive header spacing, finite float voxels in a NIfTI file (``check_values``;
    ITK reads NaN and infinity in a NIfTI file as 0, so after reading they cannot be seen), and with
    ``require_3d`` a 3D NIfTI header. Raises ``error`` naming ``path``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _fail(error, context, f"{what} file '{path}' does not exist")
    if not os.path.isfile(path):
        raise _fail(error, context, f"{what} file '{path}' is not a regular file")
    if os.path.getsize(path) == 0:
        raise _fail(error, context, f"cannot read {what} '{path}': the file is empty")
    lower = path.lower()
    try:
        head, size, header, n_nonfinite = _scan(path, check_values)
    except (OSError, EOFError, zlib.error) as e:
        raise _fail(error, context, f"cannot read {what} '{path}': the gzip data is truncated or corrupt "
                                    f"({type(e).__name__}: {e})") from None
    if lower.endswith((".nii", ".nii.gz")):
        _check_nifti(path, header, size, n_nonfinite, error, context, what, require_3d)
    elif lower.endswith((".mha", ".mhd")):
        _check_metaimage(path, head, error, context)


def check_finite(array: np.ndarray, path: str, *, error: Type[Exception] = InputFileError,
                 context: str = "") -> None:
    """Floating-point intensities must be finite (NaN or infinity poison normalisation and training)."""
    array = np.asarray(array)
    if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
        n_bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise _fail(error, context, f"image '{path}' contains {n_bad} NaN or infinite intensity value(s)")


def check_sitk_image(image, path: str, *, error: Type[Exception] = InputFileError, context: str = "",
                     require_3d: bool = True, check_values: bool = True) -> None:
    """Checks of an image SimpleITK has read: 3D, finite positive spacing, finite intensities."""
    dim = image.GetDimension()
    if require_3d and dim != 3:
        raise _fail(error, context, f"image '{path}' is {dim}D (size {image.GetSize()}); a 3D volume is expected")
    check_spacing(image.GetSpacing(), path, error=error, context=context)
    if check_values:
        import SimpleITK as sitk
        check_finite(sitk.GetArrayViewFromImage(image), path, error=error, context=context)


def read_image_checked(path: PathLike, *, error: Type[Exception] = InputFileError, context: str = "",
                       require_3d: bool = True, check_values: bool = True, what: str = "image"):
    """``SimpleITK.ReadImage(path)`` after ``check_image_file``, then ``check_sitk_image``: a complete, 3D image
    with finite positive spacing and finite intensities, or ``error`` naming the file and the problem."""
    import SimpleITK as sitk
    path = os.fspath(path)
    check_image_file(path, error=error, context=context, what=what, require_3d=require_3d)
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as e:
        raise _fail(error, context, f"cannot read {what} '{path}' (corrupt or not a supported image file): "
                                    f"{_itk_message(e)}") from None
    check_sitk_image(image, path, error=error, context=context, require_3d=require_3d, check_values=check_values)
    return image


def _itk_message(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return " ".join(lines[-2:]) if lines else type(e).__name__


# ============================================================================================ raw datasets
def _geometry(image) -> tuple:
    dim = image.GetDimension()
    d = np.asarray(image.GetDirection(), dtype=float).reshape(dim, dim)
    return (tuple(image.GetSize()), np.asarray(image.GetSpacing(), float), np.asarray(image.GetOrigin(), float), d)


def check_same_geometry(a, b, path_a: str, path_b: str, *, error: Type[Exception] = InputFileError,
                        context: str = "") -> None:
    """Two SimpleITK images on one grid: size exactly, spacing / origin / direction within GEOMETRY_TOLERANCE."""
    tol = GEOMETRY_TOLERANCE
    (size_a, sp_a, or_a, dir_a), (size_b, sp_b, or_b, dir_b) = _geometry(a), _geometry(b)
    problem = None
    if size_a != size_b:
        problem = f"size {size_a} vs {size_b}"
    elif np.any(np.abs(sp_a - sp_b) > tol["spacing_rtol"] * np.maximum(np.abs(sp_a), np.abs(sp_b))):
        problem = f"spacing {tuple(sp_a)} vs {tuple(sp_b)}"
    elif np.any(np.abs(or_a - or_b) > tol["origin_atol_mm"]):
        problem = f"origin {tuple(or_a)} vs {tuple(or_b)}"
    elif dir_a.shape != dir_b.shape or np.any(np.abs(dir_a - dir_b) > tol["direction_atol"]):
        problem = f"direction {tuple(dir_a.ravel())} vs {tuple(dir_b.ravel())}"
    if problem:
        raise _fail(error, context, f"geometry mismatch between '{path_a}' and '{path_b}': {problem}")


def check_same_grid_files(path_a: PathLike, path_b: PathLike, *, error: Type[Exception] = InputFileError,
                          context: str = "") -> None:
    """``check_same_geometry`` of two image files from their headers only (no voxel data is read); files that
    SimpleITK does not read are skipped."""
    import SimpleITK as sitk
    path_a, path_b = os.fspath(path_a), os.fspath(path_b)
    if not (path_a.lower().endswith(SITK_ENDINGS) and path_b.lower().endswith(SITK_ENDINGS)):
        return
    headers = []
    for p in (path_a, path_b):
        reader = sitk.ImageFileReader()
        reader.SetFileName(p)
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            raise _fail(error, context, f"cannot read image '{p}' (corrupt or not a supported image file): "
                                        f"{_itk_message(e)}") from None
        headers.append(reader)
    check_same_geometry(*headers, path_a, path_b, error=error, context=context)


def allowed_label_values(labels: dict) -> List[int]:
    """Every integer value dataset.json's ``labels`` declares (regions: the union of their values)."""
    values = set()
    for v in labels.values():
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            values.add(int(x))
    return sorted(values)


def check_label_values(array: np.ndarray, path: str, allowed: Iterable[int], *,
                       error: Type[Exception] = InputFileError, context: str = "",
                       where: str = "dataset.json") -> None:
    array = np.asarray(array)
    allowed = sorted(int(a) for a in allowed)
    if array.dtype.kind in "fc":
        if not np.all(np.isfinite(array)):
            raise _fail(error, context, f"label file '{path}' holds NaN or infinite values")
        if not np.array_equal(np.round(array), array):
            raise _fail(error, context, f"label file '{path}' holds non-integer values")
    elif array.dtype.kind not in "iub":
        raise _fail(error, context, f"label file '{path}' has unsupported pixel type {array.dtype}")
    values = np.unique(array)
    bad = [int(v) for v in values if int(v) not in allowed]
    if bad:
        raise _fail(error, context, f"label file '{path}': value(s) {bad[:10]} not declared in {where} "
                                    f"(its labels: {allowed})")


def raw_dataset_cases(folder: PathLike, dataset_json: dict, *, error: Type[Exception] = InputFileError,
                      where: str = "dataset.json") -> Dict[str, Tuple[List[str], str]]:
    """{case: ([channel files], label file)} of an nnU-Net raw dataset (``imagesTr``/``labelsTr`` or
    dataset.json's ``dataset`` mapping, as nnU-Net reads them); errors for bad names and missing files."""
    folder = os.fspath(folder)
    ending = check_file_ending(dataset_json.get("file_ending"), where, error=error)
    channels = dataset_json.get("channel_names") or dataset_json.get("modality")
    if not isinstance(channels, dict) or not channels:
        raise _fail(error, "", f"{where}: no 'channel_names' mapping")
    n_channels = len(channels)
    cases: Dict[str, Tuple[List[str], str]] = {}
    if isinstance(dataset_json.get("dataset"), dict):  # nnU-Net v2's explicit file lists
        for case, entry in dataset_json["dataset"].items():
            check_plain_name(case, f"{where}: case identifier", error=error)
            if not isinstance(entry, dict) or not isinstance(entry.get("images"), list) or "label" not in entry:
                raise _fail(error, "", f"{where}: case {case!r}: entry needs 'images' (a list) and 'label'")
            images = [os.path.join(folder, p) if not os.path.isabs(p) else p for p in entry["images"]]
            label = entry["label"]
            cases[case] = (images, os.path.join(folder, label) if not os.path.isabs(label) else label)
    else:
        images_dir = os.path.join(folder, "imagesTr")
        if not os.path.isdir(images_dir):
            raise _fail(error, "", f"raw dataset '{folder}': no imagesTr folder")
        pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + r"$")
        found: Dict[str, Dict[int, str]] = {}
        for name in sorted(os.listdir(images_dir)):
            m = pattern.match(name)
            if m and not name.startswith("."):
                found.setdefault(m.group(1), {})[int(m.group(2))] = os.path.join(images_dir, name)
        if not found:
            raise _fail(error, "", f"raw dataset '{folder}': no images named <case>_0000{ending} in {images_dir}")
        for case, chans in found.items():
            check_plain_name(case, f"'{images_dir}': case identifier", error=error)
            files = []
            for c in range(n_channels):
                if c not in chans:
                    raise _fail(error, "", f"case {case!r}: channel file "
                                           f"'{os.path.join(images_dir, f'{case}_{c:04d}{ending}')}' is missing "
                                           f"({where} lists {n_channels} channel(s))")
                files.append(chans[c])
            extra = sorted(c for c in chans if c >= n_channels)
            if extra:
                raise _fail(error, "", f"case {case!r}: unexpected channel file(s) {[chans[c] for c in extra]} "
                                       f"({where} lists {n_channels} channel(s))")
            cases[case] = (files, os.path.join(folder, "labelsTr", case + ending))
    for case, (images, label) in cases.items():
        if len(images) != n_channels:
            raise _fail(error, "", f"case {case!r}: {len(images)} image file(s), {where} lists {n_channels} "
                                   f"channel(s)")
        for f in images:
            if not os.path.isfile(f):
                raise _fail(error, "", f"case {case!r}: image file '{f}' does not exist")
        if not os.path.isfile(label):
            raise _fail(error, "", f"case {case!r}: label file '{label}' does not exist")
    return cases


def check_raw_case(case: str, images: Sequence[str], label: str, allowed: Sequence[int], *,
                   error: Type[Exception] = InputFileError, where: str = "dataset.json") -> None:
    """One case of a raw dataset: readable complete 3D images with finite intensities and positive spacing, a
    label on the same grid whose values are declared (see the module docstring)."""
    import SimpleITK as sitk
    context = f"case {case!r}: "
    if not all(os.fspath(f).lower().endswith(SITK_ENDINGS) for f in [*images, label]):
        for f in [*images, label]:  # another reader's format: only what needs no reader
            check_image_file(f, error=error, context=context)
        return
    first = None
    for f in images:
        img = read_image_checked(f, error=error, context=context)
        if first is None:
            first = (img, f)
        else:
            check_same_geometry(first[0], img, first[1], f, error=error, context=context)
    lab = read_image_checked(label, error=error, context=context, check_values=False, what="label")
    check_same_geometry(first[0], lab, first[1], label, error=error, context=context)
    check_label_values(sitk.GetArrayViewFromImage(lab), label, allowed, error=error, context=context, where=where)


def validate_raw_dataset(folder: PathLike, num_workers: int = 1, *,
                         error: Type[Exception] = InputFileError) -> List[str]:
    """Check an nnU-Net raw dataset folder (``dataset.json``, ``imagesTr``, ``labelsTr``) before planning; returns
    the case ids. Raises ``error`` naming the first bad file (in case order)."""
    import json
    folder = os.fspath(folder)
    dj_path = os.path.join(folder, "dataset.json")
    if not os.path.isfile(dj_path):
        raise _fail(error, "", f"raw dataset '{folder}': '{dj_path}' does not exist")
    try:
        with open(dj_path, encoding="utf-8") as f:
            dj = json.load(f)
    except (OSError, ValueError) as e:
        raise _fail(error, "", f"cannot read '{dj_path}': {e}") from None
    if not isinstance(dj, dict) or not isinstance(dj.get("labels"), dict) or not dj["labels"]:
        raise _fail(error, "", f"'{dj_path}': no 'labels' mapping")
    try:
        allowed = allowed_label_values(dj["labels"])
    except (TypeError, ValueError):
        raise _fail(error, "", f"'{dj_path}': label values must be integers (or lists of integers for "
                               f"regions), got {dj['labels']}") from None
    cases = raw_dataset_cases(folder, dj, error=error, where=dj_path)
    jobs = sorted(cases.items())

    def one(job):
        case, (images, label) = job
        check_raw_case(case, images, label, allowed, error=error, where=dj_path)

    if num_workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            one(job)
    else:  # threads: gzip, ITK's reader and numpy release the GIL; no process start-up
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(min(int(num_workers), len(jobs))) as pool:
            for _ in pool.map(one, jobs):  # re-raises the first error in case order
                pass
    return [c for c, _ in jobs]


def validate_raw_datasets(dataset_ids: Iterable[Union[int, str]], num_workers: int = 1, *,
                          error: Type[Exception] = InputFileError) -> None:
    """``validate_raw_dataset`` for nnU-Net dataset ids or names under ``$nnUNet_raw`` (what
    ``plan_and_preprocess -d`` receives). An id nnU-Net cannot resolve is left to nnU-Net's own error."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    raw = os.environ.get("nnUNet_raw")
    for d in dataset_ids:
        try:
            name = maybe_convert_to_dataset_name(d)
        except Exception:  # noqa: BLE001 - nnU-Net reports unknown ids itself
            continue
        if raw and os.path.isdir(os.path.join(raw, name)):
            validate_raw_dataset(os.path.join(raw, name), num_workers, error=error)


# ============================================================================================ checkpoints
def _numpy_globals() -> list:
    """numpy objects that nnU-Net checkpoints pickle (logged losses and Dice are numpy scalars), under the
    names numpy 1 and numpy 2 pickle them by."""
    import numpy
    try:
        multiarray = numpy._core.multiarray  # numpy 2
    except AttributeError:  # pragma: no cover - numpy 1
        multiarray = numpy.core.multiarray
    out = [multiarray.scalar, numpy.dtype, numpy.ndarray, multiarray._reconstruct]
    for name in ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"):
        out.append((multiarray.scalar, name))
    for name in ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"):
        out.append((multiarray._reconstruct, name))
    dtypes = getattr(numpy, "dtypes", None)
    if dtypes is not None:  # numpy >= 1.25 pickles dtype instances by their class
        for name in ("BoolDType", "Int8DType", "UInt8DType", "Int16DType", "UInt16DType", "Int32DType",
                     "UInt32DType", "Int64DType", "UInt64DType", "Float16DType", "Float32DType", "Float64DType",
                     "LongDType", "ULongDType", "LongLongDType", "ULongLongDType", "ByteDType", "UByteDType",
                     "ShortDType", "UShortDType", "IntDType", "UIntDType"):
            if hasattr(dtypes, name):
                out.append(getattr(dtypes, name))
    return out


def checkpoint_safe_globals() -> list:
    """The allow-list of ``load_checkpoint_safely`` (on top of what ``weights_only=True`` always allows:
    tensors, storages, ``OrderedDict``, ``torch.device``, plain containers, numbers and strings)."""
    return _numpy_globals()


#: documentation of the allow-list (the objects themselves come from ``checkpoint_safe_globals()``)
CHECKPOINT_SAFE_GLOBALS = ("numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "numpy.dtype",
                           "numpy.dtypes.<numeric>DType", "numpy.ndarray", "numpy._core.multiarray._reconstruct")


def load_checkpoint_safely(path: PathLike, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with ``checkpoint_safe_globals()`` allowed. Raises
    ``UnsafeCheckpointError`` (naming the file and the refused global) if the pickle needs any other Python
    object, ``CheckpointError`` if the file is missing, truncated or not a PyTorch file. Nothing in a refused
    file runs: the weights-only unpickler never imports or calls what it does not allow."""
    import torch
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "GLOBAL" in text or "global" in text:
            culprit = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln or "global" in ln), "")
            raise UnsafeCheckpointError(
                f"checkpoint '{path}' refused: its pickle needs Python objects outside the allow-list of tensors, "
                f"containers and numpy scalars, and could run code when loaded (nothing in it was run): "
                f"{culprit[:300]}") from None
        raise CheckpointError(f"checkpoint '{path}' cannot be read as a PyTorch checkpoint (truncated, corrupt or "
                              f"not written by torch.save): {(text.strip().splitlines() or [''])[0][:300]}") from None
    except Exception as e:  # noqa: BLE001 - truncated zip, foreign file: RuntimeError, EOFError, BadZipFile, ...
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise CheckpointError(f"checkpoint '{path}' cannot be read as a PyTorch checkpoint (truncated, corrupt or "
                              f"not written by torch.save): {type(e).__name__}: {first}") from None


def check_model_checkpoints(model_folder: PathLike, folds: Optional[Sequence[Union[int, str]]],
                            checkpoint_name: str = "checkpoint_final.pth") -> dict:
    """``load_checkpoint_safely`` on ``fold_X/checkpoint_name`` of every fold (``folds`` None: every ``fold_*``
    folder holding one, as nnU-Net's auto-detection) of a trained model folder, before nnU-Net's predictor
    loads them with ``weights_only=False``. Returns {fold: checkpoint}."""
    model_folder = os.fspath(model_folder)
    check_plain_name(checkpoint_name, "checkpoint name", error=CheckpointError)
    if not os.path.isdir(model_folder):
        return {}  # the loader's own error names the missing folder
    if folds is None:
        folds = [d[len("fold_"):] for d in sorted(os.listdir(model_folder))
                 if d.startswith("fold_") and os.path.isfile(os.path.join(model_folder, d, checkpoint_name))]
    elif isinstance(folds, (str, int)):
        folds = [folds]
    return {f: load_checkpoint_safely(os.path.join(model_folder, f"fold_{f}", checkpoint_name)) for f in folds}


__all__ = ["InputFileError", "CheckpointError", "UnsafeCheckpointError", "GEOMETRY_TOLERANCE", "check_plain_name",
           "check_file_ending", "check_image_file", "check_spacing", "check_finite", "check_sitk_image",
           "read_image_checked", "check_same_geometry", "check_same_grid_files", "allowed_label_values",
           "check_label_values", "raw_dataset_cases", "check_raw_case", "validate_raw_dataset",
           "validate_raw_datasets", "checkpoint_safe_globals", "CHECKPOINT_SAFE_GLOBALS", "load_checkpoint_safely",
           "check_model_checkpoints"]
