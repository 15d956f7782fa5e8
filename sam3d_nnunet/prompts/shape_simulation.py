"""Seeded simulation of box, scribble, lasso and previous-mask prompts for training, from the augmented target.

Seeded like the clicks (``simulation.py``): every function takes a ``numpy.random.Generator`` or a seed and never
touches a global RNG. Prompts are ``sam3d_nnunet.prompts.shapes`` objects in the patch's array order, reduced to
what the network reads with the same ``encode_prompts`` as at inference.

* box (``simulate_box``): the object's bounding box, each side moved outward by a uniform integer 0 ..
  ``jitter`` x extent (at least 1 voxel of extent per in-plane axis); with probability ``p_2d`` a 2D box on a
  slice through a random object voxel (random axis), from the object's bounding box on that slice;
* scribble (``simulate_scribble``): a self-avoiding random walk of 4 .. 32 neighbouring voxels, positive inside
  the object (half of them along the skeleton of a slice of it, ``skimage.morphology.skeletonize``), negative in
  a band of ``band`` voxels around it; on one slice through a random object voxel with probability ``p_2d``,
  else 3D. Consecutive vertices are neighbours, so the polyline's voxels are all inside (or all outside);
* lasso (``simulate_lasso``): positive, the contour (``skimage.measure.find_contours``) of the object's region on
  a slice through a random object voxel, dilated by 1 .. 2 voxels, reduced to at most 24 vertices, each moved by
  Gaussian noise (sigma 0.5 voxel); a perturbation that makes it self-intersect is dropped. Negative, an
  octagon of radius 2 .. 4 voxels around a voxel of the slice that far from the object;
* previous mask (``add_correction_prompts``): the correction pass's own prediction, in the dense prompt's first
  channel, for a share of the samples.

``simulate_prompt_batch`` draws one prompt per sample: a click prompt as ``simulate_training_prompts`` does and,
with the weights of ``mix`` (keys ``click``, ``box``, ``scribble``, ``lasso``), a box, a positive scribble (plus a
negative one with probability 1/2) or a positive lasso (plus a negative one with probability 1/3) in place of its
positive clicks. ``mix == {"click": 1}`` (the paper) draws exactly the clicks ``simulate_training_prompts`` draws.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch

from sam3d_nnunet.prompts.shapes import (BoxPrompt, LassoPrompt, Prompt, PromptError, ScribblePrompt, encode_prompts,
                                         validate_prompt)
from sam3d_nnunet.prompts.simulation import (RngLike, _as_int_labels, _pad, _sample_flat, add_correction_clicks,
                                             as_rng, binary_targets, sample_training_prompt,
                                             simulate_training_prompts)

__all__ = ["SHAPE_KINDS", "PromptBatch", "simulate_box", "simulate_scribble", "simulate_lasso", "simulate_shapes",
           "simulate_prompt_batch", "add_correction_prompts", "check_mix"]

SHAPE_KINDS = ("click", "box", "scribble", "lasso")
MIX_KEYS = SHAPE_KINDS + ("mask",)


def check_mix(mix: Mapping[str, float]) -> dict:
    """A prompt mix: non-negative weights for ``SHAPE_KINDS`` (at least one positive) and ``mask``, the
    probability in [0, 1] that a correction pass also passes its own prediction as the previous mask."""
    mix = {str(k): float(v) for k, v in dict(mix).items()}
    unknown = sorted(set(mix) - set(MIX_KEYS))
    if unknown:
        raise ValueError(f"prompt mix: unknown keys {unknown} (allowed: {list(MIX_KEYS)})")
    if any(v < 0 for v in mix.values()) or sum(mix.get(k, 0.0) for k in SHAPE_KINDS) <= 0:
        raise ValueError(f"prompt mix {mix}: weights must be >= 0 and one of {list(SHAPE_KINDS)} positive")
    if mix.get("mask", 0.0) > 1:
        raise ValueError(f"prompt mix: 'mask' is a probability, got {mix['mask']}")
    return mix


def _random_slice(obj: np.ndarray, rng: np.random.Generator) -> tuple[int, int, np.ndarray]:
    """(axis, index, 2D object mask) of a slice through a uniformly random object voxel along a random axis."""
    voxel = _sample_flat(obj, 1, rng)[0].astype(int)
    axis = int(rng.integers(3))
    return axis, int(voxel[axis]), np.take(obj, voxel[axis], axis=axis)


def _embed(points_2d: np.ndarray, axis: int, index: int) -> np.ndarray:
    """2D in-plane points (n, 2) of slice ``index`` along ``axis`` -> (n, 3)."""
    return np.insert(np.asarray(points_2d, dtype=np.float64), axis, float(index), axis=1)


def simulate_box(obj: np.ndarray, rng: RngLike, *, jitter: float = 0.1, p_2d: float = 0.5) -> BoxPrompt:
    """A positive box around the boolean object mask ``obj`` (3D), see the module docstring."""
    rng = as_rng(rng)
    shape = np.array(obj.shape)
    axis = index = None
    region = obj
    if rng.random() < p_2d:
        axis, index, region = _random_slice(obj, rng)
    nz = np.nonzero(region)
    lo = np.array([a.min() for a in nz])
    hi = np.array([a.max() for a in nz])
    size = shape if axis is None else np.delete(shape, axis)
    extent = hi - lo + 1
    lo = lo - rng.integers(0, np.maximum(1, np.round(jitter * extent)).astype(int) + 1)
    hi = hi + rng.integers(0, np.maximum(1, np.round(jitter * extent)).astype(int) + 1)
    lo, hi = np.clip(lo, 0, size - 1), np.clip(hi, 0, size - 1)
    flat = hi == lo  # one voxel thick: widen to a non-zero extent
    hi = np.where(flat & (hi < size - 1), hi + 1, hi)
    lo = np.where(flat & (hi == lo), lo - 1, lo)
    if axis is not None:
        lo, hi = _embed(lo[None], axis, index)[0], _embed(hi[None], axis, index)[0]
    return BoxPrompt(tuple(lo.astype(float)), tuple(hi.astype(float)), True)


def _walk(region: np.ndarray, rng: np.random.Generator, steps: int) -> np.ndarray:
    """A self-avoiding random walk of up to ``steps`` neighbouring voxels (8/26-connectivity) inside ``region``."""
    ndim = region.ndim
    offsets = np.array([o for o in np.ndindex(*(3,) * ndim) if o != (1,) * ndim]) - 1
    path = [_sample_flat(region, 1, rng)[0].astype(int)]
    seen = {tuple(path[0])}
    for _ in range(steps - 1):
        nxt = path[-1] + offsets
        ok = np.all((nxt >= 0) & (nxt < region.shape), axis=1)
        nxt = nxt[ok]
        nxt = nxt[region[tuple(nxt.T)]]
        nxt = np.array([n for n in nxt if tuple(n) not in seen]).reshape(-1, ndim)
        if not len(nxt):
            break
        path.append(nxt[rng.integers(len(nxt))])
        seen.add(tuple(path[-1]))
    return np.array(path, dtype=np.float64)


def _band(obj: np.ndarray, valid: Optional[np.ndarray], width: int) -> np.ndarray:
    """Voxels within ``width`` dilation steps of the object, outside it (computed in its padded bounding box)."""
    from scipy.ndimage import binary_dilation
    nz = np.nonzero(obj)
    box = tuple(slice(max(0, int(a.min()) - width - 1), int(a.max()) + width + 2) for a in nz)
    band = np.zeros_like(obj, dtype=bool)
    band[box] = binary_dilation(obj[box], iterations=width) & ~obj[box]
    return band if valid is None else band & valid


def simulate_scribble(obj: np.ndarray, rng: RngLike, *, positive: bool = True, valid: Optional[np.ndarray] = None,
                      p_2d: float = 0.5, band: int = 6) -> Optional[ScribblePrompt]:
    """A scribble inside (positive) or around (negative) the object, or None where there is no room for one."""
    from skimage.morphology import skeletonize
    rng = as_rng(rng)
    steps = int(rng.integers(4, 33))
    axis = index = None
    if rng.random() < p_2d:
        axis, index, _ = _random_slice(obj, rng)
    region = obj if positive else _band(obj, valid, band)
    if axis is not None:
        region = np.take(region, index, axis=axis)
        if positive and rng.random() < 0.5:
            skeleton = skeletonize(region)
            region = skeleton if skeleton.any() else region
    if region.sum() < 2:
        return None
    path = _walk(region, rng, steps)
    if len(path) < 2:
        return None
    return ScribblePrompt(path if axis is None else _embed(path, axis, index), positive)


def _octagon(centre: np.ndarray, radius: float) -> np.ndarray:
    angles = np.arange(8) * np.pi / 4
    return centre[None] + radius * np.stack([np.sin(angles), np.cos(angles)], axis=1)


def simulate_lasso(obj: np.ndarray, rng: RngLike, *, positive: bool = True, valid: Optional[np.ndarray] = None,
                   max_vertices: int = 24, sigma: float = 0.5) -> Optional[LassoPrompt]:
    """A lasso around the object's region on a slice (positive) or around a spot of that slice away from the
    object (negative), or None where there is none; always a valid lasso (``validate_prompt``)."""
    from scipy.ndimage import binary_dilation, distance_transform_edt
    from skimage.measure import find_contours
    rng = as_rng(rng)
    axis, index, region = _random_slice(obj, rng)
    size = np.array(region.shape)
    if positive:
        grown = np.pad(binary_dilation(region, iterations=int(rng.integers(1, 3))), 1)
        contour = max(find_contours(grown.astype(np.float32), 0.5), key=len)[:-1] - 1
        contour = contour[np.round(np.linspace(0, len(contour) - 1, min(len(contour), max_vertices),
                                               endpoint=False)).astype(int)]
        candidates = [contour + rng.normal(0, sigma, contour.shape), contour]
    else:
        radius = float(rng.integers(2, 5))
        away = distance_transform_edt(~region) > radius + 1
        if valid is not None:
            away &= np.take(valid, index, axis=axis)
        if not away.any():
            return None
        centre = _sample_flat(away, 1, rng)[0]
        candidates = [_octagon(centre, radius)]
    for polygon in candidates:
        polygon = np.clip(polygon, 0, size - 1)
        try:
            return validate_prompt(LassoPrompt(_embed(polygon, axis, index), positive), obj.shape)
        except PromptError:
            continue
    lo, hi = np.argwhere(region).min(0) - 1, np.argwhere(region).max(0) + 1  # the slice's box as a last resort
    lo, hi = np.clip(lo, 0, size - 1), np.clip(hi, 0, size - 1)
    rectangle = np.array([[lo[0], lo[1]], [lo[0], hi[1]], [hi[0], hi[1]], [hi[0], lo[1]]], dtype=np.float64)
    try:
        return validate_prompt(LassoPrompt(_embed(rectangle, axis, index), positive), obj.shape)
    except PromptError:
        return None


def simulate_shapes(kind: str, obj: np.ndarray, valid: Optional[np.ndarray], rng: RngLike) -> list[Prompt]:
    """The training prompt of one kind (``box``, ``scribble``, ``lasso``) for a non-empty object mask."""
    rng = as_rng(rng)
    if kind == "box":
        return [simulate_box(obj, rng)]
    if kind == "scribble":
        out = [simulate_scribble(obj, rng, positive=True, valid=valid)]
        if rng.random() < 0.5:
            out.append(simulate_scribble(obj, rng, positive=False, valid=valid))
    elif kind == "lasso":
        out = [simulate_lasso(obj, rng, positive=True, valid=valid)]
        if rng.random() < 1 / 3:
            out.append(simulate_lasso(obj, rng, positive=False, valid=valid))
    else:
        raise ValueError(f"unknown prompt kind {kind!r} (one of {list(SHAPE_KINDS[1:])})")
    return [p for p in out if p is not None]


class PromptBatch(NamedTuple):
    """A batch of training prompts: ``clicks`` [B, N, 3] float32 (all sampler points), ``click_labels`` [B, N]
    (1, 0, -1 padding), ``point_types`` [B, N] int64 or None (all clicks), ``dense`` [B, 3, *patch] float32 or
    None, ``target_class`` [B], ``binary_target`` [B, 1, *patch]; on ``target``'s device."""

    clicks: torch.Tensor
    click_labels: torch.Tensor
    point_types: Optional[torch.Tensor]
    dense: Optional[torch.Tensor]
    target_class: torch.Tensor
    binary_target: torch.Tensor


