"""Cross-validation summary of one trained model: its automatic and its prompted validation folders in one table.

For every available fold of ``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>`` it reads the
predictions of ``fold_X/validation`` (automatic mode: what ``nnUNetv2_predict`` gives) and of each
``fold_X/validation_clicks{N}_seed{S}`` (prompted; see :mod:`sam3d_nnunet.evaluation.validation_folders`), scores
every case against ``nnUNet_preprocessed/<dataset>/gt_segmentations`` (``nnUNet_raw/<dataset>/labelsTr`` if that is
absent) with :func:`sam3d_nnunet.evaluation.compute_case_metrics` (nnU-Net's Dice, NSD at the real spacing) and
aggregates each folder kind over the folds with nnU-Net's means (:func:`sam3d_nnunet.evaluation.aggregate`). The
table is the benchmark's (:mod:`sam3d_nnunet.benchmark.report`): Dice / NSD in % per class and their mean.

A fold whose ``validation/`` still holds the prompted predictions of an older version (``prompts.json`` there) is
refused: it would be counted as automatic.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

from sam3d_nnunet.benchmark.runner import BenchmarkError, _load_json, _resolve_paths
from sam3d_nnunet.evaluation.validation_folders import (AUTOMATIC_FOLDER, is_old_layout, old_layout_message,
                                                        prompted_folders)


def _predictions(folder: str, file_ending: str) -> List[str]:
    return sorted(f[: -len(file_ending)] for f in os.listdir(folder)
                  if f.endswith(file_ending) and not f.startswith(".") and os.path.isfile(os.path.join(folder, f)))


def _protocol(clicks: Optional[int], seed: Optional[int]) -> str:
    if clicks is None:
        return "automatic (what nnUNetv2_predict gives)"
    return f"{clicks} random click{'s' if clicks > 1 else ''} per class, seed {seed}"


def _find_sources(model_folder: str, folds: Sequence[int], file_ending: str) -> Dict[str, dict]:
    """{folder name: {'mode', 'clicks_per_class', 'seed', 'cases': {fold: [case ids]}}} over the available folds."""
    sources: Dict[str, dict] = {}
    for f in folds:
        fold_folder = os.path.join(model_folder, f"fold_{f}")
        if not os.path.isdir(fold_folder):
            continue
        if is_old_layout(fold_folder):
            raise BenchmarkError(old_layout_message(fold_folder))
        found = [(AUTOMATIC_FOLDER, None, None)] + prompted_folders(fold_folder)
        for name, clicks, seed in found:
            folder = os.path.join(fold_folder, name)
            cases = _predictions(folder, file_ending) if os.path.isdir(folder) else []
            if not cases:
                continue
            entry = sources.setdefault(name, {"mode": "automatic" if clicks is None else "prompted",
                                              "clicks_per_class": clicks, "seed": seed, "cases": {}})
            entry["cases"][int(f)] = cases
    return sources


def crossval_summary(dataset: str, trainer: str, plans: str, configuration: str,
                     folds: Sequence[int] = (0, 1, 2, 3, 4), tolerances_mm: Sequence[float] = (1.0, 2.0, 5.0),
                     num_processes: Optional[int] = None, progress: bool = False) -> dict:
    """Score and aggregate the validation folders of one model (see the module docstring). Raises
    :class:`BenchmarkError` (bad input) or ``EvaluationError`` (an unreadable or mismatching file)."""
    from sam3d_nnunet.evaluation import aggregate, evaluate_file_pairs, nsd_key

    tolerances = sorted({float(t) for t in tolerances_mm})
    paths = _resolve_paths(str(dataset), None)
    key = f"{trainer}__{plans}__{configuration}"
    model_folder = os.path.join(paths.results, key)
    if not os.path.isdir(model_folder):
        raise BenchmarkError(f"model folder not found: {model_folder} (train it: nnUNetv2_train {dataset} "
                             f"{configuration} FOLD -tr {trainer} -p {plans})")
    dataset_json = _load_json(os.path.join(model_folder, "dataset.json"), "dataset.json of the model")
    plans_json = _load_json(os.path.join(model_folder, "plans.json"), "plans.json of the model")
    if "file_ending" not in dataset_json:
        raise BenchmarkError(f"{os.path.join(model_folder, 'dataset.json')}: no 'file_ending' entry")
    file_ending = dataset_json["file_ending"]
    sources = _find_sources(model_folder, folds, file_ending)
    if not sources:
        raise BenchmarkError(f"no validation predictions in {model_folder} for fold(s) {list(folds)} (run "
                             f"nnUNetv2_train {dataset} {configuration} FOLD -tr {trainer} -p {plans} [--val])")
    gt_folder = paths.gt_folder if os.path.isdir(paths.gt_folder) else os.path.join(paths.raw, "labelsTr")
    if not os.path.isdir(gt_folder):
        raise BenchmarkError(f"no ground truth: neither {paths.gt_folder} nor {gt_folder} exists")
    jobs = []  # (source, fold, case, reference, prediction)
    for name, entry in sources.items():
        for f, cases in entry["cases"].items():
            for case in cases:
                ref = os.path.join(gt_folder, case + file_ending)
                if not os.path.isfile(ref):
                    raise BenchmarkError(f"no ground truth for {case} (fold {f}, {name}): {ref} does not exist")
                jobs.append((name, f, case, ref, os.path.join(model_folder, f"fold_{f}", name, case + file_ending)))
    scored, labels = evaluate_file_pairs([(j[3], j[4]) for j in jobs], dataset_json, plans_json, tolerances,
                                         num_processes, progress)

    names = {}
    for n, v in dataset_json["labels"].items():
        if isinstance(v, int):
            names.setdefault(v, n)
    out = {"dataset": paths.dataset_name, "trainer": trainer, "plans": plans, "configuration": configuration,
           "model_folder": model_folder, "gt_folder": gt_folder, "folds_requested": [int(f) for f in folds],
           "folds": sorted({f for e in sources.values() for f in e["cases"]}), "tolerances_mm": tolerances,
           "metrics": ["Dice"] + [nsd_key(t) for t in tolerances],
           "labels": {str(c): names.get(c, str(c)) for c in labels}, "sources": {}}
    for name, entry in sorted(sources.items(), key=lambda kv: (kv[1]["clicks_per_class"] or 0, kv[1]["seed"] or 0)):
        rows = [(j, r) for j, r in zip(jobs, scored) if j[0] == name]
        summary = aggregate([r for _, r in rows], labels)
        out["sources"][name] = {
            "folder": f"fold_X/{name}", "mode": entry["mode"], "protocol": _protocol(entry["clicks_per_class"],
                                                                                  entry["seed"]),
            "clicks_per_class": entry["clicks_per_class"], "seed": entry["seed"],
            "folds": sorted(entry["cases"]), "n_cases": len(rows),
            "mean": {str(c): m for c, m in summary["mean"].items()},
            "foreground_mean": summary["foreground_mean"],
            "per_case": {j[2]: {"fold": j[1], "prediction_file": j[4],
                                "metrics": {str(c): m for c, m in r["metrics"].items()}} for j, r in rows},
        }
    return out


def render_table(summary: dict) -> str:
    """The Markdown table (the benchmark report's format): one row per validation folder kind."""
    from sam3d_nnunet.benchmark.report import dice_nsd_cells, dice_nsd_columns, main_nsd_tolerance, markdown_table
    from sam3d_nnunet.evaluation import nsd_key

    tol = main_nsd_tolerance(summary)
    nk = nsd_key(tol)
    classes = list(summary["labels"])
    head = ["folder", "protocol", "folds", "cases"] + dice_nsd_columns(summary["labels"])
    rows = ([f"`{s['folder']}`", s["protocol"], " ".join(map(str, s["folds"])), str(s["n_cases"])] +
            dice_nsd_cells(s, classes, nk) for s in summary["sources"].values())
    title = (f"{summary['dataset']}, {summary['trainer']}__{summary['plans']}__{summary['configuration']}: "
             f"cross-validation Dice / NSD@{tol:g}mm (%), mean over cases")
    return "\n".join([title, ""] + markdown_table(head, rows))


__all__ = ["crossval_summary", "render_table"]
