"""Time of one more interaction after the first encoding: a click, a box, a scribble and the previous mask.

    python benchmarks/prompt_interaction_times.py MODEL_FOLDER IMAGE LABEL [--fold 0] [--class-id 1]
        [--repeats 5] [--seed 0] [--case-id ID] [-o times.json]

An ``InteractiveSession`` (what napari and the Python API use) loads the model (``checkpoint_final.pth``) and the
image (preprocessed once), and takes a first positive click on the class (the encoder runs for the windows it
needs: "first interaction"). Then each interaction below is applied once untimed (so every window it needs is
encoded and cached), undone, and timed ``--repeats`` times (the kinds interleaved), each time from the same
state (the first click) and undone afterwards:

* ``click``: a second positive click (the second of the seeded 2-click protocol, ``protocol_clicks``);
* ``box``: the class's bounding box in LABEL (the benchmark's ``box`` protocol);
* ``scribble``: the benchmark's seeded ``scribble`` protocol;
* ``mask``: the session's own prediction after the first click, as the previous mask (``set_mask``).

The time is the session call as a user waits for it: the prompt's reduction to sampler points and the dense
prompt (``ClassPrompt.from_prompts``, mapped into the preprocessed array), the decoder over the class's windows
(cached encoder features) and the label map in the raw geometry. ``prompt_s`` is the first part alone (the same
mapping, timed separately); ``windows`` the number of windows the decoder ran over. Prints a table and writes
JSON (median and minimum, the ratio to the click). On a machine shared with other jobs the wall times scatter,
so the process's CPU time (``time.process_time``, all its threads) is recorded too: it counts the work, not the
waiting (with ``--threads 1``: with several threads, a thread waiting for another spins and counts). Threads:
torch's default (all cores) unless ``--threads``; the machine's load is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np


def _load_label(path: str) -> np.ndarray:
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def interactions(label: np.ndarray, case_id: str, class_id: int, seed: int, first_mask: np.ndarray) -> dict:
    """The prompts of each timed interaction (raw array order), from the benchmark's protocols."""
    from sam3d_nnunet.benchmark.protocols import bounding_box_prompts, scribble_prompts
    from sam3d_nnunet.prompts.shapes import ClickPrompt, MaskPrompt
    from sam3d_nnunet.prompts.simulation import case_class_seed, protocol_clicks
    clicks = protocol_clicks(label, class_id, 2, case_class_seed(case_id, class_id, seed))
    return {"click": ClickPrompt(tuple(clicks[-1]), True),
            "box": bounding_box_prompts(label, case_id, [class_id], seed)[class_id][0],
            "scribble": scribble_prompts(label, case_id, [class_id], seed)[class_id][0],
            "mask": MaskPrompt(first_mask.astype(np.float32))}


