"""``sam3d-nnunet crossval-summary``: the cross-validation of one trained model, automatic and prompted, in one
table.

Example::

    sam3d-nnunet crossval-summary -d 501 -tr nnUNetTrainerSAM3D -p SAM3DPlans -c 3d_fullres -f 0 1 2 3 4 -o cv.json

Folders read in every available fold (``nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG/fold_X``):

* ``validation/``: the automatic predictions (no clicks), what ``nnUNetv2_predict`` gives and what
  ``nnUNetv2_find_best_configuration`` ranks;
* ``validation_clicks{N}_seed{S}/``: the prompted cross-validation (N seeded random clicks per class, seed S), one
  row each.

Every case is scored against ``nnUNet_preprocessed/DatasetXXX/gt_segmentations`` (``nnUNet_raw/.../labelsTr`` if
that is absent): nnU-Net's Dice and the normalised surface Dice at --nsd-tolerance mm (real spacing). The table
(Dice / NSD at 5 mm, or the largest tolerance given, in % per class) goes to the console; ``-o`` writes everything
(every tolerance, per case) as JSON. A fold whose ``validation/`` holds prompted predictions of an older version is
refused (rerun ``nnUNetv2_train ... --val``).
"""
from __future__ import annotations

import argparse
import sys

PROG = "sam3d-nnunet crossval-summary"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("crossval-summary",
                                   help="automatic (validation/) and prompted (validation_clicks*) cross-validation "
                                        "of one model in one table, Dice and NSD",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", dest="dataset", required=True, help="dataset name or id")
    parser.add_argument("-tr", dest="trainer", required=True, help="trainer, e.g. nnUNetTrainerSAM3D")
    parser.add_argument("-p", dest="plans", required=True, help="plans identifier, e.g. SAM3DPlans")
    parser.add_argument("-c", dest="configuration", required=True, help="configuration, e.g. 3d_fullres")
    parser.add_argument("-f", dest="folds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="folds to aggregate where present (default 0 1 2 3 4)")
    parser.add_argument("-o", dest="output", default=None, help="write the summary (per case too) to this .json")
    parser.add_argument("--nsd-tolerance", dest="tolerances", type=float, nargs="+", default=[1.0, 2.0, 5.0],
                        metavar="MM", help="NSD tolerances in mm (default 1 2 5)")
    parser.add_argument("-np", dest="num_processes", type=int, default=None,
                        help="worker processes (default: $nnUNet_def_n_proc, else nnU-Net's default)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sam3d_nnunet.benchmark.crossval import crossval_summary, render_table
    from sam3d_nnunet.benchmark.runner import BenchmarkError, atomic_write_json
    from sam3d_nnunet.evaluation import EvaluationError

    if args.output is not None and not args.output.endswith(".json"):
        print(f"{PROG}: error: -o must name a .json file, got {args.output}", file=sys.stderr)
        return 1
    try:
        summary = crossval_summary(args.dataset, args.trainer, args.plans, args.configuration, args.folds,
                                   args.tolerances, args.num_processes)
        if args.output is not None:
            atomic_write_json(args.output, summary)
    except (BenchmarkError, EvaluationError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"{PROG}: error: cannot write {error.filename or args.output}: {error.strerror or error}",
              file=sys.stderr)
        return 1
    print(render_table(summary))
    if args.output is not None:
        print(f"\nwrote {args.output}")
    return 0
