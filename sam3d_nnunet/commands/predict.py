"""``sam3d-nnunet predict``: whole-volume prompted segmentation of a folder of images, nnU-Net style.

    sam3d-nnunet predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d DATASET [-c 3d_fullres] [-tr nnUNetTrainerSAM3D]
                         [-p SAM3DPlans] [-f 0 1 2 3 4] [-chk checkpoint_final.pth] [-device cpu|cuda]
                         (--clicks CLICKS.json | --simulate-clicks LABELS_FOLDER [--n-clicks K] [--seed S] | --auto)
                         [--save_probabilities] [--overwrite]
    sam3d-nnunet predict -i ... -o ... -m MODEL_FOLDER ...          # the trained model folder itself

Model: ``$nnUNet_results/<DATASET>/<TRAINER>__<PLANS>__<CONFIGURATION>`` (``-d`` takes the id or the full
``DatasetXXX_Name``), or ``-m``. Several folds are ensembled (their probabilities averaged). ``-chk`` picks the
checkpoint file; a missing model folder, fold or checkpoint is an error naming the path.

Input: nnU-Net's layout, ``<case>_0000<file_ending>`` (one file per channel ``_0000``, ``_0001``, ... as in the
model's dataset.json). Output: ``<case><file_ending>`` in the input's exact geometry (size, spacing, origin,
direction; nnU-Net's export), with ``--save_probabilities`` also nnU-Net's ``<case>.npz`` (``probabilities``)
and ``<case>.pkl`` (properties). For a prompted model the ``.npz`` holds the softmax of the merged per-class
probabilities nnU-Net's export computes (same argmax, not calibrated; see ``PromptedPredictor``). The output
folder also receives ``dataset.json`` and ``plans.json`` (as nnU-Net's predictor writes them) and
``prompts.json``: the clicks used per case (raw array-order voxel indices, 1 positive / 0 negative; a prompt
file's other prompts under ``"prompts"``) or ``"auto"``. Every file is written under a temporary name and renamed into place; a rerun skips cases whose
output exists (``--overwrite`` predicts them again).

Prompts (exactly one):

* ``--clicks PROMPTS.json``: a prompt file (``sam3d_nnunet.prompts.click_files``: per case, per class, clicks,
  boxes, scribbles, lassos and masks (version 2; version-1 click files are read too) with ``positive`` flags;
  ``coordinate_system`` "voxel" = (x, y, z) index of the raw image, ITK order, or "world" = physical mm,
  ITK/LPS). A class with an empty prompt list is predicted in automatic mode; classes not listed are
  background. A case in the click file with no image in the input folder is an ERROR (nothing is predicted);
  an input image with no entry in the click file is skipped with a WARNING (no output for it).
* ``--simulate-clicks LABELS_FOLDER``: ``--n-clicks`` (1) uniformly random voxels of every class present in
  ``LABELS_FOLDER/<case><file_ending>``, seeded per case and class by ``case_class_seed(case, class, --seed)``
  (the trainer's validation protocol: same seed, same clicks). A missing label file is an error.
* ``--auto``: no clicks; every class in the model's automatic mode over the whole volume (nnU-Net's sliding
  window on the network's no-click output). A prompt-free model (``nnUNetTrainerSAM3D_auto``) only accepts
  ``--auto``.

Everything that can be checked before predicting is checked first (input names and channels, click file, cases,
classes, clicks inside their images, label files), so a bad input fails in seconds, naming the file, case,
class or point. Errors exit with status 1.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional


class PredictWarning(UserWarning):
    """Something the user should know that does not stop prediction (e.g. an image without clicks)."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict", help="prompted whole-volume prediction of a folder of images (nnU-Net's conventions)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", dest="input_folder", required=True,
                        help="input folder: <case>_0000<file_ending> (one file per channel)")
    parser.add_argument("-o", dest="output_folder", required=True, help="output folder (created if missing)")
    parser.add_argument("-d", dest="dataset", default=None, help="dataset id or name (with -c, -tr, -p)")
    parser.add_argument("-c", dest="configuration", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("-tr", dest="trainer", default="nnUNetTrainerSAM3D", help="trainer (default nnUNetTrainerSAM3D)")
    parser.add_argument("-p", dest="plans", default="SAM3DPlans", help="plans identifier (default SAM3DPlans)")
    parser.add_argument("-m", dest="model_folder", default=None,
                        help="the trained model folder (<trainer>__<plans>__<configuration>) instead of -d/-c/-tr/-p")
    parser.add_argument("-f", dest="folds", nargs="+", default=["0", "1", "2", "3", "4"],
                        help="folds to ensemble (default 0 1 2 3 4; 'all' for fold_all)")
    parser.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth",
                        help="checkpoint file name (default checkpoint_final.pth)")
    parser.add_argument("-device", dest="device", default=None, choices=["cpu", "cuda", "mps"],
                        help="default: cuda if available, else cpu")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--clicks", dest="clicks", default=None, metavar="CLICKS.json", help="a click file")
    source.add_argument("--simulate-clicks", dest="simulate_clicks", default=None, metavar="LABELS_FOLDER",
                        help="draw seeded clicks from the labels in this folder (<case><file_ending>)")
    source.add_argument("--auto", dest="auto", action="store_true", help="no clicks: automatic mode, every class")
    parser.add_argument("--n-clicks", dest="n_clicks", type=int, default=1,
                        help="clicks per present class with --simulate-clicks (default 1)")
    parser.add_argument("--seed", dest="seed", type=int, default=0, help="seed of --simulate-clicks (default 0)")
    parser.add_argument("--save_probabilities", action="store_true",
                        help="also write nnU-Net's <case>.npz and <case>.pkl")
    parser.add_argument("--overwrite", action="store_true", help="predict cases whose output already exists again")
    parser.add_argument("--max-windows", dest="max_windows", type=int, default=None,
                        help="windows per prompted class at most (default: the trainer's, 8)")
    parser.add_argument("-step_size", dest="step_size", type=float, default=0.5,
                        help="sliding-window step of the automatic mode, as a fraction of the patch (default 0.5)")
    parser.add_argument("--tta", action="store_true", help="mirroring test-time augmentation in the automatic mode")
    parser.add_argument("--disable_progress_bar", action="store_true")
    parser.set_defaults(func=run)
    return parser


