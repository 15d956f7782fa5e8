"""``report.md`` of the benchmark: the paper's table (Dice / NSD in %, per class, per method and click count), plus
NSD at every tolerance, the iterative-correction curves, per-case Dice and the plots."""
from __future__ import annotations

import math
import os
from typing import Dict, Iterable, List, Optional, Sequence

from sam3d_nnunet.atomic import write_text_atomic
from sam3d_nnunet.benchmark.protocols import (AUTO, BOX, SCRIBBLE, box_iterative_protocol_name, clicks_protocol_name,
                                              iterative_protocol_name)


def _pct(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100.0 * float(v):.2f}"


def _params(p: Optional[dict]) -> str:
    if not p or p.get("tuned") is None:
        return "n/a"
    n = float(p["tuned"])
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def _seconds(t) -> str:
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return "n/a"
    return f"{float(t):.1f}" if t >= 10 else f"{float(t):.2f}"


def nsd_key(t: float) -> str:
    return f"NSD@{float(t):g}mm"


def main_nsd_tolerance(results: dict) -> float:
    """The NSD tolerance of the main table: 5 mm (the paper's) if evaluated, else the largest."""
    tols = [float(t) for t in results["tolerances_mm"]]
    return 5.0 if 5.0 in tols else max(tols)


def _total(p: Optional[dict]) -> str:
    return _params({"tuned": p.get("total")}) if p else "n/a"


