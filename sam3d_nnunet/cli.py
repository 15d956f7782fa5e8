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
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam3d-nnunet",
        description="The SAM 3D adapter (3DSAM-adapter) inside nnU-Net v2.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    for name, module_name in SUBCOMMANDS.items():
        if wanted is None or name == wanted:
            importlib.import_module(module_name).add_parser(subparsers)
        else:  # listed in --help without importing its (possibly heavy) module
            subparsers.add_parser(name, help=f"see `sam3d-nnunet {name} -h`")
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
