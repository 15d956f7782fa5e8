"""Image reading with clear errors, image geometry for click conversion, and atomic writing.

Used by ``sam3d-nnunet predict`` and by ``InteractiveSession``:

* ``read_images(files, reader_writer_class)``: nnU-Net's reader (the dataset's ``image_reader_writer``), with a
  missing, unreadable or corrupt file named in the error (``ImageReadError``) instead of an ITK stack trace.
* ``ImageGeometry``: size, spacing, origin and direction of a raw image in ITK's (x, y, z) conventions, with the
  two SimpleITK index <-> physical point methods that ``sam3d_nnunet.prompts.to_array_indices`` needs; read
  from a file's header only (no voxel data), from nnU-Net's ``properties['sitk_stuff']``, or from a
  ``SimpleITK.Image``.
* ``write_label_map`` / ``export_prediction_atomic``: every output is written atomically
  (:mod:`sam3d_nnunet.atomic`: a temporary name in its final folder, then ``os.replace``), so a reader (or a
  rerun that skips finished cases) never sees half a file. nnU-Net's ``export_prediction_from_logits`` writes
  directly, so it is called with a temporary truncated name and its files are renamed afterwards (probabilities
  first, the segmentation last: an existing segmentation marks a finished case).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from sam3d_nnunet.atomic import temporary_sibling, write_image_atomic

PathLike = Union[str, os.PathLike]


class InferenceInputError(ValueError):
    """A bad input to prediction (image, click, class, model folder, case list); the message names it."""


class ImageReadError(InferenceInputError):
    """An image file that is missing, unreadable, corrupt or inconsistent with its other channels."""


# --------------------------------------------------------------------------------------------- reading
def _reader_instance(reader_writer_class):
    if reader_writer_class is None:
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
        reader_writer_class = SimpleITKIO
    return reader_writer_class() if isinstance(reader_writer_class, type) else reader_writer_class


def read_images(files: Sequence[PathLike], reader_writer_class=None) -> Tuple[np.ndarray, dict]:
    """``reader.read_images(files)`` -> (data [C, *spatial] float32, properties), raising ``ImageReadError``
    naming the file for a missing, unreadable or corrupt image and for channels that do not match.
    ``reader_writer_class`` is the dataset's (``plans_manager.image_reader_writer_class``), SimpleITK by
    default."""
    files = [os.fspath(f) for f in files]
    if not files:
        raise ImageReadError("no image files given")
    for f in files:
        if not os.path.exists(f):
            raise ImageReadError(f"image file '{f}' does not exist")
        if not os.path.isfile(f):
            raise ImageReadError(f"image file '{f}' is not a regular file")
        if os.path.getsize(f) == 0:
            raise ImageReadError(f"cannot read image '{f}': the file is empty")
        from sam3d_nnunet.validation import check_image_file
        check_image_file(f, error=ImageReadError, require_3d=True)  # complete gzip + NIfTI data, spacing > 0
    reader = _reader_instance(reader_writer_class)
    try:
        with _quiet():  # nnU-Net prints its own "ERROR!" lines before raising
            data, properties = reader.read_images(files)
    except Exception as joint_error:  # noqa: BLE001 - ITK raises RuntimeError, nibabel several types
        shapes = {}
        for f in files:  # which file is it?
            try:
                with _quiet():
                    d, _ = reader.read_images([f])
                shapes[f] = tuple(d.shape[1:])
            except Exception as e:  # noqa: BLE001
                raise ImageReadError(f"cannot read image '{f}' (corrupt or not a supported image file): "
                                     f"{_first_line(e)}") from e
        raise ImageReadError(f"the channels of one case do not match (shape or spacing) and cannot be read "
                             f"together: {', '.join(f'{k} {v}' for k, v in shapes.items())}") from joint_error
    if data.ndim != 4:
        raise ImageReadError(f"image(s) {files}: expected 3D volumes, got an array of shape {tuple(data.shape)}")
    sitk_stuff = properties.get("sitk_stuff") if isinstance(properties, dict) else None
    if sitk_stuff is not None and len(sitk_stuff.get("spacing", ())) != 3:
        raise ImageReadError(f"image '{files[0]}' is {len(sitk_stuff['spacing'])}D; the model needs 3D volumes")
    if not np.all(np.isfinite(data)):
        raise ImageReadError(f"image(s) {files} contain NaN or infinite values")
    return data, properties


def check_gzip_integrity(path: PathLike) -> None:
    """For a ``.gz`` file: decompress it completely (streaming) and raise ``ImageReadError`` naming it if the
    stream is truncated or corrupt. ITK's NIfTI reader silently fills a truncated ``.nii.gz`` with zeros, which
    would give a plausible-looking but wrong prediction."""
    import gzip
    import zlib
    path = os.fspath(path)
    if not path.endswith(".gz"):
        return
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    except (OSError, EOFError, zlib.error) as e:
        raise ImageReadError(f"cannot read image '{path}': the gzip data is truncated or corrupt ({e})") from e


@contextlib.contextmanager
def _quiet():
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # ITK messages start with the source location; the useful part is usually the last line
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class ImageGeometry:
    """Raw image geometry in ITK conventions: ``size``, ``spacing``, ``origin`` as (x, y, z), ``direction`` as
    SimpleITK's row-major 9-tuple. Array order (numpy, ``GetArrayFromImage``) is the reverse: (z, y, x)."""

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(s) for s in self.origin))
        object.__setattr__(self, "direction", tuple(float(s) for s in np.asarray(self.direction).ravel()))
        if len(self.size) != 3 or len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise InferenceInputError(f"a 3D geometry needs 3 sizes, spacings, origin values and 9 direction "
                                      f"values, got {self}")
        if any(s <= 0 for s in self.spacing):
            raise InferenceInputError(f"spacing must be positive, got {self.spacing}")
        if abs(np.linalg.det(self._matrix())) < 1e-12:
            raise InferenceInputError(f"direction {self.direction} is singular")

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_sitk(cls, image) -> "ImageGeometry":
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    @classmethod
    def from_file(cls, path: PathLike) -> "ImageGeometry":
        """Header only (no voxel data is read)."""
        import SimpleITK as sitk
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ImageReadError(f"image file '{path}' does not exist")
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        try:
            reader.ReadImageInformation()
        except Exception as e:  # noqa: BLE001
            raise ImageReadError(f"cannot read image '{path}' (corrupt or not a supported image file): "
                                 f"{_first_line(e)}") from e
        if reader.GetDimension() != 3:
            raise ImageReadError(f"image '{path}' is {reader.GetDimension()}D; the model needs 3D volumes")
        return cls(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())

    @classmethod
    def from_array_shape(cls, shape_zyx: Sequence[int], spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
                         origin_xyz: Sequence[float] = (0.0, 0.0, 0.0),
                         direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1)) -> "ImageGeometry":
        """Geometry of a numpy array (z, y, x) given its spacing in ARRAY order and origin/direction in ITK order."""
        return cls(tuple(shape_zyx)[::-1], tuple(spacing_zyx)[::-1], origin_xyz, direction)

    # ----------------------------------------------------------------- SimpleITK-compatible methods
    def _matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3) @ np.diag(self.spacing)

    def GetSize(self):  # noqa: N802 - SimpleITK's name, so to_array_indices accepts this object
        return self.size

    def GetSpacing(self):  # noqa: N802
        return self.spacing

    def GetOrigin(self):  # noqa: N802
        return self.origin

    def GetDirection(self):  # noqa: N802
        return self.direction

    def TransformPhysicalPointToContinuousIndex(self, point) -> Tuple[float, float, float]:  # noqa: N802
        p = np.asarray(point, dtype=np.float64) - np.asarray(self.origin)
        return tuple(float(v) for v in np.linalg.solve(self._matrix(), p))

    def TransformContinuousIndexToPhysicalPoint(self, index) -> Tuple[float, float, float]:  # noqa: N802
        return tuple(float(v) for v in self._matrix() @ np.asarray(index, dtype=np.float64) + np.asarray(self.origin))

    @property
    def array_shape(self) -> Tuple[int, int, int]:
        return tuple(self.size[::-1])

    def apply_to(self, image) -> None:
        """Copy this geometry onto a SimpleITK image."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)


def geometry_from_properties(properties: dict, array_shape: Sequence[int],
                             files: Sequence[PathLike] = ()) -> ImageGeometry:
    """Geometry of a case read by nnU-Net's reader (``array_shape``: the reader's spatial array shape):
    ``properties['sitk_stuff']`` (SimpleITK readers) or else the first file's header. Raises if the header's
    size does not match the array (a reader that reorients: ITK indices would not be array indices)."""
    stuff = properties.get("sitk_stuff") if isinstance(properties, dict) else None
    if stuff is not None and len(stuff.get("spacing", ())) == 3:
        geometry = ImageGeometry(tuple(array_shape)[::-1], stuff["spacing"], stuff["origin"], stuff["direction"])
    elif files:
        geometry = ImageGeometry.from_file(files[0])
    else:
        raise InferenceInputError("no geometry information: the reader gave no 'sitk_stuff' and no file is known")
    if geometry.array_shape != tuple(int(s) for s in array_shape):
        raise InferenceInputError(f"image {files[0] if files else ''}: the reader's array {tuple(array_shape)} is "
                                  f"not the file's voxel grid {geometry.array_shape} in reverse (x, y, z) order "
                                  f"(a reorienting reader?); voxel and world clicks cannot be mapped")
    return geometry


def reader_uses_itk_index_order(reader_writer_class) -> bool:
    """True if the reader's arrays are the file's ITK voxel grid in numpy (z, y, x) order (SimpleITKIO), so
    click-file coordinates (ITK index / physical points) map onto its arrays."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO, SimpleITKIOWithReorient
    cls = reader_writer_class if isinstance(reader_writer_class, type) else type(reader_writer_class)
    return issubclass(cls, SimpleITKIO) and not issubclass(cls, SimpleITKIOWithReorient)


