"""Reading volumes for the viewer exactly as the model reads them, and the layer transform of their geometry.

``read_volume(path)`` uses the project's reader (``sam3d_nnunet.inference.io.read_images`` with nnU-Net's
``SimpleITKIO``, the reader of ``sam3d-nnunet predict`` and ``InteractiveSession.set_image``): the array is
SimpleITK's ``GetArrayFromImage`` order (z, y, x), so the data coordinates of a napari layer showing it are the
raw-image array-order voxel indices that ``InteractiveSession.add_click`` takes.

``layer_transform(geometry)`` places such a layer in the scanner's frame: ``scale`` = spacing in array order
(sz, sy, sx) and ``affine`` = the direction matrix (in array order) plus the origin, so napari's world
coordinates are ITK/LPS physical millimetres in (z, y, x) order. A direction that is not a signed axis
permutation (an oblique scan) is left out of the affine (the layer shows the voxel grid, scaled and
translated) because napari cannot slice through an oblique affine in 2D; clicks are unaffected either way,
since every layer of the widget shares the image layer's transform and clicks are read in data coordinates.

No napari import at module level: npe2 imports ``get_reader`` lazily and the functions are usable without napari.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, List, Optional, Tuple

import numpy as np

# what SimpleITK reads and ``sam3d-nnunet predict`` accepts as an image file ending
VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

# keys of ``layer.metadata`` set by this plug-in
META_SOURCE = "sam3d_source"      # the file the layer was read from (absolute path)
META_GEOMETRY = "sam3d_geometry"  # its ImageGeometry (size, spacing, origin, direction; ITK order)


def _foreign_llvm_loaded() -> bool:
    """True if an LLVM shared library (Mesa's: llvmpipe, radeonsi, ...) is mapped into this process (Linux)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return any("libLLVM" in line for line in f)
    except OSError:
        return False


def keep_triton_out_of_the_gui_process() -> bool:
    """If OpenGL has loaded Mesa's LLVM into this process, make ``import triton`` fail (torch then runs without
    Triton); returns whether Triton is blocked.

    Triton's compiler library bundles its own LLVM, and importing it into a process that already holds Mesa's
    (llvmpipe software OpenGL under Xvfb / remote desktops, or Mesa's LLVM-based GPU drivers) crashes the process
    with a segmentation fault; torchvision -> torch._dynamo imports Triton on the way to nnU-Net. napari creates
    its OpenGL context before a plug-in runs, so Triton stays out. The session does not use ``torch.compile``, so
    nothing is lost; with NVIDIA's own OpenGL (no Mesa LLVM) nothing is blocked. Called before every model
    operation; ``SAM3D_NAPARI_ALLOW_TRITON=1`` disables it.
    """
    if sys.modules.get("triton", 0) is None:
        return True
    if "triton" in sys.modules or os.environ.get("SAM3D_NAPARI_ALLOW_TRITON") == "1" or not _foreign_llvm_loaded():
        return False
    sys.modules["triton"] = None  # ImportError on import; importlib.util.find_spec("triton") -> None
    return True


def is_volume_file(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).lower().endswith(VOLUME_ENDINGS)


def read_volume(path) -> Tuple[np.ndarray, "object"]:
    """``(array (z, y, x), ImageGeometry)`` of a single-channel 3D image file, read as the model reads it.

    Raises ``sam3d_nnunet.inference.ImageReadError`` (a ``ValueError``) naming the file if it is missing,
    corrupt or not 3D."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from sam3d_nnunet.inference.io import geometry_from_properties, read_images

    path = os.path.abspath(os.fspath(path))
    data, properties = read_images([path], SimpleITKIO)
    geometry = geometry_from_properties(properties, data.shape[1:], [path])
    return data[0], geometry


def _is_signed_permutation(matrix: np.ndarray, tol: float = 1e-6) -> bool:
    a = np.abs(matrix)
    return bool(np.all((a < tol) | (np.abs(a - 1) < tol)) and np.all(np.isclose(a.sum(0), 1))
                and np.all(np.isclose(a.sum(1), 1)))


def layer_transform(geometry, apply_direction: bool = True) -> dict:
    """napari layer keyword arguments placing an array-order (z, y, x) volume of ``geometry`` in the scanner's
    frame: ``scale`` (array-order spacing) and ``affine`` (direction in array order and origin, 4x4).
    ``apply_direction=False`` (or an oblique direction): translation only."""
    spacing_zyx = np.asarray(geometry.spacing, dtype=float)[::-1]
    origin_zyx = np.asarray(geometry.origin, dtype=float)[::-1]
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    rotation = direction[::-1, ::-1]  # P D P with P the axis reversal: the direction in array order
    if not apply_direction or not _is_signed_permutation(rotation):
        rotation = np.eye(3)
    affine = np.eye(4)
    affine[:3, :3] = rotation
    affine[:3, 3] = origin_zyx
    return {"scale": tuple(float(s) for s in spacing_zyx), "affine": affine}


def direction_is_oblique(geometry) -> bool:
    return not _is_signed_permutation(np.asarray(geometry.direction, dtype=float).reshape(3, 3))


def layer_data_tuple(path) -> tuple:
    """napari ``LayerDataTuple`` (data, kwargs, 'image') of a volume file, with its geometry in ``metadata``."""
    array, geometry = read_volume(path)
    name = os.path.basename(os.fspath(path))
    for ending in VOLUME_ENDINGS:
        if name.lower().endswith(ending):
            name = name[: -len(ending)]
            break
    kwargs = {"name": name, **layer_transform(geometry),
              "metadata": {META_SOURCE: os.path.abspath(os.fspath(path)), META_GEOMETRY: geometry}}
    finite = array[np.isfinite(array)]
    if finite.size:  # a CT soft-tissue-like default window; the user changes it in the layer controls
        lo, hi = np.percentile(finite, [0.5, 99.5])
        kwargs["contrast_limits"] = (float(lo), float(hi)) if hi > lo else (float(lo), float(lo) + 1.0)
    return array, kwargs, "image"


# --------------------------------------------------------------------------------------------- npe2 reader
def get_reader(path) -> Optional[Callable]:
    """npe2 reader contribution: a function reading ``path`` (one volume file, or a list of them) or None."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(is_volume_file(p) for p in paths):
        return None
    keep_triton_out_of_the_gui_process()
    return read_layers


def read_layers(path) -> List[tuple]:
    paths = path if isinstance(path, (list, tuple)) else [path]
    return [layer_data_tuple(p) for p in paths]


__all__ = ["VOLUME_ENDINGS", "META_SOURCE", "META_GEOMETRY", "keep_triton_out_of_the_gui_process", "is_volume_file", "read_volume", "layer_transform",
           "direction_is_oblique", "layer_data_tuple", "get_reader", "read_layers"]
