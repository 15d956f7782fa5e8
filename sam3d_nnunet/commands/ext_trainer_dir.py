"""``sam3d-nnunet ext-trainer-dir``: print the folder to put in ``nnUNet_extTrainer``.

nnU-Net finds trainers by class name, inside nnunetv2 and then in the folders listed in the environment
variable ``nnUNet_extTrainer``. The printed folder holds one small module that imports the SAM3D trainer classes
from ``sam3d_nnunet.trainers`` (so their ``__module__`` stays the real package's, and pickling and multiprocessing
work), which makes them visible to the stock ``nnUNetv2_train`` and ``nnUNetv2_predict``::

    export nnUNet_extTrainer=$(sam3d-nnunet ext-trainer-dir)
    nnUNetv2_train DATASET 3d_fullres 0 -tr nnUNetTrainerSAM3D -p SAM3DPlans
"""
from __future__ import annotations

import argparse
import os


def ext_trainer_dir() -> str:
    """Absolute path of the folder with the one-line trainer module (ships inside the installed package)."""
    import sam3d_nnunet.trainers as trainers
    return os.path.join(os.path.dirname(os.path.abspath(trainers.__file__)), "nnunet_ext")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("ext-trainer-dir", help="print the folder for nnUNet_extTrainer",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    print(ext_trainer_dir())
    return 0
