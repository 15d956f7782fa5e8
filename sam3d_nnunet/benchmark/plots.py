"""PNG plots of the benchmark (matplotlib, Agg backend; every file written atomically).

* ``dice_vs_clicks.png`` / ``nsd_vs_clicks.png``: mean Dice / NSD per class against the number of clicks per
  class (0 = automatic, K random clicks, iterative correction steps; a box then its correction clicks and a
  scribble count one interaction each), nnU-Net as a horizontal line;
* ``scatter_dice.png``: per-case Dice, SAM3D (fewest random clicks) against nnU-Net, one panel per class;
* ``iterative_dice.png``: Dice per correction step (mean and every case), nnU-Net as a horizontal line;
* ``overlay_best.png``, ``overlay_median.png``, ``overlay_worst.png``: the image slice through the centre of the
  smallest object class, with the ground-truth contour and the contours of both predictions (full slice and a
  zoom on the object), cases ranked by the SAM3D Dice of that class. Grey values are shown in the dataset's
  foreground intensity window (``display_window``); the legend names, per method, the class each contour shows
  and that class's Dice (thick lines: the ranked class, thin lines: the other classes).
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional

import numpy as np

from sam3d_nnunet.atomic import savefig_atomic
from sam3d_nnunet.benchmark.protocols import AUTO, BOX, SCRIBBLE, clicks_protocol_name
from sam3d_nnunet.benchmark.report import main_nsd_tolerance, nsd_key

COLOURS = ["tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink"]
GT_COLOUR, BASE_COLOUR = "lime", "deepskyblue"


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> None:
    try:
        savefig_atomic(fig, path, format="png", dpi=110, bbox_inches="tight")
    finally:
        _plt().close(fig)


def _nan(v) -> float:
    return float("nan") if v is None else float(v)


def _short(display: str) -> str:
    return display.replace("(nnUNetTrainerSAM3D", "(SAM3D")


# ------------------------------------------------------------------------------------------ curves
def plot_metric_vs_clicks(results: dict, metric: str, path: str) -> None:
    plt = _plt()
    classes = list(results["labels"])
    base = results["methods"][results["baseline"]]["summary"]["nnunet"]["mean"]
    fig, axes = plt.subplots(1, len(classes), figsize=(5.2 * len(classes), 4.2), squeeze=False)
    n_it = results["iterative_steps"]
    n_box = results.get("box_iterative_steps", 0)
    shapes = any(BOX in results["methods"][k]["summary"] or SCRIBBLE in results["methods"][k]["summary"]
                 for k in results["sam_methods"])
    max_x = max([0] + list(results["clicks"]) + [n_it, n_box + 1])
    for ax, c in zip(axes[0], classes):
        for i, key in enumerate(results["sam_methods"]):
            m = results["methods"][key]
            col = COLOURS[i % len(COLOURS)]
            xs, ys = [], []
            if AUTO in m["summary"]:
                xs.append(0)
                ys.append(_nan(m["summary"][AUTO]["mean"][c][metric]))
            for k in results["clicks"]:
                p = clicks_protocol_name(k)
                if p in m["summary"]:
                    xs.append(k)
                    ys.append(_nan(m["summary"][p]["mean"][c][metric]))
            if xs:
                ax.plot(xs, ys, "o-", color=col, label=f"{_short(m['display'])}: random clicks")
            if "iterative" in m:
                curve = [_nan(v) for v in m["iterative"]["per_class"][c]["mean_curve"][metric]]
                ax.plot(range(1, len(curve) + 1), curve, "s--", color=col, alpha=0.8,
                        label=f"{_short(m['display'])}: iterative correction")
            if "box_iterative" in m:  # the box is interaction 1, each correction click one more
                curve = [_nan(v) for v in m["box_iterative"]["per_class"][c]["mean_curve"][metric]]
                ax.plot(range(1, len(curve) + 1), curve, "^:", color=col, alpha=0.8,
                        label=f"{_short(m['display'])}: box, then correction clicks")
            elif BOX in m["summary"]:
                ax.plot([1], [_nan(m["summary"][BOX]["mean"][c][metric])], "^", color=col, ms=9,
                        label=f"{_short(m['display'])}: 1 box")
            if SCRIBBLE in m["summary"]:
                ax.plot([1], [_nan(m["summary"][SCRIBBLE]["mean"][c][metric])], "*", color=col, ms=12,
                        label=f"{_short(m['display'])}: 1 scribble")
        b = _nan(base[c][metric])
        if not math.isnan(b):
            ax.axhline(b, color=BASE_COLOUR, lw=2, label=f"{_short(results['methods'][results['baseline']]['display'])}")
        ax.set_title(f"{results['labels'][c]} (label {c})")
        ax.set_xlabel("interactions per class: clicks, or a box / scribble + clicks (0 = automatic)"
                      if shapes else "clicks per class (0 = automatic)")
        ax.set_ylabel(f"mean {metric}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(-0.5, max_x + 0.5)
        ax.set_xticks(sorted({0, *results["clicks"], *range(1, max(n_it, n_box + 1) + 1)}))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{results['dataset']}: {metric} against the number of {'interactions' if shapes else 'clicks'} "
                 f"({len(results['cases'])} validation cases)")
    fig.tight_layout()
    _save(fig, path)


def plot_iterative(results: dict, path: str) -> bool:
    keys = [k for k in results["sam_methods"] if "iterative" in results["methods"][k]]
    if not keys:
        return False
    plt = _plt()
    classes = list(results["labels"])
    base = results["methods"][results["baseline"]]["summary"]["nnunet"]["mean"]
    fig, axes = plt.subplots(1, len(classes), figsize=(5.2 * len(classes), 4.2), squeeze=False)
    for ax, c in zip(axes[0], classes):
        for i, key in enumerate(keys):
            it = results["methods"][key]["iterative"]
            col = COLOURS[i % len(COLOURS)]
            for case, v in it["per_case"].items():
                curve = [_nan(x) for x in v[c]["curves"]["Dice"]]
                ax.plot(range(1, len(curve) + 1), curve, "-", color=col, alpha=0.3, lw=1)
            mean = [_nan(x) for x in it["per_class"][c]["mean_curve"]["Dice"]]
            auc = _nan(it["per_class"][c]["auc"]["Dice"])
            ax.plot(range(1, len(mean) + 1), mean, "o-", color=col, lw=2,
                    label=f"{_short(results['methods'][key]['display'])} (AUC {auc:.3f})")
        b = _nan(base[c]["Dice"])
        if not math.isnan(b):
            ax.axhline(b, color=BASE_COLOUR, lw=2, label="nnU-Net")
        ax.set_title(f"{results['labels'][c]} (label {c})")
        ax.set_xlabel("interaction (clicks per class)")
        ax.set_ylabel("Dice")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(range(1, results["iterative_steps"] + 1))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{results['dataset']}: iterative correction (click at the centre of the largest error), "
                 f"thin lines = cases")
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_scatter(results: dict, path: str) -> bool:
    if not results["clicks"]:
        return False
    plt = _plt()
    proto = clicks_protocol_name(results["clicks"][0])
    classes = list(results["labels"])
    base = results["methods"][results["baseline"]]["per_case"]
    fig, axes = plt.subplots(1, len(classes), figsize=(4.6 * len(classes), 4.4), squeeze=False)
    for ax, c in zip(axes[0], classes):
        for i, key in enumerate(results["sam_methods"]):
            m = results["methods"][key]
            xs, ys = [], []
            for case, v in m["per_case"].items():
                if proto not in v["protocols"]:
                    continue
                xs.append(_nan(base[case]["protocols"]["nnunet"]["metrics"][c]["Dice"]))
                ys.append(_nan(v["protocols"][proto]["metrics"][c]["Dice"]))
            if xs:
                ax.scatter(xs, ys, s=28, color=COLOURS[i % len(COLOURS)], alpha=0.8, edgecolor="k", lw=0.4,
                           label=_short(m["display"]))
        ax.plot([0, 1], [0, 1], "k--", lw=1, alpha=0.6)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel("nnU-Net Dice")
        ax.set_ylabel(f"SAM3D Dice, {results['clicks'][0]} click{'s' if results['clicks'][0] > 1 else ''}")
        ax.set_title(f"{results['labels'][c]} (label {c})")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"{results['dataset']}: per-case Dice (above the diagonal: SAM3D better)")
    fig.tight_layout()
    _save(fig, path)
    return True


# ------------------------------------------------------------------------------------------ overlays
def overlay_class(results: dict) -> str:
    """The foreground class with the smallest median reference volume (the tumour in tumour tasks)."""
    base = results["methods"][results["baseline"]]["per_case"]
    best, best_size = None, None
    for c in results["labels"]:
        sizes = [v["protocols"]["nnunet"]["metrics"][c].get("n_ref", 0) for v in base.values()]
        sizes = [s for s in sizes if s]
        if not sizes:
            continue
        med = float(np.median(sizes))
        if best_size is None or med < best_size:
            best, best_size = c, med
    return best if best is not None else list(results["labels"])[0]


def rank_cases(results: dict, key: str, proto: str, c: str) -> List[str]:
    per_case = results["methods"][key]["per_case"]
    scored = [(float(v["protocols"][proto]["metrics"][c]["Dice"]), case) for case, v in per_case.items()
              if proto in v["protocols"] and v["protocols"][proto]["metrics"][c]["Dice"] is not None
              and not math.isnan(float(v["protocols"][proto]["metrics"][c]["Dice"]))]
    return [case for _, case in sorted(scored, key=lambda t: (-t[0], t[1]))]


def display_window(image: np.ndarray, gt: np.ndarray, intensity_properties: Optional[dict] = None):
    """(low, high) grey values shown black and white: the intensities of the labelled objects, so that they are
    not washed out by air or bone (a CT's -1000 HU air would otherwise stretch the range and leave soft tissue,
    organ and tumour all near white). The dataset's foreground intensity range from nnU-Net's fingerprint
    (``intensity_properties``: the plans' ``foreground_intensity_properties_per_channel['0']``, percentiles 0.5
    and 99.5 of the labelled voxels of all training cases, nnU-Net's CT clipping window) if given, else the same
    percentiles of this image's labelled voxels (of the whole image if it has none); widened by a quarter of its
    width on both sides, so that the brightest and darkest objects are not clipped to white or black."""
    props = intensity_properties or {}
    if "percentile_00_5" in props and "percentile_99_5" in props:
        lo, hi = float(props["percentile_00_5"]), float(props["percentile_99_5"])
    else:
        values = image[gt > 0] if np.any(gt > 0) else image
        lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    lo, hi = lo - 0.25 * (hi - lo), hi + 0.25 * (hi - lo)
    if not hi > lo:
        lo, hi = float(image.min()), float(image.max())
        hi = hi if hi > lo else lo + 1.0
    return lo, hi


def _contour(ax, mask, colour, style, lw=1.6):
    if mask.any():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linestyles=[style], linewidths=lw)


def _overlay_legend(results: dict, case: str, key: str, proto: str, c: str, z: int, gt: np.ndarray,
                    pred_sam: np.ndarray, pred_base: np.ndarray) -> list:
    """Legend entries (label, colour, line style, line width): one per method and class, named by the class its
    contour shows and carrying that class's Dice in this case; thick lines for class ``c``."""
    names = results["labels"]
    shown = [c] + [k for k in names if k != c] if len(names) <= 3 else [c]
    base_key = results["baseline"]
    methods = [(GT_COLOUR, "solid", 0.4, "ground truth", gt, None),
               (BASE_COLOUR, "dashed", 0.0, "nnU-Net", pred_base,
                results["methods"][base_key]["per_case"][case]["protocols"]["nnunet"]["metrics"]),
               ("red", "solid", 0.0, f"SAM3D {proto.replace('_', ' ')}", pred_sam,
                results["methods"][key]["per_case"][case]["protocols"][proto]["metrics"])]
    entries = []
    for colour, style, extra_width, method, seg, metrics in methods:
        for k in shown:
            text = f"{method}: {names[k]}"
            notes = [] if metrics is None else [f"Dice {_nan(metrics[k]['Dice']):.3f}"]
            if not np.any(seg[z] == int(k)):
                notes.append("none on this slice")
            if notes:
                text += f" ({', '.join(notes)})"
            entries.append((text, colour, style, (2.0 if k == c else 1.0) + extra_width))
    if len(shown) < len(names):
        entries.append(("thin lines: the other classes", "grey", "solid", 1.0))
    return entries


def plot_overlay(results: dict, case: str, rank: str, key: str, proto: str, c: str, image: np.ndarray,
                 gt: np.ndarray, pred_sam: np.ndarray, pred_base: np.ndarray, spacing, clicks: Optional[dict],
                 path: str, intensity_properties: Optional[dict] = None) -> None:
    from matplotlib.lines import Line2D
    plt = _plt()
    cls = int(c)
    obj = gt == cls
    if not obj.any():
        obj = gt > 0
    z = int(round(np.argwhere(obj).mean(0)[0])) if obj.any() else image.shape[0] // 2
    img = image[z].astype(np.float32)
    lo, hi = display_window(image, gt, intensity_properties)
    aspect = float(spacing[1]) / float(spacing[2])
    fg_labels = [int(x) for x in results["labels"]]
    region = (gt[z] == cls) | (pred_sam[z] == cls) | (pred_base[z] == cls)
    if not region.any():
        region = gt[z] > 0
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.4))
    for i, ax in enumerate(axes):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        for lab in fg_labels:
            lw = 2.0 if lab == cls else 1.0
            _contour(ax, gt[z] == lab, GT_COLOUR, "solid", lw + 0.4)
            _contour(ax, pred_base[z] == lab, BASE_COLOUR, "dashed", lw)
            _contour(ax, pred_sam[z] == lab, "red", "solid", lw)
        shown_clicks, hidden_slices = 0, set()
        if clicks:
            for cl, pts in clicks.items():
                for p, l in zip(pts["clicks_raw_voxel"], pts["labels"]):
                    if abs(p[0] - z) <= 1.5:
                        ax.plot(p[2], p[1], marker="+" if l == 1 else "x", color="yellow", ms=11, mew=2.2)
                        shown_clicks += 1
                    elif str(cl) == str(c):
                        hidden_slices.add(int(round(p[0])))
        if i == 1 and region.any():
            ys, xs = np.nonzero(region)
            m = max(8, int(0.4 * max(np.ptp(ys) + 1, np.ptp(xs) + 1)))
            ax.set_xlim(max(xs.min() - m, 0) - 0.5, min(xs.max() + m, img.shape[1] - 1) + 0.5)
            ax.set_ylim(min(ys.max() + m, img.shape[0] - 1) + 0.5, max(ys.min() - m, 0) - 0.5)
            ax.set_title("zoom on the object")
        else:
            ax.set_title(f"slice {z} (array axis 0)")
        ax.set_xticks([])
        ax.set_yticks([])
    m = results["methods"][key]
    handles = [Line2D([], [], color=colour, ls=style, lw=lw, label=text)
               for text, colour, style, lw in _overlay_legend(results, case, key, proto, c, z, gt, pred_sam,
                                                               pred_base)]
    if clicks:
        label = "click (+ pos, x neg), within 1.5 slices"
        if hidden_slices:
            label += f"; {results['labels'][c]} click(s) on slice(s) {sorted(hidden_slices)[:4]}"
        handles.append(Line2D([], [], color="yellow", marker="+", ls="", mew=2, ms=10, label=label))
    axes[1].legend(handles=handles, fontsize=7, loc="lower right", framealpha=0.8)
    others = "; thin lines: the other classes" if len(fg_labels) > 1 else ""
    fig.suptitle(f"{rank} case {case}: {results['labels'][c]} (label {c}, thick lines{others}), "
                 f"{_short(m['display'])}")
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------------------------------------------------ all
def make_plots(results: dict, output_dir: str, images: Dict[str, List[str]], runner) -> Dict[str, str]:
    """Write every plot; returns ``{title: file name relative to output_dir}``."""
    out = {}
    plot_metric_vs_clicks(results, "Dice", os.path.join(output_dir, "dice_vs_clicks.png"))
    out["Dice against the number of clicks"] = "dice_vs_clicks.png"
    nk = nsd_key(main_nsd_tolerance(results))
    plot_metric_vs_clicks(results, nk, os.path.join(output_dir, "nsd_vs_clicks.png"))
    out[f"{nk} against the number of clicks"] = "nsd_vs_clicks.png"
    if plot_scatter(results, os.path.join(output_dir, "scatter_dice.png")):
        out["per-case Dice, SAM3D vs nnU-Net"] = "scatter_dice.png"
    if plot_iterative(results, os.path.join(output_dir, "iterative_dice.png")):
        out["iterative correction Dice curve"] = "iterative_dice.png"

    key = results["sam_methods"][0]
    m = results["methods"][key]
    proto = clicks_protocol_name(results["clicks"][0]) if results["clicks"] and \
        clicks_protocol_name(results["clicks"][0]) in m["summary"] else (AUTO if AUTO in m["summary"] else None)
    if proto is None:
        return out
    c = overlay_class(results)
    ranked = rank_cases(results, key, proto, c)
    if not ranked:
        return out
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans = PlansManager(os.path.join(m["model_folder"], "plans.json"))
    rw = plans.image_reader_writer_class()
    intensity = (plans.foreground_intensity_properties_per_channel or {}).get("0")
    picks = [("best", ranked[0]), ("median", ranked[len(ranked) // 2]), ("worst", ranked[-1])]
    for rank, case in picks:
        image, _ = rw.read_images(images[case])
        gt, props = rw.read_seg(runner.gt_file(case))
        sam_file = m["per_case"][case]["protocols"][proto]["prediction_file"]
        base_file = results["methods"][results["baseline"]]["per_case"][case]["protocols"]["nnunet"]["prediction_file"]
        pred_sam, _ = rw.read_seg(sam_file)
        pred_base, _ = rw.read_seg(base_file)
        clicks = (results["cases"][case].get("clicks") or {}).get(proto)
        if clicks is None and isinstance(m["per_case"][case]["protocols"][proto].get("prompts"), dict):
            clicks = m["per_case"][case]["protocols"][proto]["prompts"]
        name = f"overlay_{rank}.png"
        plot_overlay(results, case, rank, key, proto, c, np.asarray(image[0]), np.asarray(gt[0]),
                     np.asarray(pred_sam[0]), np.asarray(pred_base[0]), props["spacing"], clicks,
                     os.path.join(output_dir, name), intensity)
        out[f"{rank} case ({case})"] = name
    return out


__all__ = ["make_plots", "plot_metric_vs_clicks", "plot_scatter", "plot_iterative", "plot_overlay",
           "overlay_class", "rank_cases", "display_window"]