def simulate_prompt_batch(target: torch.Tensor, foreground_classes: Sequence[int], rng: RngLike,
                          mix: Mapping[str, float], max_positive: int = 10, max_negative: int = 10,
                          p_no_click: float = 0.2, ignore_label: Optional[int] = None) -> PromptBatch:
    """One prompt per sample of ``target`` [B, 1, *patch], drawn with ``mix`` (see the module docstring)."""
    rng = as_rng(rng)
    mix = check_mix(mix)
    weights = np.array([mix.get(k, 0.0) for k in SHAPE_KINDS])
    if weights[1:].sum() == 0:  # the paper: clicks only, exactly the click simulation's draws
        clicks, labels, target_class, binary = simulate_training_prompts(
            target, foreground_classes, rng, max_positive, max_negative, p_no_click, ignore_label)
        return PromptBatch(clicks, labels, None, None, target_class, binary)
    if target.ndim != 5 or target.shape[1] != 1:
        raise ValueError(f"target must be [B, 1, D, H, W], got shape {tuple(target.shape)}")
    cpu = target.detach().cpu()
    b, shape = target.shape[0], tuple(int(s) for s in target.shape[2:])
    points, labels, types, classes = [], [], [], []
    dense = None
    for i in range(b):
        lab = _as_int_labels(cpu[i, 0].numpy())
        prompt = sample_training_prompt(lab, foreground_classes, rng, max_positive=max_positive,
                                        max_negative=max_negative, p_no_click=p_no_click, ignore_label=ignore_label)
        kind = SHAPE_KINDS[int(rng.choice(len(SHAPE_KINDS), p=weights / weights.sum()))]
        pts, lbl = prompt.clicks, prompt.click_labels
        typ = np.zeros(len(lbl), np.int64)
        if kind != "click" and prompt.has_object and len(lbl):
            valid = lab >= 0 if ignore_label is None else (lab >= 0) & (lab != ignore_label)
            shapes = simulate_shapes(kind, lab == prompt.target_class, valid, rng)
            if shapes:  # the shapes replace the positive clicks; the negative clicks stay
                enc = encode_prompts(shapes, shape, validate=False)
                negative = lbl == 0
                pts = np.concatenate([enc.points, pts[negative]])
                lbl = np.concatenate([enc.labels, lbl[negative]])
                typ = np.concatenate([enc.types, typ[negative]])
                if enc.dense is not None:
                    dense = torch.zeros((b, *enc.dense.shape)) if dense is None else dense
                    dense[i] = torch.from_numpy(enc.dense)
        points.append(pts)
        labels.append(lbl)
        types.append(typ)
        classes.append(prompt.target_class)
    clicks, click_labels = _pad(points, labels, 3)
    point_types = _pad(points, types, 3)[1].clamp(min=0)
    target_class, binary = binary_targets(target, classes, ignore_label)
    device = target.device
    return PromptBatch(clicks.to(device), click_labels.to(device), point_types.to(device),
                       None if dense is None else dense.to(device), target_class, binary)