def model_context(results: dict) -> List[str]:
    """Lines of the report's "Models" section: per SAM3D model its SAM variant and what its encoder started
    from (``sam_weights`` of results.json, read from the plans), with its size; nnU-Net's baseline trains from
    scratch. Models whose encoder did not start from SAM's weights are flagged, as the demo's console says."""
    lines = []
    for key in results["sam_methods"]:
        m = results["methods"][key]
        sam = m.get("sam_weights") or {}
        variant, checkpoint = sam.get("variant"), sam.get("checkpoint")
        size = f"{_total(m.get('parameters'))} parameters, {_params(m.get('parameters'))} of them trained"
        if not sam:
            start = "what its encoder started from is not recorded in results.json"
        elif sam.get("reference_task"):
            start = f"the authors' trained 3DSAM-adapter model for {sam['reference_task']} (imported)"
        elif not checkpoint:
            start = ("**random weights**: the plans name no SAM checkpoint, so the ViT encoder started from random "
                     "weights, not from SAM's pretrained ones")
        elif not sam.get("pretrained"):
            start = (f"**random weights**: SAM publishes no weights for the `{variant}` variant (this package's "
                     f"test-size encoder); the SAM-format checkpoint `{os.path.basename(checkpoint)}` holds random "
                     f"weights, so the scores show the pipeline at work, not what SAM's pretrained features bring")
        else:
            start = f"encoder weights from the SAM checkpoint `{os.path.basename(checkpoint)}`"
        lines.append(f"- {m['display']}: SAM variant `{variant or 'unknown'}` ({size}); {start}.")
    base = results["methods"][results["baseline"]]
    lines.append(f"- {base['display']}: nnU-Net's own network, trained from scratch ({_total(base.get('parameters'))} "
                 f"parameters).")
    return lines


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> List[str]:
    """The lines of a Markdown table (the report's format)."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def dice_nsd_columns(labels: Dict[str, str]) -> List[str]:
    """Titles of the per-class "Dice / NSD" columns: ``name (id)`` per class, ``mean`` if there are several."""
    return [f"{name} ({c})" for c, name in labels.items()] + (["mean"] if len(labels) > 1 else [])


def dice_nsd_cells(summary: dict, classes: Sequence[str], nsd: str) -> List[str]:
    """"Dice / NSD" in % per class of a summary (``mean``: class -> metrics, ``foreground_mean``), then their
    mean if there are several classes; the columns of :func:`dice_nsd_columns`."""
    cells = [f"{_pct(summary['mean'][c]['Dice'])} / {_pct(summary['mean'][c][nsd])}" for c in classes]
    if len(classes) > 1:
        fg = summary["foreground_mean"]
        cells.append(f"{_pct(fg['Dice'])} / {_pct(fg[nsd])}")
    return cells


def table_rows(results: dict) -> List[dict]:
    """Rows of the main table: (method key, protocol, label of the clicks column)."""
    rows = []
    base = results["methods"][results["baseline"]]
    rows.append({"method": results["baseline"], "display": base["display"], "protocol": "nnunet",
                 "clicks": "– (automatic)", "summary": base["summary"]["nnunet"], "params": base.get("parameters")})
    for key in results["sam_methods"]:
        m = results["methods"][key]
        first = True
        order = []
        if AUTO in m["summary"]:
            order.append((AUTO, "0 (automatic)"))
        for k in results["clicks"]:
            if clicks_protocol_name(k) in m["summary"]:
                order.append((clicks_protocol_name(k), f"{k} random" if k > 1 else "1 random"))
        n = results["iterative_steps"]
        if n > 0 and iterative_protocol_name(n) in m["summary"]:
            order.append((iterative_protocol_name(n), f"{n} iterative (final)"))
        order += shape_rows(results, m)
        for proto, label in order:
            rows.append({"method": key, "display": m["display"] if first else "", "protocol": proto,
                         "clicks": label, "summary": m["summary"][proto],
                         "params": m.get("parameters") if first else None, "first": first})
            first = False
    return rows


def shape_rows(results: dict, method: dict) -> List[tuple]:
    """(protocol, label) of the box / box + corrections / scribble rows of a method, where it was scored."""
    nb = results.get("box_iterative_steps", 0)
    rows = [(BOX, "1 box"), (box_iterative_protocol_name(nb), f"box + {nb} corrections (final)"),
            (SCRIBBLE, "1 scribble")]
    return [(p, label) for p, label in rows if p in method["summary"] and not (p == box_iterative_protocol_name(0))]


def curve_table(results: dict, curve_key: str, step_titles: Sequence[str], nk: str) -> List[str]:
    """Per-step Dice table (one row per method and class) of the curves ``methods[*][curve_key]``."""
    labels = results["labels"]
    head = ["method", "class"] + list(step_titles) + ["AUC", "final Dice", f"final {nk}", "nnU-Net Dice"]
    rows = []
    base = results["methods"][results["baseline"]]["summary"]["nnunet"]["mean"]
    for key in results["sam_methods"]:
        if curve_key not in results["methods"][key]:
            continue
        it = results["methods"][key][curve_key]
        for i, c in enumerate(labels):
            pc = it["per_class"][c]
            cells = [results["methods"][key]["display"] if i == 0 else "", f"{labels[c]} ({c})"]
            cells += [_pct(v) for v in pc["mean_curve"]["Dice"]]
            cells += [_pct(pc["auc"]["Dice"]), _pct(pc["final"]["Dice"]), _pct(pc["final"][nk]),
                      _pct(base[c]["Dice"])]
            rows.append(cells)
    return markdown_table(head, rows)


def render_report(results: dict) -> str:
    labels = results["labels"]
    classes = list(labels)
    tol = main_nsd_tolerance(results)
    nk = nsd_key(tol)
    base_key = results["baseline"]
    n_cases = len(results["cases"])
    lines = []
    w = lines.append
    w(f"# Benchmark: {results['dataset']}, {results['configuration']}, "
      f"fold{'s' if len(results['folds']) > 1 else ''} {', '.join(str(f) for f in results['folds'])}")
    w("")
    axes = results["methods"][base_key].get("test_time_mirroring_axes")
    tta = ("test-time mirroring as trained" if axes is None else
           f"test-time mirroring along axes {tuple(axes)}" if axes else "no test-time mirroring")
    w(f"{n_cases} validation case(s) of nnU-Net's `splits_final.json` "
      f"({', '.join(f'fold {f}' for f in results['folds'])}), the same cases for every method (checked). "
      f"nnU-Net's baseline is its own cross-validation output (`fold_X/validation`, {tta}); each SAM3D model predicts every case again over the whole volume, once per click protocol, "
      f"with seeded clicks (seed {results['seed']}) drawn from the native ground truth. Scores against "
      f"`gt_segmentations` in native geometry: nnU-Net's Dice and the normalised surface Dice (NSD) at the real "
      f"spacing; mean over cases in %, a class absent from both reference and prediction is left out of the "
      f"Dice mean (nnU-Net's convention). Device: {results.get('device', 'cpu')}.")
    w("")
    if results.get("dataset_description"):
        w(f"Dataset: {results['dataset_description']}")
        w("")
    if results.get("synthetic"):
        w("**Synthetic data:** these are phantoms generated by `sam3d_nnunet.phantoms` (described above), not "
          "patients. What a trained promptable model gains on real scans depends on SAM's real pretrained weights and a full training budget, which this run does not have.")
        w("")
    untrained = [results["methods"][k]["display"] for k in results["sam_methods"]
                 if results["methods"][k].get("sam_weights", {"pretrained": True})["pretrained"] is False]
    if untrained:
        w(f"**Note:** {', '.join(untrained)} did not start from SAM's pretrained weights (see Models below): these "
          f"numbers say nothing about what SAM's features bring.")
        w("")
    w("## Models")
    w("")
    for line in model_context(results):
        w(line)
    w("")
    w(f"## Dice / NSD@{tol:g}mm (%), the paper's format")
    w("")
    head = ["method", "clicks per class"] + dice_nsd_columns(labels) + ["tuned params", "s / case"]
    lines += markdown_table(head, ([r["display"], r["clicks"]] + dice_nsd_cells(r["summary"], classes, nk) +
                                   [_params(r["params"]) if r["params"] is not None else "",
                                    _seconds(r["summary"].get("time_per_case_s"))] for r in table_rows(results)))
    w("")
    w("Tuned params: parameters trained (SAM3D: adapters, necks, prompt encoder, decoder; the frozen SAM weights "
      "are not counted; nnU-Net: all). s / case: wall time per case on this machine, preprocessing + prediction + "
      "resampling to native geometry (nnU-Net: its own predictor, sliding window step 0.5, "
      f"{tta}, timed on {results['methods'][base_key].get('timing', {}).get('n_cases', 'n/a')} case(s); SAM3D: "
      f"no test-time augmentation). Times depend on the machine and its load.")
    w("")

    # NSD at every tolerance
    tols = [float(t) for t in results["tolerances_mm"]]
    w("## NSD at every tolerance (%)")
    w("")
    head = ["method", "clicks per class"] + [f"{labels[c]} NSD@{t:g}mm" for c in classes for t in tols]
    lines += markdown_table(head, ([r["display"], r["clicks"]] + [_pct(r["summary"]["mean"][c][nsd_key(t)])
                                                                  for c in classes for t in tols]
                                   for r in table_rows(results)))
    w("")

    # iterative
    n = results["iterative_steps"]
    it_methods = [k for k in results["sam_methods"] if "iterative" in results["methods"][k]]
    if n > 0 and it_methods:
        w(f"## Iterative correction ({n} clicks per class): Dice (%) per step")
        w("")
        w("Step 1 is the 1-random-click prompt; every next click is placed at the centre of the largest error "
          "region of the current prediction (native space, real spacing; positive for a missed region, negative for "
          "a false positive). AUC: area under the Dice curve, the mean over the steps (in %, 100 = perfect from the "
          "first click). nnU-Net's Dice is the same at every step.")
        w("")
        lines += curve_table(results, "iterative", [f"step {i}" for i in range(1, n + 1)], nk)
        w("")
    nb = results.get("box_iterative_steps", 0)
    if nb > 0 and any("box_iterative" in results["methods"][k] for k in results["sam_methods"]):
        w(f"## Box then correction clicks (box + {nb} clicks per class): Dice (%) per step")
        w("")
        w("Step 0 is the box alone (the class's bounding box in the native ground truth); every next step adds one "
          "correction click per class as in the iterative protocol. AUC: the mean over the steps.")
        w("")
        lines += curve_table(results, "box_iterative", ["box"] + [f"+{i} click{'s' if i > 1 else ''}"
                                                                  for i in range(1, nb + 1)], nk)
        w("")

    # per case
    w("## Dice per case (%)")
    w("")
    first_k = results["clicks"][0] if results["clicks"] else None
    cols = [(base_key, "nnunet", "nnU-Net")]
    for key in results["sam_methods"]:
        m = results["methods"][key]
        short = m["trainer"].replace("nnUNetTrainer", "") or m["trainer"]
        if first_k is not None and clicks_protocol_name(first_k) in m["summary"]:
            cols.append((key, clicks_protocol_name(first_k), f"{short} {first_k} click{'s' if first_k > 1 else ''}"))
        if n > 0 and iterative_protocol_name(n) in m["summary"]:
            cols.append((key, iterative_protocol_name(n), f"{short} iterative {n}"))
        if AUTO in m["summary"]:
            cols.append((key, AUTO, f"{short} automatic"))
        for proto, label in shape_rows(results, m):
            cols.append((key, proto, f"{short} {label.replace(' (final)', '')}"))
    head = ["case", "fold"] + [f"{label}: {labels[c]}" for _, _, label in cols for c in classes]
    rows = []
    for case in sorted(results["cases"]):
        cells = [case, str(results["cases"][case]["fold"])]
        for key, proto, _ in cols:
            pc = results["methods"][key]["per_case"].get(case, {}).get("protocols", {}).get(proto)
            for c in classes:
                cells.append(_pct(pc["metrics"][c]["Dice"]) if pc else "–")
        rows.append(cells)
    lines += markdown_table(head, rows)
    w("")

    plots = results.get("plots") or {}
    if plots:
        w("## Plots")
        w("")
        for name, rel in plots.items():
            w(f"- {name}: ![{name}]({rel})")
        w("")
    w("## Protocols")
    w("")
    for name, text in results["protocols"].items():
        w(f"- `{name}`: {text}")
    w("")
    w("Everything per case (clicks in raw voxel indices, per-step scores, timings, prediction files) is in "
      "`results.json`; the predictions are under `predictions/`.")
    w("")
    return "\n".join(lines)


def write_report(results: dict, path: str) -> None:
    write_text_atomic(path, render_report(results))


__all__ = ["render_report", "write_report", "table_rows", "main_nsd_tolerance", "model_context", "markdown_table",
           "dice_nsd_columns", "dice_nsd_cells"]