# ================================================================================================ inputs
def resolve_model_folder(dataset: Optional[str], trainer: str, plans: str, configuration: str,
                         model_folder: Optional[str] = None) -> str:
    """``-m`` as given, or ``$nnUNet_results/<dataset name>/<trainer>__<plans>__<configuration>``."""
    from sam3d_nnunet.inference.io import InferenceInputError
    if model_folder is not None:
        if dataset is not None:
            raise InferenceInputError("give either -m MODEL_FOLDER or -d DATASET (with -c/-tr/-p), not both")
        return model_folder
    if dataset is None:
        raise InferenceInputError("no model: give -d DATASET (with -c/-tr/-p) or -m MODEL_FOLDER")
    results = os.environ.get("nnUNet_results")
    if not results:
        raise InferenceInputError("nnUNet_results is not set: set it to nnU-Net's results folder or give the model "
                                  "folder with -m")
    if not os.path.isdir(results):
        raise InferenceInputError(f"nnUNet_results folder '{results}' does not exist")
    if re.fullmatch(r"Dataset\d{3}_.+", dataset):
        name = dataset
    else:
        try:
            number = int(dataset)
        except ValueError:
            raise InferenceInputError(f"-d {dataset!r} is neither a dataset id nor a DatasetXXX_Name") from None
        names = sorted(d for d in os.listdir(results) if d.startswith(f"Dataset{number:03d}_"))
        if not names:
            raise InferenceInputError(f"no trained dataset {number} in nnUNet_results '{results}' "
                                      f"(no folder Dataset{number:03d}_*)")
        if len(names) > 1:
            raise InferenceInputError(f"dataset id {number} is ambiguous in '{results}': {names}")
        name = names[0]
    return os.path.join(results, name, f"{trainer}__{plans}__{configuration}")