def add_correction_prompts(prediction: torch.Tensor, batch: PromptBatch, rng: RngLike, p_previous_mask: float = 0.0,
                           *, ignore_label: Optional[int] = None) -> PromptBatch:
    """After a correction pass: one correction click per sample (``add_correction_clicks``) and, for a share
    ``p_previous_mask`` of the samples, the pass's own prediction ``prediction`` [B, 1, *patch] (binary) as the
    previous mask (dense channel 0). No random number is drawn when ``p_previous_mask`` is 0."""
    clicks, labels = add_correction_clicks(prediction, batch.binary_target, batch.clicks, batch.click_labels,
                                           ignore_label=ignore_label)
    types = batch.point_types
    if types is not None:
        types = torch.cat([types, types.new_zeros(types.shape[0], 1)], dim=1)
    dense = batch.dense
    if p_previous_mask > 0:
        use = torch.from_numpy(as_rng(rng).random(prediction.shape[0]) < p_previous_mask).to(prediction.device)
        if use.any():
            dense = prediction.new_zeros((prediction.shape[0], 3, *prediction.shape[2:]), dtype=torch.float32) \
                if dense is None else dense.clone()
            dense[use, 0] = (prediction[use, 0] != 0).float()
    return batch._replace(clicks=clicks, click_labels=labels, point_types=types, dense=dense)
