"""``sam3d-nnunet benchmark``: SAM3D models under seeded click protocols against nnU-Net's baseline, on the
validation cases of finished cross-validation runs (nnU-Net's ``splits_final.json``; identical folds for every
method, checked).

Example::

    sam3d-nnunet benchmark -d 501 -c 3d_fullres -f 0 1 2 3 4 \\
        --sam nnUNetTrainerSAM3D:SAM3DPlans --baseline nnUNetTrainer:nnUNetPlans \\
        --clicks 1 3 10 --iterative 5 --seed 0 -device cpu

Protocols (per SAM3D model; clicks in raw voxel indices of the native ground truth):

* ``--clicks K ...``: K uniformly random voxels per class, seeded by (case, class, --seed), nested (the 1-click
  set is a subset of the 3-click set);
* ``--iterative N``: N clicks per class, the first random, each next at the centre of the largest error region of
  the current prediction; scored per step, as the area under the Dice curve (mean over steps) and final Dice;
* automatic mode (no clicks), unless ``--no-auto``;
* ``--box``: one box per class, the class's bounding box in the native ground truth (no jitter unless
  ``--box-jitter F``: each side moved outward by a seeded 0 .. round(F x extent) voxels);
* ``--box-iterative N``: the box, then N correction clicks per class placed as in ``--iterative`` (N + 1 steps:
  box_iterative_step_0 .. _N, per-step Dice, AUC, final Dice); implies ``--box``;
* ``--scribble``: one seeded positive scribble per class (the training simulation's ``simulate_scribble``).

nnU-Net's baseline is scored from its ``fold_X/validation``. Everything is scored against
``nnUNet_preprocessed/DatasetXXX/gt_segmentations`` with Dice and NSD at --nsd-tolerance mm (real spacing).

Output (``-o``, default ``nnUNet_results/DatasetXXX/benchmark``): ``report.md``, ``results.json``, PNG plots,
``predictions/``. Reruns reuse finished predictions.
"""
from __future__ import annotations

import argparse
import os
import sys

PROG = "sam3d-nnunet benchmark"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("benchmark", help="SAM3D (click protocols) vs nnU-Net on identical CV folds",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", dest="dataset", required=True, help="dataset name or id")
    parser.add_argument("-c", dest="configuration", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("-f", dest="folds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="folds (default 0 1 2 3 4)")
    parser.add_argument("--sam", action="append", default=[], metavar="TRAINER:PLANS",
                        help="a SAM3D model trained on these folds (repeatable), e.g. nnUNetTrainerSAM3D:SAM3DPlans")
    parser.add_argument("--sam-model", dest="sam_models", action="append", default=[], metavar="FOLDER[:FOLD]",
                        help="a given SAM3D model folder used as it is for every fold (repeatable), e.g. the "
                             "authors' model from import-reference: .../nnUNetTrainerSAM3D__3DSAMReferencePlans__"
                             "3d_fullres:all")
    parser.add_argument("--baseline", required=True, metavar="TRAINER:PLANS",
                        help="nnU-Net's baseline, e.g. nnUNetTrainer:nnUNetPlans")
    parser.add_argument("--clicks", type=int, nargs="+", default=[1, 3, 10], metavar="K",
                        help="random clicks per class (default 1 3 10)")
    parser.add_argument("--iterative", type=int, default=5, metavar="N",
                        help="clicks per class of the iterative correction protocol (default 5; 0 = off)")
    parser.add_argument("--box", action="store_true",
                        help="also score 1 box per class (the class's bounding box in the native ground truth)")
    parser.add_argument("--box-iterative", dest="box_iterative", type=int, default=0, metavar="N",
                        help="the box, then N correction clicks per class (N + 1 steps; default 0 = off)")
    parser.add_argument("--box-jitter", dest="box_jitter", type=float, default=0.0, metavar="F",
                        help="move each box side outward by a seeded 0..round(F x extent) voxels (default 0)")
    parser.add_argument("--scribble", action="store_true", help="also score 1 seeded scribble per class")
    parser.add_argument("--no-auto", dest="auto", action="store_false",
                        help="skip the automatic (zero-click) mode of prompted models")
    parser.add_argument("--seed", type=int, default=0, help="click seed (default 0)")
    parser.add_argument("--nsd-tolerance", dest="tolerances", type=float, nargs="+", default=[1.0, 2.0, 5.0],
                        metavar="MM", help="NSD tolerances in mm (default 1 2 5)")
    parser.add_argument("-o", dest="output", default=None,
                        help="output folder (default nnUNet_results/DatasetXXX/benchmark)")
    parser.add_argument("-device", dest="device", default="cpu", help="cpu, cuda or mps (default cpu)")
    parser.add_argument("--baseline-timing-cases", type=int, default=2, metavar="N",
                        help="time nnU-Net's predictor on N validation cases of the first fold (default 2; 0 = off)")
    parser.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth",
                        help="checkpoint of the SAM3D models (default checkpoint_final.pth)")
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from sam3d_nnunet.benchmark.runner import BenchmarkConfig, BenchmarkError, run_benchmark

    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print(f"{PROG}: error: -device cuda but torch.cuda.is_available() is False", file=sys.stderr)
            return 1
    cfg = BenchmarkConfig(dataset=args.dataset, configuration=args.configuration, folds=args.folds, sam=args.sam,
                          sam_models=args.sam_models,
                          baseline=args.baseline, clicks=args.clicks, iterative=args.iterative, auto=args.auto,
                          box=args.box, box_iterative=args.box_iterative, box_jitter=args.box_jitter,
                          scribble=args.scribble,
                          seed=args.seed, output_dir=args.output, device=args.device, tolerances_mm=args.tolerances,
                          baseline_timing_cases=args.baseline_timing_cases, progress=args.progress,
                          plots=args.plots, checkpoint_name=args.checkpoint)
    try:
        results = run_benchmark(cfg)
    except BenchmarkError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    folder = results["output_dir"]
    print()
    print(_headline(results))
    print(f"report:  {os.path.join(folder, 'report.md')}")
    print(f"results: {os.path.join(folder, 'results.json')}")
    return 0


def _headline(results: dict) -> str:
    """A short console summary: foreground-mean Dice per method and protocol."""
    import math
    lines = [f"{results['dataset']}: {len(results['cases'])} validation case(s), folds {results['folds']}"]
    base = results["methods"][results["baseline"]]
    d = base["summary"]["nnunet"]["foreground_mean"]["Dice"]
    lines.append(f"  {base['display']:<45s} mean Dice {d:.4f}")
    for key in results["sam_methods"]:
        m = results["methods"][key]
        parts = []
        for proto, s in m["summary"].items():
            v = s["foreground_mean"]["Dice"]
            if proto.startswith("iterative_step_") and proto != f"iterative_step_{results['iterative_steps']}":
                continue
            if proto.startswith("box_iterative_step_") and \
                    proto != f"box_iterative_step_{results.get('box_iterative_steps', 0)}":
                continue
            parts.append(f"{proto} {v:.4f}" if v is not None and not math.isnan(v) else f"{proto} nan")
        lines.append(f"  {m['display']:<45s} mean Dice " + ", ".join(parts))
    return "\n".join(lines)
