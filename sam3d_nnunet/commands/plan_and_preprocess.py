"""``sam3d-nnunet plan_and_preprocess``: nnU-Net's ``nnUNetv2_plan_and_preprocess``, able to find the SAM3D planner.

The argument parser IS nnU-Net's (taken from ``plan_and_preprocess_entry`` at run time, so every option of the
installed nnU-Net is accepted with its own meaning), with two additions:

* ``--sam-variant {vit_b,vit_l,vit_h,tiny}`` (default vit_b) and
* ``--sam-checkpoint PATH`` (a Segment Anything ``.pth``; without it training starts from random weights, with a
  loud warning),

and one changed default: ``-pl`` defaults to ``SAM3DPlanner`` (plans identifier ``SAM3DPlans`` unless
``-overwrite_plans_name`` says otherwise). The run itself is nnU-Net's entry function (fingerprint
extraction, planning, preprocessing with the DefaultPreprocessor); the only difference is that nnU-Net's
planner lookup, which searches inside nnunetv2 only, also finds the planners of ``sam3d_nnunet.planners``.
Configurations the SAM3D plans do not hold (2d, 3d_lowres) are skipped by nnU-Net's preprocessing with an
INFO line; pass ``-c 3d_fullres`` to avoid those lines.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import sys

SAM_PLANNERS = ("SAM3DPlanner",)
SAM_VARIANT_CHOICES = ("vit_b", "vit_l", "vit_h", "tiny")


class _ParserCaptured(Exception):
    pass


def nnunet_plan_and_preprocess_parser() -> argparse.ArgumentParser:
    """nnU-Net's own parser of ``nnUNetv2_plan_and_preprocess`` (built by its entry function, captured before
    it parses anything)."""
    from nnunetv2.experiment_planning import plan_and_preprocess_entrypoints as entry

    captured = {}

    def capture(self, *args, **kwargs):
        captured["parser"] = self
        raise _ParserCaptured

    with _patched(argparse.ArgumentParser, "parse_args", capture):
        try:
            entry.plan_and_preprocess_entry()
        except _ParserCaptured:
            pass
    if "parser" not in captured:
        raise RuntimeError("could not obtain nnU-Net's plan_and_preprocess argument parser")
    return captured["parser"]


@contextlib.contextmanager
def _patched(owner, name, value):
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parent = nnunet_plan_and_preprocess_parser()
    parser = subparsers.add_parser(
        "plan_and_preprocess", parents=[parent], conflict_handler="resolve",
        help="nnUNetv2_plan_and_preprocess with the SAM3D planner (-pl SAM3DPlanner, the default here)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(pl="SAM3DPlanner")
    parser.add_argument("--sam-variant", dest="sam_variant", default="vit_b", choices=SAM_VARIANT_CHOICES,
                        help="SAM image encoder the plans are made for (default vit_b; tiny = small test encoder)")
    parser.add_argument("--sam-checkpoint", dest="sam_checkpoint", default=None,
                        help="Segment Anything checkpoint (.pth) recorded in the plans and loaded by the trainer; "
                             "without it training starts from random weights (loud warning)")
    parser.add_argument("--decoder", default="mla", choices=["mla", "linear"],
                        help="mla: the paper's multi-layer-aggregation decoder (default); linear: a faster "
                             "decoder with a linear fusion head, not the paper's (BENCHMARKS.md compares them)")
    parser.add_argument("--click-maps", dest="click_maps", action="store_true",
                        help="clicks also enter the network as dense maps (where they are), not only through the "
                             "sampled features as in the paper; needed to learn to follow clicks on a short budget")
    parser.set_defaults(func=run)
    return parser


def planner_for(name: str, sam_variant: str, sam_checkpoint: str | None, decoder: str = "mla",
                click_maps: bool = False):
    """The planner class (bound to the SAM options) for a SAM planner name, else None."""
    if name not in SAM_PLANNERS:
        return None
    from sam3d_nnunet.planners import sam3d_planner
    cls = getattr(sam3d_planner, name)
    return functools.partial(cls, sam_variant=sam_variant, sam_checkpoint=sam_checkpoint, decoder=decoder,
                             click_maps=click_maps)


class PlanningInputError(Exception):
    """A dataset the command cannot plan; printed as one ``error:`` line (exit status 1)."""


def raw_dataset_folders(dataset_ids) -> dict:
    """{dataset id as given: its folder under ``$nnUNet_raw``}, or ``PlanningInputError`` naming the id nnU-Net
    cannot resolve (nnU-Net's own error is a multi-line traceback after it has started fingerprinting)."""
    import os

    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise PlanningInputError("the environment variable nnUNet_raw is not set (nnU-Net's "
                                 "documentation/setting_up_paths.md)")
    folders = {}
    for d in dataset_ids:
        try:
            name = maybe_convert_to_dataset_name(d)
        except Exception:  # noqa: BLE001 - nnU-Net raises RuntimeError with a multi-line message
            raise PlanningInputError(f"no dataset {d} in nnUNet_raw={raw} (nor in nnUNet_preprocessed / "
                                     f"nnUNet_results): expected a folder Dataset{int(d):03d}_<name>") from None
        folder = os.path.join(raw, name)
        if not os.path.isfile(os.path.join(folder, "dataset.json")):
            raise PlanningInputError(f"dataset {d}: {os.path.join(folder, 'dataset.json')} does not exist "
                                     f"(planning reads the raw dataset)")
        folders[d] = folder
    return folders


def refuse_region_based(folders: dict) -> None:
    """The SAM3D planner's refusal of region-based datasets, before nnU-Net's fingerprint."""
    import json
    import os

    from sam3d_nnunet.planners.sam3d_planner import region_based_refusal
    for folder in folders.values():
        path = os.path.join(folder, "dataset.json")
        try:
            with open(path, encoding="utf-8") as f:
                dataset_json = json.load(f)
        except (OSError, ValueError) as error:
            raise PlanningInputError(f"cannot read {path}: {error}") from None
        reason = region_based_refusal(dataset_json if isinstance(dataset_json, dict) else {},
                                      os.path.basename(folder))
        if reason is not None:
            raise PlanningInputError(f"SAM3DPlanner: {reason}")


def run(args: argparse.Namespace) -> int:
    from nnunetv2.experiment_planning import plan_and_preprocess_api as api
    from nnunetv2.experiment_planning import plan_and_preprocess_entrypoints as entry

    from sam3d_nnunet.validation import InputFileError, validate_raw_datasets

    if args.d is None:
        print("sam3d-nnunet plan_and_preprocess: error: -d DATASET_ID is required", file=sys.stderr)
        return 2
    ours = planner_for(args.pl, args.sam_variant, args.sam_checkpoint, args.decoder, args.click_maps)
    if ours is None and args.sam_checkpoint is not None:
        print(f"WARNING: planner {args.pl} is not a SAM3D planner; --sam-variant/--sam-checkpoint are ignored",
              file=sys.stderr)
    if ours is not None:  # fail before fingerprinting if the checkpoint path is wrong
        import os
        if args.sam_checkpoint is not None and not os.path.isfile(os.path.expanduser(args.sam_checkpoint)):
            print(f"sam3d-nnunet plan_and_preprocess: error: SAM checkpoint {args.sam_checkpoint} does not exist",
                  file=sys.stderr)
            return 2
    try:  # unknown ids, region-based labels and every raw image and label, before nnU-Net's fingerprint
        folders = raw_dataset_folders(args.d)
        if ours is not None:
            refuse_region_based(folders)
        validate_raw_datasets(args.d, num_workers=max(1, int(args.npfp or 1)))
    except (PlanningInputError, InputFileError) as error:
        print(f"sam3d-nnunet plan_and_preprocess: error: {error}", file=sys.stderr)
        return 1

    original_find = api.recursive_find_python_class

    def find_class(folder, class_name, current_module, *a, **kw):
        if ours is not None and class_name == args.pl:
            return ours
        return original_find(folder, class_name, current_module, *a, **kw)

    with _patched(api, "recursive_find_python_class", find_class), \
            _patched(argparse.ArgumentParser, "parse_args", lambda self, *a, **kw: args):
        entry.plan_and_preprocess_entry()
    return 0
