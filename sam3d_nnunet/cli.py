"""The ``sam3d-nnunet`` command.

Each sub-command lives in its own module and is imported only when it runs, so that a quick command
such as ``model-summary`` does not pay for importing nnU-Net. A module registers its sub-command with
``add_parser(subparsers)`` and the parser's ``func`` default.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name -> module providing `add_parser(subparsers)`
SUBCOMMANDS: dict[str, str] = {
    "model-summary": "sam3d_nnunet.commands.model_summary",
    "evaluate": "sam3d_nnunet.commands.evaluate",
    "plan_and_preprocess": "sam3d_nnunet.commands.plan_and_preprocess",
    "ext-trainer-dir": "sam3d_nnunet.commands.ext_trainer_dir",
    "convert": "sam3d_nnunet.commands.convert",
    "benchmark": "sam3d_nnunet.commands.benchmark",
    "crossval-summary": "sam3d_nnunet.commands.crossval_summary",
    "demo": "sam3d_nnunet.commands.demo",
    "predict": "sam3d_nnunet.commands.predict",
    "import-reference": "sam3d_nnunet.commands.import_reference",
}

# sub-command name -> the one-line help `sam3d-nnunet --help` lists without importing the command's module (the
# same text as the module's own `help=`, checked by tests/test_cli.py)
SUMMARIES: dict[str, str] = {
    "model-summary": "parameter counts of a SAM3D configuration (no weights needed)",
    "evaluate": "Dice (nnU-Net's) and normalised surface Dice of a folder of predictions",
    "plan_and_preprocess": "nnUNetv2_plan_and_preprocess with the SAM3D planner (-pl SAM3DPlanner, the default here)",
    "ext-trainer-dir": "print the folder for nnUNet_extTrainer",
    "convert": "convert KiTS21 / LiTS / MSD datasets and split.pkl files to nnU-Net's formats",
    "benchmark": "SAM3D (click protocols) vs nnU-Net on identical CV folds",
    "demo": "the whole pipeline on synthetic CT phantoms (minutes on a CPU)",
    "predict": "prompted whole-volume prediction of a folder of images (nnU-Net's conventions)",
    "import-reference": "import an authors' 3DSAM-adapter checkpoint as an nnU-Net model folder",
    "crossval-summary": "automatic (validation/) and prompted (validation_clicks*) cross-validation of one model in "
                        "one table, Dice and NSD",
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser for ``argv``: only the sub-command ``argv`` names (its first word) has its module imported and
    its full parser built; the others are listed by name and help line (``--help`` imports none of them: the
    plan_and_preprocess parser alone is nnU-Net's, which imports torch)."""
    parser = argparse.ArgumentParser(
        prog="sam3d-nnunet",
        description="The SAM 3D adapter (3DSAM-adapter) inside nnU-Net v2.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    for name, module_name in SUBCOMMANDS.items():
        if name == wanted:
            importlib.import_module(module_name).add_parser(subparsers)
        else:  # listed without importing its (possibly heavy) module
            subparsers.add_parser(name, help=SUMMARIES.get(name), description=f"see `sam3d-nnunet {name} -h`")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