def list_input_cases(folder: str, file_ending: str, num_channels: int) -> Dict[str, List[str]]:
    """{case: [channel files]} of an nnU-Net input folder; errors name the folder or the missing channel file."""
    from sam3d_nnunet.inference.io import InferenceInputError
    from sam3d_nnunet.prompts import validate_case_id
    if not os.path.isdir(folder):
        raise InferenceInputError(f"input folder '{folder}' does not exist")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + r"$")
    channels: Dict[str, Dict[int, str]] = {}
    ignored = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("."):
            continue
        m = pattern.match(name)
        if m:
            channels.setdefault(m.group(1), {})[int(m.group(2))] = os.path.join(folder, name)
        elif name.endswith(file_ending):
            ignored.append(name)
    if ignored:
        warnings.warn(f"input folder '{folder}': ignored {len(ignored)} file(s) not named <case>_XXXX{file_ending} "
                      f"(nnU-Net's naming): {ignored[:5]}", PredictWarning, stacklevel=2)
    if not channels:
        raise InferenceInputError(f"input folder '{folder}' holds no images named <case>_0000{file_ending}")
    cases: Dict[str, List[str]] = {}
    for case, found in sorted(channels.items()):
        try:
            validate_case_id(case)
        except ValueError as e:
            raise InferenceInputError(f"input folder '{folder}': {e}") from None
        missing = [i for i in range(num_channels) if i not in found]
        if missing:
            raise InferenceInputError(f"case {case!r}: channel file(s) "
                                      f"{[os.path.join(folder, f'{case}_{i:04d}{file_ending}') for i in missing]} "
                                      f"missing (the model has {num_channels} input channel(s))")
        extra = sorted(i for i in found if i >= num_channels)
        if extra:
            raise InferenceInputError(f"case {case!r}: unexpected channel file(s) {[found[i] for i in extra]} "
                                      f"(the model has {num_channels} input channel(s))")
        cases[case] = [found[i] for i in range(num_channels)]
    return cases


# ================================================================================================ prompt sources
@dataclass
class _Sources:
    """What to predict per case: {class: ClassPrompt in RAW array-order voxel indices, or None for automatic}."""

    kind: str
    raw: Dict[str, Dict[int, object]] = field(default_factory=dict)  # clicks file / auto: ready
    labels_folder: Optional[str] = None
    n_clicks: int = 1
    seed: int = 0


def _click_file_prompts(path: str, cases: Dict[str, List[str]], predictor) -> _Sources:
    from sam3d_nnunet.inference.io import ImageGeometry, InferenceInputError, reader_uses_itk_index_order
    from sam3d_nnunet.inference.session import check_class
    from sam3d_nnunet.prompts import case_prompts, read_click_file

    click_file = read_click_file(path)  # ClickFileError names the file and the place
    reader_class = predictor.plans_manager.image_reader_writer_class
    if not reader_uses_itk_index_order(reader_class):
        raise InferenceInputError(f"click files give ITK voxel indices or physical points; the model's image reader "
                                  f"{reader_class.__name__} does not keep ITK's voxel order, so they cannot be "
                                  f"mapped (use --simulate-clicks or --auto)")
    no_image = sorted(set(click_file.cases) - set(cases))
    if no_image:
        raise InferenceInputError(f"click file '{path}': case(s) {no_image} have clicks but no image in the input "
                                  f"folder (expected {os.path.dirname(cases[next(iter(cases))][0])}/"
                                  f"{no_image[0]}_0000{predictor.dataset_json['file_ending']})")
    no_clicks = sorted(set(cases) - set(click_file.cases))
    if no_clicks:
        warnings.warn(f"click file '{path}' has no entry for {len(no_clicks)} input case(s), which are skipped (no "
                      f"output): {no_clicks[:10]}{' ...' if len(no_clicks) > 10 else ''}", PredictWarning,
                      stacklevel=3)
    raw: Dict[str, Dict[int, object]] = {}
    for case, classes in sorted(click_file.cases.items()):
        for c in classes:
            check_class(c, predictor, f"click file '{path}', case {case!r}: ")
        geometry = ImageGeometry.from_file(cases[case][0])
        try:
            prompts = case_prompts(click_file, case, geometry)  # every prompt checked against its image
        except ValueError as e:
            raise InferenceInputError(f"click file '{path}': {e} ({cases[case][0]})") from None
        raw[case] = {c: (p if len(p) else None) for c, p in prompts.items()}
    return _Sources("clicks", raw)


