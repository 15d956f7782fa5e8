"""Deterministic synthetic CT "phantoms" in nnU-Net's raw layout, for tests and CPU demos.

Every case is a CT-like volume in Hounsfield units:

* air (about -1000 HU) around a body ellipsoid (about 0 HU, soft tissue),
* one or two "organs" (ellipsoids, about +60 HU) inside the body -> label 1,
* one small, roughly spherical "tumour" inside an organ -> label 2, either hyperdense (about +120 HU) or
  hypodense (about +10 HU, i.e. darker than the organ),
* Gaussian noise (sigma ~ 12 HU) and a slight blur so edges are not perfectly sharp.

Sizes, positions and the tumour's appearance vary per case; everything is drawn from
``numpy.random.default_rng([seed, case_index])`` so the dataset is a pure function of its arguments
(byte-identical arrays for the same arguments).

``spacing`` is given in array order (axis 0 first, as nnU-Net and SimpleITK's ``GetArrayFromImage``
see it); an anisotropic value such as ``(2.5, 0.8, 0.8)`` gives thick slices along axis 0. Shapes of
48^3 to 64^3 voxels keep nnU-Net's planning, preprocessing and a few training iterations within
seconds on a CPU.

Other kinds of dataset, from the same anatomy (``generate_phantom_dataset`` keywords):

* ``channel_names`` (default ``("CT",)``): several co-registered channels, e.g. MRI-like sequences
  ``("T1", "T2")`` or ``("T1", "T1c", "T2", "FLAIR")``. Each MRI channel gives air, body, organ and tumour
  their own non-negative intensity (``MRI_CONTRASTS``; unknown names get seeded random contrasts), so
  the channels carry different information (e.g. the tumour is dark in T1 and bright in T2); ``CT`` is
  the CT image itself. The one-channel CT dataset is byte-identical to what earlier versions wrote.
* ``n_classes`` (default None: organ 1 + tumour 2): ``n_classes`` small spheres ("structure_01" ..),
  one per class, each with its own intensity, for datasets with many labels.
* ``lookalike_lesions=True``: the demo's phantoms, where a click decides which object is meant. Two organs (about
  +60 HU) side by side each hold a lesion; the two lesions have about the same size (radius 3.5-4.5 voxels at
  32^3, about 200-400 voxels) and the same look: both bright (about +130 HU) or both dark (about -10 HU), drawn
  per case. Which one is the labelled tumour (label 2) is drawn at random per case; the other is labelled organ (1),
  as a target lesion next to a look-alike one would be. No automatic model can know which lesion is meant
  (segmenting both caps its Dice at 67%); one click on it says so (``make_lookalike_lesions_case``).
* ``ignore_label``: an ``ignore`` label (value = highest class + 1) covering the voxels of the last
  quarter of the slices along axis 0 that are not background: "not annotated there", nnU-Net's
  sparse-annotation convention.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

LABELS = {"background": 0, "organ": 1, "tumour": 2}
LOOKALIKE_RADIUS = (0.11, 0.14)  # look-alike lesions: radius / smallest image side, 3.5-4.5 voxels at 32^3

# MRI-like sequences: intensity of (air, body, organ, tumour), arbitrary units >= 0
MRI_CONTRASTS = {
    "T1": (0.0, 400.0, 600.0, 300.0),
    "T1c": (0.0, 400.0, 650.0, 900.0),
    "T2": (0.0, 350.0, 250.0, 700.0),
    "FLAIR": (0.0, 300.0, 350.0, 650.0),
    "PD": (0.0, 500.0, 550.0, 600.0),
}


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    acc = np.zeros(shape, dtype=np.float32)
    for g, c, r in zip(grids, centre, radii):
        acc = acc + ((g - c) / r) ** 2
    return acc <= 1.0


def make_phantom_case(shape: Sequence[int], spacing: Sequence[float], rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One (image int16 in HU, label uint8) pair, both in array order ``shape``."""
    from scipy.ndimage import gaussian_filter, distance_transform_edt

    shape = tuple(int(s) for s in shape)
    spacing = np.asarray(spacing, dtype=float)
    extent = np.asarray(shape, dtype=float)

    # body: large ellipsoid near the centre
    body_c = extent / 2 + rng.uniform(-0.04, 0.04, 3) * extent
    body_r = rng.uniform(0.36, 0.46, 3) * extent
    body = _ellipsoid(shape, body_c, body_r)

    image = np.full(shape, -1000.0, dtype=np.float32)
    image[body] = rng.normal(0.0, 5.0)  # slight per-case tissue offset

    label = np.zeros(shape, dtype=np.uint8)
    n_organs = 1 if rng.random() < 0.5 else 2
    split_axis = int(rng.integers(3))
    organ_masks = []
    for k in range(n_organs):
        r = rng.uniform(0.35, 0.5, 3) * body_r
        c = body_c + rng.uniform(-0.2, 0.2, 3) * (body_r - r)
        if n_organs == 2:  # one organ on each side of the body along `split_axis`
            r[split_axis] = rng.uniform(0.26, 0.36) * body_r[split_axis]
            c[split_axis] = body_c[split_axis] + (0.5 if k == 0 else -0.5) * body_r[split_axis]
        m = _ellipsoid(shape, c, r) & body & (label == 0)
        if not m.any():  # tiny shapes: at least the voxel at the centre
            m = np.zeros(shape, dtype=bool)
            m[tuple(int(round(v)) for v in np.clip(c, 0, extent - 1))] = True
            m &= label == 0
        organ_masks.append(m)
        image[m] = 60.0 + rng.normal(0.0, 4.0)
        label[m] = LABELS["organ"]

    # tumour inside one organ: centre at least `radius` (voxels) away from the organ's border
    dists = [distance_transform_edt(m) for m in organ_masks]
    k = int(rng.integers(len(organ_masks)))
    if dists[k].max() < 3:
        k = int(np.argmax([d.max() for d in dists]))
    organ, dist = organ_masks[k], dists[k]
    radius = float(rng.uniform(0.05, 0.09) * extent.min())
    radius = max(1.0, min(radius, float(dist.max()) - 1.0))
    candidates = np.argwhere(dist >= min(radius, float(dist.max())))
    centre = candidates[int(rng.integers(len(candidates)))].astype(float)
    radii = radius * rng.uniform(0.8, 1.2, 3)
    tumour = _ellipsoid(shape, centre, radii) & organ
    if rng.random() < 0.5:
        image[tumour] = 120.0 + rng.normal(0.0, 5.0)  # hyperdense
    else:
        image[tumour] = 10.0 + rng.normal(0.0, 5.0)  # hypodense
    label[tumour] = LABELS["tumour"]

    # blur (physically isotropic: sigma in voxels scales with 1/spacing) and noise
    sigma = 0.6 / (spacing / spacing.min())
    image = gaussian_filter(image, sigma=sigma)
    image += rng.normal(0.0, 12.0, shape).astype(np.float32)
    image = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    return image, label


