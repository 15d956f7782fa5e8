"""Normalised surface Dice (NSD) through DeepMind's ``surface-distance`` package (``import surface_distance``).

``surface-distance`` 0.1 predates NumPy 2 and SciPy's namespace clean-up:

* it evaluates ``np.Inf`` when one of the two masks has no surface, and NumPy 2 removed that alias
  (``AttributeError: `np.Inf` was removed in the NumPy 2.0 release``); ``compute_robust_hausdorff`` and
  ``compute_dice_coefficient`` use ``np.Inf`` / ``np.NaN`` too;
* it calls ``scipy.ndimage.filters.correlate`` and ``scipy.ndimage.morphology.distance_transform_edt``,
  deprecated namespaces (a DeprecationWarning on every call; SciPy 2.0 removes them).

:func:`patch_surface_distance` works round both without copying the library and without touching NumPy or
SciPy themselves: it rebinds the two module globals ``np`` and ``ndimage`` of ``surface_distance.metrics``
to thin proxies that forward every attribute to the real modules and add only ``Inf`` / ``NaN`` (NumPy) and
``filters`` / ``morphology`` (pointing at ``scipy.ndimage`` itself). It runs on import of this module and is
idempotent; nothing is patched where the library does not need it. Besides, :func:`nsd` never hands the
library an empty mask (the empty cases follow the convention below), so the ``np.Inf`` branch is not even
reached from here.

Convention for empty masks (``nsd``; nnU-Net's Dice is left as nnU-Net defines it):

* reference empty AND prediction empty -> NSD = ``both_empty`` (default 1.0: nothing to find and nothing
  predicted is perfect agreement of the two (empty) surfaces). nnU-Net's Dice is NaN there and is left out
  of its means (``np.nanmean``); NSD 1.0 is counted in the means. Pass ``both_empty=float('nan')`` to
  treat it like nnU-Net's Dice;
* exactly one of them empty -> NSD = 0.0 (no surface element of the non-empty mask lies within any finite
  tolerance of a surface that does not exist). nnU-Net's Dice is 0.0 there too.
"""
from __future__ import annotations

import math
import types
from typing import Iterable, Sequence

import numpy as np
import scipy.ndimage

import surface_distance
import surface_distance.metrics as _sd_metrics


class _NumpyAliases(types.ModuleType):
    """NumPy as surface-distance 0.1 expects it: the real module plus the aliases NumPy 2 removed."""

    Inf = np.inf
    NaN = np.nan

    def __getattr__(self, name):
        return getattr(np, name)


class _NdimageNamespaces(types.ModuleType):
    """scipy.ndimage plus its deprecated ``filters`` / ``morphology`` sub-namespaces (= scipy.ndimage)."""

    filters = scipy.ndimage
    morphology = scipy.ndimage

    def __getattr__(self, name):
        return getattr(scipy.ndimage, name)


def patch_surface_distance() -> None:
    """Make ``surface_distance.metrics`` work with NumPy 2.x and without SciPy deprecation warnings."""
    module_np = _sd_metrics.np
    if not isinstance(module_np, _NumpyAliases) and "Inf" not in vars(np):
        _sd_metrics.np = _NumpyAliases("numpy")
    if not isinstance(_sd_metrics.ndimage, _NdimageNamespaces):
        _sd_metrics.ndimage = _NdimageNamespaces("scipy.ndimage")


patch_surface_distance()


def nsd_key(tolerance_mm: float) -> str:
    """The metric's name in summary.json / summary.csv: ``NSD@1mm``, ``NSD@2.5mm``."""
    return f"NSD@{float(tolerance_mm):g}mm"


def _check_inputs(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float]):
    mask_ref = np.asarray(mask_ref)
    mask_pred = np.asarray(mask_pred)
    if mask_ref.shape != mask_pred.shape:
        raise ValueError(f"mask shapes differ: reference {mask_ref.shape}, prediction {mask_pred.shape}")
    if mask_ref.ndim not in (2, 3):
        raise ValueError(f"NSD needs 2D or 3D masks, got {mask_ref.ndim}D")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != mask_ref.ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must hold {mask_ref.ndim} positive numbers (array axis order), got {spacing}")
    return mask_ref.astype(bool, copy=False), mask_pred.astype(bool, copy=False), spacing


def nsd_at_tolerances(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float],
                      tolerances_mm: Iterable[float], both_empty: float = 1.0) -> dict[float, float]:
    """NSD at several tolerances (mm) from one surface-distance computation.

    ``spacing`` is in the masks' ARRAY axis order (for an array from ``sitk.GetArrayFromImage`` that is
    ``image.GetSpacing()[::-1]``). Returns ``{tolerance_mm: nsd}``. Empty masks: see the module docstring.
    """
    mask_ref, mask_pred, spacing = _check_inputs(mask_ref, mask_pred, spacing)
    tolerances = [float(t) for t in tolerances_mm]
    if any(not t >= 0 for t in tolerances):
        raise ValueError(f"tolerances must be >= 0 mm, got {tolerances}")
    ref_any, pred_any = bool(mask_ref.any()), bool(mask_pred.any())
    if not ref_any and not pred_any:
        return {t: float(both_empty) for t in tolerances}
    if not ref_any or not pred_any:
        return {t: 0.0 for t in tolerances}
    distances = surface_distance.compute_surface_distances(mask_ref, mask_pred, spacing)
    return {t: float(surface_distance.compute_surface_dice_at_tolerance(distances, t)) for t in tolerances}


def nsd(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float], tolerance_mm: float,
        both_empty: float = 1.0) -> float:
    """Normalised surface Dice of two binary masks at ``tolerance_mm`` (spacing in array axis order)."""
    return nsd_at_tolerances(mask_ref, mask_pred, spacing, [tolerance_mm], both_empty)[float(tolerance_mm)]
