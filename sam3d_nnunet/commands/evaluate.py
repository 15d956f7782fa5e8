"""``sam3d-nnunet evaluate``: nnU-Net's Dice plus normalised surface Dice (NSD) of a prediction folder.

Flags mirror ``nnUNetv2_evaluate_folder`` (``gt_folder pred_folder -djfile -pfile -o -np --chill``); the
folders may also be given as ``-ref`` / ``-pred``. ``-pfile`` is optional here (nnU-Net needs it only to
pick the label manager class; without it nnU-Net's default LabelManager is used).
"""
from __future__ import annotations

import argparse
import math
import sys

PROG = "sam3d-nnunet evaluate"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="Dice (nnU-Net's) and normalised surface Dice of a folder of predictions",
        description="Evaluate every reference segmentation in GT_FOLDER against the file of the same name in "
                    "PRED_FOLDER: nnU-Net's Dice, IoU, TP/FP/FN/TN, n_pred, n_ref and the normalised surface "
                    "Dice (DeepMind's surface-distance) at each --nsd-tolerance, per class (or region) and case, "
                    "at the images' real spacing. Writes nnU-Net's summary.json layout with NSD@<t>mm keys "
                    "added, and a per-case CSV next to it. Empty cases: both reference and prediction empty -> "
                    "Dice NaN (nnU-Net, left out of the means), NSD 1; only one empty -> Dice 0, NSD 0.")
    parser.add_argument("gt_folder", nargs="?", default=None, help="folder with reference segmentations "
                        "(or -ref)")
    parser.add_argument("pred_folder", nargs="?", default=None, help="folder with predicted segmentations "
                        "(or -pred)")
    parser.add_argument("-ref", dest="ref", default=None, metavar="GT_FOLDER", help="reference folder")
    parser.add_argument("-pred", dest="pred", default=None, metavar="PRED_FOLDER", help="prediction folder")
    parser.add_argument("-djfile", required=True, help="dataset.json (labels, regions, ignore label, file_ending)")
    parser.add_argument("-pfile", default=None, help="plans.json (optional: chooses nnU-Net's label manager class)")
    parser.add_argument("-o", dest="output", default=None,
                        help="output summary .json (default PRED_FOLDER/summary.json); the CSV goes next to it "
                             "with the same name and .csv")
    parser.add_argument("--csv", default=None, help="per-case CSV path (default: the -o file with .csv)")
    parser.add_argument("--nsd-tolerance", dest="tolerances", type=float, nargs="+", default=[1.0, 2.0, 5.0],
                        metavar="MM", help="NSD tolerances in mm (default: 1 2 5)")
    parser.add_argument("-np", dest="num_processes", type=int, default=None,
                        help="worker processes (default: $nnUNet_def_n_proc, else nnU-Net's default)")
    parser.add_argument("--chill", action="store_true",
                        help="don't fail if PRED_FOLDER lacks some reference cases (evaluate those present)")
    parser.add_argument("--geometry-tolerance", type=float, default=1e-3,
                        help="tolerance of the reference/prediction geometry check: spacing relative, origin in "
                             "voxels, direction cosines absolute (default 1e-3)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run, _parser=parser)


def _folder(positional, flag, name):
    if positional and flag and positional != flag:
        raise ValueError(f"{name} given twice, differently: {positional} and {flag}")
    value = positional or flag
    if not value:
        raise ValueError(f"the {name} folder is required (positional or -{'ref' if name == 'reference' else 'pred'})")
    return value


def _fmt(value) -> str:
    return "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    import os

    try:
        ref = _folder(args.gt_folder, args.ref, "reference")
        pred = _folder(args.pred_folder, args.pred, "prediction")
    except ValueError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    output = args.output or os.path.join(pred, "summary.json")

    from sam3d_nnunet.evaluation import EvaluationError, evaluate_folders, nsd_key

    try:
        result = evaluate_folders(ref, pred, args.djfile, args.pfile, output_file=output,
                                  tolerances_mm=args.tolerances, num_processes=args.num_processes,
                                  chill=args.chill, csv_file=args.csv, progress=not args.no_progress,
                                  geometry_tolerance=args.geometry_tolerance)
    except EvaluationError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1

    keys = ["Dice"] + [nsd_key(t) for t in sorted(set(args.tolerances))]
    print(f"{len(result['metric_per_case'])} case(s)")
    print("class".ljust(14) + "".join(k.rjust(11) for k in keys))
    for r, metrics in result["mean"].items():
        print(str(r).ljust(14) + "".join(_fmt(metrics[k]).rjust(11) for k in keys))
    print("foreground".ljust(14) + "".join(_fmt(result["foreground_mean"][k]).rjust(11) for k in keys))
    print(f"wrote {output}")
    print(f"wrote {args.csv or output[: -len('.json')] + '.csv'}")
    return 0
