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

Prompts other than clicks (``sam3d_nnunet.prompts.shapes``, raw voxel indices of the native ground truth; a
protocol's prompts are ``{class: [prompt, ...]}`` lists instead of ``ClassPrompt`` s):

* ``box`` (1 box per class): the 3D bounding box of the class's voxels in the native ground truth (its corner
  voxels' centres, so the box holds every object voxel). No jitter by default (then no seed is involved); with
  ``jitter`` > 0 every side moves outward by a uniform integer 0 .. round(jitter x extent) voxels, seeded by
  ``case_class_seed(case, class, seed)``, clipped to the image. One box per CLASS: a class of several
  components gets the box around all of them.
* ``box then correction clicks`` (``box_iterative_step_N``, N = 0 .. the number of correction clicks): step 0
  is the box alone; every next step adds one correction click per class exactly as the iterative protocol does
  (centre of the largest error region, positive / negative; none if the class is exact). N correction clicks
  give N + 1 points on the curve.
* ``scribble`` (1 scribble per class): a positive scribble drawn by
  ``sam3d_nnunet.prompts.shape_simulation.simulate_scribble`` (the training simulation) on the class's voxels
  with ``numpy.random.default_rng(case_class_seed(case, class, seed))``: a self-avoiding walk of 4 .. 32
  neighbouring class voxels, on a slice through a random class voxel (random axis; half of the time along the
  slice's skeleton) with probability 1/2, else in 3D, so every vertex lies on the class. A class of a single
  voxel (no room for a walk) gets one click on it instead.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Dict, Iterable, Mapping, Optional, Sequence

import numpy as np

from sam3d_nnunet.inference.prompted_predictor import ClassPrompt
from sam3d_nnunet.prompts.shapes import BoxPrompt, ClickPrompt, LassoPrompt, ScribblePrompt, describe_prompt
from sam3d_nnunet.prompts.simulation import case_class_seed, correction_click, protocol_clicks

AUTO = "auto"
BOX = "box"
SCRIBBLE = "scribble"


def clicks_protocol_name(k: int) -> str:
    return f"clicks_{int(k)}"


def iterative_protocol_name(step: int) -> str:
    return f"iterative_step_{int(step)}"


def box_iterative_protocol_name(corrections: int) -> str:
    """The box protocol after ``corrections`` correction clicks (0: the box alone)."""
    return f"box_iterative_step_{int(corrections)}"


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


def bounding_box_prompts(label: np.ndarray, case_id: str, foreground_labels: Iterable[int], seed: int,
                         jitter: float = 0.0) -> Dict[int, list]:
    """``{class: [BoxPrompt]}``: the bounding box of each present class (see the module docstring)."""
    if jitter < 0:
        raise ValueError(f"box jitter must be >= 0, got {jitter}")
    shape = np.asarray(label.shape)
    out = {}
    for c in foreground_labels:
        nz = np.nonzero(label == int(c))
        if not len(nz[0]):
            continue
        lo = np.array([a.min() for a in nz])
        hi = np.array([a.max() for a in nz])
        if jitter > 0:
            rng = np.random.default_rng(case_class_seed(case_id, int(c), seed))
            most = np.round(jitter * (hi - lo + 1)).astype(int) + 1
            lo = np.clip(lo - rng.integers(0, most), 0, shape - 1)
            hi = np.clip(hi + rng.integers(0, most), 0, shape - 1)
        out[int(c)] = [BoxPrompt(tuple(float(v) for v in lo), tuple(float(v) for v in hi), True)]
    return out


def scribble_prompts(label: np.ndarray, case_id: str, foreground_labels: Iterable[int], seed: int
                     ) -> Dict[int, list]:
    """``{class: [ScribblePrompt]}``: one seeded positive scribble per present class (a click where a class has no
    room for one); see the module docstring."""
    from sam3d_nnunet.prompts.shape_simulation import simulate_scribble
    out = {}
    for c in foreground_labels:
        obj = label == int(c)
        if not obj.any():
            continue
        rng = np.random.default_rng(case_class_seed(case_id, int(c), seed))
        scribble = simulate_scribble(obj, rng, positive=True)
        if scribble is None:
            pts = protocol_clicks(label, int(c), 1, case_class_seed(case_id, int(c), seed))
            out[int(c)] = [ClickPrompt(tuple(pts[0]), True)]
        else:
            out[int(c)] = [scribble]
    return out


def add_correction_click_prompts(prompts: Mapping[int, list], prediction: np.ndarray, label: np.ndarray,
                                 spacing: Sequence[float], ignore_label: Optional[int] = None) -> Dict[int, list]:
    """As :func:`add_correction_clicks_native` for shape prompts ``{class: [prompt, ...]}``: each class gets one
    correction ``ClickPrompt`` appended unless its prediction is exact."""
    ignore = (label == ignore_label) if ignore_label is not None else None
    out = {}
    for c, p in prompts.items():
        click = correction_click(prediction == c, label == c, spacing=spacing, ignore_mask=ignore)
        out[c] = list(p) if click is None else list(p) + [ClickPrompt(tuple(float(v) for v in click.point),
                                                                      bool(click.label))]
    return out


def is_shape_prompts(prompts: Mapping) -> bool:
    """Shape prompts ``{class: [prompt, ...]}`` rather than ``{class: ClassPrompt}``."""
    return any(isinstance(v, (list, tuple)) for v in prompts.values())


def prompts_to_json(prompts: Optional[Mapping]) -> Optional[dict]:
    """JSON-able form: ``{"<class>": {"clicks_raw_voxel": [[i, j, k], ...], "labels": [1, 0, ...]}}`` of
    ``ClassPrompt`` s, ``{"<class>": {"prompts": [describe_prompt(p), ...]}}`` of shape prompts."""
    if prompts is None:
        return None
    if is_shape_prompts(prompts):
        return {str(c): {"prompts": [describe_prompt(q) for q in p]} for c, p in sorted(prompts.items())}
    return {str(c): {"clicks_raw_voxel": [[float(v) for v in row] for row in p.clicks],
                     "labels": [int(v) for v in p.labels]}
            for c, p in sorted(prompts.items())}


def _prompt_from_json(d: Mapping):
    kind = d["type"]
    if kind == "click":
        return ClickPrompt(d["point_zyx"], d["positive"])
    if kind == "box":
        return BoxPrompt(d["corners_zyx"][0], d["corners_zyx"][1], d["positive"])
    if kind in ("scribble", "lasso"):
        return (ScribblePrompt if kind == "scribble" else LassoPrompt)(d["points_zyx"], d["positive"])
    raise ValueError(f"a {kind!r} prompt cannot be read back from its JSON record")


def prompts_from_json(data: Optional[Mapping]) -> Optional[Dict[int, object]]:
    """Inverse of :func:`prompts_to_json` (masks are not recorded, so not read back)."""
    if data is None:
        return None
    return {int(c): ([_prompt_from_json(q) for q in v["prompts"]] if "prompts" in v
                     else ClassPrompt(v["clicks_raw_voxel"], v["labels"])) for c, v in data.items()}


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


__all__ = ["AUTO", "BOX", "SCRIBBLE", "clicks_protocol_name", "iterative_protocol_name",
           "box_iterative_protocol_name", "nested_click_prompts", "bounding_box_prompts", "scribble_prompts",
           "add_correction_clicks_native", "add_correction_click_prompts", "is_shape_prompts", "prompts_to_json",
           "prompts_from_json", "prompts_key",
           "area_under_curve", "is_subset"]