def make_lookalike_lesions_case(shape: Sequence[int], spacing: Sequence[float], rng: np.random.Generator,
                                return_decoy: bool = False, alike: bool = True) -> tuple[np.ndarray, ...]:
    """One (image int16 in HU, label uint8) pair: body, two organs (label 1) side by side, each holding one lesion;
    the two lesions have about the same size and the same look (both bright or both dark, drawn per case). One of
    them, drawn at random, is the tumour (label 2), the other stays organ. ``return_decoy``: also the other lesion's
    mask (bool), e.g. to click on the wrong object in a test. ``alike=False``: one bright and one dark lesion
    instead (still either of them the tumour), an easier task for a model learning to follow a click."""
    from scipy.ndimage import gaussian_filter

    shape = tuple(int(s) for s in shape)
    spacing = np.asarray(spacing, dtype=float)
    extent = np.asarray(shape, dtype=float)
    body_c = extent / 2
    body_r = rng.uniform(0.42, 0.46, 3) * extent
    body = _ellipsoid(shape, body_c, body_r)
    image = np.full(shape, -1000.0, dtype=np.float32)
    image[body] = rng.normal(0.0, 5.0)
    label = np.zeros(shape, dtype=np.uint8)
    side_axis = int(rng.integers(1, 3))  # the organs sit side by side in-plane
    lesions = []
    for side in (1, -1):
        centre = body_c.copy()
        centre[side_axis] += side * 0.45 * body_r[side_axis]
        radii = rng.uniform(0.4, 0.5, 3) * body_r
        radii[side_axis] = 0.4 * body_r[side_axis]
        organ = _ellipsoid(shape, centre, radii) & body
        image[organ] = 60.0 + rng.normal(0.0, 4.0)
        label[organ] = LABELS["organ"]
        radius = float(rng.uniform(*LOOKALIKE_RADIUS) * extent.min())
        lesions.append(_ellipsoid(shape, centre + rng.uniform(-1.0, 1.0, 3), radius * rng.uniform(0.9, 1.1, 3))
                       & organ)
    first = rng.random() < 0.5
    if alike:  # both bright or both dark
        ordered, hus = lesions, ((130.0, 130.0) if first else (-10.0, -10.0))
    else:  # the bright one first
        ordered, hus = (lesions if first else lesions[::-1]), (130.0, -10.0)
    for lesion, hu in zip(ordered, hus):
        image[lesion] = hu + rng.normal(0.0, 5.0)
    tumour, decoy = ordered if rng.random() < 0.5 else ordered[::-1]
    label[tumour] = LABELS["tumour"]

    image = gaussian_filter(image, sigma=0.6 / (spacing / spacing.min()))
    image += rng.normal(0.0, 12.0, shape).astype(np.float32)
    image = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    return (image, label, decoy) if return_decoy else (image, label)