def time_interactions(session, label: np.ndarray, case_id: str, class_id: int, seed: int, repeats: int) -> dict:
    from sam3d_nnunet.inference.prompted_predictor import ClassPrompt, class_prompt_to_preprocessed
    from sam3d_nnunet.prompts.shapes import ClickPrompt
    from sam3d_nnunet.prompts.simulation import case_class_seed, protocol_clicks
    first = protocol_clicks(label, class_id, 1, case_class_seed(case_id, class_id, seed))[0]
    t0 = time.perf_counter()
    session.add_click(tuple(first), True, class_id)
    first_s = time.perf_counter() - t0
    first_mask = session.class_mask(class_id)
    prompts = interactions(label, case_id, class_id, seed, first_mask)
    out = {"first_interaction_s": first_s, "first_click_zyx": [float(v) for v in first], "interactions": {}}
    times = {kind: [] for kind in prompts}
    cpu_times = {kind: [] for kind in prompts}
    prompt_times = {kind: [] for kind in prompts}
    windows = {}
    for kind, prompt in prompts.items():
        session.add_prompt(prompt, class_id)  # warm-up: encodes any window this prompt needs
        session.undo()
    for _ in range(repeats):  # interleaved, so that a change of the machine's load hits every kind alike
        for kind, prompt in prompts.items():
            t0, c0 = time.perf_counter(), time.process_time()
            session.add_prompt(prompt, class_id)
            times[kind].append(time.perf_counter() - t0)
            cpu_times[kind].append(time.process_time() - c0)
            session.undo()
            state = [ClickPrompt(tuple(first), True), prompt]
            t0 = time.perf_counter()
            pre = class_prompt_to_preprocessed(ClassPrompt.from_prompts(state, label.shape), session._properties,
                                               session.plans_manager.transpose_forward, session._data.shape[1:])
            prompt_times[kind].append(time.perf_counter() - t0)
            if kind not in windows:
                session.predictor.predict_preprocessed(session._data, {class_id: pre})
                windows[kind] = len(session.predictor.last_report.windows.get(class_id, [])) \
                    if getattr(session.predictor, "last_report", None) is not None else None
    for kind in prompts:
        out["interactions"][kind] = {"median_s": statistics.median(times[kind]), "min_s": min(times[kind]),
                                     "times_s": times[kind], "cpu_median_s": statistics.median(cpu_times[kind]),
                                     "cpu_times_s": cpu_times[kind],
                                     "prompt_median_s": statistics.median(prompt_times[kind]),
                                     "windows": windows.get(kind)}
    click = out["interactions"]["click"]
    for v in out["interactions"].values():
        v["ratio_to_click"] = v["median_s"] / click["median_s"]
        v["cpu_ratio_to_click"] = v["cpu_median_s"] / click["cpu_median_s"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_folder")
    parser.add_argument("image", help="the raw image (one channel file)")
    parser.add_argument("label", help="its ground truth (places the prompts)")
    parser.add_argument("--fold", default="0")
    parser.add_argument("--class-id", dest="class_id", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case-id", dest="case_id", default=None, help="seeds the prompts (default: from LABEL)")
    parser.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default 0: torch's default; 1 makes the CPU time a clean measure of "
                             "the work: no thread waits spinning on a shared machine)")
    parser.add_argument("--feature-cache-size", dest="cache", type=int, default=64,
                        help="encoder windows the session keeps (default 64: every kind's windows stay cached)")
    parser.add_argument("-o", dest="output", default=None, help="JSON output")
    args = parser.parse_args(argv)
    import torch
    from sam3d_nnunet.inference import InteractiveSession
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    fold = int(args.fold) if args.fold.isdigit() else args.fold
    case_id = args.case_id or os.path.basename(args.label).split(".")[0]
    label = _load_label(args.label)
    t0 = time.perf_counter()
    session = InteractiveSession.from_trained_model_folder(args.model_folder, folds=(fold,),
                                                           checkpoint_name=args.checkpoint, device="cpu",
                                                           feature_cache_size=args.cache)
    session.set_image(args.image)
    load_s = time.perf_counter() - t0
    result = {"model_folder": os.path.abspath(args.model_folder), "image": os.path.abspath(args.image),
              "label": os.path.abspath(args.label), "case_id": case_id, "class_id": args.class_id,
              "seed": args.seed, "repeats": args.repeats, "feature_cache_size": args.cache,
              "raw_shape": list(label.shape),
              "preprocessed_shape": list(session._data.shape[1:]), "load_and_preprocess_s": load_s,
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "python": sys.version.split()[0],
              "load_average_before": os.getloadavg()}
    result.update(time_interactions(session, label, case_id, args.class_id, args.seed, args.repeats))
    result["load_average_after"] = os.getloadavg()
    print(f"{case_id}: raw {tuple(label.shape)}, preprocessed {tuple(session._data.shape[1:])}; first click "
          f"(with encoding) {result['first_interaction_s']:.2f} s; load average "
          f"{result['load_average_before'][0]:.1f} -> {result['load_average_after'][0]:.1f}")
    print(f"{'interaction':<10s} {'median s':>9s} {'min s':>8s} {'x click':>8s} {'CPU s':>8s} {'x click':>8s} "
          f"{'prompt s':>9s} {'windows':>8s}")
    for kind, v in result["interactions"].items():
        print(f"{kind:<10s} {v['median_s']:9.3f} {v['min_s']:8.3f} {v['ratio_to_click']:8.2f} "
              f"{v['cpu_median_s']:8.3f} {v['cpu_ratio_to_click']:8.2f} {v['prompt_median_s']:9.3f} "
              f"{str(v['windows']):>8s}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
