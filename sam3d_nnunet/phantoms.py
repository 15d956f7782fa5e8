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
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

LABELS = {"background": 0, "organ": 1, "tumour": 2}


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


def generate_phantom_dataset(raw_folder: str | os.PathLike, dataset_id: int, name: str = "Phantoms",
                             n_cases: int = 10, shape: Sequence[int] = (48, 48, 48), seed: int = 0,
                             spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> Path:
    """Write ``<raw_folder>/Dataset<ID>_<name>/`` (imagesTr, labelsTr, dataset.json) and return its path.

    Case ``i`` is named ``<name lower-case>_<iii>``; its image ``imagesTr/<case>_0000.nii.gz`` has channel
    name ``CT`` (so nnU-Net uses its CT normalisation: percentile clip + z-score); labels are background 0,
    organ 1, tumour 2. Deterministic under (shape, spacing, seed, n_cases).
    """
    import SimpleITK as sitk
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    if not 0 < int(dataset_id) < 1000:
        raise ValueError(f"dataset_id must be in 1..999, got {dataset_id}")
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError("shape and spacing need three entries (array order)")
    out = Path(raw_folder) / f"Dataset{int(dataset_id):03d}_{name}"
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    prefix = name.lower()
    sitk_spacing = tuple(float(s) for s in reversed(spacing))  # SimpleITK wants (x, y, z)
    for i in range(n_cases):
        rng = np.random.default_rng([int(seed), i])
        image, label = make_phantom_case(shape, spacing, rng)
        case = f"{prefix}_{i:03d}"
        for arr, path in ((image, out / "imagesTr" / f"{case}_0000.nii.gz"),
                          (label, out / "labelsTr" / f"{case}.nii.gz")):
            itk = sitk.GetImageFromArray(arr)
            itk.SetSpacing(sitk_spacing)
            sitk.WriteImage(itk, str(path), useCompression=True)
    generate_dataset_json(str(out), channel_names={0: "CT"}, labels=dict(LABELS), num_training_cases=n_cases,
                          file_ending=".nii.gz", dataset_name=f"Dataset{int(dataset_id):03d}_{name}",
                          description="Synthetic CT phantoms (body, organs = 1, tumour = 2) made by "
                                      "sam3d_nnunet.phantoms; deterministic under the seed.",
                          license="CC0 (synthetic)", reference="sam3d_nnunet.phantoms",
                          phantom_seed=int(seed), phantom_shape=[int(s) for s in shape],
                          phantom_spacing=[float(s) for s in spacing])
    return out
