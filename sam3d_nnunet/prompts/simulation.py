"""Seeded click simulation: training prompts, error-driven correction clicks, evaluation protocols.

Conventions (shared by the whole project):

* A click is a voxel coordinate in ARRAY AXIS ORDER of the array it refers to (nnU-Net arrays:
  (z, y, x) = (d, h, w)), float allowed, plus a label: 1 = positive (inside the wanted object),
  0 = negative (background / not the wanted object).
* Batched for the network: ``clicks`` float32 [B, N, 3], ``click_labels`` int64 [B, N] with
  1 positive, 0 negative, -1 padding (ignored; the coordinates of a padded slot are 0);
  ``target_class`` int64 [B] holding the dataset label value (1..K) the prompt asks for; the network
  predicts ``label == target_class`` against everything else.
* numpy-side click arrays are float64 (n, ndim) voxel indices in array order.

Randomness: every random function takes a ``numpy.random.Generator`` or an integer seed and never
touches a global RNG, so data-loader workers and evaluation runs are reproducible.
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple, Sequence, Union

import cc3d
import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

__all__ = [
    "RngLike",
    "TrainingPrompt",
    "CorrectionClick",
    "as_rng",
    "sample_training_prompt",
    "binary_target",
    "binary_targets",
    "simulate_training_prompts",
    "correction_click",
    "add_correction_clicks",
    "protocol_clicks",
    "case_class_seed",
]

RngLike = Union[np.random.Generator, int, np.random.SeedSequence]
"""A Generator, or a seed for a fresh one (never None: every simulation here is seeded)."""


def as_rng(rng: RngLike) -> np.random.Generator:
    """Return a Generator; ints and SeedSequences seed a fresh one. ``None`` is refused on purpose:
    an unseeded generator would make a run irreproducible without anyone noticing."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, bool):
        raise TypeError("pass a numpy.random.Generator or an integer seed (None is not accepted: "
                        "every simulation in this package is seeded)")
    if isinstance(rng, (int, np.integer, np.random.SeedSequence)):
        return np.random.default_rng(rng)
    raise TypeError(f"expected a numpy.random.Generator or an integer seed, got {type(rng).__name__}")


class TrainingPrompt(NamedTuple):
    """Prompt for one training sample. ``clicks`` (n, ndim) float64 array-order voxel indices,
    ``click_labels`` (n,) int64 (1 positive, 0 negative), ``target_class`` the dataset label value
    the prompt asks for, ``has_object`` False for a "no object" sample (class absent from the patch)."""

    clicks: np.ndarray
    click_labels: np.ndarray
    target_class: int
    has_object: bool


class CorrectionClick(NamedTuple):
    """One correction click: ``point`` (ndim,) float64 array-order index, ``label`` 1 for a
    false-negative region (add this), 0 for a false-positive region (remove this)."""

    point: np.ndarray
    label: int


# ----------------------------------------------------------------------------------------------
# training prompts
# ----------------------------------------------------------------------------------------------

def _as_int_labels(label: np.ndarray) -> np.ndarray:
    """Integer view of a label array (augmentation pipelines sometimes hand over float segs)."""
    label = np.asarray(label)
    if np.issubdtype(label.dtype, np.integer):
        return label
    if label.dtype == bool:
        return label.astype(np.int64)
    return np.rint(label).astype(np.int64)