def _raw_class_prompt(prompt, shape):
    """A class's raw prompt as a ``ClassPrompt`` (raw array order): prompts of a prompt file are encoded here
    (``encode_prompts``: points, types, dense prompt), simulated clicks already are one."""
    from sam3d_nnunet.inference.prompted_predictor import ClassPrompt
    return prompt if isinstance(prompt, ClassPrompt) else ClassPrompt.from_prompts(prompt, shape, validate=False)


def _simulated_source(labels_folder: str, cases: Dict[str, List[str]], predictor, n_clicks: int,
                      seed: int) -> _Sources:
    from sam3d_nnunet.inference.io import InferenceInputError
    if n_clicks < 1:
        raise InferenceInputError(f"--n-clicks must be at least 1, got {n_clicks}")
    if not os.path.isdir(labels_folder):
        raise InferenceInputError(f"labels folder '{labels_folder}' does not exist")
    ending = predictor.dataset_json["file_ending"]
    missing = [os.path.join(labels_folder, f"{c}{ending}") for c in cases
               if not os.path.isfile(os.path.join(labels_folder, f"{c}{ending}"))]
    if missing:
        raise InferenceInputError(f"--simulate-clicks: no label file for {len(missing)} input case(s): "
                                  f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return _Sources("simulated", labels_folder=labels_folder, n_clicks=int(n_clicks), seed=int(seed))


def _simulate_case(source: _Sources, case: str, predictor, image_shape, image_file: str) -> Dict[int, object]:
    from sam3d_nnunet.inference.io import ImageReadError, _quiet
    from sam3d_nnunet.inference.prompted_predictor import protocol_prompts_from_label
    from sam3d_nnunet.validation import (allowed_label_values, check_image_file, check_label_values,
                                         check_same_grid_files)
    label_file = os.path.join(source.labels_folder, case + predictor.dataset_json["file_ending"])
    check_image_file(label_file, error=ImageReadError, what="label")  # complete, spacing > 0
    check_same_grid_files(image_file, label_file, error=ImageReadError)  # clicks are voxel indices
    reader = predictor.plans_manager.image_reader_writer_class()
    try:
        with _quiet():
            seg, _ = reader.read_seg(label_file)
    except Exception as e:  # noqa: BLE001
        raise ImageReadError(f"cannot read label file '{label_file}': {e}") from e
    check_label_values(seg, label_file, allowed_label_values(predictor.dataset_json["labels"]), error=ImageReadError)
    if tuple(seg.shape[1:]) != tuple(image_shape):
        raise ImageReadError(f"label file '{label_file}' has shape {tuple(seg.shape[1:])}, its image "
                             f"'{image_file}' {tuple(image_shape)}")
    return dict(protocol_prompts_from_label(seg[0], case, predictor.label_manager.foreground_labels,
                                            source.n_clicks, source.seed))


def _record(prompts: Dict[int, object]) -> dict:
    def one(p) -> dict:
        if p is None:
            return {"auto": True}
        if isinstance(p, list):  # a prompt file's prompts (raw array order): its clicks, then every prompt
            clicks = [q for q in p if isinstance(q, ClickPrompt)]
            out = {"clicks_raw_voxel": [list(q.point) for q in clicks], "labels": [int(q.positive) for q in clicks]}
            return out if len(clicks) == len(p) else {**out, "prompts": [describe_prompt(q) for q in p]}
        return {"clicks_raw_voxel": p.clicks.tolist(), "labels": p.labels.tolist()}

    from sam3d_nnunet.prompts.shapes import ClickPrompt, describe_prompt
    return {"classes": {str(c): one(p) for c, p in sorted(prompts.items())}}


# ================================================================================================ the run
@dataclass
class PredictSummary:
    predicted: List[str] = field(default_factory=list)
    skipped_finished: List[str] = field(default_factory=list)
    skipped_no_clicks: List[str] = field(default_factory=list)


def predict_folder(predictor, input_folder: str, output_folder: str, *, clicks_file: Optional[str] = None,
                   simulate_labels: Optional[str] = None, n_clicks: int = 1, seed: int = 0, auto: bool = False,
                   save_probabilities: bool = False, overwrite: bool = False,
                   progress: bool = True) -> PredictSummary:
    """Predict every case of ``input_folder`` into ``output_folder`` with a loaded ``PromptedPredictor`` (see the
    module docstring; exactly one of ``clicks_file``, ``simulate_labels``, ``auto``)."""
    from tqdm import tqdm

    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    from sam3d_nnunet.atomic import remove_stale_temporaries, save_json_atomic
    from sam3d_nnunet.inference.io import (InferenceInputError, _quiet, export_prediction_atomic,
                                           geometry_from_properties, read_images, reader_uses_itk_index_order)
    from sam3d_nnunet.inference.prompted_predictor import class_prompt_to_preprocessed
    from sam3d_nnunet.inference.session import predict_case

    if sum([clicks_file is not None, simulate_labels is not None, bool(auto)]) != 1:
        raise InferenceInputError("give exactly one prompt source: --clicks, --simulate-clicks or --auto")
    pm, cm, dj = predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json
    ending = dj["file_ending"]
    from sam3d_nnunet.validation import check_file_ending
    check_file_ending(ending, "the model's dataset.json", error=InferenceInputError)  # output names use it
    if not predictor.prompted and not auto:
        raise InferenceInputError(f"the model ({predictor.trainer_name}) is prompt-free: it takes no clicks; use "
                                  f"--auto")
    if os.path.abspath(input_folder) == os.path.abspath(output_folder):
        raise InferenceInputError("the output folder must not be the input folder")
    cases = list_input_cases(input_folder, ending, determine_num_input_channels(pm, cm, dj))
    if clicks_file is not None:
        source = _click_file_prompts(clicks_file, cases, predictor)
        todo = [c for c in cases if c in source.raw]
    elif simulate_labels is not None:
        source = _simulated_source(simulate_labels, cases, predictor, n_clicks, seed)
        todo = list(cases)
    else:
        source = _Sources("auto", {c: {int(k): None for k in predictor.label_manager.foreground_labels}
                                   for c in cases})
        todo = list(cases)
    summary = PredictSummary(skipped_no_clicks=sorted(set(cases) - set(todo)))

    def finished(case: str) -> bool:
        base = os.path.join(output_folder, case)
        return os.path.isfile(base + ending) and (not save_probabilities or
                                                  (os.path.isfile(base + ".npz") and os.path.isfile(base + ".pkl")))

    if not overwrite:
        summary.skipped_finished = [c for c in todo if finished(c)]
        todo = [c for c in todo if c not in set(summary.skipped_finished)]
    os.makedirs(output_folder, exist_ok=True)
    save_json_atomic(dj, os.path.join(output_folder, "dataset.json"))
    save_json_atomic(pm.plans, os.path.join(output_folder, "plans.json"))
    record_file = os.path.join(output_folder, "prompts.json")
    record = {"source": source.kind, "cases": {}}
    if source.kind == "simulated":
        record.update(n_clicks=source.n_clicks, seed=source.seed)
    if os.path.isfile(record_file):  # a rerun keeps the records of the cases it skips
        try:
            with open(record_file, encoding="utf-8") as f:
                old = json.load(f)
            if isinstance(old, dict) and isinstance(old.get("cases"), dict):
                record["cases"].update({k: v for k, v in old["cases"].items() if k not in todo})
        except (OSError, ValueError):
            pass
    preprocessor = cm.preprocessor_class(verbose=False)
    reader_class = pm.image_reader_writer_class
    for case in tqdm(todo, desc="sam3d-nnunet predict", unit="case", disable=not progress):
        files = cases[case]
        data, properties = read_images(files, reader_class)
        if source.kind == "clicks" and reader_uses_itk_index_order(reader_class):
            geometry_from_properties(properties, data.shape[1:], files)  # header and array agree
        if source.kind == "simulated":
            raw_prompts = _simulate_case(source, case, predictor, data.shape[1:], files[0])
        else:
            raw_prompts = source.raw[case]
        with _quiet():
            pre, _, properties = preprocessor.run_case_npy(data, None, properties, pm, cm, dj)
        prompts = {c: (None if p is None else
                       class_prompt_to_preprocessed(_raw_class_prompt(p, data.shape[1:]), properties,
                                                    pm.transpose_forward, pre.shape[1:]))
                   for c, p in raw_prompts.items()}
        output = predict_case(predictor, pre, prompts)
        remove_stale_temporaries(output_folder, case)
        export_prediction_atomic(output, properties, cm, pm, dj, os.path.join(output_folder, case),
                                 save_probabilities)
        record["cases"][case] = _record(raw_prompts)
        record["cases"] = dict(sorted(record["cases"].items()))
        save_json_atomic(record, record_file)
        summary.predicted.append(case)
        del data, pre, output
    return summary


def run(args: argparse.Namespace) -> int:
    """The command: errors (bad inputs) print one line and return 1; warnings print one line each."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", PredictWarning)
        show = warnings.showwarning

        def show_warning(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, PredictWarning):
                print(f"sam3d-nnunet predict: warning: {message}", file=sys.stderr)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = show_warning
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import torch

    from sam3d_nnunet.inference.io import InferenceInputError
    from sam3d_nnunet.inference.session import load_predictor
    from sam3d_nnunet.prompts import ClickFileError

    try:
        if args.max_windows is not None and args.max_windows < 1:
            raise InferenceInputError(f"--max-windows must be at least 1, got {args.max_windows}")
        if not 0 < args.step_size <= 1:
            raise InferenceInputError(f"-step_size must be in (0, 1], got {args.step_size}")
        if not args.simulate_clicks and (args.n_clicks != 1 or args.seed != 0):
            warnings.warn("--n-clicks and --seed only apply to --simulate-clicks", PredictWarning)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)  # as nnUNetv2_predict does
        model_folder = resolve_model_folder(args.dataset, args.trainer, args.plans, args.configuration,
                                            args.model_folder)
        kwargs = {"use_mirroring": bool(args.tta), "tile_step_size": float(args.step_size)}
        if args.max_windows is not None:
            kwargs["max_windows_per_class"] = int(args.max_windows)
        predictor = load_predictor(model_folder, args.folds, args.checkpoint, device, **kwargs)
        summary = predict_folder(predictor, args.input_folder, args.output_folder, clicks_file=args.clicks,
                                 simulate_labels=args.simulate_clicks, n_clicks=args.n_clicks, seed=args.seed,
                                 auto=args.auto, save_probabilities=args.save_probabilities,
                                 overwrite=args.overwrite, progress=not args.disable_progress_bar)
    except (InferenceInputError, ClickFileError) as e:
        print(f"sam3d-nnunet predict: error: {e}", file=sys.stderr)
        return 1
    parts = [f"predicted {len(summary.predicted)} case(s) into {args.output_folder}"]
    if summary.skipped_finished:
        parts.append(f"skipped {len(summary.skipped_finished)} finished case(s) (--overwrite to predict them again)")
    if summary.skipped_no_clicks:
        parts.append(f"skipped {len(summary.skipped_no_clicks)} case(s) without clicks")
    print("; ".join(parts))
    return 0


__all__ = ["add_parser", "run", "predict_folder", "resolve_model_folder", "list_input_cases", "PredictSummary",
           "PredictWarning"]