def mri_channel(label: np.ndarray, body: np.ndarray, name: str, spacing: Sequence[float],
                rng: np.random.Generator) -> np.ndarray:
    """One MRI-like channel (int16, >= 0) of a phantom's anatomy: tissue intensities from ``MRI_CONTRASTS``
    (organ = label 1, tumour = any label >= 2), blurred, with Rician-like noise."""
    from scipy.ndimage import gaussian_filter
    air, tissue, organ, tumour = MRI_CONTRASTS.get(name) or tuple([0.0] + list(rng.uniform(100, 900, 3)))
    img = np.full(label.shape, air, dtype=np.float32)
    img[body] = tissue * rng.uniform(0.95, 1.05)
    img[label == 1] = organ * rng.uniform(0.95, 1.05)
    img[label >= 2] = tumour * rng.uniform(0.95, 1.05)
    spacing = np.asarray(spacing, dtype=float)
    img = gaussian_filter(img, sigma=0.6 / (spacing / spacing.min()))
    sigma = 0.04 * max(tissue, organ, tumour)
    img = np.hypot(img + rng.normal(0.0, sigma, label.shape), rng.normal(0.0, sigma, label.shape))
    return np.clip(np.round(img), 0, 32767).astype(np.int16)


def make_many_class_case(shape: Sequence[int], spacing: Sequence[float], n_classes: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(CT-like image int16, label uint8/uint16): a body with ``n_classes`` small spheres, class k at its own
    intensity (20 + 25 k HU), placed on a jittered grid so that they do not touch."""
    from scipy.ndimage import gaussian_filter
    shape = tuple(int(s) for s in shape)
    spacing = np.asarray(spacing, dtype=float)
    extent = np.asarray(shape, dtype=float)
    body = _ellipsoid(shape, extent / 2, 0.47 * extent)
    image = np.full(shape, -1000.0, dtype=np.float32)
    image[body] = rng.normal(0.0, 5.0)
    label = np.zeros(shape, dtype=np.uint8 if n_classes < 255 else np.uint16)
    per_axis = int(np.ceil(n_classes ** (1 / 3)))
    grid = [(i, j, k) for i in range(per_axis) for j in range(per_axis) for k in range(per_axis)]
    cells = [grid[i] for i in rng.permutation(len(grid))[:n_classes]]
    cell = 0.6 * extent / per_axis  # the grid spans the central 60% of the image, inside the body
    radius = max(1.0, float(0.3 * cell.min()))
    for c, idx in enumerate(cells, start=1):
        centre = 0.2 * extent + (np.asarray(idx) + 0.5) * cell + rng.uniform(-0.1, 0.1, 3) * cell
        m = _ellipsoid(shape, centre, radius * rng.uniform(0.85, 1.15, 3)) & body
        if not m.any():
            m[tuple(int(v) for v in np.clip(np.round(centre), 0, extent - 1))] = True
        image[m] = 20.0 + 25.0 * c + rng.normal(0.0, 3.0)
        label[m] = c
    image = gaussian_filter(image, sigma=0.6 / (spacing / spacing.min()))
    image += rng.normal(0.0, 8.0, shape).astype(np.float32)
    return np.clip(np.round(image), -1024, 3071).astype(np.int16), label


def generate_phantom_dataset(raw_folder: str | os.PathLike, dataset_id: int, name: str = "Phantoms",
                             n_cases: int = 10, shape: Sequence[int] = (48, 48, 48), seed: int = 0,
                             spacing: Sequence[float] = (1.0, 1.0, 1.0), *,
                             channel_names: Sequence[str] = ("CT",), n_classes: int | None = None,
                             ignore_label: bool = False, lookalike_lesions: bool = False) -> Path:
    """Write ``<raw_folder>/Dataset<ID>_<name>/`` (imagesTr, labelsTr, dataset.json) and return its path.

    Case ``i`` is named ``<name lower-case>_<iii>``; by default its image ``imagesTr/<case>_0000.nii.gz`` has
    channel name ``CT`` (so nnU-Net uses its CT normalisation: percentile clip + z-score); labels are
    background 0, organ 1, tumour 2. ``channel_names`` (one file ``<case>_<XXXX>.nii.gz`` per channel, MRI-like
    sequences or CT), ``n_classes`` (many small classes) and ``ignore_label`` make other kinds of dataset (see
    the module docstring). Deterministic under (shape, spacing, seed, n_cases and these keywords).
    """
    import SimpleITK as sitk
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    if not 0 < int(dataset_id) < 1000:
        raise ValueError(f"dataset_id must be in 1..999, got {dataset_id}")
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError("shape and spacing need three entries (array order)")
    channel_names = [str(c) for c in channel_names]
    if not channel_names:
        raise ValueError("channel_names needs at least one channel")
    if lookalike_lesions and n_classes is not None:
        raise ValueError("lookalike_lesions and n_classes make different anatomies; choose one")
    if n_classes is not None and not 1 <= int(n_classes) <= 1000:
        raise ValueError(f"n_classes must be in 1..1000, got {n_classes}")
    out = Path(raw_folder) / f"Dataset{int(dataset_id):03d}_{name}"
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    prefix = name.lower()
    sitk_spacing = tuple(float(s) for s in reversed(spacing))  # SimpleITK wants (x, y, z)
    if n_classes is None:
        labels = dict(LABELS)
        description = "Synthetic phantoms (body, organs = 1, tumour = 2) made by sam3d_nnunet.phantoms"
    else:
        labels = {"background": 0, **{f"structure_{c:02d}": c for c in range(1, int(n_classes) + 1)}}
        description = f"Synthetic phantoms with {n_classes} small spherical structures made by sam3d_nnunet.phantoms"
    ignore_value = max(labels.values()) + 1 if ignore_label else None
    if ignore_value is not None:
        labels["ignore"] = ignore_value
        description += "; label 'ignore' marks unannotated voxels (last quarter of the slices along axis 0)"
    for i in range(n_cases):
        rng = np.random.default_rng([int(seed), i])
        if lookalike_lesions:
            image, label = make_lookalike_lesions_case(shape, spacing, rng)
        elif n_classes is None:
            image, label = make_phantom_case(shape, spacing, rng)
        else:
            image, label = make_many_class_case(shape, spacing, int(n_classes), rng)
        body = image > -500
        channels = [image]
        if channel_names != ["CT"]:  # other channels from their own stream: the anatomy stays the same
            crng = np.random.default_rng([int(seed), i, 1])
            channels = [image if c == "CT" else mri_channel(label, body, c, spacing, crng) for c in channel_names]
        if ignore_value is not None:
            label = label.astype(np.uint8 if ignore_value < 255 else np.uint16)
            cut = int(round(0.75 * label.shape[0]))
            unannotated = np.zeros(label.shape, dtype=bool)
            unannotated[cut:] = body[cut:]
            label[unannotated] = ignore_value
        case = f"{prefix}_{i:03d}"
        files = [(arr, out / "imagesTr" / f"{case}_{k:04d}.nii.gz") for k, arr in enumerate(channels)]
        files.append((label, out / "labelsTr" / f"{case}.nii.gz"))
        for arr, path in files:
            itk = sitk.GetImageFromArray(arr)
            itk.SetSpacing(sitk_spacing)
            sitk.WriteImage(itk, str(path), useCompression=True)
    if lookalike_lesions:
        description = description.replace("organs = 1, tumour = 2", "two organs = 1, each with a lesion, the two "
                                          "lesions alike, one drawn at random as tumour = 2")
    if channel_names == ["CT"] and n_classes is None and not ignore_label and not lookalike_lesions:
        # exactly what earlier versions wrote
        description = ("Synthetic CT phantoms (body, organs = 1, tumour = 2) made by "
                       "sam3d_nnunet.phantoms; deterministic under the seed.")
    else:
        description += "; deterministic under the seed."
    extra = {}
    if channel_names != ["CT"]:
        extra["phantom_channels"] = channel_names
    if n_classes is not None:
        extra["phantom_n_classes"] = int(n_classes)
    if lookalike_lesions:
        extra["phantom_lookalike_lesions"] = True
    generate_dataset_json(str(out), channel_names={k: c for k, c in enumerate(channel_names)}, labels=labels,
                          num_training_cases=n_cases, file_ending=".nii.gz",
                          dataset_name=f"Dataset{int(dataset_id):03d}_{name}", description=description,
                          license="CC0 (synthetic)", reference="sam3d_nnunet.phantoms",
                          phantom_seed=int(seed), phantom_shape=[int(s) for s in shape],
                          phantom_spacing=[float(s) for s in spacing], **extra)
    return out
