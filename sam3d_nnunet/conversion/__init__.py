"""Dataset conversion into nnU-Net v2's raw format (``sam3d-nnunet convert ...``).

* :func:`convert_kits21` - KiTS21 (``case_XXXXX/imaging.nii.gz``, ``aggregated_MAJ_seg.nii.gz``); ids kept.
* :func:`convert_lits` - LiTS release (plain ``volume-N.nii``/``segmentation-N.nii``); ``volume-N`` -> ``lits_NNNN``.
* :func:`convert_msd` - any Medical Segmentation Decathlon task (wraps nnU-Net's MSD converter); ids kept.
* :func:`convert_splits` - the published method's 5-fold ``split.pkl`` -> ``splits_final.json``.

Each converter can keep only the tumour label (``tumour_only``, relabelled to 1), as the paper did. Modules
import SimpleITK, nibabel and nnU-Net lazily.
"""
from .common import ConversionError
from .kits21 import convert_kits21
from .lits import convert_lits, lits_case_id
from .msd import convert_msd
from .splits import convert_splits, load_split_pickle

__all__ = ["ConversionError", "convert_kits21", "convert_lits", "convert_msd", "convert_splits",
           "lits_case_id", "load_split_pickle"]