def _sample_flat(mask: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to k distinct voxels of a boolean mask, uniformly, as (k, ndim) float64 indices.

    np.flatnonzero + rng.choice without replacement: no Python loop over voxels, fast on 128^3."""
    if k <= 0:
        return np.zeros((0, mask.ndim), dtype=np.float64)
    flat = np.flatnonzero(mask)
    k = min(k, flat.size)
    if k == 0:
        return np.zeros((0, mask.ndim), dtype=np.float64)
    chosen = flat[rng.choice(flat.size, size=k, replace=False)]
    return np.stack(np.unravel_index(chosen, mask.shape), axis=1).astype(np.float64)


def _present_classes(lab: np.ndarray, foreground_classes: Sequence[int],
                     ignore_label: int | None) -> list[int]:
    """Foreground classes with at least one voxel in ``lab``; unknown positive labels are an error
    (a wrong ``foreground_classes`` list would otherwise silently never train some classes)."""
    flat = lab.ravel()
    if flat.size and flat.min() < 0:  # nnU-Net pads segs with -1 before RemoveLabelTransform
        flat = flat[flat >= 0]
    counts = np.bincount(flat) if flat.size else np.zeros(1, dtype=np.int64)
    known = set(int(c) for c in foreground_classes) | {0}
    if ignore_label is not None:
        known.add(int(ignore_label))
    unknown = [v for v in np.flatnonzero(counts) if int(v) not in known]
    if unknown:
        raise ValueError(f"label patch holds values {sorted(int(v) for v in unknown)} that are neither "
                         f"background, ignore_label ({ignore_label}) nor in foreground_classes "
                         f"{list(foreground_classes)}")
    return [int(c) for c in foreground_classes if c < counts.size and counts[c] > 0]


def sample_training_prompt(
    label: np.ndarray,
    foreground_classes: Sequence[int],
    rng: RngLike,
    *,
    max_positive: int = 10,
    max_negative: int = 10,
    p_no_click: float = 0.2,
    ignore_label: int | None = None,
) -> TrainingPrompt:
    """Draw the prompt for one (augmented) label patch.

    * target class: uniform over the foreground classes PRESENT in the patch, not weighted by voxel
      count. Rare small classes (tumours) are then asked for as often as big organs whenever they
      appear in a patch, and nnU-Net's foreground oversampling puts them in patches often; a
      voxel-weighted choice would almost never train them.
    * with probability ``p_no_click`` no clicks at all (automatic mode: the network is still told
      the class); otherwise 1..max_positive positive clicks uniformly inside the class and
      0..max_negative negative clicks uniformly outside it (background or other classes).
    * a patch without any foreground class trains "no object": the class is drawn uniformly from
      ``foreground_classes``, the binary target is empty, clicks are 0..max_negative negatives
      (or none with probability ``p_no_click``).
    * voxels equal to ``ignore_label`` or negative (nnU-Net's -1 padding) are never clicked.

    Clicks are returned in random order so a network cannot learn "positives come first".
    """
    rng = as_rng(rng)
    if not len(foreground_classes):
        raise ValueError("foreground_classes is empty: there is nothing to prompt for")
    if any(int(c) < 1 for c in foreground_classes) or (ignore_label is not None and ignore_label in foreground_classes):
        raise ValueError(f"foreground_classes must be label values >= 1 other than ignore_label, "
                         f"got {list(foreground_classes)} (ignore_label={ignore_label})")
    if max_positive < 1 or max_negative < 0:
        raise ValueError(f"need max_positive >= 1 and max_negative >= 0, got {max_positive}, {max_negative}")
    if not 0.0 <= p_no_click <= 1.0:
        raise ValueError(f"p_no_click must be in [0, 1], got {p_no_click}")
    lab = _as_int_labels(label)
    present = _present_classes(lab, foreground_classes, ignore_label)
    has_object = bool(present)
    pool = present if has_object else [int(c) for c in foreground_classes]
    target_class = int(pool[rng.integers(len(pool))])

    ndim = lab.ndim
    empty = np.zeros((0, ndim), dtype=np.float64)
    if rng.random() < p_no_click:
        return TrainingPrompt(empty, np.zeros(0, dtype=np.int64), target_class, has_object)

    n_pos = int(rng.integers(1, max_positive + 1)) if has_object else 0
    n_neg = int(rng.integers(0, max_negative + 1))
    pos = _sample_flat(lab == target_class, n_pos, rng) if n_pos else empty
    if n_neg:
        neg_mask = (lab >= 0) & (lab != target_class)
        if ignore_label is not None:
            neg_mask &= lab != ignore_label
        neg = _sample_flat(neg_mask, n_neg, rng)
    else:
        neg = empty
    clicks = np.concatenate([pos, neg], axis=0)
    labels = np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])
    order = rng.permutation(len(labels))
    return TrainingPrompt(clicks[order], labels[order], target_class, has_object)


def binary_target(label: np.ndarray, target_class: int, ignore_label: int | None = None) -> np.ndarray:
    """1 where ``label == target_class``, else 0, same dtype as ``label``; voxels equal to
    ``ignore_label`` keep that value so the loss can still mask them out."""
    label = np.asarray(label)
    out = (label == target_class).astype(label.dtype)
    if ignore_label is not None:
        out[label == ignore_label] = ignore_label
    return out


def simulate_training_prompts(
    target: torch.Tensor,
    foreground_classes: Sequence[int],
    rng: RngLike,
    max_positive: int = 10,
    max_negative: int = 10,
    p_no_click: float = 0.2,
    ignore_label: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched prompts for the trainer.

    ``target``: [B, 1, *patch] integer label values (nnU-Net's full-resolution target).
    Returns ``clicks`` [B, N, ndim] float32, ``click_labels`` [B, N] int64 padded with -1,
    ``target_class`` [B] int64, ``binary_target`` [B, 1, *patch] with ``target``'s dtype
    (1 where target == target_class, ignore_label kept where present). N is the largest click
    count in the batch and may be 0. All outputs live on ``target``'s device; sampling itself runs
    on a CPU copy (call this before moving the batch to the GPU to avoid a device round trip).
    """
    rng = as_rng(rng)
    if target.ndim < 3 or target.shape[1] != 1:
        raise ValueError(f"target must be [B, 1, *patch], got shape {tuple(target.shape)}")
    cpu = target.detach().cpu()
    prompts = [
        sample_training_prompt(cpu[b, 0].numpy(), foreground_classes, rng, max_positive=max_positive,
                               max_negative=max_negative, p_no_click=p_no_click,
                               ignore_label=ignore_label)
        for b in range(target.shape[0])
    ]
    ndim = target.ndim - 2
    clicks, click_labels = _pad([p.clicks for p in prompts], [p.click_labels for p in prompts], ndim)
    target_class, bin_t = binary_targets(target, [p.target_class for p in prompts], ignore_label)
    return clicks.to(target.device), click_labels.to(target.device), target_class, bin_t


def binary_targets(target: torch.Tensor, classes: Sequence[int],
                   ignore_label: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``target_class`` [B] int64 and the binary target [B, 1, *patch] (``target``'s dtype and device; 1 where
    target == target_class, ``ignore_label`` kept) of a batch prompted for ``classes`` (one per sample)."""
    target_class = torch.tensor(list(classes), dtype=torch.int64, device=target.device)
    tc = target_class.view((-1,) + (1,) * (target.ndim - 1))
    bin_t = (target == tc).to(target.dtype)
    if ignore_label is not None:
        bin_t = torch.where(target == ignore_label, torch.as_tensor(ignore_label, dtype=target.dtype,
                                                                      device=target.device), bin_t)
    return target_class, bin_t


def _pad(clicks: list[np.ndarray], labels: list[np.ndarray], ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ragged per-sample clicks into [B, N, ndim] / [B, N] with -1 label padding."""
    n = max((len(l) for l in labels), default=0)
    out_c = torch.zeros((len(clicks), n, ndim), dtype=torch.float32)
    out_l = torch.full((len(clicks), n), -1, dtype=torch.int64)
    for b, (c, l) in enumerate(zip(clicks, labels)):
        if len(l):
            out_c[b, : len(l)] = torch.from_numpy(np.asarray(c, dtype=np.float32))
            out_l[b, : len(l)] = torch.from_numpy(np.asarray(l, dtype=np.int64))
    return out_c, out_l


# ----------------------------------------------------------------------------------------------
# correction clicks (CVPR 2025 interactive challenge protocol)
# ----------------------------------------------------------------------------------------------

def _largest_component(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray | None, int]:
    """Boolean mask of the largest connected component of ``mask`` and its voxel count."""
    if not mask.any():
        return None, 0
    cc = cc3d.connected_components(mask, connectivity=connectivity)
    counts = np.bincount(cc.ravel())
    counts[0] = 0
    best = int(np.argmax(counts))  # ties: lowest label, i.e. first met in C order -> deterministic
    return cc == best, int(counts[best])


def _component_centre(component: np.ndarray, spacing: Sequence[float] | None) -> np.ndarray:
    """Voxel of ``component`` farthest from its boundary (Euclidean, in mm if ``spacing`` given);
    among equally deep voxels the one nearest their mean.

    The array border counts as boundary (the crop is padded with one background voxel), so an error
    region cut by the patch edge is not "centred" on the edge. Only the bounding box is transformed,
    which keeps this cheap on whole volumes."""
    nz = np.nonzero(component)
    lo = [int(a.min()) for a in nz]
    hi = [int(a.max()) + 1 for a in nz]
    crop = component[tuple(slice(a, b) for a, b in zip(lo, hi))]
    padded = np.pad(crop, 1, mode="constant", constant_values=False)
    sampling = None if spacing is None else np.asarray(spacing, dtype=np.float64)
    dist = distance_transform_edt(padded, sampling=None if sampling is None else tuple(sampling))
    # Flat error regions (a slab missed along a surface) have many equally deep voxels; taking the
    # first in C order would put the click in a corner of the slab. Among the deepest voxels take the
    # one nearest (in mm) to their mean: deterministic, still at maximal depth, central.
    peak = dist.max()
    tied = np.argwhere(dist >= peak * (1.0 - 1e-9)).astype(np.float64)
    scale = np.ones(tied.shape[1]) if sampling is None else sampling
    d2 = (((tied - tied.mean(axis=0)) * scale) ** 2).sum(axis=1)
    idx = tied[int(np.argmin(d2))]  # remaining ties: first in C order
    return idx - 1.0 + np.asarray(lo, dtype=np.float64)


def correction_click(
    prediction: np.ndarray,
    target: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    ignore_mask: np.ndarray | None = None,
    connectivity: int | None = None,
) -> CorrectionClick | None:
    """Next correction click: centre of the largest error region, or None if there is no error.

    Connected components of false negatives and of false positives are computed separately (26- or
    8-connectivity by default); the largest by voxel count wins (a tie goes to the false negatives,
    adding missed object is the more informative click). The click sits at the component voxel
    farthest from its boundary (``distance_transform_edt``, ``spacing`` in array axis order; the
    array border counts as boundary; equally deep voxels: the one nearest their mean).
    Label 1 for a false-negative region, 0 for a false-positive one. Voxels in ``ignore_mask`` are
    never errors. This is the CVPR 2025 foundation-model interactive challenge protocol.
    """
    pred = np.asarray(prediction).astype(bool, copy=False)
    tgt = np.asarray(target).astype(bool, copy=False)
    if pred.shape != tgt.shape:
        raise ValueError(f"prediction {pred.shape} and target {tgt.shape} differ in shape")
    if pred.ndim not in (2, 3):
        raise ValueError(f"correction clicks need a 2D or 3D mask, got {pred.ndim}D")
    if connectivity is None:
        connectivity = 26 if pred.ndim == 3 else 8
    fn = tgt & ~pred
    fp = pred & ~tgt
    if ignore_mask is not None:
        valid = ~np.asarray(ignore_mask, dtype=bool)
        fn &= valid
        fp &= valid
    fn_comp, fn_size = _largest_component(fn, connectivity)
    fp_comp, fp_size = _largest_component(fp, connectivity)
    if fn_size == 0 and fp_size == 0:
        return None
    if fn_size >= fp_size:
        return CorrectionClick(_component_centre(fn_comp, spacing), 1)
    return CorrectionClick(_component_centre(fp_comp, spacing), 0)


def add_correction_clicks(
    prediction: torch.Tensor,
    binary_target: torch.Tensor,
    clicks: torch.Tensor,
    click_labels: torch.Tensor,
    *,
    spacing: Sequence[float] | None = None,
    ignore_label: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Append one correction click per sample to a batch of clicks.

    ``prediction``: [B, 1, *] binary masks (nonzero = object; pass thresholded/argmax output, not
    probabilities). ``binary_target``: [B, 1, *] with 1 = object (``ignore_label`` voxels are not
    errors). Returns ``clicks`` [B, N+1, ndim] float32 and ``click_labels`` [B, N+1] int64: the new
    click is always the last column, label -1 (padding, coordinates 0) for samples already perfect.
    Padding may therefore sit between valid clicks; -1 is ignored wherever it is.
    """
    if prediction.shape != binary_target.shape or prediction.ndim < 4 or prediction.shape[1] != 1:
        raise ValueError(f"prediction {tuple(prediction.shape)} and binary_target "
                         f"{tuple(binary_target.shape)} must both be [B, 1, *spatial]")
    b, ndim = prediction.shape[0], prediction.ndim - 2
    if clicks.shape[0] != b or click_labels.shape[0] != b or clicks.shape[-1] != ndim:
        raise ValueError(f"clicks {tuple(clicks.shape)} / click_labels {tuple(click_labels.shape)} "
                         f"do not match a batch of {b} {ndim}D masks")
    pred = prediction.detach().cpu().numpy() != 0
    tgt_raw = binary_target.detach().cpu().numpy()
    new_c = torch.zeros((b, 1, ndim), dtype=torch.float32)
    new_l = torch.full((b, 1), -1, dtype=torch.int64)
    for i in range(b):
        ignore = (tgt_raw[i, 0] == ignore_label) if ignore_label is not None else None
        click = correction_click(pred[i, 0], tgt_raw[i, 0] == 1, spacing=spacing, ignore_mask=ignore)
        if click is not None:
            new_c[i, 0] = torch.from_numpy(click.point.astype(np.float32))
            new_l[i, 0] = click.label
    out_c = torch.cat([clicks.to(torch.float32), new_c.to(clicks.device)], dim=1)
    out_l = torch.cat([click_labels.to(torch.int64), new_l.to(click_labels.device)], dim=1)
    return out_c, out_l


# ----------------------------------------------------------------------------------------------
# evaluation protocol
# ----------------------------------------------------------------------------------------------

def case_class_seed(case_id: str, class_id: int, seed: int) -> int:
    """Stable 63-bit seed for (case, class, run seed), from SHA-256.

    Python's ``hash()`` of a str is salted per process (PYTHONHASHSEED), so it would give different
    clicks in every evaluation worker; hashlib does not."""
    key = f"sam3d_nnunet-clicks\x00{case_id}\x00{int(class_id)}\x00{int(seed)}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1


def protocol_clicks(label: np.ndarray, class_id: int, n_clicks: int,
                    seed: RngLike) -> np.ndarray:
    """"K random clicks" protocol: ``n_clicks`` distinct, uniformly random voxels of ``class_id``.

    This is the published method's protocol (a uniformly random tumour voxel), seeded. Returns
    (min(n_clicks, class voxels), ndim) float64 array-order indices; an absent class gives (0, ndim).
    The draw is a partial Fisher-Yates shuffle over the class voxels (C order), so the first k clicks
    of a K-click run equal the k-click run for the same seed: Dice-vs-clicks curves are nested.
    Use ``case_class_seed(case_id, class_id, seed)`` as the seed for per-case reproducibility.
    """
    rng = as_rng(seed)
    label = np.asarray(label)
    flat = np.flatnonzero(label == class_id)
    k = min(max(int(n_clicks), 0), flat.size)
    swaps: dict[int, int] = {}
    picked = np.empty(k, dtype=np.int64)
    for i in range(k):  # loop over clicks, not voxels
        j = int(rng.integers(i, flat.size))
        picked[i] = swaps.get(j, j)
        swaps[j] = swaps.get(i, i)
    coords = np.unravel_index(flat[picked], label.shape)
    return np.stack(coords, axis=1).astype(np.float64).reshape(k, label.ndim)
