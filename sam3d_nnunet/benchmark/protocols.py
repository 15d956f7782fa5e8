"""Seeded click protocols of the benchmark (raw / native voxel indices of the ground truth, reader array order).

* ``K random clicks`` (the published method's protocol, seeded): for every foreground class present in the
  case's ground truth, K distinct uniformly random voxels of that class, drawn by
  :func:`sam3d_nnunet.prompts.protocol_clicks` with the seed ``case_class_seed(case, class, seed)``. The clicks
  of the largest K are drawn once and every smaller K takes their first k, so the 1-click set is a subset of the
  3-click set, which is a subset of the 10-click set (``protocol_clicks`` is itself nested; slicing makes it
  explicit). Absent classes get no prompt and are predicted empty.
* ``iterative correction`` (CVPR 2025 interactive protocol): step 1 is the 1-click prompt above; every next
  step adds, per class, one click at the centre of the largest error region of the current prediction of that
  class against the ground truth (:func:`sam3d_nnunet.prompts.correction_click`, in native space with the real
  spacing, positive for a missed region, negative for a false-positive one). A class already predicted exactly
  gets no new click. Scored per step, as the area under the Dice curve (mean of the per-step Dice, in [0, 1])
  and as the final Dice.
* ``zero clicks`` (automatic mode): no prompt; SAM3DNet's class-conditioned no-click path over nnU-Net's
  sliding window.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Dict, Iterable, Mapping, Optional, Sequence

import numpy as np

from sam3d_nnunet.inference.prompted_predictor import ClassPrompt
from sam3d_nnunet.prompts.simulation import case_class_seed, correction_click, protocol_clicks

AUTO = "auto"


def clicks_protocol_name(k: int) -> str:
    return f"clicks_{int(k)}"


def iterative_protocol_name(step: int) -> str:
    return f"iterative_step_{int(step)}"


def nested_click_prompts(label: np.ndarray, case_id: str, foreground_labels: Iterable[int],
                         click_counts: Sequence[int], seed: int) -> Dict[int, Dict[int, ClassPrompt]]:
    """``{K: {class: ClassPrompt}}`` for every K of ``click_counts``; smaller K are prefixes of larger K."""
    counts = sorted({int(k) for k in click_counts})
    if not counts or counts[0] < 1:
        raise ValueError(f"click counts must be >= 1, got {list(click_counts)}")
    k_max = counts[-1]
    drawn = {}
    for c in foreground_labels:
        pts = protocol_clicks(label, int(c), k_max, case_class_seed(case_id, int(c), seed))
        if len(pts):
            drawn[int(c)] = pts
    return {k: {c: ClassPrompt(pts[:k], np.ones(min(k, len(pts)), dtype=np.int64)) for c, pts in drawn.items()}
            for k in counts}


def add_correction_clicks_native(prompts: Mapping[int, ClassPrompt], prediction: np.ndarray, label: np.ndarray,
                                 spacing: Sequence[float], ignore_label: Optional[int] = None
                                 ) -> Dict[int, ClassPrompt]:
    """The next step's prompts: each prompted class gets one correction click (centre of its largest error
    region in ``prediction`` vs ``label``, both native arrays; ``spacing`` in array order) unless exact."""
    ignore = (label == ignore_label) if ignore_label is not None else None
    out = {}
    for c, p in prompts.items():
        click = correction_click(prediction == c, label == c, spacing=spacing, ignore_mask=ignore)
        if click is None:
            out[c] = ClassPrompt(p.clicks.copy(), p.labels.copy())
        else:
            out[c] = ClassPrompt(np.concatenate([p.clicks, click.point[None]]),
                                 np.concatenate([p.labels, [int(click.label)]]))
    return out


def prompts_to_json(prompts: Optional[Mapping[int, ClassPrompt]]) -> Optional[dict]:
    """JSON-able form: ``{"<class>": {"clicks_raw_voxel": [[i, j, k], ...], "labels": [1, 0, ...]}}``."""
    if prompts is None:
        return None
    return {str(c): {"clicks_raw_voxel": [[float(v) for v in row] for row in p.clicks],
                     "labels": [int(v) for v in p.labels]}
            for c, p in sorted(prompts.items())}


def prompts_from_json(data: Optional[Mapping]) -> Optional[Dict[int, ClassPrompt]]:
    if data is None:
        return None
    return {int(c): ClassPrompt(v["clicks_raw_voxel"], v["labels"]) for c, v in data.items()}


def prompts_key(prompts: Optional[Mapping[int, ClassPrompt]]) -> str:
    """A short content hash of a prompt set (identical prompts -> identical prediction, computed once)."""
    text = json.dumps(prompts_to_json(prompts), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def area_under_curve(values: Sequence[float]) -> float:
    """Area under a per-step score curve normalised to [0, 1]: the mean over the steps (NaN steps left out;
    NaN if all are NaN)."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else float("nan")


def is_subset(small: Mapping[int, ClassPrompt], large: Mapping[int, ClassPrompt]) -> bool:
    """Every click of ``small`` (per class) is among the clicks of ``large``."""
    for c, p in small.items():
        if c not in large:
            return False
        rows = {tuple(r) for r in np.asarray(large[c].clicks).tolist()}
        if not all(tuple(r) in rows for r in np.asarray(p.clicks).tolist()):
            return False
    return True


__all__ = ["AUTO", "clicks_protocol_name", "iterative_protocol_name", "nested_click_prompts",
           "add_correction_clicks_native", "prompts_to_json", "prompts_from_json", "prompts_key",
           "area_under_curve", "is_subset"]