# --------------------------------------------------------------------------------------------- writing
def write_label_map(label_map: np.ndarray, geometry: ImageGeometry, path: PathLike) -> None:
    """Write an array-order (z, y, x) label map with ``geometry`` (SimpleITK, compressed), atomically."""
    import SimpleITK as sitk
    label_map = np.asarray(label_map)
    if tuple(label_map.shape) != geometry.array_shape:
        raise ValueError(f"label map shape {label_map.shape} does not match the image {geometry.array_shape}")
    dtype = np.uint8 if label_map.max(initial=0) < 255 else np.uint16
    image = sitk.GetImageFromArray(label_map.astype(dtype, copy=False))
    geometry.apply_to(image)
    write_image_atomic(image, path)


def export_prediction_atomic(predicted, properties: dict, configuration_manager, plans_manager, dataset_json: dict,
                             output_file_truncated: PathLike, save_probabilities: bool = False,
                             num_threads_torch: Optional[int] = None) -> None:
    """nnU-Net's ``export_prediction_from_logits`` (native geometry, ``.npz`` + ``.pkl`` with
    ``save_probabilities``), written under temporary names and renamed into place (segmentation last)."""
    from nnunetv2.configuration import default_num_processes
    from nnunetv2.inference.export_prediction import export_prediction_from_logits

    final = os.fspath(output_file_truncated)
    os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
    ending = dataset_json["file_ending"]
    tmp = temporary_sibling(final + ending, ending)[: -len(ending)]  # nnU-Net adds the endings itself
    suffixes = [".npz", ".pkl"] if save_probabilities else []
    try:
        export_prediction_from_logits(predicted, properties, configuration_manager, plans_manager, dataset_json,
                                      tmp, save_probabilities,
                                      num_threads_torch=num_threads_torch or default_num_processes)
        for suffix in suffixes + [ending]:
            if not os.path.isfile(tmp + suffix):
                raise RuntimeError(f"nnU-Net's export wrote no {tmp + suffix}")
        for suffix in suffixes + [ending]:
            os.replace(tmp + suffix, final + suffix)
    finally:
        for suffix in (".npz", ".pkl", ending):
            if os.path.exists(tmp + suffix):
                os.remove(tmp + suffix)


__all__ = ["InferenceInputError", "ImageReadError", "ImageGeometry", "read_images", "check_gzip_integrity",
           "geometry_from_properties", "reader_uses_itk_index_order", "write_label_map", "export_prediction_atomic"]
