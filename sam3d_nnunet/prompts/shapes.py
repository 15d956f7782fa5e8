"""Prompt shapes beyond clicks, and their reduction to what the visual sampler reads.

Every prompt is given in voxel coordinates of the image it refers to, in ARRAY order (z, y, x), continuous
values allowed (integers are voxel centres), like ``InteractiveSession.add_click``:

* ``ClickPrompt(point, positive)``: one voxel;
* ``BoxPrompt(corner, opposite_corner, positive)``: an axis-aligned box; equal coordinates along ONE axis make
  it a 2D box on that slice ("the object in this slice and around it");
* ``ScribblePrompt(points, positive)``: a polyline of >= 2 points, 3D or on one slice;
* ``LassoPrompt(points, positive)``: a closed contour on one slice (one coordinate equal for all points), >= 3
  distinct points, non-zero area, not self-intersecting; the last point joins the first;
* ``MaskPrompt(mask)``: a previous mask (the last prediction, or a mask the user edited), the image's shape,
  values in [0, 1] (binary or probabilities).

``encode_prompts`` reduces a list of them to

* sparse points for the visual sampler: ``points`` (N, 3) float64, ``labels`` (N,) 1 positive / 0 negative,
  ``types`` (N,) prompt-type ids (``PROMPT_TYPES``: 0 click, 1 box, 2 scribble, 3 lasso). A click is itself; a
  box gives a regular grid inside it (fractions 1/4, 1/2, 3/4 along each axis of non-zero extent: 27 points, 9
  for a 2D box); a scribble gives up to ``MAX_POINTS_PER_PROMPT`` points evenly spaced by arc length (ends
  included); a lasso up to ``MAX_POINTS_PER_PROMPT`` voxels of its filled polygon, evenly spread;
* a dense prompt ``dense`` [3, *shape] float32 (``DENSE_CHANNELS``): the previous mask, the union of the
  positive boxes and lassos (filled), the union of the negative ones; ``None`` when no box, lasso or mask is
  given (then the network computes exactly what it computes for clicks).

Bad input raises ``PromptError`` (a ``ValueError``) with one line that names the prompt. Pure numpy / skimage.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence, Union

import numpy as np

__all__ = [
    "PROMPT_TYPES", "DENSE_CHANNELS", "MAX_POINTS_PER_PROMPT", "PromptError", "ClickPrompt", "BoxPrompt",
    "ScribblePrompt", "LassoPrompt", "MaskPrompt", "Prompt", "EncodedPrompts", "validate_prompt", "encode_prompts",
    "prompt_points", "rasterise_region", "nonzero_box", "box_slice_axis", "lasso_slice_axis", "describe_prompt",
]

PROMPT_TYPES = {"click": 0, "box": 1, "scribble": 2, "lasso": 3}
DENSE_CHANNELS = ("previous_mask", "positive_region", "negative_region")
MAX_POINTS_PER_PROMPT = 16
_EDGE_TOL = 1e-6


class PromptError(ValueError):
    """A prompt that cannot be used; the message is one line naming the prompt."""


def _coords(values, who: str, n: int | None = None) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise PromptError(f"{who}: {values!r} is not a list of (z, y, x) points") from None
    arr = arr.reshape(-1, 3) if arr.ndim == 1 and arr.size == 3 else arr
    if arr.ndim != 2 or arr.shape[1] != 3 or (n is not None and len(arr) != n):
        raise PromptError(f"{who}: expected {n if n else 'n'} point(s) of 3 numbers (z, y, x), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise PromptError(f"{who}: coordinates must be finite numbers")
    return arr


def _polarity(positive, who: str) -> bool:
    if not isinstance(positive, (bool, np.bool_)):
        raise PromptError(f"{who}: positive must be True or False, got {positive!r}")
    return bool(positive)


def _set(prompt, **fields) -> None:
    """Store normalised fields on a frozen dataclass."""
    for name, value in fields.items():
        object.__setattr__(prompt, name, value)


@dataclass(frozen=True)
class ClickPrompt:
    """One voxel (z, y, x): positive = inside the wanted object, negative = not part of it."""

    point: tuple
    positive: bool = True
    kind = "click"

    def __post_init__(self):
        _set(self, point=tuple(_coords(self.point, "click", 1)[0].tolist()), positive=_polarity(self.positive, "click"))


@dataclass(frozen=True)
class BoxPrompt:
    """An axis-aligned box between two corners (z, y, x); zero extent along one axis: a 2D box on that slice."""

    corner: tuple
    opposite_corner: tuple
    positive: bool = True
    kind = "box"

    def __post_init__(self):
        _set(self, corner=tuple(_coords(self.corner, "box corner", 1)[0].tolist()),
             opposite_corner=tuple(_coords(self.opposite_corner, "box opposite corner", 1)[0].tolist()),
             positive=_polarity(self.positive, "box"))

    @property
    def lo(self) -> np.ndarray:
        return np.minimum(self.corner, self.opposite_corner)

    @property
    def hi(self) -> np.ndarray:
        return np.maximum(self.corner, self.opposite_corner)


@dataclass(frozen=True)
class _PointListPrompt:
    """Points (z, y, x) in order; the subclass's ``kind`` names it in errors. Validation against an image:
    ``validate_prompt``."""

    points: tuple
    positive: bool = True
    kind = "points"

    def __post_init__(self):
        _set(self, points=tuple(map(tuple, _coords(self.points, self.kind).tolist())),
             positive=_polarity(self.positive, self.kind))


@dataclass(frozen=True)
class ScribblePrompt(_PointListPrompt):
    kind = "scribble"


@dataclass(frozen=True)
class LassoPrompt(_PointListPrompt):
    kind = "lasso"


@dataclass(frozen=True, eq=False)
class MaskPrompt:
    """A previous mask (z, y, x) in [0, 1] (the last prediction or an edited mask); stored read-only."""

    mask: np.ndarray
    kind = "mask"

    def __post_init__(self):
        try:
            mask = np.asarray(self.mask, dtype=np.float32)
        except (TypeError, ValueError):
            raise PromptError(f"mask: {type(self.mask).__name__} is not a numeric array") from None
        if mask.ndim != 3:
            raise PromptError(f"mask: must be a 3D array (z, y, x), got shape {mask.shape}")
        if not np.all(np.isfinite(mask)) or mask.min(initial=0) < 0 or mask.max(initial=0) > 1:
            raise PromptError("mask: values must lie in [0, 1] (binary or probabilities)")
        mask.setflags(write=False)
        _set(self, mask=mask)

    @property
    def positive(self) -> bool:
        return True


Prompt = Union[ClickPrompt, BoxPrompt, ScribblePrompt, LassoPrompt, MaskPrompt]


# ============================================================================================ validation
def _inside(points: np.ndarray, shape: Sequence[int], who: str) -> None:
    size = np.asarray(shape, dtype=np.float64)
    bad = np.any((points < -0.5 - _EDGE_TOL) | (points > size - 0.5 + _EDGE_TOL), axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise PromptError(f"{who}: point (z, y, x) {np.round(points[i], 3).tolist()} falls outside the image "
                          f"(array shape {[int(s) for s in shape]})")


def _distinct(points: np.ndarray) -> np.ndarray:
    """Points without consecutive repeats (and without a closing repeat of the first point)."""
    keep = np.ones(len(points), dtype=bool)
    keep[1:] = np.any(np.abs(np.diff(points, axis=0)) > _EDGE_TOL, axis=1)
    out = points[keep]
    if len(out) > 1 and np.all(np.abs(out[-1] - out[0]) <= _EDGE_TOL):
        out = out[:-1]
    return out


def box_slice_axis(box: BoxPrompt) -> int | None:
    """The axis along which a 2D box has zero extent, None for a 3D box."""
    flat = np.flatnonzero(box.hi - box.lo <= _EDGE_TOL)
    return int(flat[0]) if len(flat) == 1 else None


def lasso_slice_axis(points: np.ndarray) -> int | None:
    """The first axis along which every point has the same coordinate (the lasso's slice), else None."""
    flat = np.flatnonzero(np.ptp(points, axis=0) <= _EDGE_TOL)
    return int(flat[0]) if len(flat) else None


def _self_intersects(poly: np.ndarray) -> bool:
    """Whether a closed 2D polygon (n, 2) has two non-adjacent edges that touch or cross (vectorised)."""
    n = len(poly)
    a, b = poly, np.roll(poly, -1, axis=0)
    i, j = np.triu_indices(n, k=2)
    keep = ~((i == 0) & (j == n - 1))  # the first and last edges share a vertex
    i, j = i[keep], j[keep]
    if not len(i):
        return False
    p1, p2, p3, p4 = a[i], b[i], a[j], b[j]

    def orient(p, q, r):
        return np.sign((q[:, 0] - p[:, 0]) * (r[:, 1] - p[:, 1]) - (q[:, 1] - p[:, 1]) * (r[:, 0] - p[:, 0]))

    def on_segment(p, q, r):  # r on segment pq, given collinear
        return ((np.minimum(p[:, 0], q[:, 0]) - 1e-9 <= r[:, 0]) & (r[:, 0] <= np.maximum(p[:, 0], q[:, 0]) + 1e-9)
                & (np.minimum(p[:, 1], q[:, 1]) - 1e-9 <= r[:, 1]) & (r[:, 1] <= np.maximum(p[:, 1], q[:, 1]) + 1e-9))

    o1, o2, o3, o4 = orient(p1, p2, p3), orient(p1, p2, p4), orient(p3, p4, p1), orient(p3, p4, p2)
    crossing = (o1 * o2 < 0) & (o3 * o4 < 0)
    touching = (((o1 == 0) & on_segment(p1, p2, p3)) | ((o2 == 0) & on_segment(p1, p2, p4))
                | ((o3 == 0) & on_segment(p3, p4, p1)) | ((o4 == 0) & on_segment(p3, p4, p2)))
    return bool(np.any(crossing | touching))


def validate_prompt(prompt: Prompt, shape: Sequence[int]) -> Prompt:
    """``prompt`` if it is usable on an image of array shape ``shape`` (z, y, x), else ``PromptError``."""
    shape = tuple(int(s) for s in shape)
    if isinstance(prompt, ClickPrompt):
        _inside(np.asarray([prompt.point]), shape, "click")
    elif isinstance(prompt, BoxPrompt):
        _inside(np.asarray([prompt.corner, prompt.opposite_corner]), shape, "box")
        if int(np.sum(prompt.hi - prompt.lo > _EDGE_TOL)) < 2:
            raise PromptError(f"box: corners {list(prompt.corner)} and {list(prompt.opposite_corner)} have zero extent "
                              f"along more than one axis (a 2D box needs extent along two axes)")
    elif isinstance(prompt, ScribblePrompt):
        pts = np.asarray(prompt.points)
        if len(_distinct(pts)) < 2:
            raise PromptError(f"scribble: needs at least two distinct points, got {len(pts)} point(s)")
        _inside(pts, shape, "scribble")
    elif isinstance(prompt, LassoPrompt):
        pts = np.asarray(prompt.points)
        axis = lasso_slice_axis(pts)
        if axis is None:
            raise PromptError("lasso: its points do not lie on one slice (one coordinate must be equal for all)")
        _inside(pts, shape, "lasso")
        poly = _distinct(np.delete(pts, axis, axis=1))
        if len(poly) < 3:
            raise PromptError(f"lasso: needs at least 3 distinct points, got {len(poly)}")
        if _self_intersects(poly):
            raise PromptError("lasso: the contour intersects itself")
        area = 0.5 * abs(np.dot(poly[:, 0], np.roll(poly[:, 1], -1)) - np.dot(poly[:, 1], np.roll(poly[:, 0], -1)))
        if area <= _EDGE_TOL:
            raise PromptError("lasso: degenerate contour (zero area: its points lie on one line)")
    elif isinstance(prompt, MaskPrompt):
        if prompt.mask.shape != shape:
            raise PromptError(f"mask: shape {list(prompt.mask.shape)} differs from the image's {list(shape)}")
    else:
        raise PromptError(f"unknown prompt {type(prompt).__name__}")
    return prompt


# ============================================================================================ reduction
def _evenly(items: np.ndarray, k: int) -> np.ndarray:
    if len(items) <= k:
        return items
    return items[np.round(np.linspace(0, len(items) - 1, k)).astype(int)]


def _lasso_plane(prompt: LassoPrompt, shape: Sequence[int]):
    pts = np.asarray(prompt.points)
    axis = lasso_slice_axis(pts)
    index = int(np.clip(np.round(pts[0, axis]), 0, shape[axis] - 1))
    in_plane = [a for a in range(3) if a != axis]
    return pts, axis, index, in_plane


def rasterise_region(prompt: Union[BoxPrompt, LassoPrompt], shape: Sequence[int]) -> tuple:
    """The voxels a box or a lasso covers: (slices, 2D/3D boolean or None for a full box) as a numpy index."""
    shape = tuple(int(s) for s in shape)
    if isinstance(prompt, BoxPrompt):
        lo = np.clip(np.round(prompt.lo), 0, np.asarray(shape) - 1).astype(int)
        hi = np.clip(np.round(prompt.hi), 0, np.asarray(shape) - 1).astype(int)
        return tuple(slice(a, b + 1) for a, b in zip(lo, hi))
    from skimage.draw import polygon
    pts, axis, index, (r, c) = _lasso_plane(prompt, shape)
    rr, cc = polygon(pts[:, r], pts[:, c], shape=(shape[r], shape[c]))
    if not len(rr):  # smaller than a voxel: its vertices
        rr = np.clip(np.round(pts[:, r]), 0, shape[r] - 1).astype(int)
        cc = np.clip(np.round(pts[:, c]), 0, shape[c] - 1).astype(int)
    index_arrays = [None, None, None]
    index_arrays[axis] = np.full(len(rr), index)
    index_arrays[r], index_arrays[c] = rr, cc
    return tuple(index_arrays)


def prompt_points(prompt: Prompt, shape: Sequence[int]) -> np.ndarray:
    """The (k, 3) points the visual sampler reads for one prompt (none for a mask)."""
    if isinstance(prompt, ClickPrompt):
        return np.asarray([prompt.point], dtype=np.float64)
    if isinstance(prompt, BoxPrompt):
        fractions = np.array([0.25, 0.5, 0.75])
        axes = [np.unique(lo + fractions * (hi - lo)) for lo, hi in zip(prompt.lo, prompt.hi)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    if isinstance(prompt, ScribblePrompt):
        pts = _distinct(np.asarray(prompt.points, dtype=np.float64))
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        k = int(min(MAX_POINTS_PER_PROMPT, max(2, math.ceil(arc[-1]) + 1)))
        at = np.linspace(0.0, arc[-1], k)
        return np.stack([np.interp(at, arc, pts[:, a]) for a in range(3)], axis=1)
    if isinstance(prompt, LassoPrompt):
        voxels = np.stack(rasterise_region(prompt, shape), axis=1).astype(np.float64)
        return _evenly(voxels, MAX_POINTS_PER_PROMPT)
    return np.zeros((0, 3), dtype=np.float64)


class EncodedPrompts(NamedTuple):
    """What the network reads: ``points`` (N, 3) float64 array-order voxels, ``labels`` (N,) int64 1/0,
    ``types`` (N,) int64 ``PROMPT_TYPES`` ids, ``dense`` [3, *shape] float32 (``DENSE_CHANNELS``) or None.
    ``dense_box``: per dense channel, a box ``(lo, hi)`` (inclusive voxel indices) holding all its non-zero
    voxels, None for an all-zero channel (None without a dense prompt): the part of ``dense`` worth reading."""

    points: np.ndarray
    labels: np.ndarray
    types: np.ndarray
    dense: np.ndarray | None
    dense_box: tuple | None = None


def _index_box(index: tuple, shape: Sequence[int]) -> tuple:
    """(lo, hi) inclusive of the voxels a numpy index of slices and / or integer arrays selects."""
    lo, hi = [], []
    for ix, n in zip(index, shape):
        if isinstance(ix, slice):
            start, stop, _ = ix.indices(n)
            lo.append(start)
            hi.append(stop - 1)
        else:
            lo.append(int(np.min(ix)))
            hi.append(int(np.max(ix)))
    return tuple(lo), tuple(hi)


def nonzero_box(array: np.ndarray) -> tuple | None:
    """(lo, hi) inclusive of the non-zero voxels of a 3D array, None if it is all zero."""
    nz = np.asarray(array) != 0
    plane = nz.any(2)
    axes = (plane.any(1), plane.any(0), nz.any((0, 1)))
    if not axes[0].any():
        return None
    idx = [np.flatnonzero(a) for a in axes]
    return tuple(int(i[0]) for i in idx), tuple(int(i[-1]) for i in idx)


def _union_box(a: tuple | None, b: tuple | None) -> tuple | None:
    if a is None or b is None:
        return a if b is None else b
    return tuple(map(min, a[0], b[0])), tuple(map(max, a[1], b[1]))


def encode_prompts(prompts: Sequence[Prompt], shape: Sequence[int], validate: bool = True) -> EncodedPrompts:
    """Reduce prompts (in the order given; a later mask replaces an earlier one) to points, polarity, types and
    the optional dense prompt, on an image of array shape ``shape``; see the module docstring."""
    shape = tuple(int(s) for s in shape)
    points, labels, types = [], [], []
    dense = None
    boxes = [None] * len(DENSE_CHANNELS)
    for prompt in prompts:
        if validate:
            validate_prompt(prompt, shape)
        pts = prompt_points(prompt, shape)
        points.append(pts)
        labels.append(np.full(len(pts), 1 if prompt.positive else 0, dtype=np.int64))
        types.append(np.full(len(pts), PROMPT_TYPES.get(prompt.kind, 0), dtype=np.int64))
        if isinstance(prompt, (BoxPrompt, LassoPrompt, MaskPrompt)):
            if dense is None:
                dense = np.zeros((len(DENSE_CHANNELS), *shape), dtype=np.float32)
            if isinstance(prompt, MaskPrompt):
                dense[0] = prompt.mask
                boxes[0] = nonzero_box(prompt.mask)
            else:
                channel, region = (1 if prompt.positive else 2), rasterise_region(prompt, shape)
                dense[(channel,) + region] = 1.0
                boxes[channel] = _union_box(boxes[channel], _index_box(region, shape))
    if not points:
        return EncodedPrompts(np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0, np.int64), None)
    return EncodedPrompts(np.concatenate(points), np.concatenate(labels), np.concatenate(types), dense,
                          None if dense is None else tuple(boxes))


def describe_prompt(prompt: Prompt) -> dict:
    """A JSON-able record of a prompt (array order (z, y, x); a mask by its voxel count above 0.5)."""
    if isinstance(prompt, MaskPrompt):
        return {"type": "mask", "voxels": int((prompt.mask > 0.5).sum())}
    if isinstance(prompt, ClickPrompt):
        return {"type": "click", "point_zyx": list(prompt.point), "positive": prompt.positive}
    if isinstance(prompt, BoxPrompt):
        return {"type": "box", "corners_zyx": [list(prompt.corner), list(prompt.opposite_corner)],
                "positive": prompt.positive}
    return {"type": prompt.kind, "points_zyx": [list(p) for p in prompt.points], "positive": prompt.positive}
