"""``sam3d-nnunet model-summary``: parameter counts of a configuration, optionally with a SAM checkpoint."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "model-summary", help="parameter counts of a SAM3D configuration (no weights needed)",
        description="Build the network on PyTorch's meta device (no memory, no weights) and count its "
                    "trainable and frozen parameters. With --checkpoint, also load and convert a SAM checkpoint.")
    parser.add_argument("--variant", default="vit_b", help="SAM variant: vit_b (default), vit_l, vit_h, tiny")
    parser.add_argument("--patch-size", type=int, nargs=3, default=[128, 128, 128], metavar=("D", "H", "W"))
    parser.add_argument("--token-stride", type=int, default=4)
    parser.add_argument("--window-size", type=int, default=8)
    parser.add_argument("--adapter-dim", type=int, default=None)
    parser.add_argument("--finetune", default="adapter", help="fine-tuning policy: adapter (default), full, lora")
    parser.add_argument("--decoder", default="mla", choices=["mla", "linear"],
                        help="mla: the paper's decoder (default); linear: the faster, non-paper decoder")
    parser.add_argument("--input-channels", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=2, help="classes including background")
    parser.add_argument("--checkpoint", default=None, help="a SAM checkpoint (.pth) to load and convert")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from sam3d_nnunet.model import SAM3DNet, SAMCheckpointError, load_sam_checkpoint, parameter_summary

    kwargs = dict(variant=args.variant, patch_size=args.patch_size, token_stride=args.token_stride,
                  window_size=args.window_size, adapter_dim=args.adapter_dim, finetune=args.finetune,
                  decoder=args.decoder)
    try:
        with torch.device("meta"):
            model = SAM3DNet(args.input_channels, args.num_classes, **kwargs)
        summary: dict = {"variant": args.variant, "patch_size": args.patch_size, "finetune": args.finetune,
                         **parameter_summary(model)}
        if args.checkpoint:
            model = SAM3DNet(args.input_channels, args.num_classes, **kwargs)  # real tensors to load into
            summary["checkpoint"] = load_sam_checkpoint(model, args.checkpoint).as_dict()
    except (ValueError, SAMCheckpointError) as error:
        print(f"sam3d-nnunet model-summary: error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>18}: {value:,}" if isinstance(value, int) else f"{key:>18}: {value}")
    return 0
