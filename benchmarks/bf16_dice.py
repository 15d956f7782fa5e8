"""Effect of bf16 autocast on accuracy: a trained SAM3D model's validation cases predicted in fp32 and in bf16.

    python benchmarks/bf16_dice.py MODEL_FOLDER -f 0 [--clicks 1] [--seed 0]

MODEL_FOLDER is ``nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>``; ``nnUNet_preprocessed`` must
hold that dataset's preprocessed data and ``splits_final.json``. Each validation case of the fold is
predicted on its preprocessed array with the same seeded clicks (``protocol_prompts_from_label``, as the
trainer's final validation) once with ``precision="fp32"`` and once with ``"bf16"``. Printed per case and on
average: Dice of each against the preprocessed label, the Dice difference, the share of voxels whose label
differs between the two, and the time per case.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch


def dice(prediction: np.ndarray, reference: np.ndarray, label: int) -> float:
    p, r = prediction == label, reference == label
    total = p.sum() + r.sum()
    return float("nan") if total == 0 else float(2 * (p & r).sum() / total)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_folder")
    parser.add_argument("-f", "--fold", type=int, default=0)
    parser.add_argument("--clicks", type=int, default=1, help="random clicks per class (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from sam3d_nnunet.inference.prompted_predictor import PromptedPredictor, protocol_prompts_from_label
    from sam3d_nnunet.model import bf16_is_fast

    if not bf16_is_fast("cpu"):
        print("note: this CPU has no bf16 matrix instructions; bf16 is emulated (slow) but the numbers still hold")
    predictor = PromptedPredictor.from_trained_model_folder(args.model_folder, folds=(args.fold,))
    dataset_name = os.path.basename(os.path.dirname(os.path.abspath(args.model_folder)))
    preprocessed = os.path.join(nnUNet_preprocessed, dataset_name)
    with open(os.path.join(preprocessed, "splits_final.json")) as f:
        cases = json.load(f)[args.fold]["val"]
    data_folder = os.path.join(preprocessed, predictor.configuration_manager.data_identifier)
    dataset = infer_dataset_class(data_folder)(data_folder, cases)
    labels = [int(c) for c in predictor.label_manager.foreground_labels]

    rows = []
    for case in cases:
        data, seg, _, _ = dataset.load_case(case)
        seg = np.asarray(seg[0])
        prompts = protocol_prompts_from_label(seg, case, labels, args.clicks, args.seed)
        row = {"case": case}
        segmentations = {}
        for precision in ("fp32", "bf16"):
            predictor.precision = precision
            start = time.perf_counter()
            probabilities = predictor.predict_preprocessed(np.asarray(data), prompts)
            row[f"time_{precision}_s"] = time.perf_counter() - start
            segmentations[precision] = probabilities.argmax(0).numpy()
            for c in labels:
                row[f"dice_{precision}_{c}"] = dice(segmentations[precision], seg, c)
        row["voxels_differing"] = float((segmentations["fp32"] != segmentations["bf16"]).mean())
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\n{len(rows)} validation case(s) of fold {args.fold}, {args.clicks} seeded click(s) per class")
    print("| class | Dice fp32 | Dice bf16 | mean |difference| | largest |difference| |")
    print("|---|---|---|---|---|")
    for c in labels:
        a = np.array([r[f"dice_fp32_{c}"] for r in rows], dtype=float)
        b = np.array([r[f"dice_bf16_{c}"] for r in rows], dtype=float)
        ok = ~(np.isnan(a) | np.isnan(b))
        print(f"| {c} | {100 * np.nanmean(a):.2f} | {100 * np.nanmean(b):.2f} | "
              f"{100 * np.abs(a - b)[ok].mean():.3f} | {100 * np.abs(a - b)[ok].max():.3f} |")
    print(f"voxels labelled differently: mean {100 * np.mean([r['voxels_differing'] for r in rows]):.4f}%, "
          f"largest {100 * max(r['voxels_differing'] for r in rows):.4f}%")
    print(f"time per case: fp32 {np.mean([r['time_fp32_s'] for r in rows]):.2f} s, "
          f"bf16 {np.mean([r['time_bf16_s'] for r in rows]):.2f} s")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"model_folder": args.model_folder, "fold": args.fold, "clicks": args.clicks,
                       "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
