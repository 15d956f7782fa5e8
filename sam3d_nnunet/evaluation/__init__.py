"""Evaluation: nnU-Net's Dice / IoU plus normalised surface Dice (NSD) at real spacing.

Python API (also used by ``sam3d-nnunet evaluate``):

* :func:`evaluate_folders` — a folder of predictions against a folder of references -> nnU-Net's summary
  dict (``metric_per_case``, ``mean``, ``foreground_mean``) with ``NSD@<t>mm`` added; optionally writes
  summary.json (nnU-Net's layout) and summary.csv (one row per case and class);
* :func:`evaluate_file_pairs` — given (reference, prediction) file pairs, in worker processes (for
  :func:`aggregate`);
* :func:`compute_case_metrics` — one case;
* :func:`nsd`, :func:`nsd_at_tolerances` — NSD of two binary masks (spacing in array axis order).

Conventions: see :mod:`sam3d_nnunet.evaluation.surface` (empty masks, the surface-distance NumPy 2 shim)
and :mod:`sam3d_nnunet.evaluation.evaluate` (what is nnU-Net's, geometry checks, ignore label).
"""
from sam3d_nnunet.evaluation.evaluate import (DEFAULT_GEOMETRY_TOLERANCE, DEFAULT_TOLERANCES_MM, EvaluationError,
                                              Geometry, aggregate, check_same_geometry, compute_case_metrics,
                                              csv_columns, evaluate_file_pairs, evaluate_folders,
                                              load_label_manager, read_segmentation, write_summary_csv,
                                              write_summary_json)
from sam3d_nnunet.evaluation.surface import nsd, nsd_at_tolerances, nsd_key, patch_surface_distance

__all__ = [
    "DEFAULT_GEOMETRY_TOLERANCE", "DEFAULT_TOLERANCES_MM", "EvaluationError", "Geometry", "aggregate",
    "check_same_geometry", "compute_case_metrics", "csv_columns", "evaluate_file_pairs", "evaluate_folders",
    "load_label_manager", "read_segmentation", "write_summary_csv", "write_summary_json", "nsd", "nsd_at_tolerances", "nsd_key",
    "patch_surface_distance",
]
