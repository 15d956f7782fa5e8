"""``sam3d-nnunet convert {kits21,lits,msd,splits}``: datasets into nnU-Net v2's raw format, and the published
method's 5-fold split.pkl into nnU-Net's splits_final.json."""
from __future__ import annotations

import argparse
import os
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert KiTS21 / LiTS / MSD datasets and split.pkl files to nnU-Net's formats",
        description="Convert a dataset in its original layout into $nnUNet_raw/DatasetXXX_Name (imagesTr, "
                    "labelsTr, dataset.json), or a split.pkl into $nnUNet_preprocessed/DatasetXXX_Name/"
                    "splits_final.json. Every case is validated; outputs are written atomically and a rerun "
                    "skips the cases already converted.")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND")
    sources = {
        "kits21": ("KiTS21 folder (case_XXXXX/imaging.nii.gz + aggregated_MAJ_seg.nii.gz); case ids kept; "
                   "labels kidney 1, tumor 2, cyst 3", "KITS21_FOLDER"),
        "lits": ("LiTS release folder (volume-N.nii + segmentation-N.nii, subfolders allowed); volume-N becomes "
                 "case lits_NNNN; labels liver 1, tumor 2", "LITS_FOLDER"),
        "msd": ("a Medical Segmentation Decathlon task folder (TaskXX_Name); case ids kept", "TASK_FOLDER"),
    }
    for kind, (text, metavar) in sources.items():
        p = kinds.add_parser(kind, help=text, description=text)
        p.add_argument("source", metavar=metavar)
        p.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset id (1-999)")
        p.add_argument("--name", default=None,
                       help="dataset name (DatasetXXX_NAME); default KiTS21 / LiTS / the MSD task's name, "
                            "with a 'Tumour' suffix under --tumour-only")
        p.add_argument("--tumour-only", "--tumor-only", dest="tumour_only", action="store_true",
                       help="keep only the tumour label, relabelled to 1 (all other labels become 0)")
        if kind == "msd":
            p.add_argument("--tumour-label", "--tumor-label", dest="tumour_label", type=int, default=None,
                           help="label value of the tumour for --tumour-only (default: the one label whose "
                                "name contains tumour/tumor/cancer)")
        p.add_argument("-np", "--num-processes", type=int, default=None,
                       help="worker processes (default: $nnUNet_def_n_proc, else nnU-Net's default)")
        p.add_argument("--verify", action="store_true",
                       help="run nnU-Net's verify_dataset_integrity on the result")
        p.set_defaults(func=run)
    p = kinds.add_parser("splits", help="a 5-fold split.pkl -> splits_final.json",
                         description="Fold k's test cases become nnU-Net's 'val' of fold k, its train + val "
                                     "cases nnU-Net's 'train'. Names may carry paths and file endings; LiTS "
                                     "volume-N maps to lits_NNNN. The pickle is loaded with a restricted "
                                     "unpickler (lists, dicts, strings, tuples and ints only).")
    p.add_argument("split_pkl", metavar="SPLIT_PKL")
    p.add_argument("-d", "--dataset-id", required=True, help="nnU-Net dataset id or DatasetXXX_Name (converted)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, different splits_final.json")
    p.set_defaults(func=run)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def run(args: argparse.Namespace) -> int:
    from sam3d_nnunet.conversion import ConversionError
    try:
        if args.kind == "splits":
            from sam3d_nnunet.conversion import convert_splits
            print(f"wrote {convert_splits(args.split_pkl, args.dataset_id, overwrite=args.overwrite)}")
            return 0
        if not os.path.isdir(args.source):
            raise ConversionError(f"{args.source} is not a folder")
        num_processes = args.num_processes
        if num_processes is None:
            from nnunetv2.configuration import default_num_processes
            num_processes = default_num_processes
        common = dict(name=args.name, tumour_only=args.tumour_only, num_processes=max(1, num_processes))
        if args.kind == "kits21":
            from sam3d_nnunet.conversion import convert_kits21
            target = convert_kits21(args.source, args.dataset_id, **common)
        elif args.kind == "lits":
            from sam3d_nnunet.conversion import convert_lits
            target = convert_lits(args.source, args.dataset_id, **common)
        else:
            from sam3d_nnunet.conversion import convert_msd
            target = convert_msd(args.source, args.dataset_id, tumour_label=args.tumour_label, **common)
    except ConversionError as error:
        print(f"sam3d-nnunet convert {args.kind}: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {target}")
    if args.verify:
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
        try:
            verify_dataset_integrity(target, max(1, num_processes))
        except (AssertionError, RuntimeError, FileNotFoundError) as error:
            print(f"sam3d-nnunet convert {args.kind}: nnU-Net's integrity check failed: {error}", file=sys.stderr)
            return 1
    return 0
